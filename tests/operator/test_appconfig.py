"""Rendering an app's config Secret (operator/appconfig.py); the sidecar's loader reads it back."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tidings.operator.appconfig import (
    normalise_subscription,
    render_app_config,
    secret_manifest,
    secret_refs,
)
from tidings.sidecar.resources import load_resources


def component(
    name: str, *, scopes: list[str] | None = None, metadata: list | None = None, **extra: object
) -> dict:
    body = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": "u1",
            "resourceVersion": "7",
            "managedFields": [{}],
        },
        "spec": {
            "type": "pubsub.kafka",
            "version": "v1",
            "metadata": metadata
            or [{"name": "brokers", "value": "kafka:9092"}, {"name": "authType", "value": "none"}],
        },
        "status": {"conditions": []},
        **extra,
    }
    if scopes is not None:
        body["scopes"] = scopes
    return body


def v1_subscription(name: str, *, scopes: list[str] | None = None) -> dict:
    body = {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",  # read through v2alpha1
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"pubsubname": "pubsub", "topic": f"t-{name}", "route": f"/{name}"},
    }
    if scopes is not None:
        body["scopes"] = scopes
    return body


def v2_subscription(name: str, *, scopes: list[str] | None = None) -> dict:
    body = {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "pubsubname": "pubsub",
            "topic": f"t-{name}",
            "routes": {"rules": [{"match": 'event.type == "x"', "path": "/x"}], "default": "/d"},
        },
    }
    if scopes is not None:
        body["scopes"] = scopes
    return body


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_scoped_resources_only_and_loader_reads_them(tmp_path: Path) -> None:
    rendered = render_app_config(
        app_id="orders",
        components=[component("pubsub"), component("other", scopes=["billing"])],
        subscriptions=[
            v2_subscription("mine", scopes=["orders"]),
            v1_subscription("all"),
            v2_subscription("theirs", scopes=["billing"]),
        ],
        secrets={},
    )
    assert rendered.components == ("pubsub",)
    assert rendered.subscriptions == ("all", "mine")
    assert set(rendered.files) == {
        "component-pubsub.yaml",
        "subscription-all.yaml",
        "subscription-mine.yaml",
    }
    loaded = load_resources([write(tmp_path, rendered.files)], app_id="orders")
    assert set(loaded.components) == {"pubsub"}
    subs = {s.name: s for s in loaded.subscriptions}
    assert subs["all"].default_path == "/all"  # v1alpha1 route → routes.default
    assert subs["mine"].rules[0].path == "/x" and subs["mine"].default_path == "/d"
    assert "resourceVersion" not in rendered.files["component-pubsub.yaml"]
    assert "status" not in rendered.files["component-pubsub.yaml"]


def test_secret_key_ref_is_resolved(tmp_path: Path) -> None:
    metadata = [
        {"name": "brokers", "secretKeyRef": {"name": "kafka", "key": "brokers"}},
        {"name": "authType", "value": "none"},
    ]
    body = component("pubsub", metadata=metadata)
    assert secret_refs(body) == {"kafka"}
    rendered = render_app_config(
        app_id="orders",
        components=[body],
        subscriptions=[],
        secrets={"kafka": {"brokers": "k1:9092,k2:9092"}},
    )
    assert rendered.problems == ()
    assert "secretKeyRef" not in rendered.files["component-pubsub.yaml"]
    loaded = load_resources([write(tmp_path, rendered.files)], app_id="orders")
    assert loaded.components["pubsub"].metadata["brokers"] == "k1:9092,k2:9092"


@pytest.mark.parametrize(
    ("secrets", "auth", "problem"),
    [
        ({}, None, "Secret 'kafka' not found"),
        ({"kafka": {"other": "x"}}, None, "has no key 'brokers'"),
        ({"kafka": {"brokers": "k:1"}}, {"secretStore": "vault"}, "'vault' is not supported"),
    ],
)
def test_unresolvable_component_is_left_out(secrets: dict, auth: dict | None, problem: str) -> None:
    metadata = [
        {"name": "brokers", "secretKeyRef": {"name": "kafka", "key": "brokers"}},
        {"name": "authType", "value": "none"},
    ]
    extra = {"auth": auth} if auth else {}
    rendered = render_app_config(
        app_id="orders",
        components=[component("pubsub", metadata=metadata, **extra), component("good")],
        subscriptions=[],
        secrets=secrets,
    )
    assert rendered.components == ("good",)
    assert len(rendered.problems) == 1 and problem in rendered.problems[0]


def test_invalid_resources_are_left_out_not_raised() -> None:
    bad_kafka = component("nobrokers", metadata=[{"name": "authType", "value": "none"}])
    bad_type = component("redis")
    bad_type["spec"]["type"] = "pubsub.redis"
    bad_sub = v2_subscription("broken")
    del bad_sub["spec"]["topic"]
    rendered = render_app_config(
        app_id="a",
        components=[bad_kafka, bad_type, component("ok")],
        subscriptions=[bad_sub, v2_subscription("fine")],
        secrets={},
    )
    assert rendered.components == ("ok",)
    assert rendered.subscriptions == ("fine",)
    assert len(rendered.problems) == 3
    assert any("brokers" in p for p in rendered.problems)
    assert any("topic" in p for p in rendered.problems)


def test_render_is_deterministic() -> None:
    comps = [component("b"), component("a")]
    subs = [v2_subscription("y"), v1_subscription("x")]
    one = render_app_config(app_id="a", components=comps, subscriptions=subs, secrets={})
    two = render_app_config(
        app_id="a", components=comps[::-1], subscriptions=subs[::-1], secrets={}
    )
    assert one == two


def test_secret_manifest() -> None:
    rendered = render_app_config(
        app_id="orders", components=[component("pubsub")], subscriptions=[], secrets={}
    )
    m = secret_manifest(namespace="shop", rendered=rendered)
    assert m["metadata"]["name"] == "tidings-orders"
    assert m["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "tidings-operator",
        "app.kubernetes.io/component": "app-config",
        "dapr.io/app-id": "orders",
    }
    text = base64.b64decode(m["data"]["component-pubsub.yaml"]).decode()
    assert text == rendered.files["component-pubsub.yaml"]


def test_normalise_subscription() -> None:
    v1 = normalise_subscription(v1_subscription("s"))
    assert v1["spec"]["routes"] == {"default": "/s"} and "route" not in v1["spec"]
    v2 = normalise_subscription(v2_subscription("s"))
    assert v2["spec"]["routes"]["default"] == "/d"
    v1_written = dict(v1_subscription("s"), apiVersion="dapr.io/v1alpha1")
    assert normalise_subscription(v1_written)["apiVersion"] == "dapr.io/v2alpha1"


def test_subscription_whose_rule_is_not_cel_is_left_out(tmp_path: Path) -> None:
    """Found on a real cluster: the bad Subscription went into the Secret, the sidecar kept it
    over a valid one for the same topic, then dropped it for its rule: nothing was delivered."""
    good = v2_subscription("a-good")
    bad = v2_subscription("z-bad")
    bad["spec"]["topic"] = good["spec"]["topic"]
    bad["spec"]["routes"]["rules"] = [{"match": "event.(", "path": "/x"}]
    rendered = render_app_config(
        app_id="orders", components=[component("pubsub")], subscriptions=[good, bad], secrets={}
    )
    assert rendered.subscriptions == ("a-good",)
    assert any("z-bad" in p and "routes.rules[0].match" in p for p in rendered.problems)
    loaded = load_resources([write(tmp_path, rendered.files)], app_id="orders")
    assert [s.name for s in loaded.subscriptions] == ["a-good"]


def test_env_ref_is_left_to_the_sidecar_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found on a real cluster: envRef was checked against the operator's own environment."""
    monkeypatch.delenv("KAFKA_BROKERS", raising=False)
    body = component(
        "pubsub",
        metadata=[
            {"name": "brokers", "envRef": "KAFKA_BROKERS"},
            {"name": "authType", "value": "none"},
        ],
    )
    rendered = render_app_config(app_id="orders", components=[body], subscriptions=[], secrets={})
    assert rendered.components == ("pubsub",), rendered.problems
    monkeypatch.setenv("KAFKA_BROKERS", "kafka:9092")  # the sidecar's environment
    loaded = load_resources([write(tmp_path, rendered.files)], app_id="orders")
    assert loaded.components["pubsub"].kafka.brokers == ("kafka:9092",)  # type: ignore[union-attr]
    still_bad = component(
        "pubsub",
        metadata=[
            {"name": "brokers", "envRef": "KAFKA_BROKERS"},
            {"name": "authType", "value": "oidc"},
        ],
    )
    assert (
        render_app_config(
            app_id="orders", components=[still_bad], subscriptions=[], secrets={}
        ).components
        == ()
    )


