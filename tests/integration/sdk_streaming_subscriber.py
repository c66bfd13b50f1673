"""A streaming subscriber written with the Dapr Python SDK, unchanged:
``DaprClient().subscribe_with_handler`` over ``SubscribeTopicEventsAlpha1`` (no app port).

Env: ``PUBSUB``, ``TOPIC``, ``OUT`` (a file: one JSON line per handled message, written before
the answer), ``HANG`` (``1``: a message whose data is ``"hang"`` is never answered, the handler
blocks, so the test can kill this process mid-stream). A message whose data is ``"retry-once"``
is answered RETRY the first time.
"""

import json
import os
import threading
import time

from dapr.clients import DaprClient
from dapr.clients.grpc._response import TopicEventResponse

OUT = os.environ["OUT"]
HANG = os.environ.get("HANG") == "1"
retried: set[str] = set()


def handler(message) -> TopicEventResponse:  # type: ignore[no-untyped-def]
    data = message.data()
    with open(OUT, "a") as f:
        f.write(json.dumps({"id": message.id(), "data": data, "pid": os.getpid()}) + "\n")
    if data == "hang" and HANG:
        threading.Event().wait()  # never answers: the test kills this process
    if data == "retry-once" and message.id() not in retried:
        retried.add(message.id())
        return TopicEventResponse("retry")
    return TopicEventResponse("success")


def main() -> None:
    with DaprClient() as client:
        close = client.subscribe_with_handler(os.environ["PUBSUB"], os.environ["TOPIC"], handler)
        print("subscribed", flush=True)
        try:
            while True:
                time.sleep(1)  # the handler runs on the SDK's thread; this one just stays alive
        finally:
            close()


if __name__ == "__main__":
    main()
