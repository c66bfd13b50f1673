"""ConsumerGroup against the real broker (Tansu via ``kafka_bootstrap``), with plain async
handlers instead of the HTTP delivery path (that is tested in ``test_delivery``).

Records are produced with a raw ``AIOKafkaProducer`` to explicit partitions (auto-created
topics have 4). What a group committed is read back with a consumer of the same group that
never joins it (``committed()`` needs no assignment). Session 3 s / heartbeat 1 s keep joins
at about 2 s on Tansu.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tidings.sidecar.brokers.base import Record
from tidings.sidecar.brokers.kafka.consuming import ConsumerGroup
from tidings.sidecar.resources.kafka import KafkaMetadata, parse_kafka_metadata

pytestmark = pytest.mark.timeout(60)

PARTITIONS = 4
CONSUMING_LOGGER = "tidings.sidecar.brokers.kafka.consuming"


def meta_for(bootstrap: str, group: str) -> KafkaMetadata:
    return parse_kafka_metadata(
        {
            "brokers": bootstrap,
            "authType": "none",
            "consumerGroup": group,
            "initialOffset": "oldest",
            "sessionTimeout": "3s",
            "heartbeatInterval": "1s",
        },
        app_id="consumer-test",
    )


def new_group(meta: KafkaMetadata, handler: Callable[[Record], Awaitable[None]]) -> ConsumerGroup:
    return ConsumerGroup(
        meta,
        handler,
        app_id="consumer-test",
        pubsubname="pubsub",
        commit_interval_s=0.1,
        commit_timeout_s=2.0,
        revoke_grace_s=0.5,
        cancel_wait_s=0.5,
        reload_grace_s=0.5,
    )


async def produce(
    bootstrap: str, topic: str, per_partition: int, partitions: Iterable[int] = range(PARTITIONS)
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=f"{p}-{i}".encode(), partition=p)
            for p in partitions
            for i in range(per_partition)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """Committed offsets per partition, read without joining the group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_order_within_partition_and_a_slow_partition_blocks_no_other(
    kafka_bootstrap: str, unique: str
) -> None:
    topic, group = f"order-{unique}", f"g-{unique}"
    await produce(kafka_bootstrap, topic, 50)
    seen: dict[int, list[int]] = defaultdict(list)
    others_done = asyncio.Event()

    async def handler(record: Record) -> None:
        if record.partition == 0:
            # partition 0 cannot progress until every other partition has finished
            await others_done.wait()
        seen[record.partition].append(record.offset)
        if all(len(seen[p]) == 50 for p in (1, 2, 3)):
            others_done.set()

    g = new_group(meta_for(kafka_bootstrap, group), handler)
    await g.set_topics([topic])
    try:
        await until(
            lambda: all(len(seen[p]) == 50 for p in range(PARTITIONS)), 20, "all 200 records"
        )
    finally:
        await g.stop(grace_s=2)
    assert {p: seen[p] for p in range(PARTITIONS)} == {
        p: list(range(50)) for p in range(PARTITIONS)
    }
    assert await committed(kafka_bootstrap, group, topic) == dict.fromkeys(range(PARTITIONS), 50)


async def test_only_finished_offsets_are_committed(kafka_bootstrap: str, unique: str) -> None:
    """A handler that never finishes offset 7 of partition 0: the next member of the group gets
    offset 7 and everything after it again, nothing before it, and nothing of partition 1."""
    topic, group = f"commit-{unique}", f"g-{unique}"
    await produce(kafka_bootstrap, topic, 20, partitions=(0, 1))
    finished: dict[int, list[int]] = defaultdict(list)
    cancelled: list[tuple[int, int]] = []

    async def stuck_at_7(record: Record) -> None:
        if record.partition == 0 and record.offset == 7:
            try:
                await asyncio.Event().wait()  # never finishes
            except asyncio.CancelledError:
                cancelled.append((record.partition, record.offset))
                raise
        finished[record.partition].append(record.offset)

    first = new_group(meta_for(kafka_bootstrap, group), stuck_at_7)
    await first.set_topics([topic])
    await until(
        lambda: finished[0] == list(range(7)) and len(finished[1]) == 20,
        20,
        "partition 0 stuck at 7 and partition 1 done",
    )
    await first.stop(grace_s=0.3)
    assert cancelled == [(0, 7)]
    offsets = await committed(kafka_bootstrap, group, topic)
    assert (offsets[0], offsets[1]) == (7, 20)

    again: dict[int, list[int]] = defaultdict(list)

    async def record_all(record: Record) -> None:
        again[record.partition].append(record.offset)

    second = new_group(meta_for(kafka_bootstrap, group), record_all)
    await second.set_topics([topic])
    try:
        await until(lambda: len(again[0]) == 13, 20, "offsets 7..19 of partition 0 again")
        assert again[0] == list(range(7, 20))
        assert again[1] == []
    finally:
        await second.stop(grace_s=1)


