"""Delivery benchmark on Redis Streams: read → deliver over HTTP → XACK, sidecar vs raw redis-py.

The same as ``delivery.py`` with a ``pubsub.redis`` component instead of Kafka. Each side drains
a backlog of ``--messages`` ~1 KiB CloudEvents in one stream (the Redis at ``--redis``, default
the machine's 127.0.0.1:6379) into the same app process (``sink_app.py``), acknowledging only
what the app answered:

- ``sidecar``: ``python -m tidings.sidecar`` with a ``pubsub.redis`` component, once with Dapr's
  default ``concurrency: 10`` and once with ``concurrency: 1`` (stream order);
- ``redis-py``: the least a correct at-least-once consumer does: ``XREADGROUP COUNT 100``, the
  batch POSTed by 10 parallel deliveries, then one ``XACK`` of the batch.

Throughput is measured at the app, first to last delivery. The benchmark's streams are deleted
at the end. Usage: ``python benchmarks/delivery_redis.py [--messages 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import uuid
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from delivery import delivered_rate, start_app, wait_count


async def produce(client: aioredis.Redis, topic: str, n: int) -> None:
    blob = "x" * 800
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            pipe.xadd(
                topic,
                {
                    "data": json.dumps(
                        {
                            "specversion": "1.0",
                            "id": str(i),
                            "source": "bench",
                            "type": "t",
                            "topic": topic,
                            "pubsubname": "pubsub",
                            "datacontenttype": "application/json",
                            "data": {"n": i, "blob": blob},
                        }
                    )
                },
            )
        await pipe.execute()


async def run_sidecar(redis_host: str, topic: str, n: int, concurrency: int) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    (workdir / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
        "spec:\n  type: pubsub.redis\n  version: v1\n  metadata:\n"
        f'  - {{name: redisHost, value: "{redis_host}"}}\n'
        f'  - {{name: concurrency, value: "{concurrency}"}}\n'
    )
    return await delivered_rate(workdir, topic, n)


async def run_raw(client: aioredis.Redis, topic: str, n: int, parallel: int = 10) -> float:
    app, app_port = start_app(topic)
    url = f"http://127.0.0.1:{app_port}/events"
    group = f"raw-{uuid.uuid4().hex[:6]}"
    await client.xgroup_create(topic, group, id="0")
    headers = {"Content-Type": "application/cloudevents+json"}
    try:
        async with aiohttp.ClientSession() as session:
            while True:  # wait for the app to listen
                try:
                    async with session.get(f"http://127.0.0.1:{app_port}/count"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)  # start-up poll

            async def deliver(entries: list) -> None:  # type: ignore[type-arg]
                for _, fields in entries:
                    async with session.post(url, data=fields[b"data"], headers=headers) as r:
                        await r.read()

            done = 0
            while done < n:
                reply = await client.xreadgroup(group, "raw", {topic: ">"}, count=100, block=500)
                for _, entries in reply or ():
                    await asyncio.gather(*(deliver(entries[i::parallel]) for i in range(parallel)))
                    await client.xack(topic, group, *(i for i, _ in entries))
                    done += len(entries)
            state = await wait_count(session, app_port, n)
    finally:
        app.terminate()
        app.wait()
    return n / (state["last"] - state["first"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--redis", default="127.0.0.1:6379", help="host:port of Redis")
    args = parser.parse_args()
    host, _, port = args.redis.rpartition(":")
    client = aioredis.Redis(host=host, port=int(port))
    topics = [f"bench-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    try:
        for topic in topics:
            await produce(client, topic, args.messages)
        rate_10 = await run_sidecar(args.redis, topics[0], args.messages, 10)
        rate_1 = await run_sidecar(args.redis, topics[1], args.messages, 1)
        raw_rate = await run_raw(client, topics[2], args.messages)
    finally:
        await client.delete(*topics)
        await client.aclose()
    print(
        f"\n{args.messages} CloudEvents of ~1 KiB, one stream, Redis at {args.redis}, "
        f"{os.cpu_count()} cores; app, consumer and Redis share the machine"
    )
    print(f"{'':<40}{'deliveries/s':>14}")
    print(f"{'tidings sidecar, concurrency 10':<40}{rate_10:14.0f}")
    print(f"{'tidings sidecar, concurrency 1 (ordered)':<40}{rate_1:14.0f}")
    print(f"{'raw redis-py + aiohttp, 10 parallel':<40}{raw_rate:14.0f}")
    print(f"ratio sidecar(10)/baseline: {rate_10 / raw_rate:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
