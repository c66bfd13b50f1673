"""Each app's config Secret on a real API server: exactly the resources scoped to the app,
secretKeyRef resolved, re-rendered on change, garbage-collected with the last pod, and loadable
by the sidecar's own loader."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.cluster.conftest import (
    Kube,
    Operator,
    deployment,
    pod_list,
    poll,
    secret_files,
    write_folder,
)
from tidings.sidecar.resources import load_resources

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

KAFKA = [{"name": "brokers", "value": "kafka:9092"}, {"name": "authType", "value": "none"}]


def apply(kube: Kube, namespace: str, body: dict[str, Any]) -> None:
    version = body["apiVersion"].split("/")[1]
    plural = "components" if body["kind"] == "Component" else "subscriptions"
    kube.custom.create_namespaced_custom_object("dapr.io", version, namespace, plural, body)


def comp(name: str, metadata: list[dict[str, Any]] = KAFKA, **top: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {"type": "pubsub.kafka", "version": "v1", "metadata": metadata},
        **top,
    }


def sub(name: str, topic: str, **top: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": name},
        "spec": {"pubsubname": "pubsub", "topic": topic, "routes": {"default": "/events"}},
        **top,
    }


def files_of(kube: Kube, namespace: str, app_id: str) -> dict[str, str] | None:
    return secret_files(kube, namespace, f"tidings-{app_id}")


def test_secret_holds_exactly_the_scoped_resources(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "kafka-conn"}, "stringData": {"brokers": "b1:9092"}}
    )
    apply(
        kube,
        namespace,
        comp(
            "pubsub",
            [
                {"name": "authType", "value": "none"},
                {"name": "brokers", "secretKeyRef": {"name": "kafka-conn", "key": "brokers"}},
            ],
        ),
    )
    apply(kube, namespace, comp("billing-only", scopes=["billing"]))
    apply(kube, namespace, sub("mine", "orders", scopes=["orders"]))
    apply(kube, namespace, sub("everyone", "audit"))
    apply(kube, namespace, sub("theirs", "invoices", scopes=["billing"]))
    kube.apps.create_namespaced_deployment(
        namespace, deployment("orders", {"dapr.io/app-id": "orders"})
    )

    expected = {"component-pubsub.yaml", "subscription-everyone.yaml", "subscription-mine.yaml"}
    files = poll(
        "tidings-orders with the scoped resources",
        lambda: (f := files_of(kube, namespace, "orders")) and set(f) == expected and f,
    )
    secret = kube.core.read_namespaced_secret("tidings-orders", namespace)
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "tidings-operator"
    assert secret.metadata.labels["dapr.io/app-id"] == "orders"
    doc = yaml.safe_load(files["component-pubsub.yaml"])
    assert {"name": "brokers", "value": "b1:9092"} in doc["spec"]["metadata"]

    # the sidecar's own loader reads the folder as mounted
    resources = load_resources([write_folder(files)], app_id="orders")
    assert set(resources.components) == {"pubsub"}
    assert resources.components["pubsub"].kafka.brokers == ("b1:9092",)
    assert {s.name for s in resources.subscriptions} == {"mine", "everyone"}

    # a Subscription added → in; deleted → out
    apply(kube, namespace, sub("later", "shipments"))
    poll(
        "subscription-later added",
        lambda: "subscription-later.yaml" in (files_of(kube, namespace, "orders") or {}),
    )
    kube.custom.delete_namespaced_custom_object(
        "dapr.io", "v2alpha1", namespace, "subscriptions", "mine"
    )
    poll(
        "subscription-mine removed",
        lambda: (
            set(files_of(kube, namespace, "orders") or {})
            == {"component-pubsub.yaml", "subscription-everyone.yaml", "subscription-later.yaml"}
        ),
    )

    # the referenced Secret changes → the resolved value follows
    kube.core.patch_namespaced_secret(
        "kafka-conn", namespace, {"stringData": {"brokers": "b2:9092"}}
    )
    poll(
        "brokers re-resolved",
        lambda: (
            "b2:9092"
            in (files_of(kube, namespace, "orders") or {}).get("component-pubsub.yaml", "")
        ),
    )


def test_secret_is_restored_and_garbage_collected(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    apply(kube, namespace, comp("pubsub"))
    kube.apps.create_namespaced_deployment(namespace, deployment("gc", {"dapr.io/app-id": "gc"}))
    poll("tidings-gc written", lambda: files_of(kube, namespace, "gc"))

    kube.core.delete_namespaced_secret("tidings-gc", namespace)
    poll("tidings-gc restored while pods exist", lambda: files_of(kube, namespace, "gc"))

    kube.apps.patch_namespaced_deployment("gc", namespace, {"spec": {"replicas": 0}})
    poll("pods gone", lambda: not pod_list(kube, namespace, "app=gc"))
    poll("tidings-gc garbage-collected", lambda: files_of(kube, namespace, "gc") is None)


def test_a_foreign_secret_with_our_name_is_never_overwritten(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "tidings-mine"}, "stringData": {"keep": "me"}}
    )
    apply(kube, namespace, comp("pubsub"))
    kube.apps.create_namespaced_deployment(
        namespace, deployment("mine", {"dapr.io/app-id": "mine"})
    )
    poll("the pod", lambda: pod_list(kube, namespace, "app=mine"))
    # the other app in the namespace proves the operator has acted since
    kube.apps.create_namespaced_deployment(
        namespace, deployment("other", {"dapr.io/app-id": "other"})
    )
    poll("tidings-other written", lambda: files_of(kube, namespace, "other"))
    assert files_of(kube, namespace, "mine") == {"keep": "me"}


def test_a_config_too_large_for_a_secret_is_a_warning_event_on_a_pod(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    """Found on a real kube-apiserver 1.20: over 1 MiB the API server refused the Secret (422)
    and the operator retried forever with only a log line."""
    apply(kube, namespace, comp("pubsub"))
    apply(kube, namespace, sub("small", "orders"))
    kube.apps.create_namespaced_deployment(namespace, deployment("big", {"dapr.io/app-id": "big"}))
    poll(
        "tidings-big written",
        lambda: "subscription-small.yaml" in (files_of(kube, namespace, "big") or {}),
    )
    for name in ("huge-1", "huge-2"):  # 600 KB each: each fits, together not
        body = sub(name, name)
        body["spec"]["metadata"] = {"padding": "x" * 600_000}
        apply(kube, namespace, body)

    def warned() -> Any:
        events = kube.core.list_namespaced_event(namespace).items
        return [e for e in events if e.reason == "ConfigTooLarge"]

    events = poll("a ConfigTooLarge Event", warned)
    assert len(events) == 1, [e.message for e in events]
    event = events[0]
    assert event.type == "Warning" and event.involved_object.kind == "Pod"
    assert "1048576" in event.message and "subscription-huge" in event.message
    # the last config that fitted stays for the sidecars (huge-1 may have been in it)
    files = set(files_of(kube, namespace, "big") or {})
    assert {"component-pubsub.yaml", "subscription-small.yaml"} <= files
    assert "subscription-huge-2.yaml" not in files
    kube.custom.delete_namespaced_custom_object(
        "dapr.io", "v2alpha1", namespace, "subscriptions", "huge-1"
    )
    poll(
        "tidings-big written once it fits",
        lambda: "subscription-huge-2.yaml" in (files_of(kube, namespace, "big") or {}),
    )
    assert len(warned()) == 1  # said once, not on every attempt
