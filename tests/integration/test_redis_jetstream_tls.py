"""TLS to Redis and NATS JetStream, for real: the machine's ``redis-server`` and ``nats-server``
started by the test on free ports with TLS listeners only (certificates from the test's CA,
``tests/tlskit.py``), real sidecar and app processes.

Neither Dapr component has a field for a CA (components-contrib ``pubsub/redis``,
``pubsub/jetstream``): the sidecar trusts its system store, which ``SSL_CERT_FILE`` points at
the test's CA here (in an image, the store the image ships). The server certificate is always
verified (Dapr's Redis component skips that). A wrong CA fails with "certificate verify failed"
in ``/v1.0/healthz/outbound`` and the log; the servers have no plain-text port to fall back to.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tests.tlskit import Pki
from tidings.sidecar.cli.localbroker import free_port

from .processes import (
    Proc,
    http_json,
    poll,
    publish,
    received,
    start_app,
    start_sidecar,
    write_jetstream_component,
    write_redis_component,
)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _server(argv: list[str], log: Path, port: int, what: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        poll(
            f"{what} to listen",
            lambda: (
                _listening(port)
                or (
                    process.poll() is not None and pytest.fail(f"{what} exited:\n{log.read_text()}")
                )
            ),
            timeout_s=30,
        )
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def redis_tls(tmp_path: Path, pki: Pki) -> Iterator[int]:
    """A ``redis-server`` with a TLS port only (``--port 0``); yields that port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    argv = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.ca_cert), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no", "--dir", str(folder),
    ]  # fmt: skip
    yield from _server(argv, tmp_path / "redis.log", port, "redis-server (TLS)")


@pytest.fixture
def nats_tls(tmp_path: Path, pki: Pki) -> Iterator[int]:
    """A ``nats-server`` with JetStream on a TLS-only port; yields that port."""
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.fail("nats-server is not installed (Debian package nats-server)")
    port = free_port()
    store = tmp_path / "jetstream"
    config = tmp_path / "nats.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{ store_dir: "{store}" }}\n'
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", timeout: 5 }}\n'
    )
    yield from _server([binary, "-c", str(config)], tmp_path / "nats.log", port, "nats-server")


def trusting(ca: Path) -> dict[str, str]:
    """The sidecar's environment with ``ca`` as its whole system trust store."""
    return {"SSL_CERT_FILE": str(ca), "SSL_CERT_DIR": str(ca.parent / "no-such-dir")}


def not_ready_because(sidecar: Proc, words: str) -> str:
    def check() -> str | None:
        status, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/healthz/outbound")
        message = body.get("message", "") if isinstance(body, dict) else ""
        return message if status == 500 and words in message else None

    return poll(f"healthz/outbound to say {words!r}", check, timeout_s=60)


def deliver_one(
    tmp_path: Path, procs: list[Proc], resources: Path, topic: str, unique: str, env: dict[str, str]
) -> None:
    app = start_app(tmp_path, "app", topics=[topic])
    procs.append(app)
    subscriber = start_sidecar(
        tmp_path,
        "subscriber",
        app_id=f"sub-{unique}",
        resources=resources,
        app_port=app.port,
        env=env,
    )
    procs.append(subscriber)
    publisher = start_sidecar(
        tmp_path, "publisher", app_id=f"pub-{unique}", resources=resources, env=env
    )
    procs.append(publisher)

    def delivered() -> bool:
        if not received(app)["finished"]:
            publish(publisher, topic, {"id": unique})  # until the subscriber's group reads it
        return bool(received(app)["finished"])

    poll("an event through the TLS server", delivered, timeout_s=60, interval_s=1.0)


def test_redis_over_tls(
    tmp_path: Path, redis_tls: int, pki: Pki, procs: list[Proc], unique: str
) -> None:
    resources = write_redis_component(tmp_path / "res", f"localhost:{redis_tls}", enableTLS="true")
    deliver_one(tmp_path, procs, resources, f"tls-{unique}", unique, trusting(pki.ca_cert))


def test_redis_wrong_ca_fails_loudly(
    tmp_path: Path, redis_tls: int, pki: Pki, procs: list[Proc], unique: str
) -> None:
    resources = write_redis_component(tmp_path / "res", f"localhost:{redis_tls}", enableTLS="true")
    sidecar = start_sidecar(
        tmp_path,
        "wrong-ca",
        app_id=f"wrong-{unique}",
        resources=resources,
        env=trusting(pki.other_ca_cert),
        wait=False,
    )
    procs.append(sidecar)
    message = not_ready_because(sidecar, "certificate verify failed")
    assert f"pubsub: redis localhost:{redis_tls}" in message
    assert "certificate verify failed" in sidecar.log()


@pytest.fixture
def tls_stream(nats_tls: int, pki: Pki, unique: str) -> tuple[str, str, str]:
    """``(nats URL, stream, subject prefix)`` on the TLS server, the stream created."""
    url = f"tls://localhost:{nats_tls}"
    stream, prefix = f"T{unique}", f"t{unique}"

    async def create() -> None:
        nc = await nats.connect(
            url, tls=ssl.create_default_context(cafile=str(pki.ca_cert)), connect_timeout=10
        )
        try:
            await nc.jetstream().add_stream(name=stream, subjects=[f"{prefix}.>"])
        finally:
            await nc.close()

    asyncio.run(create())
    return url, stream, prefix


def test_jetstream_over_tls(
    tmp_path: Path, tls_stream: tuple[str, str, str], pki: Pki, procs: list[Proc], unique: str
) -> None:
    url, stream, prefix = tls_stream
    resources = write_jetstream_component(tmp_path / "res", url, stream)
    deliver_one(tmp_path, procs, resources, f"{prefix}.tls", unique, trusting(pki.ca_cert))


def test_jetstream_wrong_ca_fails_loudly(
    tmp_path: Path, tls_stream: tuple[str, str, str], pki: Pki, procs: list[Proc], unique: str
) -> None:
    url, stream, _ = tls_stream
    resources = write_jetstream_component(tmp_path / "res", url, stream)
    sidecar = start_sidecar(
        tmp_path,
        "wrong-ca",
        app_id=f"wrong-{unique}",
        resources=resources,
        env=trusting(pki.other_ca_cert),
        wait=False,
    )
    procs.append(sidecar)
    message = not_ready_because(sidecar, "certificate verify failed")
    assert "pubsub: cannot connect to NATS" in message
    assert "certificate verify failed" in sidecar.log()
