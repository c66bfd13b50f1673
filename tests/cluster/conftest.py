"""Session fixtures for the operator's tests against a real Kubernetes API server.

``kube``: the control plane of ``tests/cluster/apiserver.py`` (etcd + kube-apiserver +
kube-controller-manager on 127.0.0.1), or the cluster ``$KUBECONFIG`` points at when reachable.
``crds``: ``crds/*.yaml`` installed and established. ``operator``: the tidings operator running
in this process, in its own thread and event loop (kopf cancels tasks it did not create), with
its admission webhook on an HTTPS port of 127.0.0.1 (certificate made with the ``openssl`` CLI,
SAN 127.0.0.1) registered in a MutatingWebhookConfiguration built by
``tidings.operator.injection.webhook_configuration``. There is no kubelet: pods stay Pending,
which is all the injector and the config writer need.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.cluster import apiserver

REPO = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((REPO / "crds").glob("*.dapr.io.yaml"))
WEBHOOK_CONFIG_NAME = "tidings-test-sidecar-injector"
SIDECAR_IMAGE = "example.invalid/tidings-sidecar:test"

T = TypeVar("T")


def poll(
    what: str, check: Callable[[], T | None], timeout_s: float = 30.0, interval_s: float = 0.1
) -> T:
    """Call ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = check()
        except AssertionError as exc:  # a check may assert to explain what it saw
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}"
            )
        time.sleep(interval_s)  # poll interval, not a stand-in for an event


@dataclass
class Kube:
    """A reachable API server and clients for it."""

    kubeconfig: Path
    api: Any  # kubernetes.client.ApiClient
    ca_file: Path | None
    ca_key_file: Path | None
    workdir: Path
    cluster: apiserver.Cluster | None = None
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def raw(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, str], Any]:
        """One REST call: (status, headers, decoded body); HTTP errors are returned."""
        import json

        from kubernetes.client import ApiException

        cfg = self.api.configuration
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        for auth in cfg.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        try:
            resp = self.api.rest_client.request(method, cfg.host + path, headers=headers, body=body)
            status, hdrs, data = resp.status, dict(resp.headers), resp.read()
        except ApiException as exc:
            status, hdrs, data = exc.status, dict(exc.headers or {}), exc.body
        try:
            decoded = json.loads(data) if data else None
        except (ValueError, TypeError):
            decoded = data
        return status, hdrs, decoded


def _make_ca(d: Path) -> tuple[Path, Path]:
    key, crt = d / "ca.key", d / "ca.crt"
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            str(key),
            "-sha256",
            "-days",
            "30",
            "-subj",
            "/CN=tidings-webhook-test-ca",
            "-out",
            str(crt),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    from kubernetes import config

    workdir = tmp_path_factory.mktemp("kube")
    external = apiserver.external_cluster()
    cluster = None
    if external:
        kubeconfig = Path(external)
        ca_file, ca_key = _make_ca(workdir)
    else:
        started = time.monotonic()
        cluster = apiserver.start_cluster(workdir)
        print(f"\n[tidings] API server ready in {time.monotonic() - started:.1f} s")
        kubeconfig, ca_file, ca_key = cluster.kubeconfig, cluster.ca_file, cluster.ca_key_file
    api = config.new_client_from_config(config_file=str(kubeconfig))
    env = Kube(
        kubeconfig=kubeconfig,
        api=api,
        ca_file=ca_file,
        ca_key_file=ca_key,
        workdir=workdir,
        cluster=cluster,
    )
    try:
        yield env
    finally:
        api.close()
        if cluster is not None:
            cluster.stop()


