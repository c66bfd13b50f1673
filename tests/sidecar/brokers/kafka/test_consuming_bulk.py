"""The Kafka partition worker's batching for bulk subscriptions (``brokers/kafka/consuming.py``
``_work_batch``, §2.4) against the real broker (Tansu via ``kafka_bootstrap``), with an in-test
``BatchHandler`` instead of the HTTP path (that is ``tests/sidecar/delivery/test_bulk.py``, and end
to end ``tests/integration/test_bulk.py``).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

import pytest

from tidings.sidecar.brokers.base import BatchPolicy, Record

from .test_consuming import committed, meta_for, new_group, produce, until

pytestmark = pytest.mark.timeout(60)


class Batches:
    """A BatchHandler: batches ``topic`` by ``policy``, records every batch; a batch holding
    ``stuck_at`` (partition, offset) never finishes."""

    def __init__(
        self, topic: str, policy: BatchPolicy, stuck_at: tuple[int, int] | None = None
    ) -> None:
        self.topic, self.policy, self.stuck_at = topic, policy, stuck_at
        self.batches: dict[int, list[list[int]]] = defaultdict(list)
        self.singles: list[Record] = []
        self.cancelled: list[list[int]] = []

    def batch_policy(self, topic: str) -> BatchPolicy | None:
        return self.policy if topic == self.topic else None

    async def __call__(self, record: Record) -> None:
        self.singles.append(record)

    async def handle_batch(self, records: Sequence[Record]) -> None:
        offsets = [r.offset for r in records]
        partition = records[0].partition
        assert all(r.partition == partition for r in records)
        if (
            self.stuck_at is not None
            and self.stuck_at[0] == partition
            and self.stuck_at[1] in offsets
        ):
            try:
                await asyncio.Event().wait()  # never finishes
            except asyncio.CancelledError:
                self.cancelled.append(offsets)
                raise
        self.batches[partition].append(offsets)

    def delivered(self, partition: int) -> list[int]:
        return [o for batch in self.batches[partition] for o in batch]


async def test_batches_hold_up_to_max_records_in_offset_order_and_all_commit(
    kafka_bootstrap: str, unique: str
) -> None:
    topic, group = f"bulk-{unique}", f"g-{unique}"
    await produce(kafka_bootstrap, topic, 30, partitions=(0, 1))
    handler = Batches(topic, BatchPolicy(max_records=7, max_await_s=0.2))
    g = new_group(meta_for(kafka_bootstrap, group), handler)
    await g.set_topics([topic])
    try:
        await until(
            lambda: len(handler.delivered(0)) == 30 and len(handler.delivered(1)) == 30,
            20,
            "60 records in batches",
        )
    finally:
        await g.stop(grace_s=2)
    for p in (0, 1):
        assert handler.delivered(p) == list(range(30))  # each once, in order
        assert all(1 <= len(b) <= 7 for b in handler.batches[p])
        # the records were there before the consumer: batches fill up
        assert max(len(b) for b in handler.batches[p]) == 7
    assert handler.singles == []
    assert await committed(kafka_bootstrap, group, topic) == {0: 30, 1: 30, 2: None, 3: None}


async def test_a_partial_batch_goes_after_max_await(kafka_bootstrap: str, unique: str) -> None:
    topic, group = f"bulk-wait-{unique}", f"g-{unique}"
    handler = Batches(topic, BatchPolicy(max_records=100, max_await_s=0.3))
    g = new_group(meta_for(kafka_bootstrap, group), handler)
    await g.set_topics([topic])
    try:
        await produce(kafka_bootstrap, topic, 3, partitions=(2,))
        await until(lambda: len(handler.delivered(2)) == 3, 20, "3 records")
    finally:
        await g.stop(grace_s=2)
    assert handler.delivered(2) == [0, 1, 2]


async def test_a_batch_that_does_not_finish_is_not_committed_and_comes_again(
    kafka_bootstrap: str, unique: str
) -> None:
    topic, group = f"bulk-commit-{unique}", f"g-{unique}"
    await produce(kafka_bootstrap, topic, 20, partitions=(0, 1))
    handler = Batches(topic, BatchPolicy(max_records=5, max_await_s=0.2), stuck_at=(0, 12))
    first = new_group(meta_for(kafka_bootstrap, group), handler)
    await first.set_topics([topic])
    await until(
        lambda: (
            len(handler.delivered(1)) == 20
            and bool(handler.delivered(0))
            and handler.delivered(0)[-1] >= 9
        ),
        20,
        "partition 1 done, partition 0 stuck",
    )
    await first.stop(grace_s=0.3)
    [stuck] = handler.cancelled
    assert 12 in stuck
    offsets = await committed(kafka_bootstrap, group, topic)
    # exactly what finished, contiguously, is committed: up to the stuck batch's first offset
    assert offsets[0] == stuck[0] == len(handler.delivered(0))
    assert offsets[1] == 20

    again = Batches(topic, BatchPolicy(max_records=5, max_await_s=0.2))
    second = new_group(meta_for(kafka_bootstrap, group), again)
    await second.set_topics([topic])
    try:
        await until(
            lambda: len(again.delivered(0)) == 20 - stuck[0],
            20,
            "the stuck batch and what followed it again",
        )
        assert again.delivered(0) == list(range(stuck[0], 20))
        assert again.delivered(1) == []
    finally:
        await second.stop(grace_s=1)
