"""Smoke test of the local control plane in tests/cluster/apiserver.py.

Starts etcd + kube-apiserver + kube-controller-manager, then checks through
the REST API (urllib + bearer token) that a Deployment gets a Pod from the
controller-manager, and that the API server calls a mutating admission
webhook on https://127.0.0.1 with a caBundle.
"""

from __future__ import annotations

import base64
import http.server
import importlib.util
import json
import ssl
import threading
import time
import uuid

import pytest

from tests.cluster import apiserver

DEADLINE_S = 60

# The first start on a fresh machine may run tests/cluster/build.sh (~8 min)
# inside the fixture; give the module room beyond the global 300 s timeout.
pytestmark = [pytest.mark.cluster]
if importlib.util.find_spec("pytest_timeout"):
    pytestmark.append(pytest.mark.timeout(1200))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    t0 = time.monotonic()
    c = apiserver.start_cluster(tmp_path_factory.mktemp("kube"))
    print(f"cluster started in {time.monotonic() - t0:.2f}s at {c.server}")
    try:
        yield c
    finally:
        c.stop()
        assert not c.running()


def _ok(result, *codes):
    status, body = result
    assert status in (codes or (200, 201)), f"HTTP {status}: {body}"
    return body


def _poll(fn, what, deadline_s=DEADLINE_S, interval=0.1):
    """Call fn() until it returns something truthy; fail after deadline_s."""
    deadline = time.monotonic() + deadline_s
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(interval)


def _namespace(cluster, labels=None):
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    _ok(
        cluster.request(
            "POST",
            "/api/v1/namespaces",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {}},
            },
        )
    )
    return name


def test_kubeconfig_and_version(cluster):
    text = cluster.kubeconfig.read_text()
    assert cluster.server in text and cluster.token in text
    version = _ok(cluster.request("GET", "/version"), 200)
    assert version["gitVersion"].startswith("v1.20.")


def test_deployment_gets_replicaset_and_pod(cluster):
    ns = _namespace(cluster)
    labels = {"app": "smoke"}
    _ok(
        cluster.request(
            "POST",
            f"/apis/apps/v1/namespaces/{ns}/deployments",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "smoke"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
                    },
                },
            },
        )
    )

    def pods():
        body = _ok(
            cluster.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3Dsmoke"), 200
        )
        return body["items"]

    items = _poll(pods, "a Pod created by the controller-manager")
    owner = items[0]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet" and owner["name"].startswith("smoke-")
    # no scheduler/kubelet: it stays Pending
    assert items[0]["status"].get("phase", "Pending") == "Pending"


class _MutatingWebhook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        patch = [{"op": "add", "path": "/metadata/labels/mutated-by", "value": "smoke-webhook"}]
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_mutating_webhook_on_loopback(cluster):
    groups = _ok(cluster.request("GET", "/apis/admissionregistration.k8s.io"), 200)
    assert "admissionregistration.k8s.io/v1" in [v["groupVersion"] for v in groups["versions"]]

    cert, key = cluster.issue_serving_cert("smoke-webhook", hosts=["127.0.0.1"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MutatingWebhook)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ns = _namespace(cluster, labels={"smoke-webhook": "on"})
        name = f"smoke-{uuid.uuid4().hex[:8]}"
        _ok(
            cluster.request(
                "POST",
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "MutatingWebhookConfiguration",
                    "metadata": {"name": name},
                    "webhooks": [
                        {
                            "name": "smoke.tidings.test",
                            "clientConfig": {
                                "url": f"https://127.0.0.1:{server.server_address[1]}/mutate",
                                "caBundle": base64.b64encode(cluster.ca_pem()).decode(),
                            },
                            "rules": [
                                {
                                    "apiGroups": [""],
                                    "apiVersions": ["v1"],
                                    "operations": ["CREATE"],
                                    "resources": ["configmaps"],
                                }
                            ],
                            "namespaceSelector": {"matchLabels": {"smoke-webhook": "on"}},
                            "failurePolicy": "Fail",
                            "sideEffects": "None",
                            "admissionReviewVersions": ["v1"],
                            "timeoutSeconds": 5,
                        }
                    ],
                },
            )
        )
        counter = iter(range(10**6))

        # the API server picks the new configuration up asynchronously
        def mutated():
            cm = _ok(
                cluster.request(
                    "POST",
                    f"/api/v1/namespaces/{ns}/configmaps",
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": f"cm-{next(counter)}", "labels": {"x": "y"}},
                        "data": {"k": "v"},
                    },
                )
            )
            return cm["metadata"]["labels"].get("mutated-by") == "smoke-webhook"

        _poll(mutated, "the mutating webhook to be called", deadline_s=30, interval=0.2)
        _ok(
            cluster.request(
                "DELETE",
                f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}",
            ),
            200,
        )
    finally:
        server.shutdown()
        server.server_close()
