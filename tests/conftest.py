"""Fixtures shared by every test: a real Kafka-protocol broker (Tansu) for the session.

Set ``TIDINGS_TEST_BOOTSTRAP=host:port`` to run against another Kafka-compatible broker instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tidings.sidecar.cli.localbroker import start_local_broker

if TYPE_CHECKING:
    from .integration.processes import Proc
    from .tlskit import Pki


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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate (``localhost``, ``127.0.0.1``), a client certificate and an
    unrelated CA, made for the session (``tests/tlskit.py``)."""
    from .tlskit import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and consumer-group names, so tests never share state."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """The sidecar and app processes a test started (it appends them); stopped in reverse order
    afterwards."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


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


NATS_URL = os.environ.get("TIDINGS_TEST_NATS", "nats://127.0.0.1:4222")


@pytest.fixture(scope="session")
def nats_url() -> str:
    """URL of the machine's NATS server with JetStream (``.ci/run`` starts it). Fails, never
    skips, when it does not answer: a JetStream test that cannot run must not pass."""
    import asyncio

    import nats

    async def check() -> None:
        nc = await asyncio.wait_for(nats.connect(NATS_URL, max_reconnect_attempts=0), 10)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    try:
        asyncio.run(check())
    except Exception as exc:
        pytest.fail(
            f"NATS with JetStream is not reachable at {NATS_URL} (bash .ci/run starts it): {exc!r}",
            pytrace=False,
        )
    return NATS_URL


@pytest.fixture
def jetstream_stream(nats_url: str, unique: str) -> Iterator[tuple[str, str]]:
    """A fresh JetStream stream for one test: ``(stream name, subject prefix)``; the stream takes
    every subject under ``<prefix>.`` and is deleted after the test."""
    import asyncio

    import nats

    stream, prefix = f"T{unique}", f"t{unique}"

    async def run(create: bool) -> None:
        nc = await nats.connect(nats_url)
        try:
            if create:
                await nc.jetstream().add_stream(name=stream, subjects=[f"{prefix}.>"])
            else:
                await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(run(True))
    try:
        yield stream, prefix
    finally:
        asyncio.run(run(False))
