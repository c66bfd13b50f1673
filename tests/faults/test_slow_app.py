"""An app that takes 10 s to start (issue 5, scenario 11). Real processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tidings.sidecar.cli.localbroker import free_port

from ..integration.processes import (
    Proc,
    _listening,
    assignment,
    http_json,
    poll,
    received,
    start_app,
    start_sidecar,
)
from .conftest import CountSheet
from .kit import produce_events, publish_raw


def test_app_slow_to_start(
    tmp_path: Path,
    resources: Path,
    kafka_bootstrap: str,
    procs: list[Proc],
    unique: str,
    counts: CountSheet,
) -> None:
    """11. The app answers only after 10 s: the publish API works at once, healthz says the app
    is not ready, subscriptions are fetched once it is up, and nothing published meanwhile is
    lost. The app-id ran before (a rolling restart), so its group has committed offsets."""
    topic, app_id = f"slow-{unique}", f"slow-{unique}"
    before = start_app(tmp_path, "before", topics=[topic])
    procs.append(before)
    first = start_sidecar(
        tmp_path, "first", app_id=app_id, resources=resources, app_port=before.port
    )
    procs.append(first)
    poll("the first run to be assigned", lambda: len(assignment(first)) == 4, 60)
    produce_events(kafka_bootstrap, topic, [f"{unique}-first"])
    poll("the first run to deliver", lambda: received(before)["finished"], 60)
    first.signal(signal.SIGTERM)
    assert first.process.wait(30) == 0
    before.stop()

    port = free_port()
    app = start_app(tmp_path, "slow", topics=[topic], port=port, startup_delay_s=10, wait=False)
    procs.append(app)
    sidecar = start_sidecar(tmp_path, "sub", app_id=app_id, resources=resources, app_port=port)
    procs.append(sidecar)
    status, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/healthz")
    assert status == 500 and body["errorCode"] == "ERR_HEALTH_NOT_READY", body
    ids = [f"{unique}-{n}" for n in range(20)]
    for event_id in ids:  # through the slow app's own sidecar
        status, body = publish_raw(
            sidecar,
            topic,
            json.dumps({"n": event_id}).encode(),
            query=f"?metadata.cloudevent.id={event_id}",
        )
        assert status == 204, body
    assert not _listening(port), "every publish was answered before the app was up"
    assert not assignment(sidecar), "no subscription before the app answers"

    poll(
        "healthz to turn ready",
        lambda: http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/healthz")[0] == 204,
        60,
    )
    poll(
        "everything published meanwhile to be delivered",
        lambda: set(received(app)["finished"]) >= set(ids),
        60,
    )
    row = counts.tally(
        published=len(ids),
        acked=ids,
        finished=received(app)["finished"],
        note="published before the app was up",
    )
    assert row.lost == 0
