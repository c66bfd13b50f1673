"""brokers/redis.py and resources/redis.py on the machine's real Redis (fixture ``redis_host``).

Every test uses its own stream and group names (``unique``) and deletes its streams afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from tidings.sidecar.brokers.base import ORDERED, BrokerError, PublishRecord, Record
from tidings.sidecar.brokers.redis import RedisBroker, entry_offset
from tidings.sidecar.resources.loading import LoadedComponent, check_component
from tidings.sidecar.resources.models import Component, ResourceError
from tidings.sidecar.resources.redis import parse_redis_metadata

Make = Callable[..., Awaitable[RedisBroker]]
"""The ``make`` fixture: ``await make(**metadata)`` is a started broker, closed after the test."""


def component(host: str, **metadata: str) -> LoadedComponent:
    items = {"redisHost": host, **metadata}
    return check_component(
        Component.model_validate(
            {
                "apiVersion": "dapr.io/v1alpha1",
                "kind": "Component",
                "metadata": {"name": "pubsub"},
                "spec": {
                    "type": "pubsub.redis",
                    "version": "v1",
                    "metadata": [{"name": k, "value": v} for k, v in items.items()],
                },
            }
        ),
        app_id="app",
        source="test",
    )


async def until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


@pytest.fixture
async def raw(redis_host: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client, and clean-up of every stream the test names ``*-<unique>``."""
    host, _, port = redis_host.rpartition(":")
    client = aioredis.Redis(host=host, port=int(port))
    created: list[str] = []
    client.created = created  # type: ignore[attr-defined]
    yield client
    if created:
        await client.delete(*created)
    await client.aclose()


@pytest.fixture
async def make(redis_host: str, raw: aioredis.Redis, unique: str) -> AsyncIterator[Make]:
    """``await make(consumerID=..., **metadata)``: a started broker, closed after the test."""
    brokers: list[RedisBroker] = []

    async def start(**metadata: str) -> RedisBroker:
        metadata.setdefault("consumerID", f"group-{unique}")
        broker = RedisBroker(component(redis_host, **metadata), app_id="app")
        await broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        await broker.close(grace_s=0)


def stream(raw: aioredis.Redis, name: str) -> str:
    raw.created.append(name)  # type: ignore[attr-defined]
    return name


# --------------------------------------------------------------------------------- metadata


def test_metadata_defaults_follow_dapr() -> None:
    meta = parse_redis_metadata({"redisHost": "localhost:6379"}, app_id="orders")
    assert (meta.host, meta.port, meta.db, meta.username, meta.password) == (
        "localhost",
        6379,
        0,
        None,
        None,
    )
    assert meta.consumer_group == "orders"  # app-id = consumer group, as for Kafka
    assert (meta.queue_depth, meta.concurrency) == (100, 10)
    assert (meta.processing_timeout_s, meta.redeliver_interval_s) == (15.0, 60.0)
    assert meta.max_len_approx is None and meta.stream_ttl_s is None
    assert not meta.enable_tls and meta.reclaims
    assert meta.retry.max_retries == -1


