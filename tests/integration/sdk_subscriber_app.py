"""A subscriber written with the Dapr Python SDK's FastAPI extension, unchanged: ``DaprApp``
lists its routes on ``/dapr/subscribe`` (``/events/{pubsub}/{topic}``), a handler returning
``None`` answers 200 ``null``, a handler raising answers 500.

Env: ``APP_PORT``, ``PUBSUB``, ``TOPIC`` (CloudEvents), ``RAW_TOPIC`` (subscribed with
``rawPayload``). An event whose ``data`` is ``"fail-once"`` raises the first time it arrives, so
the sidecar must retry it. ``GET /received`` lists every accepted event with the ``__key``
delivery header.
"""

import os
from typing import Any

import uvicorn
from dapr.ext.fastapi import DaprApp
from fastapi import Body, FastAPI, Request

PUBSUB = os.environ["PUBSUB"]
app = FastAPI()
dapr_app = DaprApp(app)
received: list[dict[str, Any]] = []
failed_once: set[str] = set()


@dapr_app.subscribe(pubsub=PUBSUB, topic=os.environ["TOPIC"])
def on_event(request: Request, event: dict = Body()) -> None:  # noqa: B008 - FastAPI's style
    if event.get("data") == "fail-once" and event["id"] not in failed_once:
        failed_once.add(event["id"])
        raise RuntimeError("failing once on purpose: the sidecar must retry")
    received.append({"event": event, "key": request.headers.get("__key")})


@dapr_app.subscribe(pubsub=PUBSUB, topic=os.environ["RAW_TOPIC"], metadata={"rawPayload": "true"})
def on_raw(event: dict = Body()) -> None:  # noqa: B008
    received.append({"event": event, "key": None})


@app.get("/received")
def get_received() -> list[dict[str, Any]]:
    return received


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["APP_PORT"]), log_level="warning")
