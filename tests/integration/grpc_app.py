"""A gRPC subscriber written with the Dapr Python SDK's ``dapr.ext.grpc`` (``App.subscribe``).

Runs in its own environment with ``pip install "dapr[grpc]"`` (see ``grpc_app_python`` in
``test_grpc_app.py``): the SDK's gRPC extension needs ``cloudevents<2`` while tidings needs 2.x,
exactly as an app and its sidecar live in different containers.

Env: ``APP_PORT``; ``TOPIC`` (subscriptions ``TOPIC``, ``TOPIC-dl`` with dead-letter topic
``TOPIC-poison``, ``TOPIC-poison`` and ``TOPIC-routed`` with a rule); ``RECORD_FILE``: one JSON
line per call. The event's ``data.answer`` says what to answer: ``SUCCESS``, ``RETRY_ONCE``
(RETRY on the first delivery of that id), ``DROP``, ``RAISE_ONCE`` (an exception on the first
delivery, then ``None``, which the SDK answers with an empty message).
"""

from __future__ import annotations

import json
import os
from collections import Counter

from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App, Rule, SubscriptionMessage

TOPIC = os.environ["TOPIC"]
RECORD = open(os.environ["RECORD_FILE"], "a", buffering=1)  # noqa: SIM115 - open for the process
seen: Counter[str] = Counter()
app = App()


def record(handler: str, event: SubscriptionMessage) -> str:
    seen[event.id()] += 1
    data = event.data()
    RECORD.write(
        json.dumps(
            {
                "handler": handler,
                "id": event.id(),
                "attempt": seen[event.id()],
                "data": data,
                "raw": event.raw_data().decode("utf-8", "replace"),
                "type": event.type(),
                "source": event.source(),
                "content_type": event.data_content_type(),
                "topic": event.topic(),
                "pubsub": event.pubsub_name(),
                "extensions": event.extensions(),
                "metadata": event.metadata(),
                "app_protocol": os.environ.get("APP_PROTOCOL"),
            }
        )
        + "\n"
    )
    return data.get("answer", "SUCCESS") if isinstance(data, dict) else "SUCCESS"


def answer(handler: str, event: SubscriptionMessage) -> TopicEventResponse | None:
    wanted = record(handler, event)
    first = seen[event.id()] == 1
    if wanted == "RETRY_ONCE":
        return TopicEventResponse("retry" if first else "success")
    if wanted == "RAISE_ONCE":
        if first:
            raise RuntimeError("the handler failed")
        return None
    return TopicEventResponse(wanted.lower())


@app.subscribe(pubsub_name="pubsub", topic=TOPIC)
def orders(event: SubscriptionMessage) -> TopicEventResponse | None:
    return answer("orders", event)


@app.subscribe(pubsub_name="pubsub", topic=f"{TOPIC}-dl", dead_letter_topic=f"{TOPIC}-poison")
def audited(event: SubscriptionMessage) -> TopicEventResponse | None:
    return answer("audited", event)


@app.subscribe(pubsub_name="pubsub", topic=f"{TOPIC}-poison")
def poison(event: SubscriptionMessage) -> TopicEventResponse | None:
    return answer("poison", event)


@app.subscribe(
    pubsub_name="pubsub", topic=f"{TOPIC}-routed", rule=Rule('event.type == "widget"', 1)
)
def widgets(event: SubscriptionMessage) -> TopicEventResponse | None:
    return answer("widgets", event)


if __name__ == "__main__":
    app.run(int(os.environ["APP_PORT"]), listen_address="127.0.0.1")
