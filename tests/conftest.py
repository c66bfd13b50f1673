"""Fixtures shared by every test: a real Kafka-protocol broker (Tansu) for the session.

Set ``TIDINGS_TEST_BOOTSTRAP=host:port`` to run against another Kafka-compatible broker instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.sidecar.localbroker import start_local_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Kafka-protocol broker, shared by the session."""
    external = os.environ.get("TIDINGS_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    broker = start_local_broker(log_path=Path(log))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and consumer-group names, so tests never share state."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def redis_host() -> str:
    """``host:port`` of the machine's Redis (``.ci/run`` starts it), or ``TIDINGS_TEST_REDIS``.
    Fails, never skips, when nothing answers ``PING`` there."""
    import socket

    address = os.environ.get("TIDINGS_TEST_REDIS", "127.0.0.1:6379")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"PING\r\n")
            answer = conn.recv(64)
    except OSError as exc:
        pytest.fail(f"Redis at {address} is not reachable ({exc}); start it as .ci/run does")
    if not answer.startswith((b"+PONG", b"-NOAUTH")):
        pytest.fail(f"{address} does not answer PING like Redis: {answer!r}")
    return address
