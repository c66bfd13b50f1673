"""A publisher written with the Dapr Python SDK, unchanged: ``DaprClient`` over gRPC
(``DAPR_GRPC_PORT``, handed over by ``tidings run``).

``argv[1]`` is a JSON file of operations: ``{"op": "event"|"events", "pubsub", "topic", "data",
"metadata", "content_type"}`` (``data`` of ``event`` is a string, or ``{"b64": ...}`` for
bytes; of ``events``, a list of strings or ``{"data", "metadata", "content_type"}`` entries).
Prints one JSON result per operation: ``{"ok": true, "failed": [entry ids]}`` or the SDK
exception as ``{"error": class name, "code", "error_code", "message"}``.
"""

import base64
import json
import sys
from typing import Any

from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import BulkPublishEntry


def payload(data: Any) -> bytes | str:
    return base64.b64decode(data["b64"]) if isinstance(data, dict) else data


def entry(item: Any) -> str | BulkPublishEntry:
    if isinstance(item, str):
        return item
    return BulkPublishEntry(
        payload(item["data"]), metadata=item.get("metadata"), content_type=item.get("content_type")
    )


def run(client: DaprClient, op: dict[str, Any]) -> dict[str, Any]:
    if op["op"] == "event":
        client.publish_event(
            op["pubsub"],
            op["topic"],
            payload(op["data"]),
            publish_metadata=op.get("metadata", {}),
            data_content_type=op.get("content_type"),
        )
        return {"ok": True}
    response = client.publish_events(
        op["pubsub"],
        op["topic"],
        [entry(d) for d in op["data"]],
        publish_metadata=op.get("metadata", {}),
        data_content_type=op.get("content_type"),
    )
    return {"ok": True, "failed": [f.entry_id for f in response.failed_entries]}


def main() -> None:
    with open(sys.argv[1]) as f:
        ops = json.load(f)
    results = []
    with DaprClient() as client:
        for op in ops:
            try:
                results.append(run(client, op))
            except DaprGrpcError as exc:
                results.append(
                    {
                        "error": type(exc).__name__,
                        "code": exc.code().name,
                        "error_code": exc.error_code(),
                        "message": exc.details(),
                    }
                )
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
