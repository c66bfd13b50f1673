"""brokers/memory.py: the Broker contract in one process (order, offsets, finished-only drop)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tidings.sidecar.brokers.base import BrokerError, PublishRecord, Record
from tidings.sidecar.brokers.memory import MemoryBroker


async def until(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.005)


async def started() -> MemoryBroker:
    broker = MemoryBroker("mem")
    await broker.start()
    return broker


async def test_publish_before_start_fails() -> None:
    broker = MemoryBroker("mem")
    assert not broker.ready()
    with pytest.raises(BrokerError):
        await broker.publish("t", b"x")


async def test_in_order_delivery_with_increasing_offsets() -> None:
    broker = await started()
    got: list[Record] = []

    async def handler(record: Record) -> None:
        got.append(record)

    for i in range(5):
        await broker.publish("t", str(i).encode(), key=b"k", headers=[("h", b"v")])
    await broker.subscribe(["t"], handler)
    await broker.publish("t", b"5")
    await until(lambda: len(got) == 6)
    assert [r.value for r in got] == [str(i).encode() for i in range(6)]
    assert [r.offset for r in got] == list(range(6))
    assert got[0].key == b"k" and got[0].headers == (("h", b"v"),) and got[0].partition == 0
    await until(lambda: broker.pending("t") == 0)
    await broker.close(grace_s=1)


async def test_record_stays_until_handler_finished_and_cancelled_one_comes_back() -> None:
    broker = await started()
    release = asyncio.Event()
    seen: list[bytes] = []

    async def slow(record: Record) -> None:
        seen.append(record.value)
        await release.wait()

    await broker.publish("t", b"a")
    await broker.subscribe(["t"], slow)
    await until(lambda: seen == [b"a"])
    assert broker.pending("t") == 1  # in flight: not finished, not dropped
    await broker.subscribe([], slow)  # unsubscribe cancels the in-flight handler
    assert broker.pending("t") == 1
    got: list[bytes] = []

    async def fast(record: Record) -> None:
        got.append(record.value)

    await broker.subscribe(["t"], fast)
    await until(lambda: got == [b"a"])  # redelivered
    await until(lambda: broker.pending("t") == 0)
    await broker.close(grace_s=1)


async def test_handler_error_keeps_the_record() -> None:
    broker = await started()
    calls: list[int] = []

    async def flaky(record: Record) -> None:
        calls.append(record.offset)
        if len(calls) == 1:
            raise RuntimeError("bug")

    await broker.publish("t", b"a")
    await broker.subscribe(["t"], flaky)
    await until(lambda: broker.pending("t") == 0)
    assert calls == [0, 0]
    await broker.close(grace_s=1)


async def test_close_waits_for_in_flight_within_grace() -> None:
    broker = await started()
    finished: list[bytes] = []

    async def handler(record: Record) -> None:
        await asyncio.sleep(0.1)
        finished.append(record.value)

    await broker.publish("t", b"a")
    await broker.publish("t", b"b")
    await broker.subscribe(["t"], handler)
    await until(lambda: broker._topics["t"].busy)
    await broker.close(grace_s=2)
    assert finished == [b"a"]  # the in-flight one finished, no new one was taken
    assert broker.pending("t") == 1
    assert not broker.ready()
    with pytest.raises(BrokerError):
        await broker.publish("t", b"c")


async def test_close_cancels_after_grace() -> None:
    broker = await started()

    async def stuck(record: Record) -> None:
        await asyncio.Event().wait()

    await broker.publish("t", b"a")
    await broker.subscribe(["t"], stuck)
    await until(lambda: broker._topics["t"].busy)
    t0 = time.monotonic()
    await broker.close(grace_s=0.2)
    assert time.monotonic() - t0 < 2
    assert broker.pending("t") == 1  # not finished: kept


async def test_publish_many() -> None:
    broker = await started()
    outcomes = await broker.publish_many(
        [PublishRecord("t", b"1"), PublishRecord("u", b"2", b"k", [("h", b"v")])]
    )
    assert outcomes == [None, None]
    assert broker.pending("t") == 1 and broker.pending("u") == 1
    await broker.close(grace_s=0)
    failed = await broker.publish_many([PublishRecord("t", b"1")])
    assert isinstance(failed[0], BrokerError)


async def test_any_topic_name_and_partition_are_taken() -> None:
    # Dapr's in-memory component takes any topic name; there is one partition, so an explicit
    # partition (Kafka's partitionNumber) is ignored rather than refused.
    broker = await started()
    for name in ("a b", "a/b/c", "x" * 300, ".", "or\ufffdders"):
        await broker.publish(name, b"v", partition=3)
        assert broker.pending(name) == 1
    assert await broker.publish_many([PublishRecord("a/b", b"v", partition=7)]) == [None]
    assert broker._topics["a/b"].log[0].partition == 0
    await broker.close(grace_s=0)
