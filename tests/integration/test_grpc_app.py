"""A gRPC app written with the Dapr Python SDK (``dapr.ext.grpc``) behind a tidings sidecar
running ``--app-protocol grpc``: real processes, the session's real broker, nothing mocked.

The app (``grpc_app.py``) runs in its own virtual environment with ``dapr[grpc]`` installed from
PyPI, built once and cached under ``~/.cache/tidings-tests`` (``TIDINGS_TEST_CACHE`` moves it):
the SDK's gRPC extension pins ``cloudevents<2`` while tidings needs ``cloudevents>=2.2``, so the
two cannot share one environment, just as an app and its sidecar do not share a container.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tidings.sidecar.cli.localbroker import free_port

from .processes import (
    HERE,
    Proc,
    assignment,
    http_json,
    poll,
    publish,
    start_app_script,
    start_sidecar,
    write_component,
)

APP_REQUIREMENT = "dapr[grpc]>=1.19"


@pytest.fixture(scope="session")
def grpc_app_python() -> Path:
    """The Python of a virtual environment holding ``dapr[grpc]`` (built once, then reused)."""
    cache = Path(os.environ.get("TIDINGS_TEST_CACHE", Path.home() / ".cache" / "tidings-tests"))
    venv = cache / f"dapr-grpc-py{sys.version_info.major}{sys.version_info.minor}"
    python = venv / "bin" / "python"
    marker = venv / "installed.txt"
    if marker.is_file() and marker.read_text() == APP_REQUIREMENT and python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", APP_REQUIREMENT],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"cannot install {APP_REQUIREMENT}:\n{result.stderr[-3000:]}"
    marker.write_text(APP_REQUIREMENT)
    return python


def start_grpc_app(python: Path, tmp: Path, topic: str) -> tuple[Proc, Path]:
    port = free_port()
    record = tmp / "grpc.app.calls.jsonl"
    record.touch()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "APP_PORT": str(port),
        "TOPIC": topic,
        "RECORD_FILE": str(record),
        "PYTHONUNBUFFERED": "1",
    }
    return start_app_script(tmp, "grpc", "grpc_app.py", port=port, env=env, python=python), record


def calls(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def of(record: Path, handler: str, event_id: str | None = None) -> list[dict[str, Any]]:
    return [
        c
        for c in calls(record)
        if c["handler"] == handler and (event_id is None or c["data"].get("id") == event_id)
    ]


def test_sdk_grpc_app_receives_through_on_topic_event(
    tmp_path: Path, kafka_bootstrap: str, grpc_app_python: Path, procs: list[Proc], unique: str
) -> None:
    topic = f"grpc-{unique}"
    resources = write_component(tmp_path / "resources", kafka_bootstrap)
    app, record = start_grpc_app(grpc_app_python, tmp_path, topic)
    procs.append(app)
    sidecar = start_sidecar(
        tmp_path,
        "grpc",
        app_id=f"grpc-{unique}",
        resources=resources,
        app_port=app.port,
        extra=["--app-protocol", "grpc"],
    )
    procs.append(sidecar)
    topics = {topic, f"{topic}-dl", f"{topic}-poison", f"{topic}-routed"}
    poll(
        "the subscriptions from ListTopicSubscriptions to be assigned",
        lambda: topics <= {p.rsplit(":", 1)[0] for p in assignment(sidecar)},
        90,
    )
    _, metadata = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/metadata")
    assert metadata["appConnectionProperties"]["protocol"] == "grpc"
    listed = {s["topic"]: s for s in metadata["subscriptions"]}
    assert listed[f"{topic}-dl"]["deadLetterTopic"] == f"{topic}-poison"
    assert listed[f"{topic}-routed"]["rules"] == [
        {"match": 'event.type == "widget"', "path": "widgets"}
    ]
    assert listed[topic]["rules"] == [{"match": "", "path": ""}]

    # SUCCESS, RETRY (redelivered), an exception (a gRPC error: redelivered), DROP (not
    # redelivered, acked): no dead-letter topic on this subscription.
    for event_id, wanted in (
        ("ok", "SUCCESS"),
        ("again", "RETRY_ONCE"),
        ("boom", "RAISE_ONCE"),
        ("dropped", "DROP"),
    ):
        publish(sidecar, topic, {"id": event_id, "answer": wanted, "text": "grüße"})
    # JSON numbers reach OnTopicEvent as published, as they reach an HTTP app.
    exact = b'{"id":"exact","price":1.10,"big":%d,"e":1e2}' % 2**70
    status, body = http_json(
        f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/{topic}",
        method="POST",
        body=exact,
        headers={"Content-Type": "application/json"},
    )
    assert status == 204, (status, body)
    poll(
        "RETRY to be redelivered and then succeed",
        lambda: len(of(record, "orders", "again")) >= 2,
        60,
    )
    poll("the failed handler to be redelivered", lambda: len(of(record, "orders", "boom")) >= 2, 60)
    poll("the drop to arrive", lambda: of(record, "orders", "dropped"), 60)
    assert poll("the exact numbers", lambda: of(record, "orders", "exact"), 60)[0]["raw"] == (
        exact.decode()
    )

    # DROP on a subscription with a dead-letter topic: the original event goes there, once.
    publish(sidecar, f"{topic}-dl", {"id": "to-dlt", "answer": "DROP"})
    dead = poll(
        "the dropped event on the dead-letter topic", lambda: of(record, "poison", "to-dlt"), 60
    )
    assert dead[0]["data"] == {"id": "to-dlt", "answer": "DROP"}

    # A routing rule: the SDK's rule path selects the handler inside OnTopicEvent.
    cloudevent = {
        "specversion": "1.0",
        "id": "w-1",
        "source": "test",
        "type": "widget",
        "datacontenttype": "application/json",
        "data": {"id": "widget-1"},
        "custom": "ext-value",
    }
    _publish_cloudevent(sidecar, f"{topic}-routed", cloudevent)
    widget = poll("the routed event", lambda: of(record, "widgets", "widget-1"), 60)[0]

    ok = of(record, "orders", "ok")
    assert len(ok) == 1
    assert ok[0]["data"] == {"id": "ok", "answer": "SUCCESS", "text": "grüße"}
    assert ok[0]["content_type"] == "application/json"
    assert ok[0]["source"] == f"grpc-{unique}" and ok[0]["type"] == "com.dapr.event.sent"
    assert ok[0]["topic"] == topic and ok[0]["pubsub"] == "pubsub"
    assert ok[0]["extensions"]["pubsubname"] == "pubsub"
    metadata = ok[0]["metadata"]
    assert metadata["__topic"] == topic and metadata["pubsubname"] == "pubsub"
    assert metadata["__partition"].isdigit() and metadata["__offset"].isdigit()
    assert [c["attempt"] for c in of(record, "orders", "again")][:2] == [1, 2]
    assert widget["type"] == "widget" and widget["id"] == "w-1"
    assert widget["extensions"]["custom"] == "ext-value"

    # Nothing is redelivered once answered SUCCESS or DROP: a later event arrives after them,
    # and they were each seen exactly once.
    publish(sidecar, topic, {"id": "last", "answer": "SUCCESS"})
    poll("a later event", lambda: of(record, "orders", "last"), 60)
    assert len(of(record, "orders", "dropped")) == 1
    assert len(of(record, "orders", "ok")) == 1
    assert len(of(record, "audited", "to-dlt")) == 1
    sidecar_log = sidecar.log()
    assert "DROP status returned from app" in sidecar_log
    assert f"sending it to dead-letter topic {topic}-poison" in sidecar_log


def _publish_cloudevent(sidecar: Proc, topic: str, event: dict[str, Any]) -> None:
    status, body = http_json(
        f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/{topic}",
        method="POST",
        body=json.dumps(event).encode(),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert status == 204, (status, body)


def test_tidings_run_app_protocol_grpc(
    tmp_path: Path, kafka_bootstrap: str, grpc_app_python: Path, unique: str
) -> None:
    """``tidings run --app-protocol grpc`` starts the sidecar on the gRPC channel and tells the
    app ``APP_PROTOCOL=grpc``, as ``dapr run`` does."""
    topic = f"run-grpc-{unique}"
    resources = write_component(tmp_path / "resources", kafka_bootstrap)
    record = tmp_path / "calls.jsonl"
    record.touch()
    app_port, http_port = free_port(), free_port()
    script = Path(sys.executable).parent / "tidings"
    log_path = tmp_path / "run.log"
    run = subprocess.Popen(
        [
            str(script),
            "run",
            "--app-id",
            f"run-{unique}",
            "--app-port",
            str(app_port),
            "--app-protocol",
            "grpc",
            "--dapr-http-port",
            str(http_port),
            "--resources-path",
            str(resources),
            "--",
            str(grpc_app_python),
            str(HERE / "grpc_app.py"),
        ],
        env={
            **os.environ,
            "TIDINGS_HOME": str(tmp_path / "home"),
            "TOPIC": topic,
            "RECORD_FILE": str(record),
        },
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:

        def delivered() -> bool:
            # the group may still be joining (initialOffset newest): publish until one arrives
            try:
                status, _ = http_json(
                    f"http://127.0.0.1:{http_port}/v1.0/publish/pubsub/{topic}",
                    method="POST",
                    body=b'{"id": "via-run"}',
                    headers={"Content-Type": "application/json"},
                )
            except OSError:
                return False
            return status == 204 and bool(of(record, "orders", "via-run"))

        assert run.poll() is None, log_path.read_text()
        poll("an event to reach the gRPC app started by tidings run", delivered, 90, interval_s=0.5)
    finally:
        run.send_signal(signal.SIGINT)
        code = run.wait(30)
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), log_path.read_text()
    first = of(record, "orders", "via-run")[0]
    assert first["app_protocol"] == "grpc"
    assert first["metadata"]["__topic"] == topic
