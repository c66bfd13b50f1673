"""The resources folder loader: files as users ``kubectl apply`` them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.sidecar.resources import ResourceError, load_resources

KAFKA = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec:
  type: pubsub.kafka
  version: v1
  metadata:
  - {name: brokers, value: "localhost:9092"}
  - {name: authType, value: none}
"""


def test_multi_document_files_scopes_and_other_kinds(tmp_path: Path) -> None:
    (tmp_path / "pubsub.yaml").write_text(KAFKA)
    (tmp_path / "subs.yaml").write_text("""\
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: ignored}
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: mine}
spec: {pubsubname: pubsub, topic: a, routes: {default: /a}}
scopes: [orders]
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: theirs}
spec: {pubsubname: pubsub, topic: b, route: /b}
scopes: [audit]
""")
    (tmp_path / "notes.txt").write_text("not a resource")
    resources = load_resources([tmp_path], app_id="orders")
    assert list(resources.components) == ["pubsub"]
    assert resources.components["pubsub"].kafka.consumer_group == "orders"  # type: ignore[union-attr]
    assert [s.name for s in resources.subscriptions] == ["mine"]


def test_unknown_component_type_refused_naming_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "rabbit.yaml").write_text(KAFKA.replace("pubsub.kafka", "pubsub.rabbitmq"))
    with pytest.raises(ResourceError) as err:
        load_resources([tmp_path], app_id="x")
    assert err.value.field == "spec.type" and err.value.source.endswith("rabbit.yaml")
    assert "pubsub.redis" in str(err.value)  # the supported types are listed


def test_redis_component_is_checked_by_its_own_model(tmp_path: Path) -> None:
    (tmp_path / "redis.yaml").write_text(KAFKA.replace("pubsub.kafka", "pubsub.redis"))
    with pytest.raises(ResourceError) as err:
        load_resources([tmp_path], app_id="x")
    assert err.value.field == "spec.metadata.redisHost" and err.value.source.endswith("redis.yaml")


def test_missing_required_kafka_field_refused(tmp_path: Path) -> None:
    (tmp_path / "pubsub.yaml").write_text(
        KAFKA.replace('  - {name: brokers, value: "localhost:9092"}\n', "")
    )
    with pytest.raises(ResourceError) as err:
        load_resources([tmp_path], app_id="x")
    assert err.value.field == "spec.metadata.brokers"
    assert "pubsub.yaml" in str(err.value)


def test_duplicate_component_names_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(KAFKA)
    (tmp_path / "b.yaml").write_text(KAFKA)
    with pytest.raises(ResourceError, match=f"also defined in {tmp_path / 'a.yaml'}$"):
        load_resources([tmp_path], app_id="x")


def test_unresolved_secret_ref_and_env_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pubsub.yaml").write_text(KAFKA + "  - {name: saslPassword, envRef: KAFKA_PW}\n")
    with pytest.raises(ResourceError, match="KAFKA_PW"):
        load_resources([tmp_path], app_id="x")
    monkeypatch.setenv("KAFKA_PW", "s3cret")
    assert (
        load_resources([tmp_path], app_id="x").components["pubsub"].metadata["saslPassword"]
        == "s3cret"
    )
    (tmp_path / "pubsub.yaml").write_text(
        KAFKA + "  - {name: saslPassword, secretKeyRef: {name: kafka, key: pw}}\n"
    )
    with pytest.raises(ResourceError, match="secretKeyRef"):
        load_resources([tmp_path], app_id="x")


def test_yaml_syntax_error_names_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("kind: [unclosed")
    with pytest.raises(ResourceError) as err:
        load_resources([tmp_path], app_id="x")
    assert err.value.source.endswith("broken.yaml")


def test_in_memory_component(tmp_path: Path) -> None:
    (tmp_path / "mem.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: mem}\n"
        "spec: {type: pubsub.in-memory, version: v1}\n"
    )
    loaded = load_resources([tmp_path], app_id="x").components["mem"]
    assert loaded.kafka is None and loaded.type == "pubsub.in-memory"


BAD_RULE = """\
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: s}
spec:
  pubsubname: pubsub
  topic: orders
  routes:
    rules:
    - {match: 'event.type ==', path: /widgets}
    default: /orders
"""


def test_subscription_with_a_rule_that_is_not_cel_refused_naming_file_and_field(
    tmp_path: Path,
) -> None:
    """The newcomer's report: the error came only after the app was up, without the file."""
    (tmp_path / "pubsub.yaml").write_text(KAFKA)
    (tmp_path / "subs.yaml").write_text(BAD_RULE)
    with pytest.raises(ResourceError) as err:
        load_resources([tmp_path], app_id="x")
    assert err.value.source == str(tmp_path / "subs.yaml")
    assert err.value.field == "spec.routes.rules[0].match"
    assert "subscription 's'" in str(err.value) and "'event.type =='" in str(err.value)
    (tmp_path / "subs.yaml").write_text(KAFKA + "---\n" + BAD_RULE)
    (tmp_path / "pubsub.yaml").unlink()
    with pytest.raises(ResourceError) as err:
        load_resources([tmp_path], app_id="x")
    assert err.value.source == f"{tmp_path / 'subs.yaml'} (document 1)"


def test_subscription_out_of_scope_is_not_compiled(tmp_path: Path) -> None:
    (tmp_path / "subs.yaml").write_text(BAD_RULE + "scopes: [other]\n")
    assert load_resources([tmp_path], app_id="x").subscriptions == ()


def test_duplicate_component_in_one_file_names_both_documents(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(KAFKA + "---\n" + KAFKA)
    with pytest.raises(ResourceError) as err:
        load_resources([tmp_path], app_id="x")
    path = tmp_path / "c.yaml"
    assert str(err.value) == (
        f"{path} (document 1), field metadata.name: component 'pubsub' is "
        f"also defined in {path} (document 0)"
    )
