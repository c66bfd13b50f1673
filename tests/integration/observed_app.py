"""A subscriber app for the observability tests: plain aiohttp in its own process.

Environment: ``APP_PORT``; ``TOPIC`` (pubsub ``pubsub``, route ``/events``); ``DEAD_LETTER_TOPIC``
(optional, the subscription's ``deadLetterTopic``).

- ``POST /events`` answers by the event's ``data.answer``: ``retry-once`` answers RETRY the first
  time an event id arrives and SUCCESS after; ``drop`` answers DROP; anything else SUCCESS.
  Every request is recorded: the event's id, its ``traceparent``/``traceid``/``tracestate`` and
  the request's ``traceparent``/``tracestate`` headers.
- ``GET /received``: the recorded requests, in arrival order.
"""

import json
import os
import signal

from aiohttp import web

requests = web.AppKey("requests", list)
TOPIC = os.environ["TOPIC"]
DEAD_LETTER_TOPIC = os.environ.get("DEAD_LETTER_TOPIC", "")


async def subscribe(request: web.Request) -> web.Response:
    sub = {"pubsubname": "pubsub", "topic": TOPIC, "route": "/events"}
    if DEAD_LETTER_TOPIC:
        sub["deadLetterTopic"] = DEAD_LETTER_TOPIC
    return web.json_response([sub])


async def on_event(request: web.Request) -> web.Response:
    event = json.loads(await request.read())
    seen = request.app[requests]
    answer = (event.get("data") or {}).get("answer")
    attempts = sum(1 for r in seen if r["id"] == event["id"])
    seen.append(
        {
            "id": event["id"],
            "event": {k: event.get(k) for k in ("traceparent", "traceid", "tracestate")},
            "headers": {k: request.headers.get(k) for k in ("traceparent", "tracestate")},
        }
    )
    if answer == "drop":
        return web.json_response({"status": "DROP"})
    if answer == "retry-once" and attempts == 0:
        return web.json_response({"status": "RETRY"})
    return web.json_response({"status": "SUCCESS"})


async def received(request: web.Request) -> web.Response:
    return web.json_response(request.app[requests])


def make_app() -> web.Application:
    app = web.Application()
    app[requests] = []
    app.router.add_get("/dapr/subscribe", subscribe)
    app.router.add_post("/events", on_event)
    app.router.add_get("/received", received)
    return app


if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=int(os.environ["APP_PORT"]),
        print=None,
        handle_signals=False,
    )
