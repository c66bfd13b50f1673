"""Real processes for the integration tests: sidecars (``python -m tidings.sidecar``) and apps,
and a plain aiokafka producer and consumer to write and read topics around them.

Every process logs to a file in the test's tmp folder (named in assertion messages) and is
stopped by the fixture that started it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tidings.sidecar.cli.localbroker import free_port
from tidings.sidecar.cli.localdev import kafka_component_yaml

HERE = Path(__file__).resolve().parent
T = TypeVar("T")

# Short group timeouts and retry intervals keep the tests fast (aiokafka-pitfalls.md 11).
TEST_KAFKA_METADATA = {
    "sessionTimeout": "3s",
    "heartbeatInterval": "1s",
    "backOffInitialInterval": "50ms",
    "backOffMaxInterval": "500ms",
}


def write_component(folder: Path, bootstrap: str, **metadata: str) -> Path:
    """A resources folder with the test Kafka component ``pubsub`` (:data:`TEST_KAFKA_METADATA`,
    then ``metadata``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pubsub.yaml").write_text(
        kafka_component_yaml(bootstrap, metadata={**TEST_KAFKA_METADATA, **metadata})
    )
    return folder


def poll(
    what: str, check: Callable[[], T | None], timeout_s: float = 60.0, interval_s: float = 0.05
) -> T:
    """Call ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)  # poll interval, bounded by the deadline


def http_json(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10,
) -> tuple[int, Any]:
    """``(status, parsed JSON body)`` of one request; a body that is not JSON comes as text,
    an empty one as ``None``."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    grpc_port: int | None = None  # a sidecar's Dapr gRPC API
    public_port: int | None = None  # a sidecar's health port (--dapr-public-port)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            self.process.send_signal(sig)

    def stop(self, timeout_s: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_app(
    tmp: Path,
    name: str,
    *,
    topics: list[str],
    delay_s: float = 0.0,
    answer: str = "SUCCESS",
    port: int | None = None,
    startup_delay_s: float = 0.0,
    wait: bool = True,
) -> Proc:
    """Start ``recorder_app.py``; with ``wait`` return once its port accepts connections."""
    port = port or free_port()
    return start_app_script(
        tmp,
        name,
        "recorder_app.py",
        port=port,
        wait=wait,
        env={
            **os.environ,
            "APP_PORT": str(port),
            "TOPICS": ",".join(topics),
            "DELAY_S": str(delay_s),
            "ANSWER": answer,
            "STARTUP_DELAY_S": str(startup_delay_s),
        },
    )


def start_app_script(
    tmp: Path,
    name: str,
    script: str,
    *,
    port: int,
    env: dict[str, str],
    python: Path | str = sys.executable,
    wait: bool = True,
) -> Proc:
    """Start the app ``script`` (a file next to this module) with ``python`` and exactly ``env``
    (which names ``port``), logging to ``<tmp>/<name>.app.log``; with ``wait`` return once
    ``port`` accepts connections, failing with the app's log if it exits first."""
    log_path = tmp / f"{name}.app.log"
    process = subprocess.Popen(
        [str(python), str(HERE / script)],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    proc = Proc(name, process, log_path, port)
    if wait:
        poll(
            f"app {name} to listen", lambda: _listening(port) or (not proc.alive() and _died(proc))
        )
    return proc


@dataclass(frozen=True)
class Finished:
    """What a command run to its end left: exit code and its whole stdout/stderr (text)."""

    returncode: int
    stdout: str
    stderr: str


def run_to_end(
    cmd: list[str],
    *,
    tmp: Path,
    name: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 180.0,
) -> Finished:
    """Run ``cmd`` (e.g. ``tidings run ... -- app``) until it exits, its output in files.

    Unlike ``subprocess.run(capture_output=True, timeout=...)`` this cannot hang: a command
    whose children outlive it keeps no pipe open, so a timeout does not wait for those
    children to close it. On timeout the command gets SIGINT (``tidings run`` stops its
    sidecar and app on Ctrl-C), then SIGKILL after 30 s, and the test fails with its output.
    """
    out_path, err_path = tmp / f"{name}.stdout", tmp / f"{name}.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise AssertionError(
            f"{name} did not finish within {timeout_s:.0f} s\n--- stdout\n"
            f"{out_path.read_text(errors='replace')[-3000:]}\n--- stderr\n"
            f"{err_path.read_text(errors='replace')[-5000:]}"
        ) from None
    return Finished(
        process.returncode,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
    )


def _died(proc: Proc) -> bool:
    raise AssertionError(f"{proc.name} exited early:\n{proc.log()}")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_sidecar(
    tmp: Path,
    name: str,
    *,
    app_id: str,
    resources: Path,
    app_port: int | None = None,
    grace_s: float = 5.0,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> Proc:
    """Start ``python -m tidings.sidecar`` on free ports; with ``wait``, return once its
    components are ready (``/v1.0/healthz/outbound`` 204), else once its API answers."""
    port = free_port()
    # Its own gRPC and health ports: Dapr's defaults 50001 and 3501 would be shared by every
    # sidecar of the host.
    grpc_port = free_port()
    public_port = free_port()
    log_path = tmp / f"{name}.sidecar.log"
    argv = [
        sys.executable,
        "-m",
        "tidings.sidecar",
        "--app-id",
        app_id,
        "--dapr-http-port",
        str(port),
        "--dapr-grpc-port",
        str(grpc_port),
        "--dapr-public-port",
        str(public_port),
        "--resources-path",
        str(resources),
        "--log-level",
        "info",
        "--dapr-graceful-shutdown-seconds",
        str(grace_s),
        *(extra or []),
    ]
    if app_port is not None:
        argv += ["--app-port", str(app_port)]
    process = subprocess.Popen(
        argv,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    proc = Proc(name, process, log_path, port, grpc_port, public_port)
    wait_serving(proc, ready=wait)
    return proc


def wait_serving(sidecar: Proc, timeout_s: float = 30, *, ready: bool = True) -> None:
    """Poll until the sidecar's ``/v1.0/healthz/outbound`` answers 204 (with ``ready=False``:
    answers at all); fail with its log if the process exits first."""

    def serving() -> bool:
        if not sidecar.alive():
            _died(sidecar)
        try:
            status, _ = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/healthz/outbound")
        except OSError:
            return False
        return status == 204 or not ready

    poll(f"sidecar {sidecar.name} to serve", serving, timeout_s=timeout_s)


def received(app: Proc) -> dict[str, list[str]]:
    _, body = http_json(f"http://127.0.0.1:{app.port}/received")
    return body  # type: ignore[no-any-return]


def kill_sidecar_mid_stream(
    tmp: Path, procs: list[Proc], app: Proc, *, app_id: str, resources: Path, total: int
) -> int:
    """Start a sidecar of ``app_id`` delivering to ``app``, SIGKILL it once the app finished 250
    events and return how many distinct events the app had finished by then (fewer than
    ``total``: the kill lands mid-stream)."""
    first = start_sidecar(tmp, "first", app_id=app_id, resources=resources, app_port=app.port)
    procs.append(first)
    poll("deliveries to be under way", lambda: len(received(app)["finished"]) >= 250, 60, 0.01)
    first.signal(signal.SIGKILL)
    first.process.wait(10)
    acked_before_kill = len(set(received(app)["finished"]))
    assert acked_before_kill < total, "the kill must land mid-stream"
    return acked_before_kill


def assignment(sidecar: Proc, pubsub: str = "pubsub") -> set[str]:
    """Partitions (``topic:partition``) the sidecar's consumer group member owns now."""
    _, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/metadata")
    value = (body.get("extended") or {}).get(f"kafka.assignment.{pubsub}", "")
    return {p for p in value.split(",") if p}


def publish(sidecar: Proc, topic: str, data: Any, *, pubsub: str = "pubsub") -> None:
    status, body = http_json(
        f"http://127.0.0.1:{sidecar.port}/v1.0/publish/{pubsub}/{topic}",
        method="POST",
        body=json.dumps(data).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 204, (status, body)


# Short ackWait: a killed sidecar's messages come back to the next replica within seconds.
TEST_JETSTREAM_METADATA = {
    "ackWait": "2s",
    "backOffInitialInterval": "50ms",
    "backOffMaxInterval": "500ms",
}


def write_jetstream_component(folder: Path, nats_url: str, stream: str, **metadata: str) -> Path:
    """A ``pubsub.jetstream`` Component named ``pubsub`` on ``stream`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {"natsURL": nats_url, "streamName": stream, **TEST_JETSTREAM_METADATA, **metadata}
    items = "".join(
        f"  - name: {key}\n    value: {json.dumps(value)}\n" for key, value in values.items()
    )
    (folder / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\n"
        f"spec:\n  type: pubsub.jetstream\n  version: v1\n  metadata:\n{items}"
    )
    return folder


def jetstream_consumers(sidecar: Proc, pubsub: str = "pubsub") -> set[str]:
    """The sidecar's durable consumers (``topic=stream/consumer``) from ``/v1.0/metadata``;
    the stream part is empty until the consumer exists."""
    _, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/metadata")
    value = (body.get("extended") or {}).get(f"jetstream.consumers.{pubsub}", "")
    return {c for c in value.split(",") if c and "=/" not in c}


# Fast reclaim so a crashed member's entries move on within seconds; short delivery back-off.
TEST_REDIS_METADATA = {
    "processingTimeout": "2s",
    "redeliverInterval": "200ms",
    "backOffInitialInterval": "50ms",
    "backOffMaxInterval": "500ms",
}


def write_redis_component(folder: Path, host: str, **metadata: str) -> Path:
    """A ``pubsub.redis`` Component named ``pubsub`` on Redis at ``host`` (``host:port``)."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {"redisHost": host, **TEST_REDIS_METADATA, **metadata}
    items = "".join(f"  - name: {k}\n    value: {json.dumps(v)}\n" for k, v in values.items())
    (folder / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\n"
        f"spec:\n  type: pubsub.redis\n  version: v1\n  metadata:\n{items}"
    )
    return folder


def redis_streams(sidecar: Proc, pubsub: str = "pubsub") -> set[str]:
    """Streams the sidecar's Redis consumer reads now (its group exists there)."""
    _, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/metadata")
    value = (body.get("extended") or {}).get(f"redis.streams.{pubsub}", "")
    return {s for s in value.split(",") if s}


def event_bytes(event_id: str) -> bytes:
    """A CloudEvent with id ``event_id``, as a publisher sidecar stores it."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "test",
            "type": "t",
            "datacontenttype": "application/json",
            "data": {"n": event_id},
        }
    ).encode()


def produce(bootstrap: str, topic: str, records: Sequence[dict[str, Any]]) -> None:
    """Produce ``records`` (``value`` bytes, optional ``key``, ``headers``, ``partition``) with a
    plain aiokafka producer, ``acks=all``, in order; returns once every one is acknowledged."""

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024
        )
        await producer.start()
        try:
            futures = [await producer.send(topic, **r) for r in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def produce_kafka(bootstrap: str, topic: str, ids: list[str]) -> None:
    """Produce CloudEvents with ids ``ids`` straight to Kafka (faster than HTTP for a thousand)."""
    produce(bootstrap, topic, [{"value": event_bytes(i)} for i in ids])


def produce_redis(address: str, topic: str, ids: list[str]) -> None:
    """``XADD`` CloudEvents straight into the stream on Redis at ``address`` (``host:port``)."""
    import redis

    host, _, port = address.rpartition(":")
    with redis.Redis(host=host, port=int(port)) as client:
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.xadd(topic, {"data": event_bytes(i)})
        pipe.execute()


def produce_jetstream(nats_url: str, subject: str, ids: list[str]) -> None:
    """Store CloudEvents straight on the JetStream stream of ``subject``, in order."""
    import nats

    async def run() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            for start in range(0, len(ids), 100):
                await asyncio.gather(
                    *(js.publish(subject, event_bytes(i)) for i in ids[start : start + 100])
                )
        finally:
            await nc.close()

    asyncio.run(run())


def consumed(bootstrap: str, topic: str, n: int, timeout_s: float = 30) -> list[Any]:
    """The first ``n`` records of ``topic`` (ConsumerRecords), read by a plain consumer."""

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        records: list[Any] = []
        try:
            async with asyncio.timeout(timeout_s):
                while len(records) < n:
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        records.extend(batch)
        finally:
            await consumer.stop()
        return records

    return asyncio.run(run())
