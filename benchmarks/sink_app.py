"""The app side of benchmarks/delivery.py: answers every delivery at once and counts them.

Environment: ``APP_PORT``, ``TOPIC`` (subscribed on pubsub ``pubsub``, route ``/events``).
``GET /count`` answers ``{"count", "first", "last"}`` (``time.monotonic()`` seconds of the first
and last delivery).
"""

import os
import time

from aiohttp import web

state = {"count": 0, "first": 0.0, "last": 0.0}


async def subscribe(request: web.Request) -> web.Response:
    return web.json_response([{"pubsubname": "pubsub", "topic": os.environ["TOPIC"],
                               "route": "/events"}])


async def on_event(request: web.Request) -> web.Response:
    await request.read()
    now = time.monotonic()
    if not state["count"]:
        state["first"] = now
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