def test_metadata_names_any_case_and_values() -> None:
    meta = parse_redis_metadata(
        {
            "REDISHOST": "redis:6380",
            "redisPassword": "pw",
            "redisUsername": "u",
            "redisDB": "3",
            "enableTLS": "true",
            "consumerID": "group",
            "queueDepth": "5",
            "concurrency": "1",
            "processingTimeout": "2s",
            "redeliverInterval": "500ms",
            "maxLenApprox": "1000",
            "backOffMaxRetries": "3",
            "poolSize": "20",
        },
        app_id="orders",
    )
    assert (meta.host, meta.port, meta.db, meta.password, meta.username) == (
        "redis",
        6380,
        3,
        "pw",
        "u",
    )
    assert meta.enable_tls and meta.consumer_group == "group"
    assert (meta.queue_depth, meta.concurrency, meta.max_len_approx) == (5, 1, 1000)
    assert (meta.processing_timeout_s, meta.redeliver_interval_s) == (2.0, 0.5)
    assert meta.retry.max_retries == 3
    assert meta.ignored == ("poolSize",)  # said at start-up, not silently dropped


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({}, "redisHost"),
        ({"redisHost": "h:99999"}, "redisHost"),
        ({"redisHost": "h", "redisPort": "x"}, "redisHost"),
        ({"redisHost": "h:1", "clientCert": "PEM"}, "clientCert"),
        ({"redisHost": "h:1", "useEntraID": "true"}, "useEntraID"),
        ({"redisHost": "h:1", "maxLenApprox": "10", "streamTTL": "1h"}, "streamTTL"),
        ({"redisHost": "h:1", "redisType": "cluster"}, "redisType"),
        ({"redisHost": "h:1", "failover": "true"}, "failover"),
        ({"redisHost": "h:1", "concurrency": "0"}, "concurrency"),
        ({"redisHost": "h:1", "queueDepth": "many"}, "queueDepth"),
        ({"redisHost": "h:1", "processingTimeout": "soon"}, "processingTimeout"),
        ({"redisHost": "h:1", "enableTLS": "maybe"}, "enableTLS"),
        ({"redisHost": "h:1", "backOffPolicy": "random"}, "backOffPolicy"),
    ],
)
def test_metadata_errors_name_the_field(values: dict[str, str], field: str) -> None:
    with pytest.raises(ResourceError) as err:
        parse_redis_metadata(values, app_id="a", source="pubsub.yaml")
    assert err.value.field == f"spec.metadata.{field}" and err.value.source == "pubsub.yaml"


def test_redis_host_without_port() -> None:
    assert (parse_redis_metadata({"redisHost": "redis"}, app_id="a").port) == 6379
    meta = parse_redis_metadata({"redisHost": "redis", "redisPort": "6380"}, app_id="a")
    assert (meta.host, meta.port) == ("redis", 6380)
    meta = parse_redis_metadata({"redisHost": "[::1]:6381"}, app_id="a")
    assert (meta.host, meta.port) == ("::1", 6381)


def test_entry_offset() -> None:
    assert entry_offset(b"1700000000123-7") == 1700000000123_000007
    assert entry_offset("5-0") // 1_000_000 == 5


# ----------------------------------------------------------------------------------- broker


async def test_unreachable_redis_is_a_retriable_start_error(unique: str) -> None:
    from tidings.sidecar.cli.localbroker import free_port

    broker = RedisBroker(component(f"127.0.0.1:{free_port()}", dialTimeout="1s"), app_id="app")
    with pytest.raises(BrokerError) as err:
        await broker.start()
    assert err.value.retriable and not broker.ready()
    with pytest.raises(BrokerError):
        await broker.publish("t", b"x")