async def test_members_of_one_group_split_partitions_and_groups_each_get_all(
    kafka_bootstrap: str, unique: str
) -> None:
    topic = f"split-{unique}"
    await produce(kafka_bootstrap, topic, 1)  # the topic exists with its 4 partitions
    handled: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def recorder(name: str) -> Callable[[Record], Awaitable[None]]:
        async def handler(record: Record) -> None:
            handled[name].append((record.partition, record.offset))

        return handler

    a1 = new_group(meta_for(kafka_bootstrap, f"a-{unique}"), recorder("a1"))
    a2 = new_group(meta_for(kafka_bootstrap, f"a-{unique}"), recorder("a2"))
    b = new_group(meta_for(kafka_bootstrap, f"b-{unique}"), recorder("b"))
    try:
        await asyncio.gather(a1.set_topics([topic]), a2.set_topics([topic]), b.set_topics([topic]))
        await until(
            lambda: len(a1.assignment()) == 2 and len(a2.assignment()) == 2,
            20,
            "a split of 2 + 2 partitions",
        )
        await produce(kafka_bootstrap, topic, 25)
        everything = {(p, o) for p in range(PARTITIONS) for o in range(26)}
        await until(
            lambda: (
                len(handled["a1"]) + len(handled["a2"]) >= len(everything)
                and len(handled["b"]) >= len(everything)
            ),
            20,
            "both groups to get all",
        )
    finally:
        await asyncio.gather(a1.stop(grace_s=1), a2.stop(grace_s=1), b.stop(grace_s=1))
    assert set(handled["a1"]).isdisjoint(handled["a2"])
    assert sorted(handled["a1"] + handled["a2"]) == sorted(everything)  # each exactly once
    assert sorted(handled["b"]) == sorted(everything)
    assert {p for p, _ in handled["a1"]}.isdisjoint({p for p, _ in handled["a2"]})


async def test_revocation_cancels_in_flight_and_the_new_owner_gets_the_record(
    kafka_bootstrap: str, unique: str
) -> None:
    topic, group = f"revoke-{unique}", f"g-{unique}"
    await produce(kafka_bootstrap, topic, 1)
    in_flight: set[tuple[int, int]] = set()
    cancelled: list[tuple[int, int]] = []

    async def never_finishes(record: Record) -> None:
        key = (record.partition, record.offset)
        in_flight.add(key)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(key)
            in_flight.discard(key)
            raise

    got: list[tuple[int, int]] = []

    async def new_owner(record: Record) -> None:
        got.append((record.partition, record.offset))

    first = new_group(meta_for(kafka_bootstrap, group), never_finishes)
    second = new_group(meta_for(kafka_bootstrap, group), new_owner)
    try:
        await first.set_topics([topic])
        await until(lambda: len(in_flight) == PARTITIONS, 20, "4 handlers in flight")
        await second.set_topics([topic])
        await until(
            lambda: len(second.assignment()) == 2 and len(got) == 2,
            20,
            "the second member to get its 2 partitions' records",
        )
        moved = {tp.partition for tp in second.assignment()}
        assert sorted(got) == sorted((p, 0) for p in moved)
        assert set(got) <= set(cancelled)  # revoked in flight, cancelled, redelivered
        # the first member got its partitions back and was handed their records again
        await until(
            lambda: {p for p, _ in in_flight} == set(range(PARTITIONS)) - moved,
            10,
            "the first member to retry its own partitions",
        )
    finally:
        await asyncio.gather(first.stop(grace_s=0), second.stop(grace_s=1))
    offsets = await committed(kafka_bootstrap, group, topic)
    assert all(offsets[p] == 1 for p in moved)
    assert all(offsets[p] is None for p in set(range(PARTITIONS)) - moved)


