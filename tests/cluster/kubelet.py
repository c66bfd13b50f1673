"""Just enough of a kubelet to run the chart's operator pod as a local process.

The test API server has no kubelet. For ``helm install`` to be proven end to end, this module
does the kubelet's part for one pod, and nothing more:

- registers a Node (Ready, with this machine's non-loopback IPv4 as InternalIP) and renews its
  Lease in ``kube-node-lease``, so the node lifecycle controller keeps it Ready;
- binds the pod to the node (what the scheduler would), materialises its Secret volumes as
  files and its emptyDirs as folders, resolves its env (values, downward API) and starts its
  container's ``command`` + ``args`` as a process, with the mount paths rewritten to those local
  folders;
- credentials: the pod's ServiceAccount token (from the token controller's Secret) in a
  kubeconfig, so the process runs with exactly the RBAC the chart grants;
- once the container's TCP readiness port answers, reports the pod Running and Ready with the
  node's IP as pod IP, so the endpoints controller puts it behind its Services;
- on deletion (``deletionTimestamp`` set), stops the process and force-deletes the pod.

The API server reaches Services at their Endpoints (``--enable-aggregator-routing``), hence the
non-loopback IP: Endpoints may not hold 127.0.0.0/8.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.conftest import Kube, poll


def host_ipv4() -> str:
    """This machine's first global-scope IPv4 address (``ip -4 addr``)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    raise RuntimeError(f"no global IPv4 address on this machine:\n{out}")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class RunningPod:
    name: str
    namespace: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class LocalKubelet:
    kube: Kube
    workdir: Path
    node: str = "tidings-local-node"
    ip: str = field(default_factory=host_ipv4)
    pods: dict[str, RunningPod] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _heartbeat: threading.Thread | None = None

    # -- the node ---------------------------------------------------------------------------

    def register_node(self) -> None:
        self.kube.core.create_node(
            {
                "metadata": {
                    "name": self.node,
                    "labels": {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux"},
                }
            }
        )
        now = _now()
        self.kube.core.patch_node_status(
            self.node,
            {
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": self.ip},
                        {"type": "Hostname", "address": self.node},
                    ],
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "tests/cluster/kubelet.py",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                }
            },
        )
        self._renew_lease()
        self._heartbeat = threading.Thread(target=self._heartbeats, name="node-lease", daemon=True)
        self._heartbeat.start()

    def _renew_lease(self) -> None:
        from kubernetes import client
        from kubernetes.client import ApiException

        api = client.CoordinationV1Api(self.kube.api)
        body = {
            "metadata": {"name": self.node},
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": 40,
                "renewTime": _micro_now(),
            },
        }
        try:
            api.patch_namespaced_lease(self.node, "kube-node-lease", body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            api.create_namespaced_lease("kube-node-lease", body)

    def _heartbeats(self) -> None:
        while not self._stop.wait(5):  # the kubelet's default node-lease renew interval: 10 s
            with contextlib.suppress(Exception):  # a missed beat is retried; 40 s before NotReady
                self._renew_lease()

    # -- pods -------------------------------------------------------------------------------

    def _service_account_kubeconfig(self, namespace: str, service_account: str) -> Path:
        def token() -> str | None:
            for s in self.kube.core.list_namespaced_secret(namespace).items:
                if (
                    s.type == "kubernetes.io/service-account-token"
                    and (s.metadata.annotations or {}).get("kubernetes.io/service-account.name")
                    == service_account
                    and (s.data or {}).get("token")
                ):
                    return base64.b64decode(s.data["token"]).decode()
            return None

        sa_token = poll(
            f"the token Secret of ServiceAccount {namespace}/{service_account}", token, timeout_s=60
        )
        admin = yaml.safe_load(self.kube.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        path = self.workdir / f"kubeconfig-{namespace}-{service_account}"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": cluster}],
                    "users": [{"name": service_account, "user": {"token": sa_token}}],
                    "contexts": [
                        {
                            "name": "c",
                            "context": {
                                "cluster": "c",
                                "user": service_account,
                                "namespace": namespace,
                            },
                        }
                    ],
                    "current-context": "c",
                }
            )
        )
        path.chmod(0o600)
        return path

    def run(self, pod: Any) -> RunningPod:
        """Bind ``pod`` (a V1Pod) to the node, start its one container, report it Ready."""
        name, namespace = pod.metadata.name, pod.metadata.namespace
        status, _, body = self.kube.raw(
            "POST",
            f"/api/v1/namespaces/{namespace}/pods/{name}/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            },
        )
        assert status == 201, body
        (container,) = pod.spec.containers
        root = self.workdir / f"{namespace}-{name}"
        volumes: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            folder = root / "volumes" / volume.name
            folder.mkdir(parents=True)
            if volume.secret is not None:
                secret = self.kube.core.read_namespaced_secret(volume.secret.secret_name, namespace)
                for key, value in (secret.data or {}).items():
                    (folder / key).write_bytes(base64.b64decode(value))
            elif volume.empty_dir is None:
                raise AssertionError(f"volume {volume.name}: only secret and emptyDir here")
            volumes[volume.name] = folder
        mounts = {m.mount_path: volumes[m.name] for m in container.volume_mounts or []}

        def local(value: str) -> str:
            for mount_path, folder in mounts.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    return str(folder) + value[len(mount_path) :]
            return value

        fields = {
            "metadata.name": name,
            "metadata.namespace": namespace,
            "spec.nodeName": self.node,
            "status.podIP": self.ip,
            "status.hostIP": self.ip,
            "spec.serviceAccountName": pod.spec.service_account_name,
        }
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(root),
            # in-cluster credentials, as a kubeconfig: the pod's ServiceAccount token
            "KUBECONFIG": str(
                self._service_account_kubeconfig(namespace, pod.spec.service_account_name)
            ),
        }
        for e in container.env or []:
            if e.value_from is not None:
                env[e.name] = fields[e.value_from.field_ref.field_path]
            else:
                env[e.name] = local(e.value or "")
        argv = [local(a) for a in [*(container.command or []), *(container.args or [])]]
        # the image's console script is the one installed next to this interpreter
        argv[0] = str(Path(sys.executable).with_name(argv[0]))
        port = next(
            p.container_port
            for p in container.ports
            if p.name == container.readiness_probe.tcp_socket.port
        )
        log = root / "container.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = RunningPod(name=name, namespace=namespace, process=process, log=log, port=port)
        self.pods[f"{namespace}/{name}"] = running

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{argv} exited {process.returncode}:\n{running.log_tail()}")
            try:
                with socket.create_connection((self.ip, port), timeout=1):
                    return True
            except OSError:
                return False

        poll(
            f"the readiness port {port} of pod {namespace}/{name}",
            ready,
            timeout_s=90,
            interval_s=0.2,
        )
        now = _now()
        self.kube.core.patch_namespaced_pod_status(
            name,
            namespace,
            {
                "status": {
                    "phase": "Running",
                    "hostIP": self.ip,
                    "podIP": self.ip,
                    "podIPs": [{"ip": self.ip}],
                    "startTime": now,
                    "conditions": [
                        {"type": t, "status": "True", "lastTransitionTime": now}
                        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                    ],
                    "containerStatuses": [
                        {
                            "name": container.name,
                            "ready": True,
                            "started": True,
                            "restartCount": 0,
                            "image": container.image,
                            "imageID": "",
                            "state": {"running": {"startedAt": now}},
                        }
                    ],
                }
            },
        )
        return running

    def kill(self, running: RunningPod) -> None:
        """The container dies (the pod object stays, as after a crash not yet noticed)."""
        if running.process.poll() is None:
            os.killpg(running.process.pid, signal.SIGTERM)
            try:
                running.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait(10)

    def reap(self) -> int:
        """Stop and force-delete our pods that are being deleted; how many are left running."""
        from kubernetes.client import ApiException

        for key, running in list(self.pods.items()):
            try:
                pod = self.kube.core.read_namespaced_pod(running.name, running.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                pod = None
            if pod is None or pod.metadata.deletion_timestamp is not None:
                self.kill(running)
                if pod is not None:
                    try:
                        self.kube.core.delete_namespaced_pod(
                            running.name, running.namespace, grace_period_seconds=0
                        )
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
                del self.pods[key]
        return len(self.pods)

    def stop(self) -> None:
        """Stop every process, the heartbeat, and remove the node."""
        from kubernetes.client import ApiException

        for running in self.pods.values():
            self.kill(running)
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(10)
        for call in (lambda: self.kube.core.delete_node(self.node),):
            with contextlib.suppress(ApiException):
                call()
