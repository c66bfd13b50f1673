"""Footprint benchmark: sidecar cold start and memory, and the injector's admission latency.

- cold start: seconds from spawning ``python -m tidings.sidecar`` (one Kafka component, broker
  up, no app port) until ``GET /v1.0/healthz`` answers 204, median of ``--starts``; beside it the
  same for ``python -c "import aiohttp, aiokafka"`` answering nothing (the floor: interpreter and
  the two libraries every Python Kafka-over-HTTP process loads);
- idle RSS: the sidecar's resident memory 3 s after it is healthy;
- RSS under load: after ``--messages`` closed-loop 1 KiB publishes (16 concurrent), and the peak;
- admission: ``--reviews`` (1,000) AdmissionReviews for an annotated pod POSTed one after another
  to the operator's real admission server (``operator/injection.py``'s ``AdmissionServer``, kopf's
  webhook machinery, served over plain HTTP here instead of TLS), p50/p99 in ms, after a warm-up.

Usage: ``python benchmarks/footprint.py [--quick]``; results also go to
``benchmarks/results/footprint.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from tidings.sidecar.cli.localbroker import start_local_broker

from common import (
    Sidecar,
    component_dir,
    describe_machine,
    machine_info,
    percentiles_ms,
    run,
    save_results,
    table,
)


async def cold_starts(resources: Path, n: int) -> list[float]:
    seconds = []
    for _ in range(n):
        sidecar = Sidecar(resources, app_id=f"cold-{uuid.uuid4().hex[:6]}")
        try:
            seconds.append(await sidecar.wait_healthy("/v1.0/healthz"))
        finally:
            sidecar.stop()
    return seconds


def import_floor(n: int) -> list[float]:
    seconds = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "import aiohttp, aiokafka"], check=True)
        seconds.append(time.monotonic() - t0)
    return seconds


async def memory(resources: Path, messages: int) -> dict[str, float]:
    sidecar = Sidecar(resources, app_id="footprint")
    try:
        await sidecar.wait_healthy()
        await asyncio.sleep(3)  # idle: what the sidecar holds with nothing to do
        idle = sidecar.proc.rss_bytes()
        url = f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/footprint"
        payload = b'{"blob":"' + b"x" * 1013 + b'"}'
        remaining = messages
        async with aiohttp.ClientSession() as session:

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    async with session.post(
                        url, data=payload, headers={"Content-Type": "application/json"}
                    ) as r:
                        assert r.status == 204, r.status

            await asyncio.gather(*(worker() for _ in range(16)))
        loaded = sidecar.proc.rss_bytes()
        peak = sidecar.proc.peak_rss_bytes()
    finally:
        sidecar.stop()
    return {
        "idle_rss_mb": idle / 2**20,
        "rss_after_load_mb": loaded / 2**20,
        "peak_rss_mb": peak / 2**20,
    }


def admission_review(i: int) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"orders-{i}",
            "namespace": "default",
            "labels": {"app": "orders"},
            "annotations": {
                "dapr.io/enabled": "true",
                "dapr.io/app-id": "orders",
                "dapr.io/app-port": "8080",
                "dapr.io/sidecar-memory-limit": "256Mi",
            },
        },
        "spec": {
            "containers": [
                {"name": "app", "image": "example/orders:1", "ports": [{"containerPort": 8080}]}
            ]
        },
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "operation": "CREATE",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "userInfo": {"username": "bench"},
            "object": pod,
            "dryRun": False,
        },
    }


async def admission(n: int) -> list[float]:
    """Latencies (s) of ``n`` sequential reviews to the real admission server over HTTP."""
    import kopf
    from kopf._cogs.structs import references
    from kopf._core.engines import admission as kopf_admission
    from kopf._core.engines.indexing import OperatorIndexers
    from kopf._core.reactor.inventory import ResourceMemories

    from tidings.operator.injection import WEBHOOK_ID, AdmissionServer, register_injector
    from tidings.operator.settings import InjectorSettings

    registry = kopf.OperatorRegistry()
    register_injector(registry, InjectorSettings())
    insights = references.Insights()
    insights.webhook_resources.add(
        references.Resource(
            group="",
            version="v1",
            plural="pods",
            kind="Pod",
            singular="pod",
            namespaced=True,
            verbs=frozenset({"create", "get", "list", "watch", "patch"}),
        )
    )
    fn = functools.partial(
        kopf_admission.serve_admission_request,
        settings=kopf.OperatorSettings(),
        registry=registry,
        insights=insights,
        memories=ResourceMemories(),
        memobase=kopf.Memo(),
        indices=OperatorIndexers().indices,
    )
    server = AdmissionServer(addr="127.0.0.1", port=None, insecure=True)
    latencies: list[float] = []
    configs = server(fn)
    config = await configs.__anext__()
    url = f"{config['url'].rstrip('/')}/{WEBHOOK_ID}"
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(n + 50):
                body = admission_review(i)
                t0 = time.perf_counter()
                async with session.post(url, json=body) as r:
                    answer = await r.json()
                elapsed = time.perf_counter() - t0
                response = answer.get("response") or {}
                if not response.get("allowed") or "patch" not in response:
                    raise SystemExit(f"the injector did not patch the pod: {answer}")
                if i >= 50:  # the first 50 are warm-up
                    latencies.append(elapsed)
    finally:
        await configs.aclose()
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 starts, 300 reviews")
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--reviews", type=int, default=1000)
    parser.add_argument("--json", help="result file (default benchmarks/results/footprint.json)")
    args = parser.parse_args()
    if args.quick:
        args.starts, args.reviews, args.messages = 3, 300, 2000
    info = machine_info()
    broker = start_local_broker()
    try:
        resources = component_dir(broker.bootstrap)
        starts = await cold_starts(resources, args.starts)
        floor = import_floor(args.starts)
        mem = await memory(resources, args.messages)
    finally:
        broker.stop()
    reviews = await admission(args.reviews)
    info["loadavg_1m_at_end"] = os.getloadavg()[0]

    import statistics

    cold = statistics.median(starts)
    adm = percentiles_ms(reviews)
    result = {
        "cold_start_s": cold,
        "cold_start_all_s": starts,
        "import_aiohttp_aiokafka_s": statistics.median(floor),
        **mem,
        "admission_ms": adm,
    }
    print(f"\nfootprint\n{describe_machine(info)}")
    print(
        table(
            ["", "value", "target"],
            [
                ["sidecar cold start to healthz 204 (s)", cold, "< 1 s"],
                [
                    "  floor: python -c 'import aiohttp, aiokafka'",
                    result["import_aiohttp_aiokafka_s"],
                    None,
                ],
                ["sidecar idle RSS (MB)", mem["idle_rss_mb"], "< 60 MB"],
                [
                    f"sidecar RSS after {args.messages} publishes (MB)",
                    mem["rss_after_load_mb"],
                    None,
                ],
                ["sidecar peak RSS (MB)", mem["peak_rss_mb"], None],
                [f"admission p50 (ms, {args.reviews} reviews)", adm["p50"], None],
                ["admission p99 (ms)", adm["p99"], None],
            ],
            first_width=48,
        )
    )
    targets = {"cold_start_under_1_s": cold < 1.0, "idle_rss_under_60_mb": mem["idle_rss_mb"] < 60}
    print(f"targets: {targets}")
    save_results("footprint", args, info, result=result, targets=targets)


if __name__ == "__main__":
    run(main)
