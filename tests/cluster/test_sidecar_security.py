"""The injected sidecar's security defaults on a real API server (issue 13):

- a pod that brings its own ``daprd`` is refused, saying what to do;
- a sidecar port that would clash with the app's declared ``containerPort`` is refused, naming
  the annotation to change;
- the stored pod: the API on loopback, probes on the public port, the container locked down
  (seccomp RuntimeDefault, no privilege escalation, read-only root, no capabilities, non-root);
- ``dapr.io/api-token-secret`` / ``dapr.io/app-token-secret``: the injected container's spec,
  run as a local process with its env resolved from the Secrets as a kubelet would
  (``run_daprd``), requires ``dapr-api-token`` on its API (not on health) and sends the app
  token to the app on deliveries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Kube, Operator, deployment, poll, secret_files
from tests.cluster.test_end_to_end import component, injected_pod, run_daprd
from tests.cluster.test_injection import bare_pod
from tests.integration.processes import Proc, http_json, received, start_app

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def test_a_pod_with_its_own_daprd_is_refused(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    pod = bare_pod("own", {"dapr.io/app-id": "own"})
    pod["spec"]["containers"].append(
        {
            "name": "daprd",
            "image": "example.invalid/daprd:1",
            "securityContext": {"privileged": True, "runAsUser": 0},
        }
    )
    status, _, body = kube.raw("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert status == 400, body
    assert "already has a container named 'daprd'" in body["message"]
    assert 'dapr.io/enabled: "false"' in body["message"]


def test_a_sidecar_port_clashing_with_the_apps_is_refused(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    pod = bare_pod("metrics", {"dapr.io/app-id": "metrics"})
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 9090}]  # the app's own metrics
    status, _, body = kube.raw("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert status == 400, body
    assert "dapr.io/metrics-port" in body["message"] and "containerPort" in body["message"]
    pod["metadata"]["annotations"]["dapr.io/metrics-port"] = "9191"
    status, _, body = kube.raw("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert status == 201, body


def test_token_protected_sidecar_from_secrets(
    kube: Kube,
    operator: Operator,
    namespace: str,
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
) -> None:
    api_token, app_token = f"api-{unique}", f"app-{unique}"
    for name, token in (("orders-api-token", api_token), ("orders-app-token", app_token)):
        kube.core.create_namespaced_secret(
            namespace,
            {"metadata": {"name": name}, "stringData": {"token": token}, "type": "Opaque"},
        )
    topic = f"guarded-{unique}"
    app = start_app(tmp_path, "orders-app", topics=[topic])
    procs: list[Proc] = [app]
    try:
        kube.custom.create_namespaced_custom_object(
            "dapr.io", "v1alpha1", namespace, "components", component(kafka_bootstrap)
        )
        kube.apps.create_namespaced_deployment(
            namespace,
            deployment(
                "orders",
                {
                    "dapr.io/app-id": "orders",
                    "dapr.io/app-port": str(app.port),
                    "dapr.io/api-token-secret": "orders-api-token",
                    "dapr.io/app-token-secret": "orders-app-token",
                },
            ),
        )
        pod = injected_pod(kube, namespace, "orders")
        check_stored_pod(kube.api.sanitize_for_serialization(pod))
        poll("orders' config", lambda: secret_files(kube, namespace, "tidings-orders"))

        daprd, _ = run_daprd(kube, pod, tmp_path, "orders")
        procs.append(daprd)
        api = f"http://127.0.0.1:{daprd.port}"
        status, body = http_json(f"{api}/v1.0/metadata")
        assert (status, body) == (401, "invalid api token")
        status, _ = http_json(f"{api}/v1.0/metadata", headers={"dapr-api-token": api_token})
        assert status == 200
        # What the readiness probe asks, where it asks it: no token needed.
        status, _ = http_json(f"http://127.0.0.1:{daprd.public_port}/v1.0/healthz/outbound")
        assert status == 204

        def subscribed() -> bool:
            _, meta = http_json(f"{api}/v1.0/metadata", headers={"dapr-api-token": api_token})
            return any(s["topic"] == topic for s in meta.get("subscriptions", []))

        poll("the sidecar to subscribe the app", subscribed)
        status, body = http_json(
            f"{api}/v1.0/publish/pubsub/{topic}",
            method="POST",
            body=json.dumps(
                {"specversion": "1.0", "id": unique, "source": "t", "type": "t"}
            ).encode(),
            headers={
                "dapr-api-token": api_token,
                "Content-Type": "application/cloudevents+json",
            },
        )
        assert status == 204, body
        poll("the event at the app", lambda: unique in received(app)["finished"])
        _, delivered = http_json(f"http://127.0.0.1:{app.port}/event?id={unique}")
        headers = {k.lower(): v for k, v in delivered["headers"].items()}
        assert headers["dapr-api-token"] == app_token
    finally:
        for proc in reversed(procs):
            proc.stop()


def check_stored_pod(pod: dict[str, Any]) -> None:
    """What the API server stored for the injected pod."""
    (daprd,) = [c for c in pod["spec"]["containers"] if c["name"] == "daprd"]
    args = daprd["args"]
    assert args[args.index("--dapr-listen-addresses") + 1] == "[::1],127.0.0.1"
    assert args[args.index("--dapr-public-port") + 1] == "3501"
    assert daprd["readinessProbe"]["httpGet"]["port"] == 3501
    assert daprd["livenessProbe"]["tcpSocket"]["port"] == 3501
    context = daprd["securityContext"]
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e.get("valueFrom") for e in daprd["env"]}
    assert env["DAPR_API_TOKEN"] == {"secretKeyRef": {"name": "orders-api-token", "key": "token"}}
    assert env["APP_API_TOKEN"] == {"secretKeyRef": {"name": "orders-app-token", "key": "token"}}
    for container in pod["spec"]["containers"]:  # the token never appears in the spec
        for var in container.get("env") or []:
            assert "api-" not in str(var.get("value") or ""), var
