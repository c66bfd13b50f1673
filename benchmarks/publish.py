"""Publish benchmark: HTTP publishes through a tidings sidecar vs raw aiokafka, in one run.

Both sides publish 1 KiB messages to the same local broker (Tansu, started here) with
``acks=all`` and wait for the broker's acknowledgement of every message:

- ``sidecar``: N concurrent HTTP clients ``POST /v1.0/publish/pubsub/<topic>`` to a sidecar
  running in its own process (``python -m tidings.sidecar``), Content-Type application/json, so
  every message is wrapped in a CloudEvent;
- ``aiokafka``: N concurrent tasks ``await (await producer.send(...))`` straight to the broker.

Two loads: closed loop (each client sends as fast as answers come back) for throughput, and an
open loop at a fixed rate (default 1,000 req/s) for latency, the condition of Dapr 1.12's
published figures (added latency p90 0.49 ms, p99 1.21 ms over HTTP). Prints throughput and
p50/p90/p99 for both, the ratio, and the latency the sidecar adds.

Usage: ``python benchmarks/publish.py [--concurrency 16] [--messages 20000] [--rate 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer

from tidings.sidecar.localbroker import free_port, start_local_broker
from tidings.sidecar.localdev import kafka_component_yaml



def percentiles(samples_s: list[float]) -> tuple[float, float, float]:
    """p50, p90, p99 in milliseconds."""
    qs = statistics.quantiles(samples_s, n=100, method="inclusive")
    return qs[49] * 1000, qs[89] * 1000, qs[98] * 1000


async def closed_loop(send: Callable[[], Awaitable[None]], concurrency: int,
                      total: int) -> tuple[float, list[float]]:
    """Run ``total`` sends over ``concurrency`` workers; returns (messages/s, latencies in s)."""
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await send()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start), latencies


async def open_loop(send: Callable[[], Awaitable[None]], rate: float,
                    duration_s: float) -> list[float]:
    """Start one send every 1/rate seconds for ``duration_s``; latencies in s (from the
    scheduled start, so queueing behind a slow answer counts)."""
    latencies: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    interval = 1.0 / rate
    start = time.perf_counter()

    async def one(scheduled: float) -> None:
        await send()
        latencies.append(time.perf_counter() - scheduled)

    n = int(rate * duration_s)
    for i in range(n):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing of the open-loop load generator
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return latencies


async def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit("sidecar exited during start-up")
            try:
                async with session.get(f"http://127.0.0.1:{port}/v1.0/healthz/outbound") as r:
                    if r.status == 204:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # start-up poll interval
    raise SystemExit("sidecar did not become ready")


def row(name: str, rate: float | None, lat: list[float]) -> str:
    p50, p90, p99 = percentiles(lat)
    rate_s = f"{rate:10.0f}" if rate is not None else f"{'-':>10}"
    return f"{name:<28}{rate_s} {p50:9.3f} {p90:9.3f} {p99:9.3f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests per second")
    parser.add_argument("--duration", type=float, default=5.0, help="open-loop seconds")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    args = parser.parse_args()

    broker = start_local_broker()
    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    (workdir / "pubsub.yaml").write_text(kafka_component_yaml(broker.bootstrap))
    port = free_port()
    sidecar = subprocess.Popen(
        [sys.executable, "-P", "-m", "tidings.sidecar", "--app-id", "bench", "--dapr-http-port",
         str(port), "--resources-path", str(workdir), "--log-level", "warn"],
        env={**os.environ})
    payload = b'{"blob":"' + b"x" * (args.size - 11) + b'"}'
    assert len(payload) == args.size
    try:
        await wait_healthy(port, sidecar)
        topic_http, topic_raw = f"bench-http-{uuid.uuid4().hex[:6]}", f"bench-raw-{uuid.uuid4().hex[:6]}"
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"http://127.0.0.1:{port}/v1.0/publish/pubsub/{topic_http}"
            headers = {"Content-Type": "application/json"}

            async def send_http() -> None:
                async with session.post(url, data=payload, headers=headers) as r:
                    if r.status != 204:
                        raise RuntimeError(f"publish failed: {r.status} {await r.text()}")

            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                        linger_ms=0)
            await producer.start()

            async def send_raw() -> None:
                await (await producer.send(topic_raw, payload))

            # warm-up: topic creation, connections, JIT-free but cache-warm paths
            await closed_loop(send_http, args.concurrency, 500)
            await closed_loop(send_raw, args.concurrency, 500)

            # The load generator's own garbage collections stalled it for ~45 ms at a time and
            # showed up as p99 of whichever side was running; collect between runs instead.
            gc.collect()
            gc.disable()
            http_rate, http_lat = await closed_loop(send_http, args.concurrency, args.messages)
            gc.collect()
            raw_rate, raw_lat = await closed_loop(send_raw, args.concurrency, args.messages)
            gc.collect()
            http_open = await open_loop(send_http, args.rate, args.duration)
            gc.collect()
            raw_open = await open_loop(send_raw, args.rate, args.duration)
            gc.enable()
            await producer.stop()

        print(f"\n{args.size} B messages, acks=all, local Tansu broker, {os.cpu_count()} cores")
        print(f"\nclosed loop: {args.concurrency} concurrent publishers, {args.messages} messages each side")
        print(f"{'':<28}{'msg/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}")
        print(row("tidings sidecar (HTTP)", http_rate, http_lat))
        print(row("raw aiokafka (baseline)", raw_rate, raw_lat))
        print(f"throughput ratio sidecar/baseline: {http_rate / raw_rate:.2f}")

        print(f"\nopen loop: {args.rate:.0f} req/s for {args.duration:.0f} s")
        print(f"{'':<28}{'':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}")
        print(row("tidings sidecar (HTTP)", None, http_open))
        print(row("raw aiokafka (baseline)", None, raw_open))
        s, r = percentiles(http_open), percentiles(raw_open)
        print(f"{'added by the sidecar':<28}{'':>10} {s[0]-r[0]:9.3f} {s[1]-r[1]:9.3f} {s[2]-r[2]:9.3f}")
        print(f"{'Dapr 1.12 published (HTTP)':<28}{'':>10} {'':>9} {0.49:9.3f} {1.21:9.3f}")
    finally:
        sidecar.send_signal(signal.SIGTERM)
        try:
            sidecar.wait(15)
        except subprocess.TimeoutExpired:
            sidecar.kill()
        broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
