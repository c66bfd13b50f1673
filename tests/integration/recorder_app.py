"""A real subscriber app for the integration tests: plain aiohttp in its own process.

Environment: ``APP_PORT``; ``TOPICS`` (comma-separated, pubsub ``pubsub``); ``DELAY_S`` (seconds
each delivery takes before the answer, default 0); ``ANSWER`` (the ``status`` answered, default
``SUCCESS``; ``DROP`` sends events to the dead-letter topic); ``RECORD_FILE`` (optional: also
append ``started <id>`` / ``finished <id>`` lines there, readable after the app has exited).

- ``GET /dapr/subscribe``: one programmatic subscription per topic, route ``/events``;
- ``POST /events``: records the CloudEvent id as *started*, waits ``DELAY_S``, records it as
  *finished*, answers SUCCESS;
- ``GET /received``: ``{"started": [ids...], "finished": [ids...]}`` in arrival order.
"""

import asyncio
import json
import os
import signal

from aiohttp import web

started = web.AppKey("started", list)
finished = web.AppKey("finished", list)
DELAY_S = float(os.environ.get("DELAY_S", "0"))
ANSWER = os.environ.get("ANSWER", "SUCCESS")
RECORD_FILE = os.environ.get("RECORD_FILE")


def record(what: str, event_id: str) -> None:
    if RECORD_FILE:
        with open(RECORD_FILE, "a") as f:
            f.write(f"{what} {event_id}\n")


async def subscribe(request: web.Request) -> web.Response:
    topics = [t for t in os.environ.get("TOPICS", "").split(",") if t]
    return web.json_response([{"pubsubname": "pubsub", "topic": t, "route": "/events"}
                              for t in topics])


async def on_event(request: web.Request) -> web.Response:
    event = json.loads(await request.read())
    request.app[started].append(event["id"])
    record("started", event["id"])
    if DELAY_S:
        await asyncio.sleep(DELAY_S)  # simulated work of the app
    request.app[finished].append(event["id"])
    record("finished", event["id"])
    return web.json_response({"status": ANSWER})


async def received(request: web.Request) -> web.Response:
    return web.json_response({"started": request.app[started], "finished": request.app[finished]})


def make_app() -> web.Application:
    app = web.Application()
    app[started], app[finished] = [], []
    app.router.add_get("/dapr/subscribe", subscribe)
    app.router.add_post("/events", on_event)
    app.router.add_get("/received", received)
    return app


if __name__ == "__main__":
    # Like most apps, die at once on Ctrl-C (aiohttp's run_app would finish requests first).
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    web.run_app(make_app(), host="127.0.0.1", port=int(os.environ["APP_PORT"]), print=None,
                handle_signals=False)
