"""The app side of benchmarks/delivery.py: answers every delivery at once and counts them.

Environment: ``APP_PORT``, ``TOPIC`` (subscribed on pubsub ``pubsub``, route ``/events``);
``BULK_MAX_COUNT`` (optional: a bulk subscription of that ``maxMessagesCount``, 100 ms
``maxAwaitDurationMs``, every entry answered SUCCESS; ``benchmarks/delivery_bulk.py``).
``GET /count`` answers ``{"count", "first", "last"}`` (``time.monotonic()`` seconds of the first
and last delivery).
"""

import json
import os
import time

from aiohttp import web

state = {"count": 0, "first": 0.0, "last": 0.0}
BULK_MAX_COUNT = os.environ.get("BULK_MAX_COUNT")


async def subscribe(request: web.Request) -> web.Response:
    sub = {"pubsubname": "pubsub", "topic": os.environ["TOPIC"], "route": "/events"}
    if BULK_MAX_COUNT:
        sub["bulkSubscribe"] = {"enabled": True, "maxMessagesCount": int(BULK_MAX_COUNT),
                                "maxAwaitDurationMs": 100}
    return web.json_response([sub])


async def on_event(request: web.Request) -> web.Response:
    body = await request.read()
    now = time.monotonic()
    if not state["count"]:
        state["first"] = now
    if BULK_MAX_COUNT:
        entries = json.loads(body)["entries"]
        state["count"] += len(entries)
        state["last"] = now
        return web.json_response({"statuses": [{"entryId": e["entryId"], "status": "SUCCESS"}
                                               for e in entries]})
    state["count"] += 1
    state["last"] = now
    return web.Response(status=200)


async def count(request: web.Request) -> web.Response:
    return web.json_response(state)


app = web.Application()
app.router.add_get("/dapr/subscribe", subscribe)
app.router.add_post("/events", on_event)
app.router.add_get("/count", count)

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(os.environ["APP_PORT"]), print=None,
                access_log=None)
