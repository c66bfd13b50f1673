"""End to end without a kubelet: the operator injects two Deployments' pods and writes their
config Secrets; each injected ``daprd`` container spec (command, args, env, mounted config) is
then run as a local process against the test broker, next to an example app, and events
published by one app-id's "pod" reach the other app-id's "pod" through a declarative
Subscription the operator put in its config.

What a kubelet would do and this test does instead, the only liberties taken:
- the Secret volume is written to a folder and ``--resources-path`` points there;
- the downward-API env (``NAMESPACE``, ``POD_NAME``) is resolved from the pod, ``secretKeyRef``
  env from the Secret on the API server;
- both "pods" share this host's network namespace, so the sidecar's ports (3500, 50001, 3501,
  9090) get free ports (the app port comes from the annotation unchanged).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import (
    Kube,
    Operator,
    deployment,
    free_port,
    pod_list,
    poll,
    secret_files,
    write_folder,
)
from tests.integration.processes import Proc, http_json, received, start_app, wait_serving

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]


def component(bootstrap: str) -> dict[str, Any]:
    values = {
        "brokers": bootstrap,
        "authType": "none",
        "initialOffset": "oldest",
        "sessionTimeout": "3s",
        "heartbeatInterval": "1s",
        "backOffInitialInterval": "50ms",
        "backOffMaxInterval": "500ms",
    }
    return {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "pubsub"},
        "spec": {
            "type": "pubsub.kafka",
            "version": "v1",
            "metadata": [{"name": k, "value": v} for k, v in values.items()],
        },
    }


def injected_pod(kube: Kube, namespace: str, app: str) -> Any:
    pods = poll(f"a pod of {app}", lambda: pod_list(kube, namespace, f"app={app}"))
    return pods[0]


def run_daprd(kube: Kube, pod: Any, tmp: Path, name: str) -> tuple[Proc, list[str]]:
    """Start the pod's daprd container spec as a local process; returns it and its argv."""
    (daprd,) = [c for c in pod.spec.containers if c.name == "daprd"]
    volume = next(v for v in pod.spec.volumes if v.name == "tidings-resources")
    mount = next(m for m in daprd.volume_mounts if m.name == "tidings-resources")
    files = poll(
        f"config Secret {volume.secret.secret_name}",
        lambda: secret_files(kube, pod.metadata.namespace, volume.secret.secret_name),
    )
    folder = write_folder(files)

    http_port, public_port = free_port(), free_port()
    replace = {
        mount.mount_path: str(folder),
        "3500": str(http_port),
        "50001": str(free_port()),
        "3501": str(public_port),
        "9090": str(free_port()),
    }
    args = [replace.get(a, a) for a in daprd.args]
    command = list(daprd.command)
    command[0] = shutil.which(command[0], path=str(Path(sys.executable).parent)) or command[0]

    env = dict(os.environ)
    fields = {
        "metadata.namespace": pod.metadata.namespace,
        "metadata.name": pod.metadata.name or pod.metadata.generate_name,
    }
    for var in daprd.env:
        if var.value is not None:
            env[var.name] = var.value
        elif var.value_from.secret_key_ref is not None:  # as the kubelet: read the Secret
            ref = var.value_from.secret_key_ref
            secret = kube.core.read_namespaced_secret(ref.name, pod.metadata.namespace)
            env[var.name] = base64.b64decode(secret.data[ref.key]).decode()
        else:
            env[var.name] = fields[var.value_from.field_ref.field_path]
    log_path = tmp / f"{name}.daprd.log"
    process = subprocess.Popen(
        [*command, *args], env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    proc = Proc(f"{name} daprd", process, log_path, http_port, public_port=public_port)
    wait_serving(proc)
    return proc, [*command, *args]


def test_injected_pods_talk_through_the_broker(
    kube: Kube,
    operator: Operator,
    namespace: str,
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
) -> None:
    topic = f"orders-{unique}"
    receiver_app = start_app(tmp_path, "receiver", topics=[])  # declarative routing only
    procs: list[Proc] = [receiver_app]
    try:
        kube.custom.create_namespaced_custom_object(
            "dapr.io", "v1alpha1", namespace, "components", component(kafka_bootstrap)
        )
        kube.custom.create_namespaced_custom_object(
            "dapr.io",
            "v2alpha1",
            namespace,
            "subscriptions",
            {
                "apiVersion": "dapr.io/v2alpha1",
                "kind": "Subscription",
                "metadata": {"name": "orders-to-receiver"},
                "spec": {"pubsubname": "pubsub", "topic": topic, "routes": {"default": "/events"}},
                "scopes": ["receiver"],
            },
        )
        kube.apps.create_namespaced_deployment(
            namespace,
            deployment(
                "receiver",
                {"dapr.io/app-id": "receiver", "dapr.io/app-port": str(receiver_app.port)},
            ),
        )
        kube.apps.create_namespaced_deployment(
            namespace, deployment("checkout", {"dapr.io/id": "checkout"})
        )

        receiver_pod = injected_pod(kube, namespace, "receiver")
        checkout_pod = injected_pod(kube, namespace, "checkout")
        poll(
            "receiver's config to carry its subscription",
            lambda: (
                "subscription-orders-to-"
                "receiver.yaml" in (secret_files(kube, namespace, "tidings-receiver") or {})
            ),
        )
        assert "subscription-orders-to-receiver.yaml" not in (
            poll("checkout's config", lambda: secret_files(kube, namespace, "tidings-checkout"))
        )

        receiver, receiver_argv = run_daprd(kube, receiver_pod, tmp_path, "receiver")
        procs.append(receiver)
        checkout, _ = run_daprd(kube, checkout_pod, tmp_path, "checkout")
        procs.append(checkout)
        assert receiver_argv[1:4] == ["sidecar", "--app-id", "receiver"]

        def subscribed() -> bool:
            _, meta = http_json(f"http://127.0.0.1:{receiver.port}/v1.0/metadata")
            return any(s["topic"] == topic for s in meta.get("subscriptions", []))

        poll("the receiver's sidecar to hold the declarative subscription", subscribed)

        publisher = subprocess.run(
            [
                sys.executable,
                str(REPO / "examples" / "publisher.py"),
                "--count",
                "5",
                "--topic",
                topic,
            ],
            env={**os.environ, "DAPR_HTTP_PORT": str(checkout.port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert publisher.returncode == 0, publisher.stdout + publisher.stderr

        got = poll(
            "5 events at the receiver app",
            lambda: (r := received(receiver_app)) and len(r["finished"]) >= 5 and r,
            timeout_s=60,
        )
        assert len(set(got["finished"])) == 5
    finally:
        for proc in reversed(procs):
            proc.stop()
