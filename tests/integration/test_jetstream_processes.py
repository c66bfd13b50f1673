"""End to end on NATS JetStream: real sidecar processes, real app processes, the machine's real
NATS server. What is JetStream's own: SIGKILL mid-stream with AckWait redelivery, in single and
parallel mode. The delivery cases every broker shares (publish → delivery, retry, dead-letter,
rawPayload, routing, TTL, fan-out and sharing) run on JetStream in ``test_broker_delivery.py``.
Each test has its own stream (deleted afterwards) and app-ids. Nothing is mocked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from tidings.sidecar.resources.jetstream import consumer_name

from .processes import (
    Proc,
    kill_sidecar_mid_stream,
    poll,
    produce_jetstream,
    received,
    start_app,
    start_sidecar,
    write_jetstream_component,
)


def consumer_counts(nats_url: str, stream: str, consumer: str) -> tuple[int, int]:
    """``(num_ack_pending, num_pending)`` of a durable consumer, from the server."""

    async def run() -> tuple[int, int]:
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().consumer_info(stream, consumer)
            return info.num_ack_pending, info.num_pending
        finally:
            await nc.close()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("mode", "metadata", "delay_s"),
    [
        ("single", {}, 0.004),
        ("parallel", {"concurrencyMode": "parallel", "maxAckPending": "20"}, 0.05),
    ],
)
def test_sigkill_mid_stream_loses_nothing(
    tmp_path: Path,
    nats_url: str,
    jetstream_stream: tuple[str, str],
    procs: list[Proc],
    unique: str,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    metadata: dict[str, str],
    delay_s: float,
) -> None:
    """SIGKILL a sidecar while it delivers 1,000 events; a replacement sidecar of the same app-id
    gets every event the app did not acknowledge. The messages the dead sidecar held unacked
    (the server counts them) come back through AckWait redelivery (ackWait 2s): at the end the
    server has nothing pending and nothing unacknowledged. Duplicates are reported."""
    stream, prefix = jetstream_stream
    resources = write_jetstream_component(tmp_path / "resources", nats_url, stream, **metadata)
    topic = f"{prefix}.stream"
    app_id = f"killed-{unique}"
    consumer = consumer_name(app_id, topic)
    app = start_app(tmp_path, "app", topics=[topic], delay_s=delay_s)
    procs.append(app)
    ids = [f"{unique}-{n:04d}" for n in range(1000)]
    produce_jetstream(nats_url, topic, ids)
    acked_before_kill = kill_sidecar_mid_stream(
        tmp_path, procs, app, app_id=app_id, resources=resources, total=len(ids)
    )
    held_at_kill, _ = consumer_counts(nats_url, stream, consumer)
    if mode == "parallel":
        assert held_at_kill >= 1, "20 deliveries of 50 ms each are in flight at any time"

    second = start_sidecar(
        tmp_path, "second", app_id=app_id, resources=resources, app_port=app.port
    )
    procs.append(second)
    poll("every event to be delivered", lambda: set(received(app)["finished"]) >= set(ids), 90)
    poll(
        "the server to have every message acknowledged",
        lambda: consumer_counts(nats_url, stream, consumer) == (0, 0),
        30,
        0.2,
    )
    finished = received(app)["finished"]
    lost = set(ids) - set(finished)
    duplicates = len(finished) - len(set(finished))
    with capsys.disabled():
        print(
            f"\n[at-least-once, jetstream {mode}] SIGKILL after {acked_before_kill} acks, "
            f"{held_at_kill} held unacked by the dead sidecar: lost={len(lost)} "
            f"duplicates={duplicates} of {len(ids)}"
        )
    assert not lost