def test_config_too_large_for_a_secret() -> None:
    """Found on a real kube-apiserver: a Secret over 1 MiB is refused (422)."""
    from tidings.operator.appconfig import SECRET_MAX_BYTES, config_too_large

    subs = [v2_subscription(f"s{i}") for i in range(2)]
    for s in subs:
        s["spec"]["metadata"] = {"padding": "x" * (SECRET_MAX_BYTES // 2)}
    rendered = render_app_config(
        app_id="orders", components=[component("pubsub")], subscriptions=subs, secrets={}
    )
    why = config_too_large(rendered)
    assert why is not None and str(SECRET_MAX_BYTES) in why and "subscription-s0.yaml" in why
    fits = render_app_config(
        app_id="orders", components=[component("pubsub")], subscriptions=subs[:1], secrets={}
    )
    assert config_too_large(fits) is None


@pytest.mark.parametrize(
    "spec", [{"topic": "bad topic/../x"}, {"deadLetterTopic": "a b"}, {"routes": {}}]
)
def test_subscription_the_sidecar_drops_is_left_out(tmp_path: Path, spec: dict) -> None:
    """The sidecar keeps the last subscription per topic and only then drops these: left in,
    one would displace the valid subscription for the same topic."""
    good = v2_subscription("a-good")
    bad = v2_subscription("z-bad")
    bad["spec"]["topic"] = good["spec"]["topic"]
    bad["spec"].update(spec)
    rendered = render_app_config(
        app_id="orders", components=[component("pubsub")], subscriptions=[good, bad], secrets={}
    )
    assert rendered.subscriptions == ("a-good",)
    assert len(rendered.problems) == 1 and "z-bad" in rendered.problems[0]


def test_subscription_a_jetstream_sidecar_drops_is_left_out(tmp_path: Path) -> None:
    jetstream = component("pubsub", metadata=[{"name": "natsURL", "value": "nats://n:4222"}])
    jetstream["spec"]["type"] = "pubsub.jetstream"
    good, bad = v2_subscription("a-good"), v2_subscription("z-bad")
    good["spec"]["topic"] = "orders.*"
    bad["spec"]["topic"] = "orders.*"
    bad["spec"]["deadLetterTopic"] = "dead letters"
    rendered = render_app_config(
        app_id="orders", components=[jetstream], subscriptions=[good, bad], secrets={}
    )
    assert rendered.components == ("pubsub",) and rendered.subscriptions == ("a-good",)
    assert len(rendered.problems) == 1 and "not a NATS subject" in rendered.problems[0]
    loaded = load_resources([write(tmp_path, rendered.files)], app_id="orders")
    assert loaded.components["pubsub"].jetstream is not None
