"""Tests of programmatic subscription parsing and the merge with declarative ones
(``sidecar/delivery/subscriptions.py``, §2.1, §5.1)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tidings.sidecar.delivery.subscriptions import effective_subscriptions, parse_programmatic
from tidings.sidecar.resources import (
    Component,
    LoadedComponent,
    Route,
    SubscriptionType,
    TopicSubscription,
)
from tidings.sidecar.resources.jetstream import parse_jetstream_metadata
from tidings.sidecar.resources.kafka import parse_kafka_metadata
from tidings.sidecar.resources.models import BulkOptions, parse_resource


def component(name: str = "pubsub", **metadata: str) -> LoadedComponent:
    resource = Component.model_validate(
        {
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": name},
            "spec": {
                "type": "pubsub.in-memory",
                "version": "v1",
                "metadata": [{"name": k, "value": v} for k, v in metadata.items()],
            },
        }
    )
    return LoadedComponent(component=resource, source="test", metadata=dict(metadata))


def test_full_shape_of_section_2_1() -> None:
    [sub] = parse_programmatic(
        [
            {
                "pubsubname": "pubsub",
                "topic": "orders",
                "route": "/ignored-when-default-set",
                "routes": {
                    "rules": [{"match": 'event.type == "widget"', "path": "/widgets"}],
                    "default": "/products",
                },
                "metadata": {"rawPayload": "true"},
                "deadLetterTopic": "poison",
                "bulkSubscribe": {"enabled": False},
            }
        ]
    )
    assert sub == TopicSubscription(
        pubsubname="pubsub",
        topic="orders",
        rules=(Route('event.type == "widget"', "/widgets"),),
        default_path="/products",
        metadata={"rawPayload": "true"},
        dead_letter_topic="poison",
        type=SubscriptionType.PROGRAMMATIC,
    )
    assert sub.raw_payload


@pytest.mark.parametrize(
    ("bulk", "expected"),
    [
        (
            {"enabled": True, "maxMessagesCount": 10, "maxAwaitDurationMs": 250},
            BulkOptions(10, 250),
        ),
        ({"enabled": True}, BulkOptions(None, None)),
        # not positive: the broker's default, as Dapr
        (
            {"enabled": True, "maxMessagesCount": 0, "maxAwaitDurationMs": -1},
            BulkOptions(None, None),
        ),
        ({"Enabled": True, "MaxMessagesCount": 3}, BulkOptions(3, None)),
        ({"enabled": False, "maxMessagesCount": 10}, None),
        ({"maxMessagesCount": 10}, None),
        (None, None),
    ],
)
def test_bulk_subscribe(bulk: object, expected: BulkOptions | None) -> None:
    [sub] = parse_programmatic(
        [{"pubsubname": "p", "topic": "t", "route": "/r", "bulkSubscribe": bulk}]
    )
    assert sub.bulk == expected


def test_declarative_bulk_subscribe() -> None:
    def declared(bulk: dict[str, object]) -> BulkOptions | None:
        resource = parse_resource(
            {
                "apiVersion": "dapr.io/v2alpha1",
                "kind": "Subscription",
                "metadata": {"name": "s"},
                "spec": {
                    "pubsubname": "p",
                    "topic": "t",
                    "routes": {"default": "/r"},
                    "bulkSubscribe": bulk,
                },
            },
            source="test",
        )
        return resource.to_topic_subscription().bulk  # type: ignore[union-attr]

    assert declared(
        {"enabled": True, "maxMessagesCount": 5, "maxAwaitDurationMs": 40}
    ) == BulkOptions(5, 40)
    assert declared({"enabled": True}) == BulkOptions(None, None)
    assert declared({"enabled": False, "maxMessagesCount": 5}) is None


def test_v1_route_is_the_default_without_routes_default() -> None:
    [sub] = parse_programmatic([{"pubsubname": "p", "topic": "t", "route": "/orders"}])
    assert sub.default_path == "/orders"
    assert sub.rules == ()
    assert sub.dead_letter_topic is None


def test_keys_match_case_insensitively_like_go() -> None:
    [sub] = parse_programmatic(
        [{"pubsubName": "p", "Topic": "t", "Route": "/r", "DeadLetterTopic": "dlt"}]
    )
    assert (sub.pubsubname, sub.topic, sub.default_path, sub.dead_letter_topic) == (
        "p",
        "t",
        "/r",
        "dlt",
    )


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        {"topic": "t", "route": "/r"},  # no pubsubname
        {"pubsubname": "p", "route": "/r"},  # no topic
        {"pubsubname": "p", "topic": 5, "route": "/r"},
        {"pubsubname": "p", "topic": "t", "routes": ["/r"]},
        {"pubsubname": "p", "topic": "t", "routes": {"rules": {"match": "true"}}},
        {"pubsubname": "p", "topic": "t", "routes": {"rules": ["true"]}},
        {"pubsubname": "p", "topic": "t", "routes": {"rules": [{"match": 1, "path": "/x"}]}},
        {"pubsubname": "p", "topic": "t", "route": "/r", "metadata": {"rawPayload": True}},
        {"pubsubname": "p", "topic": "t", "route": "/r", "deadLetterTopic": ["x"]},
        {"pubsubname": "p", "topic": "t", "route": "/r", "bulkSubscribe": True},
        {"pubsubname": "p", "topic": "t", "route": "/r", "bulkSubscribe": {"enabled": "yes"}},
        {
            "pubsubname": "p",
            "topic": "t",
            "route": "/r",
            "bulkSubscribe": {"enabled": True, "maxMessagesCount": 2.5},
        },
        {
            "pubsubname": "p",
            "topic": "t",
            "route": "/r",
            "bulkSubscribe": {"enabled": True, "maxAwaitDurationMs": "100"},
        },
    ],
)
def test_bad_entries_are_logged_and_skipped(bad: object, caplog: pytest.LogCaptureFixture) -> None:
    good = {"pubsubname": "p", "topic": "ok", "route": "/ok"}
    subs = parse_programmatic([bad, good])
    assert [s.topic for s in subs] == ["ok"]
    assert "invalid subscription from the app" in caplog.text


def declarative(topic: str, path: str, pubsub: str = "pubsub") -> TopicSubscription:
    return TopicSubscription(
        pubsubname=pubsub,
        topic=topic,
        default_path=path,
        type=SubscriptionType.DECLARATIVE,
        name=f"decl-{topic}",
    )


def programmatic(topic: str, path: str, pubsub: str = "pubsub", **kw: object) -> TopicSubscription:
    return TopicSubscription(
        pubsubname=pubsub, topic=topic, default_path=path, type=SubscriptionType.PROGRAMMATIC, **kw
    )  # type: ignore[arg-type]


def test_programmatic_wins_over_declarative_like_dapr(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    result = effective_subscriptions(
        declarative=[declarative("orders", "/decl"), declarative("audit", "/audit")],
        programmatic=[programmatic("orders", "/prog")],
        components={"pubsub": component()},
        app_id="app",
    )
    assert [(s.topic, s.default_path, s.type) for s in result] == [
        ("orders", "/prog", SubscriptionType.PROGRAMMATIC),
        ("audit", "/audit", SubscriptionType.DECLARATIVE),
    ]
    assert "two identical subscriptions found (sources: declarative, app endpoint)" in caplog.text


def test_one_subscription_per_pubsub_and_topic_last_wins() -> None:
    result = effective_subscriptions(
        declarative=[declarative("t", "/one"), declarative("t", "/two")],
        programmatic=[
            programmatic("u", "/a"),
            programmatic("u", "/b"),
            programmatic("u", "/other-pubsub", pubsub="other"),
        ],
        components={"pubsub": component(), "other": component("other")},
        app_id="app",
    )
    assert sorted((s.pubsubname, s.topic, s.default_path) for s in result) == [
        ("other", "u", "/other-pubsub"),
        ("pubsub", "t", "/two"),
        ("pubsub", "u", "/b"),
    ]


def test_unknown_pubsub_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    result = effective_subscriptions(
        declarative=[],
        programmatic=[programmatic("t", "/t", "nope")],
        components={"pubsub": component()},
        app_id="app",
    )
    assert result == []
    assert "not configured" in caplog.text


def test_subscription_scopes_are_enforced(caplog: pytest.LogCaptureFixture) -> None:
    comp = component(subscriptionScopes="app=allowed;other=secret", protectedTopics="secret")
    result = effective_subscriptions(
        declarative=[declarative("allowed", "/a")],
        programmatic=[programmatic("secret", "/s"), programmatic("not-listed", "/n")],
        components={"pubsub": comp},
        app_id="app",
    )
    assert [s.topic for s in result] == ["allowed"]
    assert "subscription to topic 'secret' on pubsub 'pubsub' is not allowed" in caplog.text
    assert "subscription to topic 'not-listed' on pubsub 'pubsub' is not allowed" in caplog.text


def test_allowed_topics_are_enforced() -> None:
    comp = component(allowedTopics="a,b")
    result = effective_subscriptions(
        declarative=[],
        programmatic=[programmatic("a", "/a"), programmatic("c", "/c")],
        components={"pubsub": comp},
        app_id="app",
    )
    assert [s.topic for s in result] == ["a"]


def test_empty_routes_and_bad_cel_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    no_route = TopicSubscription(pubsubname="pubsub", topic="empty")
    bad_cel = TopicSubscription(
        pubsubname="pubsub", topic="bad", rules=(Route("event.(", "/x"),), default_path="/d"
    )
    result = effective_subscriptions(
        declarative=[],
        programmatic=[no_route, bad_cel, programmatic("ok", "/ok")],
        components={"pubsub": component()},
        app_id="app",
    )
    assert [s.topic for s in result] == ["ok"]
    assert "topic empty has an empty routes" in caplog.text
    assert "routes.rules[0].match" in caplog.text


def kafka_component(name: str = "kafka") -> LoadedComponent:
    metadata = {"brokers": "localhost:9092", "authType": "none"}
    resource = Component.model_validate(
        {
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": name},
            "spec": {
                "type": "pubsub.kafka",
                "version": "v1",
                "metadata": [{"name": k, "value": v} for k, v in metadata.items()],
            },
        }
    )
    return LoadedComponent(
        component=resource,
        source="test",
        metadata=metadata,
        kafka=parse_kafka_metadata(metadata, app_id="app"),
    )


def test_topics_kafka_cannot_hold_are_left_out_on_kafka_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    subs = [
        programmatic("a/b/c", "/x", "kafka"),
        programmatic("a b", "/x", "kafka"),
        programmatic("t" * 250, "/x", "kafka"),
        programmatic("..", "/x", "kafka"),
        programmatic("ok", "/ok", "kafka", dead_letter_topic="dead/letters"),
        programmatic("fine.topic_1-x", "/f", "kafka", dead_letter_topic="dlq"),
        programmatic("a/b/c", "/m", "mem"),
    ]  # the in-memory component takes any name
    components = {"kafka": kafka_component(), "mem": component("mem")}
    result = effective_subscriptions(
        declarative=[declarative("x y", "/d", "kafka")],
        programmatic=subs,
        components=components,
        app_id="app",
    )
    assert [(s.pubsubname, s.topic) for s in result] == [
        ("kafka", "fine.topic_1-x"),
        ("mem", "a/b/c"),
    ]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 6
    assert any('topic: topic "a/b/c" is not a valid Kafka topic name' in e for e in errors)
    assert any(
        'deadLetterTopic: topic "dead/letters" is not a valid Kafka topic name' in e for e in errors
    )
    assert any("decl-x y is ignored" in e for e in errors)


def test_topics_that_are_no_nats_subject_are_left_out_on_jetstream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metadata = {"natsURL": "nats://localhost:4222"}
    resource = Component.model_validate(
        {
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": "js"},
            "spec": {
                "type": "pubsub.jetstream",
                "version": "v1",
                "metadata": [{"name": k, "value": v} for k, v in metadata.items()],
            },
        }
    )
    js = LoadedComponent(
        component=resource,
        source="test",
        metadata=metadata,
        jetstream=parse_jetstream_metadata(metadata, app_id="app"),
    )
    caplog.set_level(logging.ERROR)
    subs = [
        programmatic("a b", "/x", "js"),
        programmatic("a..b", "/x", "js"),
        programmatic("a.>.b", "/x", "js"),
        programmatic("ok", "/ok", "js", dead_letter_topic="dead.*"),
        programmatic("orders.*", "/o", "js", dead_letter_topic="dead.orders"),
        programmatic("all.>", "/a", "js"),
    ]
    result = effective_subscriptions(
        declarative=[], programmatic=subs, components={"js": js}, app_id="app"
    )
    assert [s.topic for s in result] == ["orders.*", "all.>"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    assert any(
        "deadLetterTopic 'dead.*' is not a NATS subject one can publish to" in e for e in errors
    )


MEMORY = (
    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: memory}\n"
    "spec: {type: pubsub.in-memory, version: v1}\n"
)
BAD_RULE = (
    "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: s}\n"
    "spec:\n  pubsubname: memory\n  topic: orders\n  routes:\n"
    "    rules: [{match: 'event.type ==', path: /widgets}]\n    default: /orders\n"
)
GOOD = BAD_RULE.replace("event.type ==", 'event.type == "widget"')


async def test_bad_declarative_rule_refuses_start_and_a_reload_alike(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Subscription whose CEL rule does not compile is treated like a bad Component: the
    sidecar does not start (before the app is reached), and a hot reload bringing one keeps the
    running subscriptions; both messages name the file and the field."""
    from tidings.sidecar.resources import ResourceError
    from tidings.sidecar.runtime.runner import Sidecar
    from tidings.sidecar.runtime.settings import SidecarSettings

    (tmp_path / "memory.yaml").write_text(MEMORY)
    (tmp_path / "subs.yaml").write_text(BAD_RULE)
    settings = SidecarSettings(
        app_id="orders", dapr_http_port=0, resources_paths=(tmp_path,), resources_poll_interval_s=60
    )
    refused = Sidecar(settings)
    with pytest.raises(ResourceError) as err:
        await refused.start()
    await refused.stop()
    assert err.value.source == str(tmp_path / "subs.yaml")
    assert err.value.field == "spec.routes.rules[0].match"

    (tmp_path / "subs.yaml").write_text(GOOD)
    sidecar = Sidecar(settings)
    await sidecar.start()
    try:
        assert [s.name for s in sidecar._declarative] == ["s"]
        (tmp_path / "subs.yaml").write_text(BAD_RULE.replace("topic: orders", "topic: other"))
        with caplog.at_level(logging.ERROR, logger="tidings.sidecar.runtime.runner"):
            await sidecar.reload()
        assert f"{tmp_path / 'subs.yaml'}, field spec.routes.rules[0].match" in caplog.text
        assert "keeping the running configuration" in caplog.text
        assert [s.topic for s in sidecar._declarative] == ["orders"]
    finally:
        await sidecar.stop()
