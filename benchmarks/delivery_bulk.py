"""Bulk subscribe benchmark: the same backlog delivered one event per request and in bulk.

Drains ``--messages`` ~1 KiB CloudEvents (4 partitions, local Tansu broker) through a
``python -m tidings.sidecar`` into ``sink_app.py``, committing only what the app answered: once
with a plain subscription (one POST per event) and once with ``bulkSubscribe``
(``maxMessagesCount`` ``--bulk``, ``maxAwaitDurationMs`` 100; one POST per batch of a
partition, every entry answered SUCCESS). Throughput is measured at the app, first to last
delivery. Usage: ``python benchmarks/delivery_bulk.py [--messages 10000] [--bulk 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid

from tidings.sidecar.cli.localbroker import start_local_broker

from common import component_dir
from delivery import create_topic, delivered_rate, prefill


async def run(bootstrap: str, topic: str, n: int, bulk: int | None) -> float:
    return await delivered_rate(
        component_dir(bootstrap), topic, n, **({"BULK_MAX_COUNT": str(bulk)} if bulk else {})
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--bulk", type=int, default=100)
    args = parser.parse_args()
    broker = start_local_broker()
    try:
        single_topic, bulk_topic = (f"bench-{uuid.uuid4().hex[:6]}" for _ in range(2))
        for topic in (single_topic, bulk_topic):
            await create_topic(broker.bootstrap, topic)
            await prefill(broker.bootstrap, topic, args.messages)
        single = await run(broker.bootstrap, single_topic, args.messages, None)
        bulk = await run(broker.bootstrap, bulk_topic, args.messages, args.bulk)
    finally:
        broker.stop()
    print(
        f"\n{args.messages} CloudEvents of ~1 KiB, 4 partitions, local Tansu, "
        f"{os.cpu_count()} cores; app, sidecar and broker share the machine"
    )
    print(f"{'':<40}{'events/s':>10}")
    print(f"{'one event per request':<40}{single:10.0f}")
    print(f"{f'bulkSubscribe, maxMessagesCount {args.bulk}':<40}{bulk:10.0f}")
    print(f"ratio bulk/single: {bulk / single:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
