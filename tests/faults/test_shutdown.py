"""A sidecar that has delivered messages exits promptly on SIGTERM, on every broker.

A pod whose sidecar does not stop on SIGTERM is SIGKILLed by the kubelet after
``terminationGracePeriodSeconds`` (whatever it had in flight is delivered again) and, before
that, holds up a rollout. Each broker is tried ten times in a row with real processes: a real
app over HTTP, the real broker (Tansu, the machine's Redis and NATS JetStream), messages
delivered, then SIGTERM; the sidecar must exit 0 within :data:`EXIT_WITHIN_S`. The bound is a
hang detector (the graceful-shutdown grace is 2 s here), not a speed assertion.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from ..integration.processes import (
    Proc,
    poll,
    produce_jetstream,
    produce_kafka,
    produce_redis,
    received,
    start_app,
    start_sidecar,
    write_component,
    write_jetstream_component,
    write_redis_component,
)

EXIT_WITHIN_S = 10.0
ROUNDS = 10
PER_ROUND = 5


@pytest.mark.parametrize("broker", ["kafka", "redis", "jetstream"])
def test_sidecar_exits_within_ten_seconds_of_sigterm(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path, procs: list[Proc], unique: str
) -> None:
    if broker == "kafka":
        address = request.getfixturevalue("kafka_bootstrap")
        topic = f"stop-{unique}"
        resources = write_component(tmp_path / "resources", address)
        produce = produce_kafka
    elif broker == "redis":
        address = request.getfixturevalue("redis_host")
        topic = f"stop-{unique}"
        resources = write_redis_component(tmp_path / "resources", address)
        produce = produce_redis
    else:
        address = request.getfixturevalue("nats_url")
        stream, prefix = request.getfixturevalue("jetstream_stream")
        topic = f"{prefix}.stop"
        resources = write_jetstream_component(tmp_path / "resources", address, stream)
        produce = produce_jetstream
    app = start_app(tmp_path, "app", topics=[topic])
    procs.append(app)
    app_id = f"stop-{unique}"
    try:
        for round_ in range(ROUNDS):
            ids = [f"{unique}-{round_}-{n}" for n in range(PER_ROUND)]
            sidecar = start_sidecar(
                tmp_path,
                f"sidecar{round_}",
                app_id=app_id,
                resources=resources,
                app_port=app.port,
                grace_s=2.0,
            )
            procs.append(sidecar)
            produce(address, topic, ids)
            poll(
                f"round {round_}'s events to be delivered",
                lambda ids=ids: set(received(app)["finished"]) >= set(ids),
                60,
            )
            sidecar.signal(signal.SIGTERM)
            try:
                code = sidecar.process.wait(EXIT_WITHIN_S)
            except subprocess.TimeoutExpired:
                sidecar.process.kill()
                sidecar.process.wait()
                raise AssertionError(
                    f"round {round_}: the {broker} sidecar did not exit within "
                    f"{EXIT_WITHIN_S:.0f} s of SIGTERM\n{sidecar.log()[-4000:]}"
                ) from None
            assert code == 0, f"round {round_}: exit code {code}\n{sidecar.log()[-4000:]}"
            assert "sidecar stopped" in sidecar.log()
    finally:
        if broker == "redis":
            import redis

            host, _, port = address.rpartition(":")
            with redis.Redis(host=host, port=int(port)) as client:
                client.delete(topic)