@pytest.fixture(scope="session")
def crds(kube: Kube) -> list[dict[str, Any]]:
    """Install (create or replace) the CRDs of ``crds/`` and wait until they serve."""
    from kubernetes import client
    from kubernetes.client import ApiException

    ext = client.ApiextensionsV1Api(kube.api)
    docs = [yaml.safe_load(f.read_text()) for f in CRD_FILES]
    for doc in docs:
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(doc["metadata"]["name"])
            doc = {
                **doc,
                "metadata": {
                    **doc["metadata"],
                    "resourceVersion": current.metadata.resource_version,
                },
            }
            ext.replace_custom_resource_definition(doc["metadata"]["name"], doc)

    def established() -> bool:
        for doc in docs:
            crd = ext.read_custom_resource_definition(doc["metadata"]["name"])
            conds = {c.type: c.status for c in (crd.status.conditions or [])}
            if conds.get("Established") != "True":
                return False
            for version in doc["spec"]["versions"]:
                status, _, _ = kube.raw(
                    "GET", f"/apis/dapr.io/{version['name']}/{doc['spec']['names']['plural']}"
                )
                if status != 200:
                    return False
        return True

    poll("the dapr.io CRDs to be established and served", established)
    return docs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Operator:
    """The running operator: where its webhook listens and how to reach it."""

    url: str  # https://127.0.0.1:<port>/inject-sidecar
    port: int
    ca_file: Path
    sidecar_image: str
    thread: threading.Thread

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="session")
def operator(kube: Kube, crds: list[dict[str, Any]]) -> Iterator[Operator]:
    """The tidings operator in a thread, its webhook registered with failurePolicy Fail."""
    from kubernetes import client
    from kubernetes.client import ApiException

    from tidings.operator.injection import WEBHOOK_ID, webhook_configuration
    from tidings.operator.main import run_operator
    from tidings.operator.settings import (
        InjectorSettings,
        LeaderElectionSettings,
        OperatorSettings,
        WebhookSettings,
    )

    host = os.environ.get("TIDINGS_TEST_WEBHOOK_HOST", "127.0.0.1")
    assert kube.ca_file is not None and kube.ca_key_file is not None
    cert, key = apiserver.issue_serving_cert(
        kube.ca_file,
        kube.ca_key_file,
        kube.workdir / "webhook",
        "webhook",
        hosts=(host, "localhost"),
    )
    port = free_port()
    settings = OperatorSettings(
        injector=InjectorSettings(sidecar_image=SIDECAR_IMAGE),
        webhook=WebhookSettings(
            addr=host,
            port=port,
            host=host,
            cert_file=str(cert),
            key_file=str(key),
            ca_file=str(kube.ca_file),
        ),
        leader_election=LeaderElectionSettings(standalone=True),
        kubeconfig=str(kube.kubeconfig),
        resync_interval_s=30.0,
        log_level="info",
        log_format="text",
    )
    ready, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run_operator(settings, ready_flag=ready, stop_flag=stop))
        except BaseException as exc:  # surfaced by the fixture, never swallowed
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="tidings-operator", daemon=True)
    started = time.monotonic()
    thread.start()
    assert ready.wait(60), "operator did not start within 60 s"
    if failure:
        raise failure[0]

    ctx = ssl.create_default_context(cafile=str(kube.ca_file))

    def tls_up() -> bool:
        try:
            with (
                socket.create_connection((host, port), timeout=1) as raw,
                ctx.wrap_socket(raw, server_hostname=host),
            ):
                return True
        except OSError:
            return False

    poll("the webhook's TLS port", tls_up)
    url = f"https://{host}:{port}/{WEBHOOK_ID}"
    admission = client.AdmissionregistrationV1Api(kube.api)
    mwc = webhook_configuration(
        name=WEBHOOK_CONFIG_NAME,
        failure_policy="Fail",
        client_config={
            "url": url,
            "caBundle": base64.b64encode(kube.ca_file.read_bytes()).decode(),
        },
    )
    try:
        admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIG_NAME)
    except ApiException as exc:
        if exc.status != 404:
            raise
    admission.create_mutating_webhook_configuration(mwc)
    print(f"\n[tidings] operator + webhook ready in {time.monotonic() - started:.1f} s")
    try:
        yield Operator(
            url=url, port=port, ca_file=kube.ca_file, sidecar_image=SIDECAR_IMAGE, thread=thread
        )
    finally:
        with contextlib.suppress(ApiException):
            admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIG_NAME)
        stop.set()
        thread.join(30)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace for one test (deleted afterwards, without waiting)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace({"metadata": {"name": name}})
    yield name
    with contextlib.suppress(Exception):
        kube.core.delete_namespace(name)


def pod_list(kube: Kube, namespace: str, selector: str = "") -> list[Any]:
    return list(kube.core.list_namespaced_pod(namespace, label_selector=selector).items)


def deployment(
    name: str,
    annotations: dict[str, str],
    *,
    replicas: int = 1,
    image: str = "example.invalid/app:1",
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def secret_files(kube: Kube, namespace: str, name: str) -> dict[str, str] | None:
    """The decoded data of a Secret, or ``None`` if it does not exist."""
    from kubernetes.client import ApiException

    try:
        s = kube.core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (s.data or {}).items()}


def write_folder(files: dict[str, str]) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="tidings-mounted-"))
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder
