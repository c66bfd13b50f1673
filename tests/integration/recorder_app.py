"""A real subscriber app for the integration tests: plain aiohttp in its own process.

Environment: ``APP_PORT``; ``TOPICS`` (comma-separated, pubsub ``pubsub``); ``DELAY_S`` (seconds
each delivery takes before the answer, default 0); ``ANSWER`` (the ``status`` answered, default
``SUCCESS``; ``DROP`` sends events to the dead-letter topic); ``RECORD_FILE`` (optional: also
append ``started <id>`` / ``finished <id>`` lines there, readable after the app has exited);
``STARTUP_DELAY_S`` (seconds before the port opens, an app slow to start).

- ``GET /dapr/subscribe``: one programmatic subscription per topic, route ``/events``;
- ``POST /events`` (and ``/events/<anything>``, for routing rules): records the CloudEvent id as
  *started*, waits ``DELAY_S``, records it as *finished*, answers SUCCESS;
- ``GET /received``: ``{"started": [ids...], "finished": [ids...]}`` in arrival order;
- ``POST /mode`` ``{"retry": [ids], "hang": [ids]}``: from now on answer RETRY to those ids, or
  hold their requests unanswered until the id leaves ``hang`` (the fault tests);
- ``GET /attempts``: every delivery attempt ``{"id", "t0", "t1", "answer"}`` (``time.monotonic``,
  comparable between processes of one machine; ``t1`` null while unanswered);
- ``GET /event?id=X``: the last body (text), headers and path delivered for ``X``.

An event's id is its ``id`` field, or ``<partition>:<offset>`` for a body without one.
"""

import asyncio
import json
import os
import signal
import time

from aiohttp import web

started = web.AppKey("started", list)
finished = web.AppKey("finished", list)
attempts = web.AppKey("attempts", list)
events = web.AppKey("events", dict)
mode = web.AppKey("mode", dict)
DELAY_S = float(os.environ.get("DELAY_S", "0"))
ANSWER = os.environ.get("ANSWER", "SUCCESS")
RECORD_FILE = os.environ.get("RECORD_FILE")


def record(what: str, event_id: str) -> None:
    if RECORD_FILE:
        with open(RECORD_FILE, "a") as f:
            f.write(f"{what} {event_id}\n")


async def subscribe(request: web.Request) -> web.Response:
    topics = [t for t in os.environ.get("TOPICS", "").split(",") if t]
    return web.json_response(
        [{"pubsubname": "pubsub", "topic": t, "route": "/events"} for t in topics]
    )


def _event_id(request: web.Request, body: bytes) -> str:
    try:
        event = json.loads(body)
    except ValueError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("id"), str):
        return event["id"]
    return f"{request.headers.get('__partition')}:{request.headers.get('__offset')}"


async def on_event(request: web.Request) -> web.Response:
    body = await request.read()
    event_id = _event_id(request, body)
    app = request.app
    attempt = {"id": event_id, "t0": time.monotonic(), "t1": None, "answer": None}
    app[attempts].append(attempt)
    app[events][event_id] = {
        "body": body.decode("utf-8", "replace"),
        "headers": dict(request.headers),
        "path": request.path,
    }
    app[started].append(event_id)
    record("started", event_id)
    if DELAY_S:
        await asyncio.sleep(DELAY_S)  # simulated work of the app
    while event_id in app[mode]["hang"]:
        await asyncio.sleep(0.05)  # held unanswered until the test releases it
    transport = request.transport
    if transport is None or transport.is_closing():
        attempt["t1"], attempt["answer"] = time.monotonic(), "gone"  # the sidecar gave up
        return web.Response(status=503)
    answer = "RETRY" if event_id in app[mode]["retry"] else ANSWER
    if answer != "RETRY":
        app[finished].append(event_id)
        record("finished", event_id)
    attempt["t1"], attempt["answer"] = time.monotonic(), answer
    return web.json_response({"status": answer})


async def set_mode(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[mode] = {"retry": set(body.get("retry", [])), "hang": set(body.get("hang", []))}
    return web.json_response({})


async def get_attempts(request: web.Request) -> web.Response:
    return web.json_response(request.app[attempts])


async def get_event(request: web.Request) -> web.Response:
    found = request.app[events].get(request.query["id"])
    if found is None:
        return web.json_response({}, status=404)
    return web.json_response(found)


async def received(request: web.Request) -> web.Response:
    return web.json_response({"started": request.app[started], "finished": request.app[finished]})


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)  # the fault suite sends MiBs
    app[started], app[finished] = [], []
    app[attempts], app[events] = [], {}
    app[mode] = {"retry": set(), "hang": set()}
    app.router.add_get("/dapr/subscribe", subscribe)
    app.router.add_post("/events", on_event)
    app.router.add_post("/events/{route}", on_event)
    app.router.add_get("/received", received)
    app.router.add_post("/mode", set_mode)
    app.router.add_get("/attempts", get_attempts)
    app.router.add_get("/event", get_event)
    return app


if __name__ == "__main__":
    # Like most apps, die at once on Ctrl-C (aiohttp's run_app would finish requests first).
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    time.sleep(float(os.environ.get("STARTUP_DELAY_S", "0")))  # an app slow to start
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=int(os.environ["APP_PORT"]),
        print=None,
        handle_signals=False,
    )
