"""Delivery benchmark: consume → deliver over HTTP → commit, tidings sidecar vs raw aiokafka.

Both sides drain the same backlog of ``--messages`` 1 KiB CloudEvents (4 partitions, local
Tansu broker) into the same app process (``sink_app.py``), one in-order delivery at a time per
partition, partitions in parallel, committing only what the app answered:

- ``sidecar``: ``python -m tidings.sidecar`` with the app's programmatic subscription (routing,
  header mapping, response classification, offset tracking: the whole delivery engine);
- ``aiokafka``: the least a correct at-least-once consumer does: ``getmany``, one task per
  partition POSTing each record in order, then ``commit`` of the last offset + 1 per batch.

Throughput is measured at the app, from its first to its last delivery, so group-join time is
not counted. Usage: ``python benchmarks/delivery.py [--messages 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tidings.sidecar.localbroker import free_port, start_local_broker
from tidings.sidecar.localdev import kafka_component_yaml

HERE = Path(__file__).resolve().parent


async def produce(bootstrap: str, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    blob = "x" * 800
    futures = [await producer.send(topic, json.dumps(
        {"specversion": "1.0", "id": str(i), "source": "bench", "type": "t", "topic": topic,
         "pubsubname": "pubsub", "datacontenttype": "application/json",
         "data": {"n": i, "blob": blob}}).encode()) for i in range(n)]
    await asyncio.gather(*futures)
    await producer.stop()


def start_app(topic: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    app = subprocess.Popen([sys.executable, "-P", str(HERE / "sink_app.py")],
                           env={**os.environ, "APP_PORT": str(port), "TOPIC": topic})
    return app, port


async def wait_count(session: aiohttp.ClientSession, port: int, n: int) -> dict[str, float]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            async with session.get(f"http://127.0.0.1:{port}/count") as r:
                state = await r.json()
            if state["count"] >= n:
                return state
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)  # progress poll of the benchmark driver
    raise SystemExit("deliveries did not finish")


async def run_sidecar(bootstrap: str, topic: str, n: int) -> float:
    app, app_port = start_app(topic)
    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    (workdir / "pubsub.yaml").write_text(kafka_component_yaml(bootstrap))
    sidecar = subprocess.Popen(
        [sys.executable, "-P", "-m", "tidings.sidecar", "--app-id", f"bench-{uuid.uuid4().hex[:6]}",
         "--app-port", str(app_port), "--dapr-http-port", str(free_port()),
         "--resources-path", str(workdir), "--log-level", "warn"])
    try:
        async with aiohttp.ClientSession() as session:
            state = await wait_count(session, app_port, n)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait(30)
        app.terminate()
        app.wait()
    return n / (state["last"] - state["first"])


async def run_raw(bootstrap: str, topic: str, n: int) -> float:
    app, app_port = start_app(topic)
    url = f"http://127.0.0.1:{app_port}/events"
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                group_id=f"raw-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=500)
    headers = {"Content-Type": "application/cloudevents+json"}
    try:
        async with aiohttp.ClientSession() as session:
            while True:  # wait for the app to listen
                try:
                    async with session.get(f"http://127.0.0.1:{app_port}/count"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)  # start-up poll
            await consumer.start()
            done = 0

            async def deliver(records: list) -> None:  # type: ignore[type-arg]
                for record in records:
                    async with session.post(url, data=record.value, headers=headers) as r:
                        await r.read()

            while done < n:
                batch = await consumer.getmany(timeout_ms=500)
                await asyncio.gather(*(deliver(records) for records in batch.values()))
                if batch:
                    await consumer.commit({tp: records[-1].offset + 1
                                           for tp, records in batch.items()})
                done += sum(len(records) for records in batch.values())
            state = await wait_count(session, app_port, n)
    finally:
        await consumer.stop()
        app.terminate()
        app.wait()
    return n / (state["last"] - state["first"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    broker = start_local_broker()
    try:
        topic_sidecar, topic_raw = (f"bench-{uuid.uuid4().hex[:6]}" for _ in range(2))
        await produce(broker.bootstrap, topic_sidecar, args.messages)
        await produce(broker.bootstrap, topic_raw, args.messages)
        sidecar_rate = await run_sidecar(broker.bootstrap, topic_sidecar, args.messages)
        raw_rate = await run_raw(broker.bootstrap, topic_raw, args.messages)
    finally:
        broker.stop()
    print(f"\n{args.messages} CloudEvents of ~1 KiB, 4 partitions, local Tansu, "
          f"{os.cpu_count()} cores; app, consumer and broker share the machine")
    print(f"{'':<34}{'deliveries/s':>14}")
    print(f"{'tidings sidecar (full engine)':<34}{sidecar_rate:14.0f}")
    print(f"{'raw aiokafka + aiohttp (baseline)':<34}{raw_rate:14.0f}")
    print(f"ratio sidecar/baseline: {sidecar_rate / raw_rate:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
