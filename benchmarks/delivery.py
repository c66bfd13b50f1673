"""Delivery benchmark: consume → app → commit, tidings sidecar vs a raw aiokafka consumer group.

A topic of 8 partitions on a local Tansu broker is pre-filled with ``--messages`` (100,000) 1 KiB
CloudEvents; then, each round, with fresh consumer groups:

- ``sidecar``: ``python -m tidings.sidecar`` delivers to the app (``sink_app.py``) over HTTP with
  the app's programmatic subscription: routing, header mapping, answer classification, offset
  tracking and commits, the whole delivery engine;
- ``aiokafka in-process`` (the baseline the targets refer to): an aiokafka consumer group that
  calls the same app handler (``sink_app.handle``) in its own process, one record at a time in
  partition order, committing ``offset + 1`` after each ``getmany`` batch: what an app without
  a sidecar would run (``fetch_max_wait_ms`` as the sidecar's);
- ``aiokafka + HTTP``: the same consumer POSTing each record to the app over HTTP, one task per
  partition of a batch: isolates what HTTP to the app costs.

Time runs from the app's first delivery (group joins are not counted) until every offset is
committed (polled from the broker), so the rates include committing. Then delivery latency,
from publish to app receipt, at ``--rate`` (1,000) msg/s for ``--duration`` seconds, with the
sidecar and with the in-process baseline. Medians over ``--rounds``; results also go to
``benchmarks/results/delivery.json``.

Usage: ``python benchmarks/delivery.py [--quick] [--messages 100000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tidings.sidecar.cli.localbroker import free_port, start_local_broker

import sink_app
from common import (
    HERE,
    Sidecar,
    component_dir,
    describe_machine,
    machine_info,
    median_of,
    run,
    save_results,
    table,
)

PARTITIONS = 8
BLOB = "x" * 800
# The sidecar's consumer setting (brokers/kafka/consuming.py): Tansu holds every fetch this long,
# so the baselines use the same value, or the latency comparison would measure only this.
FETCH_MAX_WAIT_MS = 100


def event(topic: str, i: int, sent_ns: int | None = None) -> bytes:
    data: dict[str, Any] = {"n": i, "blob": BLOB}
    if sent_ns is not None:
        data["sent_ns"] = sent_ns
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": str(i),
            "source": "bench",
            "type": "t",
            "topic": topic,
            "pubsubname": "pubsub",
            "datacontenttype": "application/json",
            "data": data,
        }
    )


async def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def prefill(bootstrap: str, topic: str, n: int) -> float:
    """Produce ``n`` events round-robin over the partitions; returns seconds taken."""
    started = time.monotonic()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        enable_idempotence=False,
        max_batch_size=262_144,
    )
    await producer.start()
    try:
        for chunk in range(0, n, 5000):
            futures = [
                await producer.send(topic, event(topic, i), partition=i % PARTITIONS)
                for i in range(chunk, min(n, chunk + 5000))
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - started


def end_offsets(topic: str, n: int) -> dict[TopicPartition, int]:
    """The end offset of each partition after :func:`prefill` of ``n`` events (offsets start at
    0). Computed, not asked: Tansu's ListOffsets answers short of the end after large batches,
    while fetching returns every record."""
    return {TopicPartition(topic, p): len(range(p, n, PARTITIONS)) for p in range(PARTITIONS)}


async def wait_committed(
    bootstrap: str, group: str, ends: dict[TopicPartition, int], timeout_s: float = 600
) -> float:
    """Poll the group's committed offsets until they reach ``ends``; returns ``time.monotonic()``
    when they did (within the 20 ms poll). Reads them with a consumer of that group that never
    subscribes, so it does not join (Tansu drops the admin client's OffsetFetch)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            offsets = [await reader.committed(tp) for tp in ends]
            if all(c is not None and c >= end for c, end in zip(offsets, ends.values())):
                return time.monotonic()
            await asyncio.sleep(0.02)  # progress poll of the benchmark driver
    finally:
        await reader.stop()
    raise SystemExit(f"group {group} did not commit everything")


def start_app(topic: str, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """``sink_app.py`` subscribed to ``topic`` on a free port (``env`` added to its
    environment, e.g. ``BULK_MAX_COUNT``); the process and the port."""
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, str(HERE / "sink_app.py")],
        env={**os.environ, "APP_PORT": str(port), "TOPIC": topic, **env},
    )
    return app, port