async def test_stop_lets_in_flight_handlers_finish_and_commits_them(
    kafka_bootstrap: str, unique: str
) -> None:
    topic, group = f"stop-{unique}", f"g-{unique}"
    await produce(kafka_bootstrap, topic, 3, partitions=(0,))
    started: list[int] = []
    finished: list[int] = []

    async def slow(record: Record) -> None:
        started.append(record.offset)
        await asyncio.sleep(0.5)  # a delivery that takes a while (the work, not a wait)
        finished.append(record.offset)

    g = new_group(meta_for(kafka_bootstrap, group), slow)
    await g.set_topics([topic])
    await until(lambda: started == [0], 20, "offset 0 in flight")
    await g.stop(grace_s=5)
    assert finished == [0] and started == [0]  # finished in the grace; nothing new dispatched
    assert (await committed(kafka_bootstrap, group, topic))[0] == 1


async def test_set_topics_adds_a_topic(kafka_bootstrap: str, unique: str) -> None:
    first_topic, second_topic, group = f"reload1-{unique}", f"reload2-{unique}", f"g-{unique}"
    await produce(kafka_bootstrap, first_topic, 5)
    seen: list[tuple[str, int, int]] = []

    async def handler(record: Record) -> None:
        seen.append((record.topic, record.partition, record.offset))

    g = new_group(meta_for(kafka_bootstrap, group), handler)
    try:
        await g.set_topics([first_topic])
        await until(lambda: len(seen) == 20, 20, f"20 records of {first_topic}")
        await produce(kafka_bootstrap, second_topic, 5)
        await g.set_topics([first_topic, second_topic])
        await until(lambda: len(seen) >= 40, 20, f"20 records of {second_topic}")
        await until(
            lambda: {tp.topic for tp in g.assignment()} == {first_topic, second_topic},
            10,
            "both topics assigned",
        )
        await g.set_topics([])  # no topics: stop consuming and leave the group
        assert g.assignment() == frozenset()
    finally:
        await g.stop(grace_s=1)
    assert len(seen) == len(set(seen)) == 40  # the first topic was committed before reloading
    assert {t for t, _, _ in seen} == {first_topic, second_topic}
    for topic in (first_topic, second_topic):
        assert await committed(kafka_bootstrap, group, topic) == dict.fromkeys(range(PARTITIONS), 5)


async def test_kafka_broker_publishes_and_delivers_then_closes(
    kafka_bootstrap: str, unique: str
) -> None:
    """KafkaBroker composes the producer and this consumer group (one group per app-id)."""
    from tidings.sidecar.brokers.kafka import KafkaBroker
    from tidings.sidecar.resources.loading import LoadedComponent
    from tidings.sidecar.resources.models import Component

    topic = f"broker-{unique}"
    values = {
        "brokers": kafka_bootstrap,
        "authType": "none",
        "initialOffset": "oldest",
        "sessionTimeout": "3s",
        "heartbeatInterval": "1s",
    }
    component = Component.model_validate(
        {
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": "pubsub"},
            "spec": {
                "type": "pubsub.kafka",
                "version": "v1",
                "metadata": [{"name": k, "value": v} for k, v in values.items()],
            },
        }
    )
    app_id = f"app-{unique}"
    broker = KafkaBroker(
        LoadedComponent(component, "test", values, parse_kafka_metadata(values, app_id=app_id)),
        app_id=app_id,
    )
    got: list[Record] = []

    async def handler(record: Record) -> None:
        got.append(record)

    await broker.start()
    try:
        assert broker.ready()
        await broker.publish(topic, b"hello", key=b"k", headers=[("h", b"v")])
        await broker.subscribe({topic}, handler)
        await until(lambda: len(got) == 1, 20, "the published record")
    finally:
        await broker.close(grace_s=1)
    assert not broker.ready()
    assert (got[0].value, got[0].key, got[0].headers) == (b"hello", b"k", (("h", b"v"),))
    offsets = await committed(kafka_bootstrap, app_id, topic)  # the app-id is the group
    assert offsets[got[0].partition] == 1


