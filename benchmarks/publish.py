"""Publish benchmark: HTTP publishes through a tidings sidecar vs raw aiokafka, in one run.

Both sides publish 1 KiB messages to the same local broker (Tansu, started here) with
``acks=all`` and wait for the broker's acknowledgement of every message, from the same client
process:

- ``sidecar``: ``POST /v1.0/publish/pubsub/<topic>`` to a sidecar running in its own process
  (``python -m tidings.sidecar``), Content-Type application/json, so every message is wrapped in
  a CloudEvent;
- ``aiokafka``: ``await (await producer.send(...))`` straight to the broker;
- ``HTTP floor``: the same POSTs to a bare aiohttp server (``sink_app.py``) that reads the body
  and answers 204 with no broker behind it: what any Python HTTP publish API costs here.

HTTP requests go through ``leanhttp.py`` (a minimal keep-alive client, so the load generator's
own CPU does not crowd out the sidecar on a small machine) unless ``--client aiohttp``.

Loads, each round, every side run in alternating slices (``--slices``) so that bursts of
other load on a shared machine hit all sides alike: closed loop (``--concurrency`` clients, each
sending as soon as its last answer came) for maximum throughput, then open loops at fixed rates
(500, 1,000, 2,000 req/s by default) for latency, measured from each request's *scheduled* start so
queueing counts. 1,000 req/s is the condition of Dapr 1.12's published figures (added latency p90
0.49 ms, p99 1.21 ms over publishing straight to the broker). Reports medians over ``--rounds``:
throughput, p50/p90/p99/p99.9, the latency the sidecar adds, the sidecar's CPU seconds per 1,000
messages and its RSS. Results also go to ``benchmarks/results/publish.json``.

Usage: ``python benchmarks/publish.py [--quick] [--rounds 3] [--rates 500,1000,2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from tidings.sidecar.cli.localbroker import free_port, start_local_broker

from common import (
    HERE,
    Sidecar,
    component_dir,
    describe_machine,
    machine_info,
    median_of,
    percentiles_ms,
    run,
    save_results,
    table,
)
from leanhttp import LeanClient

Send = Callable[[], Awaitable[None]]


async def closed_loop(send: Send, concurrency: int, total: int) -> tuple[float, list[float]]:
    """``total`` sends over ``concurrency`` workers; returns (messages/s, latencies in s)."""
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


async def open_loop(send: Send, rate: float, duration_s: float) -> tuple[float, list[float]]:
    """One send every 1/rate seconds for ``duration_s``; returns (achieved messages/s,
    latencies in s from each send's scheduled start)."""
    latencies: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    interval = 1.0 / rate

    async def one(scheduled: float) -> None:
        await send()
        latencies.append(time.perf_counter() - scheduled)

    n = int(rate * duration_s)
    start = time.perf_counter()
    for i in range(n):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing of the open-loop load generator
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return n / (time.perf_counter() - start), latencies


def http_sender(
    args: argparse.Namespace,
    port: int,
    path: str,
    payload: bytes,
    session: aiohttp.ClientSession,
    clients: list[LeanClient],
) -> Send:
    """A ``send()`` that POSTs ``payload`` to ``path`` and checks for 204."""
    if args.client == "aiohttp":
        url = f"http://127.0.0.1:{port}{path}"
        headers = {"Content-Type": "application/json"}

        async def send_aiohttp() -> None:
            async with session.post(url, data=payload, headers=headers) as r:
                if r.status != 204:
                    raise RuntimeError(f"publish failed: {r.status} {await r.text()}")

        return send_aiohttp
    client = LeanClient("127.0.0.1", port, size=512)
    clients.append(client)
    request = client.request_bytes(path, payload, "application/json")

    async def send_lean() -> None:
        status, body = await client.send(request)
        if status != 204:
            raise RuntimeError(f"publish failed: {status} {body[:200]!r}")

    return send_lean


async def one_round(
    sidecar: Sidecar,
    floor_port: int,
    session: aiohttp.ClientSession,
    producer: AIOKafkaProducer,
    args: argparse.Namespace,
    payload: bytes,
) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:6]
    topic_raw = f"bench-raw-{suffix}"
    clients: list[LeanClient] = []
    send_http = http_sender(
        args, sidecar.port, f"/v1.0/publish/pubsub/bench-http-{suffix}", payload, session, clients
    )
    send_floor = http_sender(args, floor_port, "/v1.0/publish/floor", payload, session, clients)

    async def send_raw() -> None:
        await (await producer.send(topic_raw, payload))

    try:
        return await _measure_round(sidecar, args, send_http, send_floor, send_raw)
    finally:
        for client in clients:
            client.close()


