"""End to end on ``pubsub.redis``: sidecar processes, app processes, the machine's real Redis.

The same scenarios as ``test_processes.py`` runs on Kafka (publish → delivery across app-ids,
fan-out and sharing, SIGKILL mid-stream, dead-letter), with a Redis Streams component behind the
same pubsub name: apps and the HTTP API do not change. Nothing here is mocked. Stream and group
names are unique per test; streams are deleted afterwards.
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
    assignment,
    http_json,
    poll,
    publish,
    received,
    start_app,
    start_sidecar,
    write_component,
)

# Fast reclaim so a crashed member's entries move on within seconds; short delivery back-off.
TEST_REDIS_METADATA = {
    "processingTimeout": "2s",
    "redeliverInterval": "200ms",
    "backOffInitialInterval": "50ms",
    "backOffMaxInterval": "500ms",
}


def write_redis_component(folder: Path, host: str, **metadata: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    values = {"redisHost": host, **TEST_REDIS_METADATA, **metadata}
    items = "".join(f"  - name: {k}\n    value: {json.dumps(v)}\n" for k, v in values.items())
    (folder / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\n"
        f"spec:\n  type: pubsub.redis\n  version: v1\n  metadata:\n{items}")
    return folder


def streams(sidecar: Proc, pubsub: str = "pubsub") -> set[str]:
    """Streams the sidecar's Redis consumer reads now (its group exists there)."""
    _, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/metadata")
    value = (body.get("extended") or {}).get(f"redis.streams.{pubsub}", "")
    return {s for s in value.split(",") if s}


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


@pytest.fixture
def procs():  # type: ignore[no-untyped-def]
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def xadd_events(client: redis.Redis, topic: str, ids: list[str]) -> None:
    """CloudEvents straight into the stream, as a publisher sidecar writes them."""
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.xadd(topic, {"data": json.dumps(
            {"specversion": "1.0", "id": i, "source": "test", "type": "t",
             "datacontenttype": "application/json", "data": {"n": i}})})
    pipe.execute()


@pytest.mark.parametrize("kind", ["kafka", "redis"])
def test_publish_through_one_sidecar_deliver_through_another(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest, procs: list[Proc],
        unique: str) -> None:
    """The same app, the same HTTP calls, either broker behind pubsub name ``pubsub``."""
    folder = tmp_path / "resources"
    if kind == "kafka":
        write_component(folder, request.getfixturevalue("kafka_bootstrap"))
        subscribed = assignment
    else:
        write_redis_component(folder, request.getfixturevalue("redis_host"))
        subscribed = streams
    topic = f"orders-{unique}"
    if kind == "redis":
        topic_named(request.getfixturevalue("client"), topic)
    app = start_app(tmp_path, "sub", topics=[topic])
    procs.append(app)
    subscriber = start_sidecar(tmp_path, "sub", app_id=f"sub-{unique}", resources=folder,
                               app_port=app.port)
    publisher = start_sidecar(tmp_path, "pub", app_id=f"pub-{unique}", resources=folder)
    procs += [subscriber, publisher]
    poll("the subscriber to consume the topic", lambda: subscribed(subscriber), 30)
    for n in range(5):
        publish(publisher, topic, {"n": n})
    poll("5 deliveries", lambda: len(set(received(app)["finished"])) >= 5, 30)
    assert len(set(received(app)["finished"])) == 5


def test_redis_capabilities_and_refused_partition_number(
        tmp_path: Path, redis_host: str, client: redis.Redis, procs: list[Proc],
        unique: str) -> None:
    """``/v1.0/metadata`` lists what pubsub.redis supports; a ``partitionNumber`` it cannot
    honour is a publish error naming it, and nothing is stored."""
    folder = write_redis_component(tmp_path / "resources", redis_host, concurrency="1")
    topic = topic_named(client, f"caps-{unique}")
    sidecar = start_sidecar(tmp_path, "pub", app_id=f"pub-{unique}", resources=folder)
    procs.append(sidecar)
    _, meta = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/metadata")
    assert {"name": "pubsub", "type": "pubsub.redis", "version": "v1",
            "capabilities": ["BULK_PUBLISH", "MESSAGE_HEADERS", "ORDERED"]} in meta["components"]
    assert "not supported: PARTITION_KEY, PARTITION_NUMBER" in sidecar.log()
    status, body = http_json(
        f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/{topic}?metadata.partitionNumber=1",
        method="POST", body=b'{"n": 1}', headers={"Content-Type": "application/json"})
    assert status == 500 and body["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE", body
    assert "partitionNumber" in body["message"]
    assert client.xlen(topic) == 0


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
        poll(f"{sidecar.name} to read the stream", lambda: streams(sidecar) == {topic}, 30)

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


def test_redis_dropped_event_goes_to_the_dead_letter_stream_unchanged(
        tmp_path: Path, redis_host: str, client: redis.Redis, procs: list[Proc],
        unique: str) -> None:
    """The app answers DROP: the original entry (data, partitionKey, metadata) is added to the
    subscription's deadLetterTopic stream, and only then acknowledged."""
    folder = write_redis_component(tmp_path / "resources", redis_host)
    topic, dlt = topic_named(client, f"orders-{unique}"), topic_named(client, f"poison-{unique}")
    (folder / "subscription.yaml").write_text(f"""\
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: with-dlt
spec:
  pubsubname: pubsub
  topic: {topic}
  routes:
    default: /events
  deadLetterTopic: {dlt}
""")
    app = start_app(tmp_path, "app", topics=[], answer="DROP")
    procs.append(app)
    sidecar = start_sidecar(tmp_path, "sub", app_id=f"dlt-{unique}", resources=folder,
                            app_port=app.port)
    procs.append(sidecar)
    poll("the subscriber to read the stream", lambda: streams(sidecar), 30)
    status, body = http_json(
        f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/{topic}"
        "?metadata.partitionKey=k1&metadata.team=payments", method="POST", body=b'{"n": 5}',
        headers={"Content-Type": "application/json"})
    assert status == 204, body
    poll("the dead-letter entry", lambda: client.xlen(dlt) == 1, 30)
    poll("the original to be acknowledged",
         lambda: client.xpending(topic, f"dlt-{unique}")["pending"] == 0, 30)
    ((_, fields),) = client.xrange(dlt)
    assert fields[b"key"] == b"k1"
    metadata = json.loads(fields[b"metadata"])
    assert metadata.pop("traceparent").startswith("00-")  # the publish's trace context, kept
    assert metadata == {"team": "payments"}
    assert json.loads(fields[b"data"])["data"] == {"n": 5}
    assert len(received(app)["finished"]) == 1