async def test_a_handler_that_raises_gets_the_record_again_never_skipped(
    kafka_bootstrap: str, unique: str
) -> None:
    topic, group = f"raises-{unique}", f"g-{unique}"
    await produce(kafka_bootstrap, topic, 2, partitions=(0,))
    calls: list[int] = []

    async def fails_once(record: Record) -> None:
        calls.append(record.offset)
        if calls == [0]:
            raise RuntimeError("bug in the handler")

    g = new_group(meta_for(kafka_bootstrap, group), fails_once)
    await g.set_topics([topic])
    try:
        await until(lambda: len(calls) == 3, 20, "offset 0 twice, then offset 1")
    finally:
        await g.stop(grace_s=1)
    assert calls == [0, 0, 1]
    assert (await committed(kafka_bootstrap, group, topic))[0] == 2


async def test_start_is_retried_with_new_consumers_until_the_broker_is_up(
    tmp_path, unique: str
) -> None:
    """aiokafka's start() tries once (pitfall 18): the group keeps retrying in the background."""
    from tidings.sidecar.cli.localbroker import free_port, start_local_broker

    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic, group = f"late-{unique}", f"g-{unique}"
    got: list[int] = []

    async def handler(record: Record) -> None:
        got.append(record.offset)

    g = ConsumerGroup(
        meta_for(bootstrap, group),
        handler,
        app_id="consumer-test",
        pubsubname="pubsub",
        start_backoff_s=0.1,
        max_start_backoff_s=0.5,
    )
    await g.set_topics([topic])  # returns after the first (failed) attempt
    assert g.assignment() == frozenset()
    broker = await asyncio.to_thread(start_local_broker, port=port, log_path=tmp_path / "tansu.log")
    try:
        await produce(bootstrap, topic, 1, partitions=(0,))
        await until(lambda: got == [0], 30, "the record after the broker came up")
    finally:
        await g.stop(grace_s=1)
        broker.stop()


async def until_committed(
    bootstrap: str, group: str, topic: str, expected: dict[int, int | None], timeout_s: float
) -> None:
    """Poll the group's committed offsets of ``topic`` until they equal ``expected``."""
    deadline = time.monotonic() + timeout_s
    while True:
        offsets = await committed(bootstrap, group, topic)
        if offsets == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"committed offsets of {topic} still {offsets} after"
                f" {timeout_s} s, expected {expected}"
            )
        await asyncio.sleep(0.2)


def commit_warnings(caplog: pytest.LogCaptureFixture, topic: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == CONSUMING_LOGGER
        and r.levelno >= logging.WARNING
        and getattr(r, "topic", None) == topic
    ]


