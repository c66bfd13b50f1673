"""End to end with real processes: sidecar processes, real app processes, a real broker.

Each sidecar is ``python -m tidings.sidecar``; each app is ``recorder_app.py`` (plain aiohttp);
the broker is the session's Tansu. Nothing here is mocked. The delivery cases every broker
shares (publish → delivery, retry, dead-letter, rawPayload, routing, TTL, fan-out and sharing)
run on Kafka in ``test_broker_delivery.py``; here is what is Kafka's or the sidecar's own
(SIGKILL and SIGTERM hand-over through a rebalance, hot reload, health, start-up errors).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tidings.sidecar.cli.localbroker import free_port

from .processes import (
    Proc,
    assignment,
    http_json,
    kill_sidecar_mid_stream,
    poll,
    produce_kafka,
    received,
    start_app,
    start_sidecar,
    write_component,
)


@pytest.fixture
def resources(tmp_path: Path, kafka_bootstrap: str) -> Path:
    return write_component(tmp_path / "resources", kafka_bootstrap)


def test_sigkill_mid_stream_loses_nothing(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILL a sidecar while it delivers 1,000 events; a replacement member of the same
    consumer group gets every event the app did not acknowledge. Duplicates are reported."""
    topic = f"stream-{unique}"
    app_id = f"killed-{unique}"
    app = start_app(tmp_path, "app", topics=[topic], delay_s=0.004)
    procs.append(app)
    ids = [f"{unique}-{n:04d}" for n in range(1000)]
    produce_kafka(kafka_bootstrap, topic, ids)
    acked_before_kill = kill_sidecar_mid_stream(
        tmp_path, procs, app, app_id=app_id, resources=resources, total=len(ids)
    )

    second = start_sidecar(
        tmp_path, "second", app_id=app_id, resources=resources, app_port=app.port
    )
    procs.append(second)
    poll("every event to be delivered", lambda: set(received(app)["finished"]) >= set(ids), 90)
    finished = received(app)["finished"]
    lost = set(ids) - set(finished)
    duplicates = len(finished) - len(set(finished))
    with capsys.disabled():
        print(
            f"\n[at-least-once] SIGKILL after {acked_before_kill} acks: lost={len(lost)} "
            f"duplicates={duplicates} of {len(ids)}"
        )
    assert not lost


def test_sigterm_finishes_in_flight_and_commits(
    tmp_path: Path, resources: Path, kafka_bootstrap: str, procs: list[Proc], unique: str
) -> None:
    topic = f"slow-{unique}"
    app_id = f"graceful-{unique}"
    app = start_app(tmp_path, "app", topics=[topic], delay_s=1.0)
    procs.append(app)
    ids = [f"{unique}-{n}" for n in range(12)]
    produce_kafka(kafka_bootstrap, topic, ids)
    first = start_sidecar(
        tmp_path, "first", app_id=app_id, resources=resources, app_port=app.port, grace_s=8
    )
    procs.append(first)
    poll("two deliveries in flight", lambda: len(received(app)["started"]) >= 2, 60, 0.01)
    first.signal(signal.SIGTERM)
    assert first.process.wait(20) == 0, first.log()
    at_exit = received(app)
    assert set(at_exit["started"]) <= set(at_exit["finished"]), (
        "every delivery in flight at SIGTERM finished before the sidecar exited"
    )
    done_before = set(at_exit["finished"])

    second = start_sidecar(
        tmp_path, "second", app_id=app_id, resources=resources, app_port=app.port
    )
    procs.append(second)
    poll("the rest to be delivered", lambda: set(received(app)["finished"]) >= set(ids), 60)
    redelivered = set(received(app)["started"][len(at_exit["started"]) :]) & done_before
    assert not redelivered, f"finished before SIGTERM but delivered again: {sorted(redelivered)}"


def test_declarative_subscription_hot_reload(
    tmp_path: Path, resources: Path, kafka_bootstrap: str, procs: list[Proc], unique: str
) -> None:
    """A Subscription file added to the resources folder takes effect without a restart (§5.8)."""
    topic = f"declared-{unique}"
    app = start_app(tmp_path, "app", topics=[])  # no programmatic subscriptions
    procs.append(app)
    sidecar = start_sidecar(
        tmp_path, "sub", app_id=f"hot-{unique}", resources=resources, app_port=app.port
    )
    procs.append(sidecar)
    (resources / "subscription.yaml").write_text(f"""\
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: declared
spec:
  pubsubname: pubsub
  topic: {topic}
  routes:
    default: /events
""")
    poll("the new subscription to be assigned", lambda: assignment(sidecar), 30)
    event_id = str(uuid.uuid4())
    produce_kafka(kafka_bootstrap, topic, [event_id])
    poll("the event to arrive", lambda: event_id in received(app)["finished"], 30)


def test_api_serves_before_the_app_is_reachable(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    """``/healthz/outbound`` is 204 at once; ``/healthz`` is 500 until the app port accepts
    connections, then 204 (§1.5); deliveries wait for the app."""
    app_port = free_port()
    sidecar = start_sidecar(
        tmp_path, "early", app_id=f"early-{unique}", resources=resources, app_port=app_port
    )
    procs.append(sidecar)
    status, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/healthz")
    assert status == 500 and body["errorCode"] == "ERR_HEALTH_NOT_READY", body
    assert http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/healthz/outbound")[0] == 204

    app = start_app(tmp_path, "late", topics=[f"late-{unique}"], port=app_port)
    procs.append(app)
    poll(
        "healthz to turn ready once the app listens",
        lambda: http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/healthz")[0] == 204,
        30,
    )
    poll("the app's subscription to be assigned", lambda: assignment(sidecar), 30)


def test_bad_component_refuses_to_start_naming_file_and_field(tmp_path: Path, unique: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
        "spec: {type: pubsub.kafka, version: v1, metadata: [{name: authType, value: none}]}\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidings.sidecar",
            "--app-id",
            f"bad-{unique}",
            "--dapr-http-port",
            str(free_port()),
            "--resources-path",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "broken.yaml" in result.stderr and "spec.metadata.brokers" in result.stderr
    assert "Traceback" not in result.stderr
