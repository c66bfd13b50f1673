"""Apps written with the Dapr Python SDK run unchanged against tidings sidecars (issue 7).

Real processes only: sidecars (``python -m tidings.sidecar`` and ``tidings run``), the SDK apps of
this folder (``sdk_publisher.py`` with ``DaprClient`` over gRPC, ``sdk_subscriber_app.py`` with
``dapr[fastapi]``'s ``DaprApp``, ``sdk_streaming_subscriber.py`` with ``subscribe_with_handler``)
and the session's Kafka-protocol broker.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tidings.sidecar.cli.localbroker import free_port

from .processes import HERE, Proc, http_json, poll, run_to_end, start_sidecar, write_component


@pytest.fixture
def resources(tmp_path: Path, kafka_bootstrap: str) -> Path:
    return write_component(tmp_path / "resources", kafka_bootstrap)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_python(tmp: Path, name: str, script: str, env: dict[str, str], port: int = 0) -> Proc:
    log_path = tmp / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, str(HERE / script)],
        env={**os.environ, **env},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return Proc(name, process, log_path, port)


def subscriptions(sidecar: Proc) -> list[dict[str, Any]]:
    _, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/metadata")
    return body["subscriptions"]  # type: ignore[no-any-return]


def tidings() -> str:
    found = shutil.which("tidings", path=str(Path(sys.executable).parent))
    assert found, "the tidings console script is installed with the package"
    return found


def run_publisher(tmp: Path, resources: Path, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tidings run --app-id checkout -- python sdk_publisher.py ops.json``: the SDK finds the
    sidecar only through the DAPR_HTTP_PORT/DAPR_GRPC_PORT that ``tidings run`` hands it."""
    ops_path = tmp / "ops.json"
    ops_path.write_text(json.dumps(ops))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAPR_")}
    env["TIDINGS_HOME"] = str(tmp / "home")
    done = run_to_end(
        [
            tidings(),
            "run",
            "--app-id",
            "checkout",
            "--resources-path",
            str(resources),
            "--",
            sys.executable,
            str(HERE / "sdk_publisher.py"),
            str(ops_path),
        ],
        tmp=tmp,
        name="publisher",
        env=env,
        timeout_s=180,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_sdk_publisher_and_fastapi_subscriber_exchange_events_unchanged(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    topic, raw_topic = f"sdk-{unique}", f"sdk-raw-{unique}"
    app_port = free_port()
    app = start_python(
        tmp_path,
        "subscriber",
        "sdk_subscriber_app.py",
        {
            "APP_PORT": str(app_port),
            "PUBSUB": "pubsub",
            "TOPIC": topic,
            "RAW_TOPIC": raw_topic,
        },
        app_port,
    )
    procs.append(app)
    poll(
        "the FastAPI app to listen",
        lambda: _listening(app_port) or (not app.alive() and pytest.fail(app.log())),
    )
    sidecar = start_sidecar(
        tmp_path, "subscriber", app_id="orders", resources=resources, app_port=app_port
    )
    procs.append(sidecar)
    listed = poll(
        "DaprApp's subscriptions",
        lambda: len(subscriptions(sidecar)) == 2 and subscriptions(sidecar),
    )
    assert {(s["topic"], s["type"], s["rules"][0]["path"]) for s in listed} == {
        (topic, "PROGRAMMATIC", f"/events/pubsub/{topic}"),
        (raw_topic, "PROGRAMMATIC", f"/events/pubsub/{raw_topic}"),
    }

    raw_bytes = b"\x00\x01\xfe binary"
    results = run_publisher(
        tmp_path,
        resources,
        [
            {
                "op": "event",
                "pubsub": "pubsub",
                "topic": topic,
                "data": '{"orderId": 1}',
                "content_type": "application/json",
                "metadata": {"partitionKey": "order-1", "ttlInSeconds": "120"},
            },
            {
                "op": "event",
                "pubsub": "pubsub",
                "topic": topic,
                "data": "hello text",
                "content_type": "text/plain",
            },
            {
                "op": "event",
                "pubsub": "pubsub",
                "topic": topic,
                "data": "fail-once",
                "content_type": "text/plain",
            },
            {
                "op": "event",
                "pubsub": "pubsub",
                "topic": topic,
                "data": {"b64": base64.b64encode(raw_bytes).decode()},
                "content_type": "application/octet-stream",
            },
            {
                "op": "event",
                "pubsub": "pubsub",
                "topic": raw_topic,
                "data": '{"raw": true}',
                "metadata": {"rawPayload": "true"},
            },
            {
                "op": "events",
                "pubsub": "pubsub",
                "topic": topic,
                "data": ['{"bulk": 1}', '{"bulk": 2}'],
                "content_type": "application/json",
                "metadata": {"ttlInSeconds": "120"},
            },
            {
                "op": "events",
                "pubsub": "pubsub",
                "topic": topic,
                "data": [
                    {
                        "data": "bulk text",
                        "content_type": "text/plain",
                        "metadata": {"partitionKey": "bulk-key"},
                    },
                    {
                        "data": "never stored",
                        "content_type": "text/plain",
                        "metadata": {"partitionNumber": "99999999999"},
                    },
                ],
            },
            {"op": "event", "pubsub": "nope", "topic": topic, "data": "x"},
            {
                "op": "event",
                "pubsub": "pubsub",
                "topic": topic,
                "data": "x",
                "metadata": {"rawPayload": "maybe"},
            },
        ],
    )

    assert results[:6] == [{"ok": True}] * 5 + [{"ok": True, "failed": []}]
    assert results[6]["ok"] and len(results[6]["failed"]) == 1  # the out-of-range partition
    assert results[7] == {
        "error": "DaprGrpcError",
        "code": "INVALID_ARGUMENT",
        "error_code": "DAPR_PUBSUB_NOT_FOUND",
        "message": "pubsub nope is not found",
    }
    assert (results[8]["code"], results[8]["error_code"]) == (
        "INVALID_ARGUMENT",
        "DAPR_PUBSUB_METADATA_DESERIALIZATION",
    )

    def got() -> list[dict[str, Any]] | None:
        _, body = http_json(f"http://127.0.0.1:{app_port}/received")
        return body if len(body) >= 8 else None

    events = poll("the subscriber to receive 8 events", got, timeout_s=90)
    assert len(events) == 8, events
    by_data = {json.dumps(e["event"].get("data"), sort_keys=True): e for e in events}
    order = by_data['{"orderId": 1}']
    assert order["key"] == "order-1"
    assert (order["event"]["source"], order["event"]["datacontenttype"]) == (
        "checkout",
        "application/json",
    )
    assert "expiration" in order["event"]
    assert by_data['"hello text"']["event"]["datacontenttype"] == "text/plain"
    assert '"fail-once"' in by_data  # answered 500 once, retried, then accepted
    binary = [e["event"] for e in events if "data_base64" in e["event"]]
    decoded = sorted(base64.b64decode(e["data_base64"]) for e in binary)
    assert decoded == sorted([raw_bytes, b'{"raw": true}'])
    assert all("expiration" in by_data[d]["event"] for d in ('{"bulk": 1}', '{"bulk": 2}'))
    assert by_data['"bulk text"']["key"] == "bulk-key"


def test_sdk_streaming_subscriber_killed_mid_stream_gets_the_unanswered_again(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    """``subscribe_with_handler`` over SubscribeTopicEventsAlpha1 with no app port: events
    arrive, RETRY is redelivered, and the event the first subscriber never answered (it was
    killed with SIGKILL while handling it) is delivered to the next subscriber."""
    topic = f"stream-{unique}"
    sidecar = start_sidecar(tmp_path, "streaming", app_id="watcher", resources=resources)
    procs.append(sidecar)
    out = tmp_path / "handled.jsonl"
    env = {
        "DAPR_HTTP_PORT": str(sidecar.port),
        "DAPR_GRPC_PORT": str(sidecar.grpc_port),
        "PUBSUB": "pubsub",
        "TOPIC": topic,
        "OUT": str(out),
        "HANG": "1",
    }

    def handled() -> list[dict[str, Any]]:
        if not out.exists():
            return []
        return [json.loads(line) for line in out.read_text().splitlines() if line]

    refused = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "from dapr.clients import DaprClient\n"
                "try:\n"
                "    DaprClient().subscribe('nope', 'orders')\n"
                "except Exception as exc:\n"
                "    print(type(exc).__name__, exc)\n"
            ),
        ],
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
    )
    assert "pubsub nope is not found" in refused.stdout.decode(), refused

    first = start_python(tmp_path, "stream-1", "sdk_streaming_subscriber.py", env)
    procs.append(first)
    listed = poll(
        "the STREAMING subscription",
        lambda: (
            [s for s in subscriptions(sidecar) if s["type"] == "STREAMING"]
            or (not first.alive() and pytest.fail(first.log()))
        ),
    )
    assert [(s["pubsubname"], s["topic"]) for s in listed] == [("pubsub", topic)]

    # One partition key: the events reach the handler one after the other, in this order.
    for data in ("one", "retry-once", "hang", "after"):
        status, body = http_json(
            f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/{topic}?metadata.partitionKey=k",
            method="POST",
            body=json.dumps(data).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status == 204, body
    poll(
        "the first subscriber to get to 'hang'",
        lambda: any(h["data"] == "hang" for h in handled()),
        timeout_s=90,
    )
    seen = [h["data"] for h in handled()]
    assert seen == ["one", "retry-once", "retry-once", "hang"], seen
    hang_id = next(h["id"] for h in handled() if h["data"] == "hang")
    first.signal(signal.SIGKILL)
    first.process.wait()

    second = start_python(tmp_path, "stream-2", "sdk_streaming_subscriber.py", {**env, "HANG": "0"})
    procs.append(second)
    poll(
        "the second subscriber to get 'hang' again and then 'after'",
        lambda: (
            any(h["data"] == "after" and h["pid"] == second.process.pid for h in handled())
            or (not second.alive() and pytest.fail(second.log()))
        ),
        timeout_s=90,
    )
    again = [h for h in handled() if h["pid"] == second.process.pid]
    assert again[0]["id"] == hang_id and again[0]["data"] == "hang"
    assert "after" not in [h["data"] for h in handled() if h["pid"] == first.process.pid]


def test_sdk_sees_client_mistakes_as_invalid_argument_and_size_with_error_info(
    tmp_path: Path, resources: Path, unique: str
) -> None:
    """Regression (newcomer's report): with the SDK, ``publish_event("pubsub", "bad topic", "x")``
    and ``partitionNumber=99`` were INTERNAL (HTTP answers 400), and a 5 MB event ended in
    grpcio's own RESOURCE_EXHAUSTED without Dapr's ErrorInfo (``error_code()`` unknown)."""
    topic = f"sdk-mistakes-{unique}"
    results = run_publisher(
        tmp_path,
        resources,
        [
            {"op": "event", "pubsub": "pubsub", "topic": "bad topic", "data": "x"},
            {
                "op": "event",
                "pubsub": "pubsub",
                "topic": topic,
                "data": "x",
                "metadata": {"partitionNumber": "99"},
            },
            {"op": "event", "pubsub": "pubsub", "topic": topic, "data": "a" * 5_000_000},
        ],
    )
    assert [(r.get("code"), r.get("error_code")) for r in results] == [
        ("INVALID_ARGUMENT", "DAPR_PUBSUB_PUBLISH_MESSAGE"),
        ("INVALID_ARGUMENT", "DAPR_PUBSUB_PUBLISH_MESSAGE"),
        ("RESOURCE_EXHAUSTED", "DAPR_PUBSUB_PUBLISH_MESSAGE"),
    ], results
    assert "out of range" in results[1]["message"]
    assert "--max-body-size" in results[2]["message"]
