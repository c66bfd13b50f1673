"""Component/Subscription verdicts and the Ready condition (operator/validation.py)."""

from __future__ import annotations

import datetime

import pytest

from tidings.operator.validation import (
    Verdict,
    ready_condition,
    validate_component,
    validate_subscription,
)


def comp(**spec: object) -> dict:
    base = {
        "type": "pubsub.kafka",
        "version": "v1",
        "metadata": [{"name": "brokers", "value": "k:9092"}, {"name": "authType", "value": "none"}],
    }
    base.update(spec)
    return {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "pubsub", "namespace": "ns"},
        "spec": base,
    }


def test_valid_component() -> None:
    v = validate_component(comp(), {})
    assert v.ok and v.reason == "Valid"


def test_component_errors_name_the_field() -> None:
    v = validate_component(comp(type="pubsub.rabbitmq"), {})
    assert not v.ok and v.reason == "InvalidSpec" and "spec.type" in v.message
    v = validate_component(comp(type="pubsub.redis"), {})
    assert not v.ok and v.reason == "InvalidSpec" and "spec.metadata.redisHost" in v.message
    v = validate_component(comp(metadata=[{"name": "authType", "value": "none"}]), {})
    assert not v.ok and "brokers" in v.message
    v = validate_component(
        comp(
            metadata=[
                {"name": "authType", "value": "none"},
                {"name": "brokers", "secretKeyRef": {"name": "s", "key": "b"}},
            ]
        ),
        {},
    )
    assert not v.ok and v.reason == "SecretNotResolved" and "'s' not found" in v.message
    v = validate_component(
        comp(
            metadata=[
                {"name": "authType", "value": "none"},
                {"name": "brokers", "secretKeyRef": {"name": "s", "key": "b"}},
            ]
        ),
        {"s": {"b": "k:1"}},
    )
    assert v.ok


def test_subscription_versions() -> None:
    v1 = {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": "s", "namespace": "ns"},
        "spec": {"pubsubname": "p", "topic": "t", "route": "/r"},
    }
    assert validate_subscription(v1).ok
    v1["spec"].pop("route")
    bad = validate_subscription(v1)
    assert not bad.ok and "routes" in bad.message


def test_subscription_with_a_rule_that_is_not_cel() -> None:
    body = {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": "s", "namespace": "ns"},
        "spec": {
            "pubsubname": "p",
            "topic": "t",
            "routes": {
                "rules": [
                    {"match": 'event.type == "a"', "path": "/a"},
                    {"match": "event.(", "path": "/b"},
                ]
            },
        },
    }
    bad = validate_subscription(body)
    assert not bad.ok and "routes.rules[1].match" in bad.message
    body["spec"]["routes"]["rules"].pop()
    assert validate_subscription(body).ok


def test_ready_condition_transition_time_moves_only_on_flip() -> None:
    t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    t1 = t0 + datetime.timedelta(hours=1)
    first = ready_condition(Verdict(True, "Valid", "ok"), generation=1, now=t0)
    assert first == {
        "type": "Ready",
        "status": "True",
        "reason": "Valid",
        "message": "ok",
        "lastTransitionTime": "2024-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    same = ready_condition(Verdict(True, "Valid", "ok"), generation=1, previous=first, now=t1)
    assert same == first
    flipped = ready_condition(
        Verdict(False, "InvalidSpec", "bad"), generation=2, previous=first, now=t1
    )
    assert flipped["lastTransitionTime"] == "2024-01-01T01:00:00Z"
    assert flipped["status"] == "False"


def sub(
    name: str,
    topic: str = "t",
    *,
    pubsub: str = "pubsub",
    scopes: list[str] | None = None,
    **spec: object,
) -> dict:
    body = {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"pubsubname": pubsub, "topic": topic, "routes": {"default": "/e"}, **spec},
    }
    if scopes is not None:
        body["scopes"] = scopes
    return body