async def app_state(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/count") as r:
        return await r.json()  # type: ignore[no-any-return]


async def wait_count(
    session: aiohttp.ClientSession, port: int, n: int, timeout_s: float = 600
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = await app_state(session, port)
            if state["count"] >= n:
                return state
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.02)  # progress poll of the benchmark driver
    raise SystemExit("deliveries did not finish")


async def wait_assigned(session: aiohttp.ClientSession, port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with session.get(f"http://127.0.0.1:{port}/v1.0/metadata") as r:
                meta = await r.json()
            if meta.get("extended", {}).get("kafka.assignment.pubsub"):
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)  # start-up poll
    raise SystemExit("the sidecar was not assigned partitions")


async def delivered_rate(resources: Path, topic: str, n: int, **app_env: str) -> float:
    """Deliveries per second, first to last at the app, of ``n`` events of ``topic`` drained by a
    sidecar on ``resources`` (any component type) into a fresh sink app (``app_env`` added to its
    environment)."""
    app, app_port = start_app(topic, **app_env)
    sidecar = Sidecar(resources, app_id=f"bench-{uuid.uuid4().hex[:6]}", app_port=app_port)
    try:
        async with aiohttp.ClientSession() as session:
            state = await wait_count(session, app_port, n)
    finally:
        sidecar.stop()
        app.terminate()
        app.wait()
    return n / (state["last"] - state["first"])


class SidecarPair:
    """The sink app and its sidecar (``app_id`` = consumer group) subscribed to ``topic``."""

    def __init__(self, bootstrap: str, topic: str, app_id: str) -> None:
        self.app_id = app_id
        self.app, self.app_port = start_app(topic)
        self.sidecar = Sidecar(component_dir(bootstrap), app_id=app_id, app_port=self.app_port)

    def stop(self) -> None:
        self.sidecar.stop()
        self.app.terminate()
        self.app.wait()


async def drain_sidecar(
    bootstrap: str, topic: str, n: int, ends: dict[TopicPartition, int]
) -> dict[str, Any]:
    pair = SidecarPair(bootstrap, topic, f"bench-{uuid.uuid4().hex[:6]}")
    try:
        async with aiohttp.ClientSession() as session:
            cpu0 = None
            while cpu0 is None:  # CPU from the first delivery on, not the start-up
                try:
                    if (await app_state(session, pair.app_port))["count"]:
                        cpu0 = pair.sidecar.proc.cpu_s()
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)  # start-up poll
            state = await wait_count(session, pair.app_port, n)
            committed_at = await wait_committed(bootstrap, pair.app_id, ends)
            cpu = pair.sidecar.proc.cpu_s() - cpu0
            rss = pair.sidecar.proc.peak_rss_bytes()
    finally:
        pair.stop()
    return {
        "msg_per_s": n / (committed_at - state["first"]),
        "delivered_per_s": n / (state["last"] - state["first"]),
        "cpu_s_per_1000": cpu / n * 1000,
        "peak_rss_mb": rss / 2**20,
    }


