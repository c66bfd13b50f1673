"""Subscriber app: plain aiohttp, no SDK. It only speaks HTTP to its sidecar.

- ``GET /dapr/subscribe`` declares a programmatic subscription: topic ``orders`` on pubsub
  ``pubsub``, delivered to ``POST /orders`` (dapr-pubsub-contract.md §2.1).
- ``POST /orders`` receives each CloudEvent and answers ``{"status": "SUCCESS"}``.
- ``GET /received`` lists the CloudEvent ids received so far (the demo reads it).

Environment: ``APP_PORT`` (port to listen on), ``APP_ID`` (set by ``tidings run``), optional
``PUBSUB_NAME``, ``TOPIC`` and ``SIDECAR_MAX_BODY_SIZE`` (bytes, the sidecar's
``--max-body-size``, default 4 MiB).
"""

import json
import os

from aiohttp import web

PUBSUB = os.environ.get("PUBSUB_NAME", "pubsub")
TOPIC = os.environ.get("TOPIC", "orders")
received = web.AppKey("received", list)

# Every event the sidecar accepted is delivered, and an answer of 413 is retried forever, which
# stalls the partition behind it: accept the largest delivery a body of the sidecar's
# --max-body-size can become. That is the body in a CloudEvent: base64 (4/3) when binary, JSON
# string escaping (up to 6 bytes per control character) when text, plus the envelope.
# aiohttp's default client_max_size (1 MiB) is smaller than the sidecar's default 4 MiB.
SIDECAR_MAX_BODY_SIZE = int(os.environ.get("SIDECAR_MAX_BODY_SIZE", 4 * 1024 * 1024))
CLIENT_MAX_SIZE = 6 * SIDECAR_MAX_BODY_SIZE + 64 * 1024


async def subscribe(request: web.Request) -> web.Response:
    return web.json_response([{"pubsubname": PUBSUB, "topic": TOPIC, "route": "/orders"}])


async def on_order(request: web.Request) -> web.Response:
    event = json.loads(await request.read())
    request.app[received].append(event["id"])
    print(f"{os.environ.get('APP_ID', 'subscriber')} got order {event['data']}", flush=True)
    return web.json_response({"status": "SUCCESS"})


async def list_received(request: web.Request) -> web.Response:
    return web.json_response(request.app[received])


def make_app() -> web.Application:
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[received] = []
    app.router.add_get("/dapr/subscribe", subscribe)
    app.router.add_post("/orders", on_order)
    app.router.add_get("/received", list_received)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(os.environ["APP_PORT"]), print=None)
