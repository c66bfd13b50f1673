"""Scale benchmark: does delivery throughput grow with replicas of an app-id, and hold with many
app-ids on one topic?

Each scenario gets a fresh 8-partition topic on a local Tansu broker and starts its app/sidecar
pairs (``sink_app.py`` + ``python -m tidings.sidecar``) first; once every consumer group has all
8 partitions assigned (read from each sidecar's ``GET /v1.0/metadata``), ``--messages`` 1 KiB
CloudEvents are produced at once and the clock runs from the first delivery to the last commit
of every group (polled from the broker):

- ``1, 2, 4 replicas``: one app-id, so one consumer group whose 8 partitions are split over the
  replicas; every message is delivered once;
- ``10 app-ids``: ten app-ids (ten groups) on the same topic; every message is delivered to each
  of them, ten times the work of the 1-replica scenario.

On a machine with fewer cores than processes the replicas share the same CPUs, so the figure to
read is whether throughput holds as work is spread, not whether it multiplies. Medians over
``--rounds``; results also go to ``benchmarks/results/scale.json``.

Usage: ``python benchmarks/scale.py [--quick] [--messages 20000]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from typing import Any

import aiohttp

from tidings.sidecar.cli.localbroker import start_local_broker

from common import describe_machine, machine_info, median_of, run, save_results, table
from delivery import (
    PARTITIONS,
    SidecarPair,
    app_state,
    create_topic,
    end_offsets,
    prefill,
    wait_committed,
)


async def assigned_count(session: aiohttp.ClientSession, port: int) -> int:
    try:
        async with session.get(f"http://127.0.0.1:{port}/v1.0/metadata") as r:
            meta = await r.json()
    except aiohttp.ClientError:
        return 0
    value = meta.get("extended", {}).get("kafka.assignment.pubsub", "")
    return len([p for p in value.split(",") if p])


async def scenario(bootstrap: str, n: int, app_ids: list[str]) -> dict[str, Any]:
    """One pair per entry of ``app_ids`` (repeats = replicas of one app-id)."""
    topic = f"scale-{uuid.uuid4().hex[:6]}"
    await create_topic(bootstrap, topic)
    pairs = [SidecarPair(bootstrap, topic, app_id) for app_id in app_ids]
    groups = sorted(set(app_ids))
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 120
            while True:  # every group owns all partitions, spread over its members
                counts: dict[str, int] = dict.fromkeys(groups, 0)
                for pair in pairs:
                    counts[pair.app_id] += await assigned_count(session, pair.sidecar.port)
                if all(c == PARTITIONS for c in counts.values()):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"groups were not assigned: {counts}")
                await asyncio.sleep(0.1)  # start-up poll
            cpu0 = sum(p.sidecar.proc.cpu_s() for p in pairs)
            await prefill(bootstrap, topic, n)
            ends = end_offsets(topic, n)
            committed = await asyncio.gather(*(wait_committed(bootstrap, g, ends) for g in groups))
            cpu = sum(p.sidecar.proc.cpu_s() for p in pairs) - cpu0
            states = [await app_state(session, p.app_port) for p in pairs]
    finally:
        for pair in pairs:
            pair.stop()
    delivered = sum(s["count"] for s in states)
    first = min(s["first"] for s in states if s["count"])
    elapsed = max(committed) - first
    return {
        "deliveries": delivered,
        "deliveries_per_s": delivered / elapsed,
        "per_sidecar": [s["count"] for s in states],
        "sidecar_cpu_s_per_1000": cpu / delivered * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 messages, 1 round")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", help="result file (default benchmarks/results/scale.json)")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds = 5000, 1
    info = machine_info()
    scenarios = {
        "1 replica": ["orders"],
        "2 replicas": ["orders"] * 2,
        "4 replicas": ["orders"] * 4,
        "10 app-ids": [f"app{i}" for i in range(10)],
    }
    broker = start_local_broker()
    rounds = []
    try:
        for i in range(args.rounds):
            r = {}
            for name, ids in scenarios.items():
                suffix = uuid.uuid4().hex[:6]
                r[name] = await scenario(
                    broker.bootstrap, args.messages, [f"{a}-{suffix}" for a in ids]
                )
                print(f"round {i + 1}: {name} done", file=sys.stderr)
            rounds.append(r)
    finally:
        broker.stop()
    summary = median_of(rounds)
    info["loadavg_1m_at_end"] = os.getloadavg()[0]
    base = summary["1 replica"]["deliveries_per_s"]
    print(
        f"\nscale: {args.messages} CloudEvents of ~1 KiB on {PARTITIONS} partitions, local Tansu; "
        f"medians of {args.rounds} round(s)\n{describe_machine(info)}"
    )
    print(
        table(
            ["", "sidecars", "deliveries", "deliv./s", "vs 1", "CPU s/1k"],
            [
                [
                    name,
                    len(ids),
                    summary[name]["deliveries"],
                    summary[name]["deliveries_per_s"],
                    summary[name]["deliveries_per_s"] / base,
                    summary[name]["sidecar_cpu_s_per_1000"],
                ]
                for name, ids in scenarios.items()
            ],
        )
    )
    save_results("scale", args, info, median=summary, rounds=rounds)


if __name__ == "__main__":
    run(main)
