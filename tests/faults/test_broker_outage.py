"""The broker stops answering for 10 s (issue 5, scenario 6): SIGSTOP/SIGCONT of a broker
started for this test alone (the session's broker is shared), while publishing and delivering."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.sidecar.cli.localbroker import LocalBroker, start_local_broker

from ..integration.processes import (
    Proc,
    assignment,
    http_json,
    poll,
    received,
    start_app,
    start_sidecar,
    write_component,
)
from .conftest import CountSheet
from .kit import publish_raw

OUTAGE_S = 10.0


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    broker = start_local_broker(log_path=tmp_path / "tansu.log")
    try:
        yield broker
    finally:
        if broker.process.poll() is None:
            os.kill(broker.process.pid, signal.SIGCONT)
        broker.stop()


class Publishers:
    """Threads publishing through a sidecar without pause; every answer is kept by id."""

    def __init__(self, sidecar: Proc, topic: str, prefix: str, threads: int = 3) -> None:
        self.answers: dict[str, tuple[int, object]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(sidecar, topic, f"{prefix}-{t}"))
            for t in range(threads)
        ]

    def _run(self, sidecar: Proc, topic: str, prefix: str) -> None:
        n = 0
        while not self._stop.is_set():
            event_id = f"{prefix}-{n}"
            n += 1
            answer = publish_raw(
                sidecar,
                topic,
                json.dumps({"id": event_id}).encode(),
                query=f"?metadata.cloudevent.id={event_id}",
                timeout_s=90,
            )
            with self._lock:
                self.answers[event_id] = answer

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def acked(self) -> list[str]:
        with self._lock:
            return [i for i, (status, _) in self.answers.items() if status == 204]


def test_broker_frozen_for_ten_seconds(
    tmp_path: Path, own_broker: LocalBroker, procs: list[Proc], unique: str, counts: CountSheet
) -> None:
    """6. Publishes during the outage succeed after recovery or fail with 500
    ERR_PUBSUB_PUBLISH_MESSAGE; none answered 204 is lost; delivery resumes by itself; healthz
    reports the outage."""
    topic = f"outage-{unique}"
    resources = write_component(tmp_path / "res", own_broker.bootstrap)
    app = start_app(tmp_path, "app", topics=[topic])
    procs.append(app)
    sub = start_sidecar(
        tmp_path, "sub", app_id=f"outage-{unique}", resources=resources, app_port=app.port
    )
    pub = start_sidecar(tmp_path, "pub", app_id=f"outage-pub-{unique}", resources=resources)
    procs += [sub, pub]
    poll("the subscriber to be assigned", lambda: len(assignment(sub)) == 4, 60)

    publishers = Publishers(pub, topic, unique)
    publishers.start()
    try:
        poll("publishing under way", lambda: len(publishers.acked()) >= 30, 60)
        os.kill(own_broker.process.pid, signal.SIGSTOP)
        acked_at_stop = len(publishers.acked())
        healthz: set[int] = set()
        resume_at = time.monotonic() + OUTAGE_S
        while time.monotonic() < resume_at:  # the outage lasts OUTAGE_S; healthz meanwhile
            healthz.add(http_json(f"http://127.0.0.1:{pub.port}/v1.0/healthz")[0])
            time.sleep(0.2)  # poll interval of healthz during the fixed-length outage
        os.kill(own_broker.process.pid, signal.SIGCONT)
        poll(
            "publishing to go on after the outage",
            lambda: len(publishers.acked()) >= acked_at_stop + 30,
            90,
        )
    finally:
        publishers.stop()
    assert 500 in healthz, f"healthz during the outage answered only {healthz}"
    poll(
        "healthz to recover",
        lambda: http_json(f"http://127.0.0.1:{pub.port}/v1.0/healthz")[0] == 204,
        30,
    )

    odd = {
        i: a
        for i, a in publishers.answers.items()
        if a[0] != 204
        and not (
            a[0] == 500
            and isinstance(a[1], dict)
            and a[1].get("errorCode") == "ERR_PUBSUB_PUBLISH_MESSAGE"
        )
    }
    assert not odd, f"answers other than 204 and 500 ERR_PUBSUB_PUBLISH_MESSAGE: {odd}"
    acked = publishers.acked()
    poll(
        "every acknowledged publish to be delivered (delivery resumed by itself)",
        lambda: set(received(app)["finished"]) >= set(acked),
        120,
        0.2,
    )
    failed = len(publishers.answers) - len(acked)
    row = counts.tally(
        published=len(publishers.answers),
        acked=acked,
        finished=received(app)["finished"],
        note=f"{OUTAGE_S:g}s SIGSTOP; {failed} answered 500",
    )
    assert row.lost == 0
