"""End to end on ``pubsub.redis``: sidecar processes, app processes, the machine's real Redis.

What is Redis's own: SIGKILL mid-stream with pending-entry reclaim (``XAUTOCLAIM``). The
delivery cases every broker shares (publish → delivery, retry, dead-letter, rawPayload, routing,
TTL, fan-out and sharing) run on Redis in ``test_broker_delivery.py``. Nothing here is mocked.
Stream and group names are unique per test; streams are deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .processes import (
    Proc,
    kill_sidecar_mid_stream,
    poll,
    produce_redis,
    received,
    start_app,
    start_sidecar,
    write_redis_component,
)


@pytest.fixture
def client(redis_host: str) -> Iterator[redis.Redis]:
    host, _, port = redis_host.rpartition(":")
    c = redis.Redis(host=host, port=int(port))
    c.created = []  # type: ignore[attr-defined]
    yield c
    if c.created:  # type: ignore[attr-defined]
        c.delete(*c.created)  # type: ignore[attr-defined]
    c.close()


def topic_named(client: redis.Redis, name: str) -> str:
    client.created.append(name)  # type: ignore[attr-defined]
    return name


def test_redis_sigkill_mid_stream_loses_nothing(
    tmp_path: Path,
    redis_host: str,
    client: redis.Redis,
    procs: list[Proc],
    unique: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILL a sidecar while it delivers 1,000 events; a replacement member of the same
    consumer group takes over the killed consumer's pending entries with XAUTOCLAIM after
    processingTimeout and delivers every event the app did not acknowledge."""
    folder = write_redis_component(tmp_path / "resources", redis_host)
    topic = topic_named(client, f"stream-{unique}")
    app_id = f"killed-{unique}"
    app = start_app(tmp_path, "app", topics=[topic], delay_s=0.004)
    procs.append(app)
    ids = [f"{unique}-{n:04d}" for n in range(1000)]
    produce_redis(redis_host, topic, ids)
    acked_before_kill = kill_sidecar_mid_stream(
        tmp_path, procs, app, app_id=app_id, resources=folder, total=len(ids)
    )
    pending_at_kill = client.xpending(topic, app_id)["pending"]
    assert pending_at_kill > 0, "the killed consumer held unacknowledged entries"

    second = start_sidecar(tmp_path, "second", app_id=app_id, resources=folder, app_port=app.port)
    procs.append(second)
    poll("every event to be delivered", lambda: set(received(app)["finished"]) >= set(ids), 90)
    poll(
        "every entry to be acknowledged", lambda: client.xpending(topic, app_id)["pending"] == 0, 30
    )
    finished = received(app)["finished"]
    lost = set(ids) - set(finished)
    duplicates = len(finished) - len(set(finished))
    assert "reclaimed" in second.log()
    with capsys.disabled():
        print(
            f"\n[at-least-once, redis] SIGKILL after {acked_before_kill} acks with "
            f"{pending_at_kill} entries pending: lost={len(lost)} duplicates={duplicates} "
            f"of {len(ids)}"
        )
    assert not lost
