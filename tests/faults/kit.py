"""Helpers of the fault suite on top of ``tests/integration/processes.py``: CloudEvents from a
foreign producer, a subscribed app with its sidecar, the app's control endpoints, publishing
through a sidecar and counting a topic's records."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ..integration.processes import (
    Proc,
    assignment,
    http_json,
    poll,
    produce,
    start_app,
    start_sidecar,
)


def start_subscriber(
    tmp: Path, procs: list[Proc], *, app_id: str, resources: Path, topics: list[str]
) -> tuple[Proc, Proc]:
    """``recorder_app.py`` subscribed to ``topics`` (named ``app``) and its sidecar of ``app_id``
    (named ``sub``), both added to ``procs``; returns them once the sidecar's consumer group
    member owns the 4 partitions of the topics."""
    app = start_app(tmp, "app", topics=topics)
    procs.append(app)
    sidecar = start_sidecar(tmp, "sub", app_id=app_id, resources=resources, app_port=app.port)
    procs.append(sidecar)
    poll("the member to be assigned", lambda: len(assignment(sidecar)) == 4, 60)
    return app, sidecar


def cloudevent(event_id: str, data: Any = None) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "faults",
            "type": "t",
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()


def produce_events(
    bootstrap: str, topic: str, ids: Sequence[str], partition: int | None = None
) -> None:
    produce(
        bootstrap, topic, [{"value": cloudevent(i, {"id": i}), "partition": partition} for i in ids]
    )


def set_mode(app: Proc, *, retry: Sequence[str] = (), hang: Sequence[str] = ()) -> None:
    status, body = http_json(
        f"http://127.0.0.1:{app.port}/mode",
        method="POST",
        body=json.dumps({"retry": list(retry), "hang": list(hang)}).encode(),
    )
    assert status == 200, body


def attempts(app: Proc) -> list[dict[str, Any]]:
    return http_json(f"http://127.0.0.1:{app.port}/attempts")[1]  # type: ignore[no-any-return]


def delivered_event(app: Proc, event_id: str) -> dict[str, Any] | None:
    from urllib.parse import quote

    status, body = http_json(f"http://127.0.0.1:{app.port}/event?id={quote(event_id)}")
    return body if status == 200 else None


def publish_raw(
    sidecar: Proc,
    topic: str,
    body: bytes,
    *,
    content_type: str = "application/json",
    query: str = "",
    timeout_s: float = 10,
) -> tuple[int, Any]:
    """POST to the sidecar's publish API; ``(status, parsed body)``."""
    return http_json(
        f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/{topic}{query}",
        method="POST",
        body=body,
        headers={"Content-Type": content_type},
        timeout_s=timeout_s,
    )


def record_count(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (the sum of its partitions' end offsets)."""

    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            parts = await producer.partitions_for(topic)  # waits for (auto-created) metadata
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            return sum((await consumer.end_offsets(tps)).values())
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await consumer.stop()

    return asyncio.run(run())