async def test_publish_then_deliver_in_stream_order_with_key_and_metadata(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    topic = stream(raw, f"orders-{unique}")
    broker = await make(concurrency="1")
    assert ORDERED in broker.features
    for i in range(5):
        await broker.publish(topic, str(i).encode(), key=b"k", headers=[("team", b"payments")])
    got: list[Record] = []

    async def handler(record: Record) -> None:
        got.append(record)

    await broker.subscribe([topic], handler)
    assert broker.streams() == [topic]
    await broker.publish(topic, b"5")
    await until(lambda: len(got) == 6)
    assert [r.value for r in got] == [str(i).encode() for i in range(6)]
    assert [r.offset for r in got] == sorted(r.offset for r in got)
    first = got[0]
    assert first.key == b"k" and first.headers == (("team", b"payments"),)
    assert first.partition == 0 and abs(first.timestamp_ms / 1000 - time.time()) < 60
    assert got[5].key is None and got[5].headers == ()
    # stored as Dapr's component writes it: data + metadata (a JSON object of strings)
    (_entry_id, fields), *_ = await raw.xrange(topic, count=1)
    assert fields[b"data"] == b"0" and orjson.loads(fields[b"metadata"]) == {"team": "payments"}
    await until(lambda: not broker._to_ack)
    await until_acked(raw, topic, f"group-{unique}")


async def until_acked(raw: aioredis.Redis, topic: str, group: str) -> None:
    deadline = time.monotonic() + 10
    while (await raw.xpending(topic, group))["pending"]:
        assert time.monotonic() < deadline, "entries stay unacknowledged"
        await asyncio.sleep(0.01)


async def test_concurrency_above_one_reports_no_order(make: Make) -> None:
    broker = await make()  # Dapr's default concurrency: 10
    assert ORDERED not in broker.features


async def test_partition_number_is_refused_not_ignored(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    topic = stream(raw, f"p-{unique}")
    broker = await make()
    with pytest.raises(BrokerError, match="partitionNumber") as err:
        await broker.publish(topic, b"x", partition=1)
    assert not err.value.retriable and err.value.refused == "request"
    outcomes = await broker.publish_many(
        [
            PublishRecord(topic, b"a"),
            PublishRecord(topic, b"b", partition=2),
            PublishRecord(topic, b"c", b"k", [("h", b"v")]),
        ]
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], BrokerError)
    assert [f[b"data"] for _, f in await raw.xrange(topic)] == [b"a", b"c"]


async def test_a_key_that_is_not_a_stream_fails_that_entry_only(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    wrong, right = stream(raw, f"string-{unique}"), stream(raw, f"ok-{unique}")
    await raw.set(wrong, "not a stream")
    broker = await make()
    with pytest.raises(BrokerError) as err:
        await broker.publish(wrong, b"x")
    assert not err.value.retriable and "WRONGTYPE" in str(err.value)
    assert err.value.refused == "request"  # the caller's mistake: the API answers 400
    outcomes = await broker.publish_many([PublishRecord(wrong, b"x"), PublishRecord(right, b"y")])
    assert isinstance(outcomes[0], BrokerError) and outcomes[1] is None


async def test_metadata_that_is_not_utf8_is_refused(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    """Dapr's ``metadata`` field is a JSON object of strings: a header value that is not UTF-8
    (a dead-letter copy of a Kafka record can carry one) is refused, nothing stored."""
    topic = stream(raw, f"utf8-{unique}")
    broker = await make()
    with pytest.raises(BrokerError, match="not UTF-8") as err:
        await broker.publish(topic, b"x", headers=[("h", b"\xff")])
    assert not err.value.retriable and err.value.refused == "request"
    assert await raw.xlen(topic) == 0


async def test_ack_only_after_the_handler_finished(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    topic, group = stream(raw, f"slow-{unique}"), f"group-{unique}"
    broker = await make()
    release = asyncio.Event()
    seen: list[bytes] = []

    async def slow(record: Record) -> None:
        seen.append(record.value)
        await release.wait()

    await broker.publish(topic, b"a")
    await broker.subscribe([topic], slow)
    await until(lambda: seen == [b"a"])
    await asyncio.sleep(0.1)  # give a wrong early ack the time to happen
    assert (await raw.xpending(topic, group))["pending"] == 1
    release.set()
    await until_acked(raw, topic, group)


async def test_handler_error_keeps_the_entry(make: Make, raw: aioredis.Redis, unique: str) -> None:
    topic = stream(raw, f"flaky-{unique}")
    broker = await make()
    calls: list[int] = []

    async def flaky(record: Record) -> None:
        calls.append(record.offset)
        if len(calls) == 1:
            raise RuntimeError("bug")

    await broker.publish(topic, b"a")
    await broker.subscribe([topic], flaky)
    await until(lambda: len(calls) == 2)
    assert calls[0] == calls[1]
    await until_acked(raw, topic, f"group-{unique}")


async def test_entries_of_a_dead_consumer_are_reclaimed(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    """A consumer read three entries and died (it never acks): after processingTimeout a live
    member takes them over with XAUTOCLAIM and delivers them; nothing is lost."""
    topic, group = stream(raw, f"dead-{unique}"), f"group-{unique}"
    await raw.xgroup_create(topic, group, id="0", mkstream=True)
    for v in (b"a", b"b", b"c"):
        await raw.xadd(topic, {"data": v})
    taken = await raw.xreadgroup(group, "dead-consumer", {topic: ">"}, count=10)
    assert len(taken[0][1]) == 3
    broker = await make(processingTimeout="300ms", redeliverInterval="100ms")
    got: list[bytes] = []

    async def handler(record: Record) -> None:
        got.append(record.value)

    await broker.subscribe([topic], handler)
    await until(lambda: len(got) == 3)
    assert sorted(got) == [b"a", b"b", b"c"]
    await until_acked(raw, topic, group)


async def test_a_slow_delivery_is_not_taken_from_a_live_consumer(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    """The holder touches its entries, so a member reclaiming every 50 ms with a 300 ms
    processingTimeout leaves alone an entry whose delivery takes far longer. (The holder's own
    reclaims are rare here, so they do not stand in for the touching.)"""
    topic = stream(raw, f"keep-{unique}")
    fast = {"processingTimeout": "300ms", "redeliverInterval": "50ms"}
    holder = await make(processingTimeout="300ms", redeliverInterval="60s")
    release = asyncio.Event()
    held: list[bytes] = []

    async def slow(record: Record) -> None:
        held.append(record.value)
        await release.wait()

    await holder.publish(topic, b"a")
    await holder.subscribe([topic], slow)
    await until(lambda: held == [b"a"])
    other = await make(**fast)
    stolen: list[bytes] = []

    async def handler(record: Record) -> None:
        stolen.append(record.value)

    await other.subscribe([topic], handler)
    await asyncio.sleep(1.2)  # four processing timeouts: the entry must stay with its holder
    assert stolen == []
    release.set()
    await until_acked(raw, topic, f"group-{unique}")
    assert held == [b"a"] and stolen == []


async def test_close_finishes_in_flight_and_hands_over_the_rest(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    """close(): the delivery in flight finishes and is acked; entries read but not started are
    made reclaimable at once, so another member takes them at its next reclaim instead of after
    processingTimeout (10 s here)."""
    topic, group = stream(raw, f"close-{unique}"), f"group-{unique}"
    first = await make(concurrency="1", processingTimeout="10s", redeliverInterval="100ms")
    for i in range(4):
        await first.publish(topic, str(i).encode())
    started = asyncio.Event()
    done: list[bytes] = []

    async def slow(record: Record) -> None:
        started.set()
        await asyncio.sleep(0.2)
        done.append(record.value)

    await first.subscribe([topic], slow)
    await started.wait()
    await first.close(grace_s=5)
    assert done == [b"0"] and not first.ready()
    pending = await raw.xpending(topic, group)
    assert pending["pending"] == 3  # read by `first`, not finished, not lost
    second = await make(concurrency="1", processingTimeout="10s", redeliverInterval="100ms")
    got: list[bytes] = []

    async def handler(record: Record) -> None:
        got.append(record.value)

    await second.subscribe([topic], handler)
    await until(lambda: len(got) == 3, timeout_s=5)
    assert got == [b"1", b"2", b"3"]
    await until_acked(raw, topic, group)


async def test_close_cancels_after_grace_and_keeps_the_entry(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    topic, group = stream(raw, f"stuck-{unique}"), f"group-{unique}"
    broker = await make()
    busy = asyncio.Event()

    async def stuck(record: Record) -> None:
        busy.set()
        await asyncio.Event().wait()

    await broker.publish(topic, b"a")
    await broker.subscribe([topic], stuck)
    await busy.wait()
    t0 = time.monotonic()
    await broker.close(grace_s=0.2)
    assert time.monotonic() - t0 < 3
    assert (await raw.xpending(topic, group))["pending"] == 1


async def test_app_ids_fan_out_and_replicas_share(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    """Two consumers of group `orders` split the entries, group `audit` gets every one."""
    topic = stream(raw, f"fan-{unique}")
    replicas = [await make(consumerID=f"orders-{unique}") for _ in range(2)]
    audit = await make(consumerID=f"audit-{unique}")
    got: dict[str, list[bytes]] = {"r0": [], "r1": [], "audit": []}

    def recorder(name: str) -> Callable[[Record], Awaitable[None]]:
        async def handler(record: Record) -> None:
            got[name].append(record.value)
            await asyncio.sleep(0.002)  # some work, so both replicas get turns

        return handler

    for name, broker in (("r0", replicas[0]), ("r1", replicas[1]), ("audit", audit)):
        await broker.subscribe([topic], recorder(name))
    values = [str(i).encode() for i in range(200)]
    for chunk in range(0, 200, 20):
        assert (
            await replicas[0].publish_many(
                [PublishRecord(topic, v) for v in values[chunk : chunk + 20]]
            )
            == [None] * 20
        )
        await asyncio.sleep(0.01)
    await until(lambda: len(got["r0"]) + len(got["r1"]) == 200 and len(got["audit"]) == 200)
    assert got["r0"] and got["r1"], "both replicas of one app-id get a share"
    assert not set(got["r0"]) & set(got["r1"])
    assert sorted(got["r0"] + got["r1"]) == sorted(values) == sorted(got["audit"])


async def test_max_len_approx_trims_the_stream(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    topic = stream(raw, f"trim-{unique}")
    broker = await make(maxLenApprox="100")
    for _ in range(10):
        await broker.publish_many([PublishRecord(topic, b"x")] * 100)
    # MAXLEN ~ trims whole macro nodes (100 entries each by default): never below the limit
    assert 100 <= await raw.xlen(topic) < 1000


async def test_stream_ttl_trims_old_entries(make: Make, raw: aioredis.Redis, unique: str) -> None:
    topic = stream(raw, f"ttl-{unique}")
    old_ms = int(time.time() * 1000) - 3_600_000
    pipe = raw.pipeline(transaction=False)
    for seq in range(150):  # an hour old; more than one macro node (100 entries by default)
        pipe.xadd(topic, {"data": b"old"}, id=f"{old_ms}-{seq}")
    await pipe.execute()
    broker = await make(streamTTL="1m")
    assert broker.meta.stream_ttl_s == 60.0
    await broker.publish(topic, b"new")
    # MINID ~ drops whole macro nodes of old entries: at least the first 100 are gone
    assert 1 < await raw.xlen(topic) <= 51
    assert (await raw.xrevrange(topic, count=1))[0][1][b"data"] == b"new"


async def test_entries_written_by_dapr_are_read(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    """Dapr's Redis component writes ``data`` and ``metadata`` (JSON); both are delivered."""
    topic = stream(raw, f"dapr-{unique}")
    await raw.xadd(topic, {"data": b'{"id":"1"}', "metadata": b'{"traceid":"t1","n":"2"}'})
    await raw.xadd(topic, {"data": b"plain"})
    broker = await make(concurrency="1")
    got: list[Record] = []

    async def handler(record: Record) -> None:
        got.append(record)

    await broker.subscribe([topic], handler)
    await until(lambda: len(got) == 2)
    assert got[0].value == b'{"id":"1"}' and dict(got[0].headers) == {"traceid": b"t1", "n": b"2"}
    assert got[1].value == b"plain" and got[1].headers == ()


async def test_unsubscribe_stops_reading_and_leaves_the_rest_pending(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    a, b = stream(raw, f"a-{unique}"), stream(raw, f"b-{unique}")
    broker = await make()
    got: list[str] = []

    async def handler(record: Record) -> None:
        got.append(record.topic)

    await broker.subscribe([a, b], handler)
    assert broker.streams() == sorted([a, b])
    await broker.subscribe([b], handler)
    assert broker.streams() == [b]
    await broker.publish(a, b"x")
    await broker.publish(b, b"y")
    await until(lambda: got == [b])
    await asyncio.sleep(0.1)
    assert got == [b]  # a is not read any more; its entry waits for a reader of the group
    assert await raw.xlen(a) == 1


async def test_a_handler_finishing_during_close_can_still_dead_letter(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    """The grace period is for handlers to finish, and finishing may mean producing the
    record to its dead-letter topic through this same component."""
    topic, dlt = stream(raw, f"src-{unique}"), stream(raw, f"dlt-{unique}")
    broker = await make()
    started = asyncio.Event()

    async def dead_letters(record: Record) -> None:
        started.set()
        await asyncio.sleep(0.2)  # close() begins meanwhile
        await broker.publish(dlt, record.value, key=record.key, headers=record.headers)

    await broker.publish(topic, b"poison", key=b"k")
    await broker.subscribe([topic], dead_letters)
    await started.wait()
    await broker.close(grace_s=5)
    assert [(f[b"data"], f[b"key"]) for _, f in await raw.xrange(dlt)] == [(b"poison", b"k")]
    assert (await raw.xpending(topic, f"group-{unique}"))["pending"] == 0
    with pytest.raises(BrokerError):
        await broker.publish(topic, b"after close")


async def test_a_redis_restart_is_survived(tmp_path: Path, unique: str) -> None:
    """A private redis-server (started by this test on a free port, without persistence) goes
    away and comes back empty: publishing fails retriably meanwhile, then the reader recreates
    its group and delivery resumes. The machine's shared Redis is not touched."""
    import shutil
    import subprocess

    from tidings.sidecar.cli.localbroker import free_port

    server = shutil.which("redis-server")
    assert server, "redis-server is not installed"
    port = free_port()

    def start_server() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def answers() -> bool:
        client = aioredis.Redis(port=port)
        try:
            return bool(await client.ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False
        finally:
            await client.aclose()

    proc = start_server()
    try:
        deadline = time.monotonic() + 10
        while not await answers():
            assert time.monotonic() < deadline, "private redis-server did not start"
            await asyncio.sleep(0.05)
        broker = RedisBroker(
            component(f"127.0.0.1:{port}", consumerID=f"g-{unique}", dialTimeout="1s"),
            app_id="app",
            error_backoff_s=0.05,
            max_error_backoff_s=0.2,
        )
        await broker.start()
        got: list[bytes] = []

        async def handler(record: Record) -> None:
            got.append(record.value)

        await broker.subscribe(["t"], handler)
        await broker.publish("t", b"before")
        await until(lambda: got == [b"before"])
        proc.terminate()
        proc.wait(10)
        with pytest.raises(BrokerError) as err:
            await broker.publish("t", b"while down")
        assert err.value.retriable
        proc = start_server()
        deadline = time.monotonic() + 10
        while True:  # publishing works again once the server answers
            try:
                await broker.publish("t", b"after")
                break
            except BrokerError:
                assert time.monotonic() < deadline, "publishing did not recover"
                await asyncio.sleep(0.05)
        await until(lambda: got == [b"before", b"after"], timeout_s=15)
        await broker.close(grace_s=1)
    finally:
        proc.terminate()
        proc.wait(10)


async def test_subscribe_before_start_reads_once_connected(
    redis_host: str, raw: aioredis.Redis, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner subscribes as soon as the app is reachable, which may be before the broker's
    start() succeeded: reading begins once connected, without errors meanwhile."""
    topic = stream(raw, f"early-{unique}")
    broker = RedisBroker(component(redis_host, consumerID=f"group-{unique}"), app_id="app")
    got: list[bytes] = []

    async def handler(record: Record) -> None:
        got.append(record.value)

    try:
        await broker.subscribe([topic], handler)
        assert broker.streams() == []
        await broker.start()
        await broker.publish(topic, b"a")
        await until(lambda: got == [b"a"])
        assert broker.streams() == [topic]
        assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    finally:
        await broker.close(grace_s=0)


async def test_the_group_does_not_grow_with_every_restart(
    make: Make, raw: aioredis.Redis, unique: str
) -> None:
    """A closed member that holds nothing leaves the group; a crashed one that holds nothing
    (its entries were reclaimed) is removed once idle long enough; one that still holds entries
    is never removed (that would drop its pending entries for good)."""
    topic, group = stream(raw, f"tidy-{unique}"), f"group-{unique}"
    await raw.xgroup_create(topic, group, id="0", mkstream=True)
    await raw.xadd(topic, {"data": b"a"})
    await raw.xreadgroup(group, "crashed-holding", {topic: ">"}, count=1)  # holds "a"
    await raw.xgroup_createconsumer(topic, group, "crashed-empty")

    async def consumers() -> set[str]:
        return {c["name"].decode() for c in await raw.xinfo_consumers(topic, group)}

    first = await make()
    got: list[bytes] = []

    async def handler(record: Record) -> None:
        got.append(record.value)

    await first.subscribe([topic], handler)
    await first.publish(topic, b"b")  # read, so the consumer exists (Redis creates it then)
    await until(lambda: got == [b"b"])
    assert first.consumer in await consumers()
    await until_acked_by(raw, topic, group, first.consumer)
    await first.close(grace_s=1)
    assert first.consumer not in await consumers()  # held nothing: left the group

    # idle for 0.5 s counts as gone here; "a" stays unclaimed (processingTimeout 1 h)
    second = await make(processingTimeout="1h", redeliverInterval="100ms")
    second._reap_idle_ms = 500
    await second.subscribe([topic], handler)
    deadline = time.monotonic() + 10
    while "crashed-empty" in await consumers():
        assert time.monotonic() < deadline, "an idle consumer holding nothing was not removed"
        await asyncio.sleep(0.05)
    assert "crashed-holding" in await consumers()  # still holds "a": kept
    assert (await raw.xpending(topic, group))["pending"] == 1


async def until_acked_by(raw: aioredis.Redis, topic: str, group: str, consumer: str) -> None:
    deadline = time.monotonic() + 10
    while await raw.xpending_range(topic, group, "-", "+", 10, consumername=consumer):
        assert time.monotonic() < deadline, f"{consumer} keeps unacknowledged entries"
        await asyncio.sleep(0.01)


async def test_status_shows_group_stream_and_lag(
    make: Make, raw: aioredis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tidings status`` showed ``-`` for Redis: no consumer group, no partitions, no lag.
    The lag is the group's entries not acknowledged: XINFO GROUPS ``lag`` (undelivered, Redis
    >= 7) plus ``pending``. The poll period is shortened so the phases can be seen."""
    from tidings.sidecar.brokers import redis as redis_broker
    from tidings.sidecar.runtime import metrics

    monkeypatch.setattr(redis_broker, "STATUS_INTERVAL_S", 0.05)
    topic, group = stream(raw, f"status-{unique}"), f"group-{unique}"
    broker = await make(concurrency="1")
    release = asyncio.Event()
    seen: list[bytes] = []

    async def slow(record: Record) -> None:
        seen.append(record.value)
        await release.wait()

    def status() -> dict:
        return metrics.subscription_status("app", "pubsub", topic)

    for i in range(5):
        await broker.publish(topic, str(i).encode())
    await broker.subscribe([topic], slow)
    await until(lambda: status()["partitions"], 30)
    assert status()["consumerGroup"] == group
    assert status()["partitions"][0]["partition"] == topic
    # read by this consumer (pending) or not yet: five entries not acknowledged either way
    await until(lambda: status()["partitions"][0]["pending"] == 5, 30)
    assert status()["lag"] == 5 and status()["partitions"][0]["lag"] == 5
    release.set()
    await until(lambda: len(seen) == 5, 30)
    await until(lambda: status()["lag"] == 0, 30)
    assert status()["partitions"][0]["pending"] == 0
    await broker.close(grace_s=0)
    assert status()["consumerGroup"] is None  # the consumer stopped: nothing to show


async def test_close_is_bounded_when_redis_py_swallows_the_cancellation(
    make: Make, raw: aioredis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI hang: the ack loop was cancelled while redis-py's ``pipeline.execute`` ran, the
    library swallowed the CancelledError (a known redis-py class of bug at connection resets)
    and the loop went back to waiting for the next batch, so ``close()`` waited for ever.

    The swallowing is simulated (it depends on a connection reset landing at the exact moment
    of the cancel, which a real Redis cannot be made to do on cue): ``execute`` of the broker's
    pipelines turns a cancellation into a normal return. Everything else is the real Redis.
    """
    topic = stream(raw, f"swallow-{unique}")
    broker = await make()
    done = asyncio.Event()

    async def handler(record: Record) -> None:
        done.set()

    await broker.publish(topic, b"a")
    await broker.subscribe([topic], handler)
    await done.wait()
    await until_acked(raw, topic, f"group-{unique}")
    real_pipeline = broker._redis().pipeline

    def swallowing_pipeline(*args: object, **kwargs: object) -> object:
        pipe = real_pipeline(*args, **kwargs)  # type: ignore[arg-type]
        real_execute = pipe.execute

        async def execute(*a: object, **k: object) -> object:
            try:
                await asyncio.sleep(0.5)  # the round trip the cancel lands in
                return await real_execute(*a, **k)
            except asyncio.CancelledError:
                return []  # what redis-py did: the cancellation is lost

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(broker._redis(), "pipeline", swallowing_pipeline)
    broker._to_ack[topic] = [b"0-1"]  # an ack batch in flight when close() cancels the loop
    broker._ack_wakeup.set()
    await asyncio.sleep(broker._ack_interval_s + 0.1)  # the loop is inside execute() now
    await asyncio.wait_for(broker.close(grace_s=0), 20)  # hung for ever before the fix
