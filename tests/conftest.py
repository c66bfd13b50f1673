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