# Found on a real cluster: each of these was Ready=True while the sidecar ignored it.


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"topic": "bad topic/../x"}, "topic"),
        ({"deadLetterTopic": "dead letters"}, "deadLetterTopic"),
        ({"deadLetterTopic": "x" * 250}, "deadLetterTopic"),
        ({"routes": {}}, "routes"),
    ],
)
def test_subscription_the_sidecar_drops_is_not_ready(spec: dict, field: str) -> None:
    v = validate_subscription(sub("s", **spec), components=[comp()], subscriptions=[])
    assert not v.ok and v.reason == "InvalidSpec" and field in v.message, v


def test_kafka_topic_names_are_checked_only_for_kafka_components() -> None:
    memory = comp(type="pubsub.in-memory", metadata=[])
    assert validate_subscription(sub("s", "a b"), components=[memory]).ok
    assert not validate_subscription(sub("s", "a b"), components=[comp()]).ok


def test_nats_subjects_are_checked_for_jetstream_components() -> None:
    jetstream = comp(type="pubsub.jetstream", metadata=[{"name": "natsURL", "value": "nats://n"}])
    assert validate_component(jetstream, {}).ok
    assert validate_subscription(sub("s", "orders.*"), components=[jetstream]).ok
    v = validate_subscription(sub("s", "a b"), components=[jetstream])
    assert not v.ok and v.reason == "InvalidSpec" and "not a NATS subject" in v.message
    v = validate_subscription(sub("s", "ok", deadLetterTopic="dead.>"), components=[jetstream])
    assert not v.ok and "deadLetterTopic" in v.message


def test_subscription_naming_a_missing_pubsub() -> None:
    v = validate_subscription(sub("s", pubsub="other"), components=[comp()])
    assert not v.ok and v.reason == "PubsubNotFound" and "'other'" in v.message
    assert validate_subscription(
        sub("s", pubsub="other"),
        components=[comp(), dict(comp(), metadata={"name": "other", "namespace": "ns"})],
    ).ok
    assert validate_subscription(sub("s", pubsub="other")).ok  # no namespace view: not judged


def test_two_subscriptions_for_one_topic_the_earlier_file_is_the_conflict() -> None:
    """The sidecar reads ``subscription-<name>.yaml`` in file name order and keeps the last
    declarative subscription per (pubsubname, topic)."""
    a, b = sub("a", "orders"), sub("b", "orders")
    everything = [b, a, sub("c", "other"), sub("d", "orders", pubsub="x")]
    loser = validate_subscription(a, components=[comp()], subscriptions=everything)
    assert not loser.ok and loser.reason == "Conflict" and "'b'" in loser.message
    assert "every app" in loser.message
    assert validate_subscription(b, components=[comp()], subscriptions=everything).ok


def test_conflict_follows_file_name_order_not_name_order() -> None:
    # "a-b" < "a" is false by name, but "subscription-a-b.yaml" < "subscription-a.yaml"
    a, ab = sub("a", "orders"), sub("a-b", "orders")
    assert validate_subscription(a, components=[comp()], subscriptions=[a, ab]).ok
    assert (
        validate_subscription(ab, components=[comp()], subscriptions=[a, ab]).reason == "Conflict"
    )


def test_conflict_needs_an_app_both_reach_and_a_valid_winner() -> None:
    a = sub("a", "orders", scopes=["billing"])
    assert validate_subscription(a, subscriptions=[a, sub("b", "orders", scopes=["ship"])]).ok
    v = validate_subscription(a, subscriptions=[a, sub("b", "orders")])
    assert v.reason == "Conflict" and "apps billing" in v.message
    unscoped = sub("a", "orders")
    v = validate_subscription(
        unscoped, subscriptions=[unscoped, sub("b", "orders", scopes=["ship"])]
    )
    assert v.reason == "Conflict" and "apps ship" in v.message
    # a later one the sidecar drops (and the operator leaves out) displaces nothing
    broken = sub("b", "orders", routes={})
    assert validate_subscription(unscoped, components=[comp()], subscriptions=[unscoped, broken]).ok