async def interleaved(
    sidecar: Sidecar,
    sides: dict[str, Send],
    run_slice: Callable[[Send], Awaitable[tuple[float, list[float]]]],
    slices: int,
) -> dict[str, dict[str, Any]]:
    """Run ``slices`` slices of each side, alternating (order rotated every slice), so that the
    load of other processes on a shared machine lands on every side alike. The load generator's
    garbage collections run between slices, not inside them. Returns per side: messages/s over
    its slices, latency percentiles (ms) of all its samples, and for ``sidecar`` its CPU seconds
    per 1,000 messages."""
    names = list(sides)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    elapsed = dict.fromkeys(names, 0.0)
    sent = dict.fromkeys(names, 0)
    sidecar_cpu = 0.0
    for i in range(slices):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            gc.collect()
            gc.disable()
            cpu0 = sidecar.proc.cpu_s()
            try:
                rate, lat = await run_slice(sides[name])
            finally:
                gc.enable()
            if name == "sidecar":
                sidecar_cpu += sidecar.proc.cpu_s() - cpu0
            latencies[name] += lat
            elapsed[name] += len(lat) / rate
            sent[name] += len(lat)
    out = {
        name: {"msg_per_s": sent[name] / elapsed[name], **percentiles_ms(latencies[name])}
        for name in names
    }
    out["sidecar"]["cpu_s_per_1000"] = sidecar_cpu / sent["sidecar"] * 1000
    return out