async def consume_group(
    bootstrap: str,
    topic: str,
    group: str,
    n: int | None,
    deliver: Any,
    stop: asyncio.Event | None = None,
    assigned: asyncio.Event | None = None,
) -> float:
    """A raw aiokafka consumer group member: ``getmany``, ``await deliver(batch)``, commit
    ``offset + 1`` per partition; until ``n`` records or ``stop``. Returns the monotonic time of
    the last commit."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    await consumer.start()
    done, last_commit = 0, time.monotonic()
    try:
        while (n is None or done < n) and not (stop is not None and stop.is_set()):
            batch = await consumer.getmany(timeout_ms=100)
            if assigned is not None and consumer.assignment():
                assigned.set()
            if not batch:
                continue
            await deliver(batch)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
            last_commit = time.monotonic()
            done += sum(len(records) for records in batch.values())
    finally:
        await consumer.stop()
    return last_commit


async def deliver_in_process(batch: dict[TopicPartition, list[Any]]) -> None:
    handle = sink_app.handle
    for records in batch.values():
        for record in records:
            handle(record.value)


async def drain_in_process(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    sink_app.reset()
    cpu0 = time.process_time()
    committed_at = await consume_group(
        bootstrap, topic, f"raw-{uuid.uuid4().hex[:6]}", n, deliver_in_process
    )
    state = sink_app.snapshot()
    return {
        "msg_per_s": n / (committed_at - state["first"]),
        "delivered_per_s": n / (state["last"] - state["first"]),
        "cpu_s_per_1000": (time.process_time() - cpu0) / n * 1000,
    }


async def drain_http(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    app, app_port = start_app(topic)
    url = f"http://127.0.0.1:{app_port}/events"
    headers = {"Content-Type": "application/cloudevents+json"}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await wait_count(session, app_port, 0)

            async def deliver(batch: dict[TopicPartition, list[Any]]) -> None:
                async def partition(records: list[Any]) -> None:
                    for record in records:
                        async with session.post(url, data=record.value, headers=headers) as r:
                            await r.read()

                await asyncio.gather(*(partition(records) for records in batch.values()))

            committed_at = await consume_group(
                bootstrap, topic, f"http-{uuid.uuid4().hex[:6]}", n, deliver
            )
            state = await app_state(session, app_port)
    finally:
        app.terminate()
        app.wait()
    return {
        "msg_per_s": n / (committed_at - state["first"]),
        "delivered_per_s": n / (state["last"] - state["first"]),
    }


async def paced_produce(bootstrap: str, topic: str, rate: float, duration_s: float) -> int:
    """Publish at ``rate`` msg/s for ``duration_s``, each event carrying its send time."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, enable_idempotence=False
    )
    await producer.start()
    n = int(rate * duration_s)
    futures = []
    try:
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing of the open-loop load generator
            futures.append(
                await producer.send(
                    topic, event(topic, i, time.time_ns()), partition=i % PARTITIONS
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return n


async def latency_sidecar(bootstrap: str, rate: float, duration_s: float) -> dict[str, Any]:
    topic = f"lat-{uuid.uuid4().hex[:6]}"
    await create_topic(bootstrap, topic)
    pair = SidecarPair(bootstrap, topic, f"lat-{uuid.uuid4().hex[:6]}")
    try:
        async with aiohttp.ClientSession() as session:
            await wait_assigned(session, pair.sidecar.port)
            n = await paced_produce(bootstrap, topic, rate, duration_s)
            state = await wait_count(session, pair.app_port, n)
    finally:
        pair.stop()
    return state["latency"]  # type: ignore[no-any-return]


async def latency_in_process(bootstrap: str, rate: float, duration_s: float) -> dict[str, Any]:
    topic = f"lat-{uuid.uuid4().hex[:6]}"
    await create_topic(bootstrap, topic)
    sink_app.reset()
    stop, assigned = asyncio.Event(), asyncio.Event()
    member = asyncio.create_task(
        consume_group(
            bootstrap,
            topic,
            f"lat-{uuid.uuid4().hex[:6]}",
            None,
            deliver_in_process,
            stop,
            assigned,
        )
    )
    await asyncio.wait_for(assigned.wait(), 60)
    n = await paced_produce(bootstrap, topic, rate, duration_s)
    deadline = time.monotonic() + 60
    while sink_app.state["count"] < n and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # progress poll of the benchmark driver
    stop.set()
    await member
    return sink_app.snapshot()["latency"]  # type: ignore[no-any-return]


def report(summary: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> None:
    d = summary["drain"]
    print(
        f"\ndelivery: {args.messages} CloudEvents of ~1 KiB on {PARTITIONS} partitions, local "
        f"Tansu; medians of {args.rounds} round(s)\n{describe_machine(info)}"
    )
    print("\ndrain the backlog, commits included (from the app's first delivery)")
    print(
        table(
            ["", "msg/s", "delivered/s", "CPU s/1k", "peak RSS MB"],
            [
                [
                    "tidings sidecar -> app over HTTP",
                    d["sidecar"]["msg_per_s"],
                    d["sidecar"]["delivered_per_s"],
                    d["sidecar"]["cpu_s_per_1000"],
                    d["sidecar"]["peak_rss_mb"],
                ],
                [
                    "aiokafka, handler in-process (baseline)",
                    d["in_process"]["msg_per_s"],
                    d["in_process"]["delivered_per_s"],
                    d["in_process"]["cpu_s_per_1000"],
                    None,
                ],
                [
                    "aiokafka -> app over HTTP",
                    d["http"]["msg_per_s"],
                    d["http"]["delivered_per_s"],
                    None,
                    None,
                ]
                if "http" in d
                else ["aiokafka -> app over HTTP (skipped)"] + [None] * 4,
            ],
            first_width=42,
        )
    )
    print(f"ratio sidecar/in-process baseline: {summary['drain_ratio']:.2f} (target >= 0.50)")
    if "http" in d:
        ratio = d["sidecar"]["msg_per_s"] / d["http"]["msg_per_s"]
        print(f"ratio sidecar/aiokafka -> HTTP: {ratio:.2f}")
    lat = summary["latency"]
    cols = ("p50", "p90", "p99", "p99.9")
    print(
        f"\ndelivery latency, publish -> app receipt, at {args.rate:g} msg/s for "
        f"{args.duration:g} s"
    )
    print(
        table(
            ["", *(f"{k} ms" for k in cols)],
            [
                ["tidings sidecar -> app over HTTP", *(lat["sidecar"].get(k) for k in cols)],
                ["aiokafka, handler in-process", *(lat["in_process"].get(k) for k in cols)],
                [
                    "added by the sidecar and HTTP",
                    *(
                        lat["sidecar"][k] - lat["in_process"][k]
                        if k in lat["sidecar"] and k in lat["in_process"]
                        else None
                        for k in cols
                    ),
                ],
            ],
            first_width=42,
        )
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 20,000 messages, 3 s of latency, no HTTP baseline",
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="latency phase msg/s")
    parser.add_argument("--duration", type=float, default=5.0, help="latency phase seconds")
    parser.add_argument("--no-http-baseline", action="store_true")
    parser.add_argument("--json", help="result file (default benchmarks/results/delivery.json)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.messages, args.duration = 1, 20_000, 3.0
        args.no_http_baseline = True
    info = machine_info()
    broker = start_local_broker()
    try:
        topic = f"backlog-{uuid.uuid4().hex[:6]}"
        await create_topic(broker.bootstrap, topic)
        took = await prefill(broker.bootstrap, topic, args.messages)
        print(f"pre-filled {args.messages} messages in {took:.1f} s", file=sys.stderr)
        ends = end_offsets(topic, args.messages)
        rounds = []
        for i in range(args.rounds):
            r: dict[str, Any] = {"drain": {}, "latency": {}}
            r["drain"]["sidecar"] = await drain_sidecar(
                broker.bootstrap, topic, args.messages, ends
            )
            r["drain"]["in_process"] = await drain_in_process(
                broker.bootstrap, topic, args.messages
            )
            if not args.no_http_baseline:
                r["drain"]["http"] = await drain_http(broker.bootstrap, topic, args.messages)
            r["latency"]["sidecar"] = await latency_sidecar(
                broker.bootstrap, args.rate, args.duration
            )
            r["latency"]["in_process"] = await latency_in_process(
                broker.bootstrap, args.rate, args.duration
            )
            rounds.append(r)
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        broker.stop()
    summary = median_of(rounds)
    summary["drain_ratio"] = (
        summary["drain"]["sidecar"]["msg_per_s"] / summary["drain"]["in_process"]["msg_per_s"]
    )
    info["loadavg_1m_at_end"] = os.getloadavg()[0]
    report(summary, args, info)
    targets = {"delivery_ratio_at_least_0.5": summary["drain_ratio"] >= 0.5}
    print(f"targets: {targets}")
    save_results("delivery", args, info, median=summary, targets=targets, rounds=rounds)


if __name__ == "__main__":
    run(main)
