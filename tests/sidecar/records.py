"""Test helper: read records back from the real broker with a plain aiokafka consumer (no group)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord


async def read_records(bootstrap: str, topic: str, count: int, *,
                       timeout_s: float = 15.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, polling until ``count`` arrived or the
    deadline passed (then the test's own assertion on the count fails)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                metadata_max_age_ms=500)
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return records
