"""The app of the delivery benchmarks: one handler, reachable over HTTP (through a sidecar) and
in-process (the raw consumer-group baseline calls :func:`handle` directly).

:func:`handle` parses the CloudEvent (as any app would), counts it, and when its ``data`` has
``sent_ns`` (``time.time_ns()`` at publish) records the delivery latency.

Environment for the HTTP app: ``APP_PORT``, ``TOPIC`` (subscribed on pubsub ``pubsub``, route
``/events``; default ``unused``); ``BULK_MAX_COUNT`` (optional: the subscription is a bulk one of
that ``maxMessagesCount`` and 100 ms ``maxAwaitDurationMs``, every entry answered SUCCESS;
``delivery_bulk.py``). ``GET /count`` answers :func:`snapshot`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from aiohttp import web

state: dict[str, Any] = {"count": 0, "first": 0.0, "last": 0.0}
latencies_ns: list[int] = []


def handle(body: bytes) -> None:
    """The app's event handler: ``body`` is a CloudEvent as JSON bytes."""
    event = json.loads(body)
    now = time.monotonic()
    if not state["count"]:
        state["first"] = now
    state["count"] += 1
    state["last"] = now
    data = event.get("data")
    if isinstance(data, dict) and "sent_ns" in data:
        latencies_ns.append(time.time_ns() - data["sent_ns"])


def snapshot() -> dict[str, Any]:
    """``count``, ``first``/``last`` (``time.monotonic()`` seconds of the first and last
    delivery) and delivery latency percentiles in ms (``latency``, empty without samples)."""
    latency: dict[str, float] = {}
    if len(latencies_ns) >= 2:
        qs = statistics.quantiles(latencies_ns, n=1000, method="inclusive")
        latency = {
            "p50": qs[499] / 1e6,
            "p90": qs[899] / 1e6,
            "p99": qs[989] / 1e6,
            "p99.9": qs[998] / 1e6,
        }
    return {**state, "latency": latency, "samples": len(latencies_ns)}


def reset() -> None:
    state.update(count=0, first=0.0, last=0.0)
    latencies_ns.clear()


BULK_MAX_COUNT = os.environ.get("BULK_MAX_COUNT")


async def subscribe(request: web.Request) -> web.Response:
    sub: dict[str, Any] = {
        "pubsubname": "pubsub",
        "topic": os.environ.get("TOPIC", "unused"),
        "route": "/events",
    }
    if BULK_MAX_COUNT:
        sub["bulkSubscribe"] = {
            "enabled": True,
            "maxMessagesCount": int(BULK_MAX_COUNT),
            "maxAwaitDurationMs": 100,
        }
    return web.json_response([sub])


async def on_event(request: web.Request) -> web.Response:
    if BULK_MAX_COUNT:  # a bulk request (dapr-pubsub-contract.md §2.4)
        entries = json.loads(await request.read())["entries"]
        for entry in entries:
            handle(json.dumps(entry["event"]).encode())
        return web.json_response(
            {"statuses": [{"entryId": e["entryId"], "status": "SUCCESS"} for e in entries]}
        )
    handle(await request.read())
    return web.Response(status=200)


async def publish_floor(request: web.Request) -> web.Response:
    """Read the body and answer 204, as the sidecar's publish does, with no broker behind it: the
    floor of any Python (aiohttp) publish API on this machine (benchmarks/publish.py)."""
    await request.read()
    return web.Response(status=204)


async def count(request: web.Request) -> web.Response:
    return web.json_response(snapshot())


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/dapr/subscribe", subscribe)
    app.router.add_post("/events", on_event)
    app.router.add_get("/count", count)
    app.router.add_post("/v1.0/publish/floor", publish_floor)
    return app


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(
        make_app(), host="127.0.0.1", port=int(os.environ["APP_PORT"]), print=None, access_log=None
    )