async def test_a_partition_whose_commits_fail_does_not_hold_up_the_others(
    kafka_bootstrap: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic deleted while one of its records is in flight: that record's commit fails on the
    broker (UnknownTopicOrPartition, which aiokafka retries for ever inside ``commit()``). The
    other topic's commits keep advancing; the failing partition is logged once, not every
    commit interval."""
    from aiokafka.admin import AIOKafkaAdminClient

    caplog.set_level(logging.INFO, logger=CONSUMING_LOGGER)
    kept, deleted, group = f"kept-{unique}", f"deleted-{unique}", f"g-{unique}"
    await produce(kafka_bootstrap, kept, 3)
    await produce(kafka_bootstrap, deleted, 1, partitions=(0,))
    held, release = asyncio.Event(), asyncio.Event()
    finished: dict[int, list[int]] = defaultdict(list)

    async def handler(record: Record) -> None:
        if record.topic == deleted:
            held.set()
            await release.wait()
            return
        finished[record.partition].append(record.offset)

    g = new_group(meta_for(kafka_bootstrap, group), handler)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await g.set_topics([kept, deleted])
        await until(
            lambda: held.is_set() and all(len(finished[p]) == 3 for p in range(PARTITIONS)),
            20,
            "the kept topic handled and the deleted topic's record in flight",
        )
        await until_committed(kafka_bootstrap, group, kept, dict.fromkeys(range(PARTITIONS), 3), 10)
        await admin.delete_topics([deleted])
        release.set()  # finished now: its commit can only fail
        # aiokafka logs each failed attempt; new work for the kept topic only after that, so
        # its offsets are not in the request that fails (the broker would store them anyway)
        await until(
            lambda: any(
                r.name == "aiokafka.consumer.group_coordinator"
                and r.getMessage().startswith("OffsetCommit failed")
                and deleted in r.getMessage()
                for r in caplog.records
            ),
            10,
            "a commit of the deleted topic's partition to fail",
        )
        await produce(kafka_bootstrap, kept, 3)
        await until(
            lambda: all(len(finished[p]) == 6 for p in range(PARTITIONS)),
            20,
            "the new records of the kept topic",
        )
        await until_committed(kafka_bootstrap, group, kept, dict.fromkeys(range(PARTITIONS), 6), 15)
    finally:
        await admin.close()
        await g.stop(grace_s=1)
    assert {p: finished[p] for p in range(PARTITIONS)} == {
        p: list(range(6)) for p in range(PARTITIONS)
    }
    failing = commit_warnings(caplog, deleted)
    assert 1 <= len(failing) <= 2, [r.getMessage() for r in failing]  # rate-limited per partition
    assert not commit_warnings(caplog, kept)


async def test_commits_resume_after_the_broker_restarts_with_its_topics_and_offsets_gone(
    tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Tansu keeps everything in memory: killed and restarted on the same port, it has lost the
    topics and the group's offsets. A record of a topic that does not come back finishes during
    the outage, so a commit for it is pending across the restart; the other topic comes back
    (produced to) and its records finished after the restart must be committed."""
    from tidings.sidecar.cli.localbroker import free_port, start_local_broker

    caplog.set_level(logging.INFO, logger=CONSUMING_LOGGER)
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    back, gone, group = f"back-{unique}", f"gone-{unique}", f"g-{unique}"
    broker = await asyncio.to_thread(
        start_local_broker, port=port, log_path=tmp_path / "tansu-1.log"
    )
    held, release = asyncio.Event(), asyncio.Event()
    before: dict[int, list[int]] = defaultdict(list)
    after: dict[int, list[int]] = defaultdict(list)
    restarted = False

    async def handler(record: Record) -> None:
        if record.topic == gone:
            held.set()
            await release.wait()
            return
        (after if restarted else before)[record.partition].append(record.offset)

    try:
        # 5 before and 3 after: the stale position (5) is past the new log's end, so only the
        # rejoin (positions from the new broker's empty offsets: earliest) delivers 0..2
        await produce(bootstrap, back, 5)
        await produce(bootstrap, gone, 1, partitions=(0,))
        g = new_group(meta_for(bootstrap, group), handler)
        try:
            await g.set_topics([back, gone])
            await until(
                lambda: held.is_set() and all(len(before[p]) == 5 for p in range(PARTITIONS)),
                20,
                "the first records handled and one record of the lost topic in flight",
            )
            await until_committed(bootstrap, group, back, dict.fromkeys(range(PARTITIONS), 5), 10)
            await asyncio.to_thread(broker.stop)
            release.set()  # finishes during the outage: its commit waits for the broker
            broker = await asyncio.to_thread(
                start_local_broker, port=port, log_path=tmp_path / "tansu-2.log"
            )
            restarted = True
            await produce(bootstrap, back, 3)  # recreates `back`; `gone` stays gone
            await until(
                lambda: all({0, 1, 2} <= set(after[p]) for p in range(PARTITIONS)),
                30,
                "the records produced after the restart",
            )
            await until_committed(bootstrap, group, back, dict.fromkeys(range(PARTITIONS), 3), 15)
        finally:
            await g.stop(grace_s=1)
    finally:
        broker.stop()
    assert not [r for r in caplog.records if "still in flight" in r.getMessage()]
    assert len(commit_warnings(caplog, gone)) <= 2  # rate-limited per partition, if it failed