async def _measure_round(
    sidecar: Sidecar, args: argparse.Namespace, send_http: Send, send_floor: Send, send_raw: Send
) -> dict[str, Any]:
    # warm-up: topic creation, connections
    for send in (send_http, send_floor, send_raw):
        await closed_loop(send, args.concurrency, 200)
    sides = {"sidecar": send_http, "aiokafka": send_raw, "http_floor": send_floor}
    result: dict[str, Any] = {}
    chunk = max(1, args.messages // args.slices)
    result["closed"] = await interleaved(
        sidecar, sides, lambda send: closed_loop(send, args.concurrency, chunk), args.slices
    )
    result["open"] = {}
    slice_s = args.duration / args.slices
    for target in args.rates:
        o = await interleaved(
            sidecar, sides, lambda send, rate=target: open_loop(send, rate, slice_s), args.slices
        )
        o["added"] = {k: o["sidecar"][k] - o["aiokafka"][k] for k in ("p50", "p90", "p99", "p99.9")}
        result["open"][str(int(target))] = o
    result["sidecar_rss_mb"] = sidecar.proc.rss_bytes() / 2**20
    result["sidecar_peak_rss_mb"] = sidecar.proc.peak_rss_bytes() / 2**20
    return result


def report(summary: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> None:
    print(
        f"\npublish: {args.size} B messages, acks=all, local Tansu broker; medians of "
        f"{args.rounds} round(s)\n{describe_machine(info)}"
    )
    c = summary["closed"]
    print(
        f"\nclosed loop: {args.concurrency} concurrent publishers, {args.messages} messages "
        "per side per round"
    )
    cols = ("p50", "p90", "p99", "p99.9")
    print(
        table(
            ["", "msg/s", *(f"{k} ms" for k in cols), "CPU s/1k"],
            [
                [
                    "tidings sidecar (HTTP)",
                    c["sidecar"]["msg_per_s"],
                    *(c["sidecar"][k] for k in cols),
                    c["sidecar"]["cpu_s_per_1000"],
                ],
                [
                    "raw aiokafka (baseline)",
                    c["aiokafka"]["msg_per_s"],
                    *(c["aiokafka"][k] for k in cols),
                    None,
                ],
                [
                    "HTTP floor (aiohttp, no broker)",
                    c["http_floor"]["msg_per_s"],
                    *(c["http_floor"][k] for k in cols),
                    None,
                ],
            ],
        )
    )
    print(f"throughput ratio sidecar/baseline: {summary['closed_ratio']:.2f} (target >= 0.50)")
    for rate, o in summary["open"].items():
        print(f"\nopen loop: {rate} req/s for {args.duration:g} s")
        print(
            table(
                ["", "msg/s", *(f"{k} ms" for k in cols), "CPU s/1k"],
                [
                    [
                        "tidings sidecar (HTTP)",
                        o["sidecar"]["msg_per_s"],
                        *(o["sidecar"][k] for k in cols),
                        o["sidecar"]["cpu_s_per_1000"],
                    ],
                    [
                        "raw aiokafka (baseline)",
                        o["aiokafka"]["msg_per_s"],
                        *(o["aiokafka"][k] for k in cols),
                        None,
                    ],
                    [
                        "HTTP floor (aiohttp, no broker)",
                        o["http_floor"]["msg_per_s"],
                        *(o["http_floor"][k] for k in cols),
                        None,
                    ],
                    ["added by the sidecar", None, *(o["added"][k] for k in cols), None],
                ],
            )
        )
        if rate == "1000":
            print(
                "Dapr 1.12 published (HTTP, 1,000 req/s): added p90 0.49 ms, p99 1.21 ms; "
                "target: added p99 < 1.2 ms"
            )
    print(
        f"\nsidecar RSS after the run: {summary['sidecar_rss_mb']:.1f} MB "
        f"(peak {summary['sidecar_peak_rss_mb']:.1f} MB)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round, 3,000 messages, 2 s per rate (about a minute)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--messages", type=int, default=10_000, help="closed-loop messages per side per round"
    )
    parser.add_argument("--rates", default="500,1000,2000", help="open-loop req/s, comma separated")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per open-loop rate")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    parser.add_argument(
        "--slices",
        type=int,
        default=5,
        help="alternating slices per load and side (see interleaved())",
    )
    parser.add_argument(
        "--client",
        choices=("lean", "aiohttp"),
        default="lean",
        help="HTTP client of the load generator (see leanhttp.py)",
    )
    parser.add_argument("--json", help="result file (default benchmarks/results/publish.json)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.messages, args.duration, args.slices = 1, 3000, 2.0, 2
    args.rates = [float(r) for r in args.rates.split(",") if r]
    info = machine_info()
    payload = b'{"blob":"' + b"x" * (args.size - 11) + b'"}'
    assert len(payload) == args.size

    broker = start_local_broker()
    sidecar = Sidecar(component_dir(broker.bootstrap), app_id="bench")
    floor_port = free_port()
    floor = subprocess.Popen(  # noqa: ASYNC220 - returns once the child runs; stopped at the end
        [sys.executable, str(HERE / "sink_app.py")], env={**os.environ, "APP_PORT": str(floor_port)}
    )
    try:
        await sidecar.wait_healthy()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.monotonic() + 30
            while True:  # the floor app is listening
                try:
                    async with session.get(f"http://127.0.0.1:{floor_port}/count"):
                        break
                except aiohttp.ClientError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)  # start-up poll
            producer = AIOKafkaProducer(
                bootstrap_servers=broker.bootstrap,
                acks="all",
                enable_idempotence=False,
                linger_ms=0,
            )
            await producer.start()
            try:
                rounds = []
                for i in range(args.rounds):
                    rounds.append(
                        await one_round(sidecar, floor_port, session, producer, args, payload)
                    )
                    print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
            finally:
                await producer.stop()
    finally:
        sidecar.stop()
        floor.terminate()
        floor.wait()
        broker.stop()
    summary = median_of(rounds)
    summary["closed_ratio"] = (
        summary["closed"]["sidecar"]["msg_per_s"] / summary["closed"]["aiokafka"]["msg_per_s"]
    )
    info["loadavg_1m_at_end"] = os.getloadavg()[0]
    report(summary, args, info)
    at_1000 = summary["open"].get("1000")
    targets = {
        "closed_loop_ratio_at_least_0.5": summary["closed_ratio"] >= 0.5,
        "added_p99_at_1000_under_1.2_ms": (at_1000["added"]["p99"] < 1.2) if at_1000 else None,
    }
    if at_1000:
        per_round = [r["open"]["1000"]["added"]["p99"] for r in rounds]
        met = sum(v < 1.2 for v in per_round)
        print(
            f"added p99 at 1,000 req/s per round (ms): "
            f"{', '.join(f'{v:.2f}' for v in per_round)}; under 1.2 ms in {met} of "
            f"{len(per_round)}"
        )
    print(f"targets: {targets}")
    save_results("publish", args, info, median=summary, targets=targets, rounds=rounds)


if __name__ == "__main__":
    run(main)
