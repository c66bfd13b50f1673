"""A real bulk subscriber app for the integration tests: plain aiohttp in its own process.

Environment: ``APP_PORT``; ``TOPIC`` (pubsub ``pubsub``); ``MAX_COUNT`` and ``MAX_AWAIT_MS``
(its ``bulkSubscribe``); ``DEAD_LETTER`` (optional: the subscription's ``deadLetterTopic``, to
which the app also subscribes, one event at a time).

- ``GET /dapr/subscribe``: the bulk subscription (route ``/bulk``) and the dead-letter one
  (route ``/dead``);
- ``POST /bulk``: a §2.4 bulk request; every entry is answered as its event's ``data.answer``
  says: ``SUCCESS``, ``DROP``, ``RETRY_ONCE`` (RETRY the first time), ``OMIT_ONCE`` (no status
  the first time), ``HANG_ONCE`` (the first request holding it never gets an answer);
- ``POST /dead``: records the event id as dead-lettered;
- ``GET /received``: ``{"requests": [[ids of one request]...], "answers": {id: [statuses]},
  "dead": [ids]}``.
"""

import asyncio
import json
import os
import signal
from collections import Counter

from aiohttp import web

TOPIC = os.environ["TOPIC"]
DEAD_LETTER = os.environ.get("DEAD_LETTER", "")
requests: list[list[str]] = []
answers: dict[str, list[str]] = {}
dead: list[str] = []
seen: Counter[str] = Counter()


async def subscribe(request: web.Request) -> web.Response:
    bulk = {
        "pubsubname": "pubsub",
        "topic": TOPIC,
        "route": "/bulk",
        "bulkSubscribe": {
            "enabled": True,
            "maxMessagesCount": int(os.environ["MAX_COUNT"]),
            "maxAwaitDurationMs": int(os.environ["MAX_AWAIT_MS"]),
        },
    }
    subs = [bulk]
    if DEAD_LETTER:
        bulk["deadLetterTopic"] = DEAD_LETTER
        subs.append({"pubsubname": "pubsub", "topic": DEAD_LETTER, "route": "/dead"})
    return web.json_response(subs)


async def on_bulk(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    ids = []
    statuses = []
    for entry in body["entries"]:
        event = entry["event"]
        event_id = event["id"]
        ids.append(event_id)
        seen[event_id] += 1
        wanted = (event.get("data") or {}).get("answer", "SUCCESS")
        first = seen[event_id] == 1
        if wanted == "OMIT_ONCE" and first:
            answers.setdefault(event_id, []).append("")
            continue
        if wanted.endswith("_ONCE"):
            wanted = "RETRY" if first else "SUCCESS"
        answers.setdefault(event_id, []).append(wanted)
        statuses.append({"entryId": entry["entryId"], "status": wanted})
    requests.append(ids)
    if any(
        (e["event"].get("data") or {}).get("answer") == "HANG_ONCE" and seen[e["event"]["id"]] == 1
        for e in body["entries"]
    ):
        await asyncio.Event().wait()  # never answers: the sidecar dies meanwhile
    return web.json_response({"statuses": statuses})


async def on_dead(request: web.Request) -> web.Response:
    dead.append(json.loads(await request.read())["id"])
    return web.json_response({"status": "SUCCESS"})


async def received(request: web.Request) -> web.Response:
    return web.json_response({"requests": requests, "answers": answers, "dead": dead})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/dapr/subscribe", subscribe)
    app.router.add_post("/bulk", on_bulk)
    app.router.add_post("/dead", on_dead)
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
