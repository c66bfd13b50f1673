"""The dapr.io CRDs on a real API server: the schemas accept and reject what the runtime does,
and the operator reports each resource's validity in status.conditions and an Event."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.conftest import Kube, Operator, poll

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

KAFKA_OK = [{"name": "brokers", "value": "kafka:9092"}, {"name": "authType", "value": "none"}]


def component(name: str, spec: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": spec,
        **top,
    }


def subscription(version: str, name: str, spec: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"dapr.io/{version}",
        "kind": "Subscription",
        "metadata": {"name": name},
        "spec": spec,
        **top,
    }


def create(kube: Kube, namespace: str, body: dict[str, Any]) -> tuple[int, Any]:
    version = body["apiVersion"].split("/")[1]
    plural = "components" if body["kind"] == "Component" else "subscriptions"
    status, _, out = kube.raw(
        "POST", f"/apis/dapr.io/{version}/namespaces/{namespace}/{plural}", body
    )
    return status, out


def test_crds_are_established_with_versions(kube: Kube, crds: list[dict[str, Any]]) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(kube.api)
    subs = ext.read_custom_resource_definition("subscriptions.dapr.io")
    assert [(v.name, v.served, v.storage) for v in subs.spec.versions] == [
        ("v1alpha1", True, False),
        ("v2alpha1", True, True),
    ]
    assert subs.spec.conversion.strategy == "None"
    comps = ext.read_custom_resource_definition("components.dapr.io")
    assert [(v.name, v.storage) for v in comps.spec.versions] == [("v1alpha1", True)]
    assert comps.spec.versions[0].subresources.status is not None


ACCEPTED = [
    component(
        "kafka",
        {"type": "pubsub.kafka", "version": "v1", "metadata": KAFKA_OK},
        scopes=["orders"],
        auth={"secretStore": "kubernetes"},
    ),
    component(
        "dyn",
        {
            "type": "pubsub.kafka",
            "version": "v1",
            "metadata": [
                {"name": "n", "value": 3},
                {"name": "b", "value": True},
                {"name": "s", "secretKeyRef": {"name": "x", "key": "y"}},
                {"name": "e", "envRef": "E"},
            ],
        },
    ),
    subscription("v1alpha1", "v1", {"pubsubname": "p", "topic": "t", "route": "/r"}, scopes=["a"]),
    subscription(
        "v2alpha1",
        "v2",
        {
            "pubsubname": "p",
            "topic": "t",
            "routes": {"rules": [{"match": 'event.type == "x"', "path": "/x"}], "default": "/d"},
            "metadata": {"rawPayload": "true"},
            "deadLetterTopic": "dlt",
            "bulkSubscribe": {"enabled": True, "maxMessagesCount": 10},
        },
    ),
    subscription(
        "v2alpha1",
        "v2-default-only",
        {"pubsubname": "p", "topic": "t", "routes": {"default": "/d"}},
    ),
]

REJECTED = [
    (component("no-type", {"version": "v1"}), "spec.type"),
    (component("no-version", {"type": "pubsub.kafka"}), "spec.version"),
    (component("no-spec", {}) | {"spec": None}, "spec"),
    (
        component(
            "unnamed-meta", {"type": "pubsub.kafka", "version": "v1", "metadata": [{"value": "x"}]}
        ),
        "spec.metadata",
    ),
    (subscription("v1alpha1", "no-route", {"pubsubname": "p", "topic": "t"}), "spec.route"),
    (subscription("v1alpha1", "no-pubsub", {"topic": "t", "route": "/r"}), "spec.pubsubname"),
    (
        subscription("v2alpha1", "no-topic", {"pubsubname": "p", "routes": {"default": "/d"}}),
        "spec.topic",
    ),
    (subscription("v2alpha1", "no-routes", {"pubsubname": "p", "topic": "t"}), "spec.routes"),
    (
        subscription(
            "v2alpha1",
            "rule-no-match",
            {"pubsubname": "p", "topic": "t", "routes": {"rules": [{"path": "/x"}]}},
        ),
        "spec.routes.rules",
    ),
    (
        subscription(
            "v2alpha1",
            "rule-no-path",
            {"pubsubname": "p", "topic": "t", "routes": {"rules": [{"match": "true"}]}},
        ),
        "spec.routes.rules",
    ),
    (
        subscription(
            "v2alpha1",
            "bulk-no-enabled",
            {
                "pubsubname": "p",
                "topic": "t",
                "routes": {"default": "/d"},
                "bulkSubscribe": {"maxMessagesCount": 3},
            },
        ),
        "spec.bulkSubscribe",
    ),
]


@pytest.mark.parametrize("body", ACCEPTED, ids=lambda b: b["metadata"]["name"])
def test_server_accepts_valid_resources(
    kube: Kube, crds: Any, namespace: str, body: dict[str, Any]
) -> None:
    status, out = create(kube, namespace, body)
    assert status == 201, out


@pytest.mark.parametrize(
    ("body", "field"), REJECTED, ids=lambda x: x["metadata"]["name"] if isinstance(x, dict) else x
)
def test_server_rejects_invalid_resources(
    kube: Kube, crds: Any, namespace: str, body: dict[str, Any], field: str
) -> None:
    status, out = create(kube, namespace, body)
    assert status == 422, out
    assert field in out["message"], out["message"]


def ready(
    kube: Kube, namespace: str, plural: str, name: str, version: str = "v1alpha1"
) -> dict[str, Any] | None:
    obj = kube.custom.get_namespaced_custom_object("dapr.io", version, namespace, plural, name)
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Ready"), None)


def events_for(kube: Kube, namespace: str, name: str) -> list[Any]:
    return [
        e
        for e in kube.core.list_namespaced_event(namespace).items
        if e.involved_object.name == name
    ]


def test_operator_sets_status_and_events(kube: Kube, operator: Operator, namespace: str) -> None:
    good = component("good", {"type": "pubsub.kafka", "version": "v1", "metadata": KAFKA_OK})
    no_brokers = component(
        "no-brokers",
        {
            "type": "pubsub.kafka",
            "version": "v1",
            "metadata": [{"name": "authType", "value": "none"}],
        },
    )
    redis = component("redis", {"type": "pubsub.redis", "version": "v1"})  # no redisHost
    for body in (good, no_brokers, redis):
        assert create(kube, namespace, body)[0] == 201

    cond = poll("good Ready=True", lambda: ready(kube, namespace, "components", "good"))
    assert cond["status"] == "True" and cond["reason"] == "Valid"
    assert cond["observedGeneration"] == 1
    bad = poll("no-brokers Ready", lambda: ready(kube, namespace, "components", "no-brokers"))
    assert bad["status"] == "False" and bad["reason"] == "InvalidSpec"
    assert "brokers" in bad["message"]
    red = poll("redis Ready", lambda: ready(kube, namespace, "components", "redis"))
    assert red["status"] == "False" and red["reason"] == "InvalidSpec"
    assert "spec.metadata.redisHost" in red["message"]

    warnings = poll(
        "a Warning event on no-brokers",
        lambda: [e for e in events_for(kube, namespace, "no-brokers") if e.type == "Warning"],
    )
    assert warnings[0].reason == "InvalidSpec" and "brokers" in warnings[0].message
    assert poll(
        "a Normal event on good",
        lambda: [e for e in events_for(kube, namespace, "good") if e.type == "Normal"],
    )


def test_status_follows_a_referenced_secret(kube: Kube, operator: Operator, namespace: str) -> None:
    body = component(
        "with-secret",
        {
            "type": "pubsub.kafka",
            "version": "v1",
            "metadata": [
                {"name": "authType", "value": "none"},
                {"name": "brokers", "secretKeyRef": {"name": "kafka-conn", "key": "brokers"}},
            ],
        },
    )
    assert create(kube, namespace, body)[0] == 201
    cond = poll(
        "SecretNotResolved",
        lambda: (
            (c := ready(kube, namespace, "components", "with-secret"))
            and c["reason"] == "SecretNotResolved"
            and c
        ),
    )
    assert "kafka-conn" in cond["message"]
    kube.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "kafka-conn"}, "stringData": {"brokers": "k:9092"}}
    )
    poll(
        "Ready=True once the Secret exists",
        lambda: (
            (c := ready(kube, namespace, "components", "with-secret")) and c["status"] == "True"
        ),
    )


def test_operator_validates_both_subscription_versions(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    # Written as v1alpha1, stored as v2alpha1 with spec.route (conversion: None): the operator
    # converts it and writes status through whichever version validates.
    v1 = subscription("v1alpha1", "old-style", {"pubsubname": "p", "topic": "t1", "route": "/r"})
    v2 = subscription(
        "v2alpha1", "new-style", {"pubsubname": "p", "topic": "t2", "routes": {"default": "/d"}}
    )
    assert (
        create(
            kube,
            namespace,
            component("p", {"type": "pubsub.kafka", "version": "v1", "metadata": KAFKA_OK}),
        )[0]
        == 201
    )
    assert create(kube, namespace, v1)[0] == 201
    assert create(kube, namespace, v2)[0] == 201
    for name in ("old-style", "new-style"):
        cond = poll(
            f"{name} Ready", lambda n=name: ready(kube, namespace, "subscriptions", n, "v2alpha1")
        )
        assert cond["status"] == "True", cond
    stored = kube.custom.get_namespaced_custom_object(
        "dapr.io", "v2alpha1", namespace, "subscriptions", "old-style"
    )
    assert stored["spec"]["route"] == "/r"  # what conversion: None means for stored objects


def test_subscription_status_follows_its_pubsub_and_the_other_subscriptions(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    """Found on a real cluster: Ready=True for Subscriptions the sidecar ignores."""

    def sub(name: str, topic: str, **spec: Any) -> dict[str, Any]:
        return subscription(
            "v2alpha1",
            name,
            {"pubsubname": "pubsub", "topic": topic, "routes": {"default": "/e"}, **spec},
        )

    def reason(name: str, expected: str) -> dict[str, Any] | None:
        cond = ready(kube, namespace, "subscriptions", name, "v2alpha1")
        return cond if cond and cond["reason"] == expected else None

    assert create(kube, namespace, sub("a", "orders"))[0] == 201
    poll("PubsubNotFound", lambda: reason("a", "PubsubNotFound"))
    assert (
        create(
            kube,
            namespace,
            component("pubsub", {"type": "pubsub.kafka", "version": "v1", "metadata": KAFKA_OK}),
        )[0]
        == 201
    )
    assert poll("Ready once the Component exists", lambda: reason("a", "Valid"))["status"] == "True"

    assert create(kube, namespace, sub("b", "orders"))[0] == 201
    cond = poll("a Conflict on a", lambda: reason("a", "Conflict"))
    assert cond["status"] == "False" and "'b'" in cond["message"]
    assert poll("b Ready", lambda: reason("b", "Valid"))
    assert create(kube, namespace, sub("c", "bad topic/../x"))[0] == 201
    assert create(kube, namespace, sub("d", "audit", routes={}))[0] == 201
    for name, field in (("c", "topic"), ("d", "routes")):
        cond = poll(f"{name} InvalidSpec", lambda n=name: reason(n, "InvalidSpec"))
        assert field in cond["message"], cond

    kube.custom.delete_namespaced_custom_object(
        "dapr.io", "v2alpha1", namespace, "subscriptions", "b"
    )
    poll("a Ready again without b", lambda: reason("a", "Valid"))
