"""Leader election (operator/leadership.py) between two real ``tidings operator`` processes:
exactly one holds the Lease; when it is killed without releasing, the other takes over once the
Lease expires; a clean SIGTERM releases it at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import apiserver
from tests.cluster.conftest import Kube, free_port, poll

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

LEASE_S = 4


def start(
    kube: Kube, tmp: Path, namespace: str, identity: str
) -> tuple[subprocess.Popen[bytes], Path]:
    assert kube.ca_file is not None and kube.ca_key_file is not None
    cert, key = apiserver.issue_serving_cert(
        kube.ca_file, kube.ca_key_file, tmp / identity, "webhook", hosts=("127.0.0.1",)
    )
    tidings = shutil.which("tidings", path=str(Path(sys.executable).parent)) or "tidings"
    log = tmp / f"{identity}.log"
    proc = subprocess.Popen(
        [
            tidings,
            "operator",
            "--kubeconfig",
            str(kube.kubeconfig),
            "--namespace",
            namespace,
            "--webhook-addr",
            "127.0.0.1",
            "--webhook-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),  # two operators on one host: not both on 9090
            "--webhook-cert-file",
            str(cert),
            "--webhook-key-file",
            str(key),
            "--lease-namespace",
            namespace,
            "--lease-name",
            "tidings-test",
            "--identity",
            identity,
            "--lease-duration-seconds",
            str(LEASE_S),
            "--lease-renew-interval-seconds",
            "0.5",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )
    return proc, log


def holder(kube: Kube, namespace: str) -> str:
    from kubernetes import client
    from kubernetes.client import ApiException

    try:
        lease: Any = client.CoordinationV1Api(kube.api).read_namespaced_lease(
            "tidings-test", namespace
        )
    except ApiException:
        return ""
    return lease.spec.holder_identity or ""


def test_one_leader_and_takeover(kube: Kube, crds: Any, namespace: str, tmp_path: Path) -> None:
    procs = {name: start(kube, tmp_path, namespace, name) for name in ("a", "b")}
    try:
        first = poll("a Lease holder", lambda: holder(kube, namespace), timeout_s=30)
        assert first in procs
        other = "b" if first == "a" else "a"
        for _ in range(10):  # the holder stays put while renewing
            assert holder(kube, namespace) == first
            time.sleep(0.2)  # sampling the Lease over two renew periods
        assert "now the leader" in procs[first][1].read_text()
        assert "now the leader" not in procs[other][1].read_text()

        killed_at = time.monotonic()
        procs[first][0].kill()  # no release: the other must wait for expiry
        procs[first][0].wait(10)
        poll(
            "takeover by the standby",
            lambda: holder(kube, namespace) == other,
            timeout_s=LEASE_S + 10,
        )
        assert time.monotonic() - killed_at >= LEASE_S - 1

        procs[other][0].send_signal(signal.SIGTERM)  # clean stop releases the Lease
        assert procs[other][0].wait(30) == 0, procs[other][1].read_text()[-2000:]
        assert holder(kube, namespace) == ""
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
