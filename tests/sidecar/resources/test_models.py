"""Component and Subscription models (dapr-pubsub-contract.md §3.1, §3.2)."""

from __future__ import annotations

import pytest

from tidings.sidecar.resources import ResourceError, SubscriptionType, parse_resource

V2 = {
    "apiVersion": "dapr.io/v2alpha1",
    "kind": "Subscription",
    "metadata": {"name": "orders"},
    "spec": {
        "pubsubname": "pubsub",
        "topic": "orders",
        "routes": {
            "rules": [{"match": 'event.type == "widget"', "path": "/widgets"}],
            "default": "/orders",
        },
        "metadata": {"rawPayload": "true"},
        "deadLetterTopic": "poison",
    },
    "scopes": ["app1"],
}


def test_v2alpha1_normalises_rules_then_default() -> None:
    sub = parse_resource(V2, source="sub.yaml").to_topic_subscription()  # type: ignore[union-attr]
    assert [r.path for r in sub.rules] == ["/widgets"]
    assert sub.default_path == "/orders"
    assert sub.dead_letter_topic == "poison" and sub.raw_payload
    assert sub.type is SubscriptionType.DECLARATIVE
    assert sub.to_metadata_json()["rules"] == [
        {"match": 'event.type == "widget"', "path": "/widgets"},
        {"path": "/orders"},
    ]


def test_v1alpha1_route_is_the_default() -> None:
    doc = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": "s"},
        "spec": {"pubsubname": "p", "topic": "t", "route": "/r"},
    }
    sub = parse_resource(doc).to_topic_subscription()  # type: ignore[union-attr]
    assert sub.rules == () and sub.default_path == "/r"
    assert sub.to_metadata_json()["deadLetterTopic"] == ""  # always present (§1.4)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (
            {
                "apiVersion": "dapr.io/v1alpha1",
                "kind": "Subscription",
                "metadata": {"name": "s"},
                "spec": {"pubsubname": "p", "topic": "t"},
            },
            "spec.route",
        ),
        (
            {
                "apiVersion": "dapr.io/v2alpha1",
                "kind": "Subscription",
                "metadata": {"name": "s"},
                "spec": {"pubsubname": "p", "topic": "t"},
            },
            "spec.routes",
        ),
        (
            {
                "apiVersion": "dapr.io/v2alpha1",
                "kind": "Subscription",
                "metadata": {"name": "s"},
                "spec": {"pubsubname": "p", "topic": "t", "routes": {"rules": [{"path": "/a"}]}},
            },
            "spec.routes.rules.0.match",
        ),
        (
            {
                "apiVersion": "dapr.io/v2alpha1",
                "kind": "Subscription",
                "metadata": {"name": "s"},
                "spec": {"topic": "t", "routes": {"default": "/a"}},
            },
            "spec.pubsubname",
        ),
        (
            {
                "apiVersion": "dapr.io/v1alpha1",
                "kind": "Component",
                "metadata": {"name": "c"},
                "spec": {"type": "pubsub.kafka"},
            },
            "spec.version",
        ),
        (
            {
                "apiVersion": "dapr.io/v1alpha1",
                "kind": "Component",
                "metadata": {"name": "c"},
                "spec": {"version": "v1"},
            },
            "spec.type",
        ),
    ],
)
def test_refused_resources_name_the_field(doc: dict, field: str) -> None:
    with pytest.raises(ResourceError) as err:
        parse_resource(doc, source="bad.yaml")
    assert err.value.field == field and err.value.source == "bad.yaml"
    assert "bad.yaml" in str(err.value) and field in str(err.value)


def test_other_kinds_are_ignored() -> None:
    assert (
        parse_resource(
            {"apiVersion": "dapr.io/v1alpha1", "kind": "Configuration", "metadata": {"name": "c"}}
        )
        is None
    )
    assert parse_resource(None) is None


def test_component_metadata_values_render_json_values() -> None:
    doc = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "c"},
        "spec": {
            "type": "pubsub.kafka",
            "version": "v1",
            "metadata": [
                {"name": "brokers", "value": "a:1"},
                {"name": "n", "value": 5},
                {"name": "b", "value": True},
            ],
        },
    }
    assert parse_resource(doc).metadata_values() == {"brokers": "a:1", "n": "5", "b": "true"}  # type: ignore[union-attr]
