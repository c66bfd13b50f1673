"""End to end on ``pubsub.redis``: sidecar processes, app processes, the machine's real Redis.

What is Redis's own: fan-out and sharing over one stream's consumer group, SIGKILL mid-stream
with pending-entry reclaim (``XAUTOCLAIM``). The delivery cases every broker shares (publish →
delivery, retry, dead-letter, rawPayload, routing, TTL) run on Redis in
``test_broker_delivery.py``. Nothing here is mocked. Stream and group names are unique per test;
streams are deleted afterwards.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .processes import (
    Proc,
    poll,
    received,
    redis_streams,
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


def xadd_events(client: redis.Redis, topic: str, ids: list[str]) -> None:
    """CloudEvents straight into the stream, as a publisher sidecar writes them."""
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.xadd(topic, {"data": json.dumps(
            {"specversion": "1.0", "id": i, "source": "test", "type": "t",
             "datacontenttype": "application/json", "data": {"n": i}})})
    pipe.execute()


def test_redis_app_ids_each_get_all_and_replicas_split(
        tmp_path: Path, redis_host: str, client: redis.Redis, procs: list[Proc],
        unique: str) -> None:
    folder = write_redis_component(tmp_path / "resources", redis_host)
    topic = topic_named(client, f"orders-{unique}")
    apps = [start_app(tmp_path, name, topics=[topic], delay_s=0.002)
            for name in ("orders-1", "orders-2", "audit")]
    procs += apps
    sidecars = [
        start_sidecar(tmp_path, "orders-1", app_id=f"orders-{unique}", resources=folder,
                      app_port=apps[0].port),
        start_sidecar(tmp_path, "orders-2", app_id=f"orders-{unique}", resources=folder,
                      app_port=apps[1].port),
        start_sidecar(tmp_path, "audit", app_id=f"audit-{unique}", resources=folder,
                      app_port=apps[2].port),
    ]
    procs += sidecars
    for sidecar in sidecars:
        poll(f"{sidecar.name} to read the stream", lambda: redis_streams(sidecar) == {topic}, 30)

    ids = [f"{unique}-{n}" for n in range(200)]
    for chunk in range(0, len(ids), 20):  # in bursts, so both replicas are reading
        xadd_events(client, topic, ids[chunk:chunk + 20])
    poll("orders to receive 200",
         lambda: sum(len(set(received(a)["finished"])) for a in apps[:2]) >= 200, 60)
    poll("audit to receive 200", lambda: len(set(received(apps[2])["finished"])) >= 200, 60)
    o1, o2 = (set(received(a)["finished"]) for a in apps[:2])
    assert o1 and o2, "both replicas of one app-id get a share"
    assert not (o1 & o2), "no event is delivered to both replicas of one app-id"
    assert o1 | o2 == set(ids)
    assert set(received(apps[2])["finished"]) == set(ids)


def test_redis_sigkill_mid_stream_loses_nothing(
        tmp_path: Path, redis_host: str, client: redis.Redis, procs: list[Proc], unique: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL a sidecar while it delivers 1,000 events; a replacement member of the same
    consumer group takes over the killed consumer's pending entries with XAUTOCLAIM after
    processingTimeout and delivers every event the app did not acknowledge."""
    folder = write_redis_component(tmp_path / "resources", redis_host)
    topic = topic_named(client, f"stream-{unique}")
    app_id = f"killed-{unique}"
    app = start_app(tmp_path, "app", topics=[topic], delay_s=0.004)
    procs.append(app)
    ids = [f"{unique}-{n:04d}" for n in range(1000)]
    xadd_events(client, topic, ids)
    first = start_sidecar(tmp_path, "first", app_id=app_id, resources=folder, app_port=app.port)
    procs.append(first)
    poll("deliveries to be under way", lambda: len(received(app)["finished"]) >= 250, 60, 0.01)
    first.signal(signal.SIGKILL)
    first.process.wait(10)
    acked_before_kill = len(set(received(app)["finished"]))
    assert acked_before_kill < len(ids), "the kill must land mid-stream"
    pending_at_kill = client.xpending(topic, app_id)["pending"]
    assert pending_at_kill > 0, "the killed consumer held unacknowledged entries"

    second = start_sidecar(tmp_path, "second", app_id=app_id, resources=folder,
                           app_port=app.port)
    procs.append(second)
    poll("every event to be delivered", lambda: set(received(app)["finished"]) >= set(ids), 90)
    poll("every entry to be acknowledged", lambda: client.xpending(topic, app_id)["pending"] == 0,
         30)
    finished = received(app)["finished"]
    lost = set(ids) - set(finished)
    duplicates = len(finished) - len(set(finished))
    assert "reclaimed" in second.log()
    with capsys.disabled():
        print(f"\n[at-least-once, redis] SIGKILL after {acked_before_kill} acks with "
              f"{pending_at_kill} entries pending: lost={len(lost)} duplicates={duplicates} "
              f"of {len(ids)}")
    assert not lost
