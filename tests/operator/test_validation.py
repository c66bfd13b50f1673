"""Component/Subscription verdicts and the Ready condition (operator/validation.py)."""

from __future__ import annotations

import datetime

from tidings.operator.validation import (
    Verdict,
    ready_condition,
    validate_component,
    validate_subscription,
)


def comp(**spec: object) -> dict:
    base = {"type": "pubsub.kafka", "version": "v1",
            "metadata": [{"name": "brokers", "value": "k:9092"},
                         {"name": "authType", "value": "none"}]}
    base.update(spec)
    return {"apiVersion": "dapr.io/v1alpha1", "kind": "Component",
            "metadata": {"name": "pubsub", "namespace": "ns"}, "spec": base}


def test_valid_component() -> None:
    v = validate_component(comp(), {})
    assert v.ok and v.reason == "Valid"


def test_component_errors_name_the_field() -> None:
    v = validate_component(comp(type="pubsub.redis"), {})
    assert not v.ok and v.reason == "InvalidSpec" and "spec.type" in v.message
    v = validate_component(comp(metadata=[{"name": "authType", "value": "none"}]), {})
    assert not v.ok and "brokers" in v.message
    v = validate_component(comp(metadata=[{"name": "authType", "value": "none"}, {
        "name": "brokers", "secretKeyRef": {"name": "s", "key": "b"}}]), {})
    assert not v.ok and v.reason == "SecretNotResolved" and "'s' not found" in v.message
    v = validate_component(comp(metadata=[{"name": "authType", "value": "none"}, {
        "name": "brokers", "secretKeyRef": {"name": "s", "key": "b"}}]), {"s": {"b": "k:1"}})
    assert v.ok


def test_subscription_versions() -> None:
    v1 = {"apiVersion": "dapr.io/v2alpha1", "kind": "Subscription",
          "metadata": {"name": "s", "namespace": "ns"},
          "spec": {"pubsubname": "p", "topic": "t", "route": "/r"}}
    assert validate_subscription(v1).ok
    v1["spec"].pop("route")
    bad = validate_subscription(v1)
    assert not bad.ok and "routes" in bad.message


def test_subscription_with_a_rule_that_is_not_cel() -> None:
    body = {"apiVersion": "dapr.io/v2alpha1", "kind": "Subscription",
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"pubsubname": "p", "topic": "t",
                     "routes": {"rules": [{"match": 'event.type == "a"', "path": "/a"},
                                          {"match": "event.(", "path": "/b"}]}}}
    bad = validate_subscription(body)
    assert not bad.ok and "routes.rules[1].match" in bad.message
    body["spec"]["routes"]["rules"].pop()
    assert validate_subscription(body).ok


def test_ready_condition_transition_time_moves_only_on_flip() -> None:
    t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    t1 = t0 + datetime.timedelta(hours=1)
    first = ready_condition(Verdict(True, "Valid", "ok"), generation=1, now=t0)
    assert first == {"type": "Ready", "status": "True", "reason": "Valid", "message": "ok",
                     "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": 1}
    same = ready_condition(Verdict(True, "Valid", "ok"), generation=1, previous=first, now=t1)
    assert same == first
    flipped = ready_condition(Verdict(False, "InvalidSpec", "bad"), generation=2,
                              previous=first, now=t1)
    assert flipped["lastTransitionTime"] == "2024-01-01T01:00:00Z"
    assert flipped["status"] == "False"
