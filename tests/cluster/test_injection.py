"""The sidecar injector on a real API server: Deployments (pods made by the ReplicaSet
controller), bare pods, opt-out, malformed annotations, re-invocation and malformed reviews."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.cluster.conftest import Kube, Operator, deployment, pod_list, poll, secret_files

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def daprd_containers(pod: Any) -> list[Any]:
    return [c for c in pod.spec.containers if c.name == "daprd"]


def bare_pod(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
    }


def assert_injected(pod: Any, app_id: str, image: str) -> None:
    (daprd,) = daprd_containers(pod)
    assert daprd.image == image
    assert daprd.command == ["tidings", "sidecar"]
    assert daprd.args[:2] == ["--app-id", app_id]
    assert pod.metadata.labels["dapr.io/sidecar-injected"] == "true"
    assert pod.metadata.labels["dapr.io/app-id"] == app_id
    app = next(c for c in pod.spec.containers if c.name == "app")
    assert {e.name: e.value for e in app.env or []}["DAPR_HTTP_PORT"] == "3500"
    vol = next(v for v in pod.spec.volumes if v.name == "tidings-resources")
    assert vol.secret.secret_name == f"tidings-{app_id}"


@pytest.mark.parametrize("key", ["dapr.io/id", "dapr.io/app-id"])
def test_deployment_pods_get_one_daprd_and_config_secret(
    kube: Kube, operator: Operator, namespace: str, key: str
) -> None:
    kube.apps.create_namespaced_deployment(
        namespace, deployment("orders", {key: "orders", "dapr.io/app-port": "8080"}, replicas=2)
    )
    pods = poll(
        "2 pods from the ReplicaSet controller",
        lambda: (p := pod_list(kube, namespace, "app=orders")) and len(p) == 2 and p,
    )
    for pod in pods:
        assert pod.metadata.owner_references[0].kind == "ReplicaSet"
        assert_injected(pod, "orders", operator.sidecar_image)
        assert "--app-port" in daprd_containers(pod)[0].args
    files = poll(
        "config Secret tidings-orders",
        lambda: secret_files(kube, namespace, "tidings-orders") is not None,
    )
    assert files


def test_bare_pod_is_injected_and_deprecated_id_warns(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    status, headers, body = kube.raw(
        "POST",
        f"/api/v1/namespaces/{namespace}/pods",
        bare_pod("legacy", {"dapr.io/id": "legacy-app"}),
    )
    assert status == 201, body
    assert "deprecated" in headers.get("Warning", ""), headers
    pod = kube.core.read_namespaced_pod("legacy", namespace)
    assert_injected(pod, "legacy-app", operator.sidecar_image)

    status, headers, body = kube.raw(
        "POST",
        f"/api/v1/namespaces/{namespace}/pods",
        bare_pod("modern", {"dapr.io/app-id": "modern-app"}),
    )
    assert status == 201, body
    assert "Warning" not in headers
    assert_injected(
        kube.core.read_namespaced_pod("modern", namespace), "modern-app", operator.sidecar_image
    )


@pytest.mark.parametrize(
    "annotations",
    [
        {"dapr.io/enabled": "false", "dapr.io/app-id": "x"},
        {},
        {"other.io/thing": "1"},
    ],
    ids=["opted-out", "no-annotations", "unrelated"],
)
def test_pods_not_asking_are_untouched(
    kube: Kube, operator: Operator, namespace: str, annotations: dict[str, str]
) -> None:
    kube.core.create_namespaced_pod(namespace, bare_pod("plain", annotations))
    pod = kube.core.read_namespaced_pod("plain", namespace)
    assert [c.name for c in pod.spec.containers] == ["app"]
    assert pod.spec.containers[0].env is None
    assert "dapr.io/sidecar-injected" not in (pod.metadata.labels or {})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dapr.io/app-port", "http"),
        ("dapr.io/sidecar-memory-limit", "lots"),
        ("dapr.io/enabled", "yes"),
    ],
)
def test_malformed_annotation_is_refused_with_a_clear_message(
    kube: Kube, operator: Operator, namespace: str, key: str, value: str
) -> None:
    status, _, body = kube.raw(
        "POST",
        f"/api/v1/namespaces/{namespace}/pods",
        bare_pod("bad", {"dapr.io/app-id": "bad", key: value}),
    )
    assert status == 400, body
    assert key in body["message"] and "tidings sidecar injector" in body["message"]


def test_sidecar_image_annotation_is_ignored_unless_allowed(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    status, headers, _ = kube.raw(
        "POST",
        f"/api/v1/namespaces/{namespace}/pods",
        bare_pod("img", {"dapr.io/app-id": "img", "dapr.io/sidecar-image": "evil.example/daprd:1"}),
    )
    assert status == 201
    assert "dapr.io/sidecar-image is ignored" in headers.get("Warning", "")
    (daprd,) = daprd_containers(kube.core.read_namespaced_pod("img", namespace))
    assert daprd.image == operator.sidecar_image


def review(obj: dict[str, Any] | None, **request: Any) -> dict[str, Any]:
    req = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "default",
        "userInfo": {"username": "test"},
        **request,
    }
    if obj is not None:
        req["object"] = obj
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def post_review(
    operator: Operator, body: bytes, content_type: str = "application/json"
) -> tuple[int, Any]:
    req = urllib.request.Request(
        operator.url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=operator.ssl_context())
    )
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_reinvocation_of_an_injected_pod_is_a_no_op(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    """What the API server sends on reinvocationPolicy IfNeeded: the pod as we left it."""
    kube.core.create_namespaced_pod(namespace, bare_pod("again", {"dapr.io/app-id": "again"}))
    injected = kube.api.sanitize_for_serialization(
        kube.core.read_namespaced_pod("again", namespace)
    )
    status, answer = post_review(operator, json.dumps(review(injected)).encode())
    assert status == 200
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]  # nothing to change: no second sidecar

    fresh = bare_pod("fresh", {"dapr.io/app-id": "fresh"})
    status, answer = post_review(operator, json.dumps(review(fresh)).encode())
    ops = json.loads(base64.b64decode(answer["response"]["patch"]))
    assert any(op["path"].startswith("/spec/containers") for op in ops)


@pytest.mark.parametrize(
    ("payload", "content_type", "code", "text"),
    [
        (b"{not json", "application/json", 400, "not JSON"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json", 400, "nested too deep"),
        (b"[]", "application/json", 400, "not a JSON object"),
        (json.dumps({"kind": "AdmissionReview"}).encode(), "application/json", 400, "request"),
        (json.dumps({"kind": "Pod"}).encode(), "application/json", 400, "AdmissionReview"),
        (json.dumps(review(None)).encode(), "application/json", 200, "request.object"),
        (
            json.dumps(review(bare_pod("p", {}), userInfo=None)).encode(),
            "application/json",
            200,
            "userInfo",
        ),
        (b"{}", "text/plain", 415, "Content-Type"),
    ],
)
def test_malformed_admission_review_gets_a_clear_error(
    operator: Operator, payload: bytes, content_type: str, code: int, text: str
) -> None:
    status, answer = post_review(operator, payload, content_type)
    assert status == code, answer
    if code == 200:  # answerable: a refusal naming the problem, for the uid asked
        assert answer["response"]["allowed"] is False
        assert text in answer["response"]["status"]["message"]
    else:
        assert text in answer["message"]
    # and the webhook still serves well-formed reviews afterwards
    status, ok = post_review(operator, json.dumps(review(bare_pod("q", {}))).encode())
    assert status == 200 and ok["response"]["allowed"] is True


def test_webhook_configuration_is_what_the_api_server_stores(
    kube: Kube, operator: Operator
) -> None:
    from kubernetes import client

    from tests.cluster.conftest import WEBHOOK_CONFIG_NAME

    mwc = client.AdmissionregistrationV1Api(kube.api).read_mutating_webhook_configuration(
        WEBHOOK_CONFIG_NAME
    )
    (hook,) = mwc.webhooks
    assert hook.reinvocation_policy == "IfNeeded"
    assert hook.side_effects == "None"
    assert hook.rules[0].operations == ["CREATE"] and hook.rules[0].resources == ["pods"]


def test_tls_context_is_real(operator: Operator) -> None:
    """The webhook serves a certificate the cluster CA signed for 127.0.0.1."""
    import socket

    with (
        socket.create_connection(("127.0.0.1", operator.port), timeout=5) as raw,
        operator.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    bad = ssl.create_default_context()
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", operator.port), timeout=5) as raw,
    ):
        bad.wrap_socket(raw, server_hostname="127.0.0.1")
