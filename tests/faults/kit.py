"""Helpers of the fault suite on top of ``tests/integration/processes.py``: a foreign producer,
the app's control endpoints and publishing through a sidecar."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from pathlib import Path

from tidings.sidecar.localdev import kafka_component_yaml

from ..integration.processes import TEST_KAFKA_METADATA, Proc, http_json


def component(folder: Path, bootstrap: str, **metadata: str) -> Path:
    """A resources folder with the test Kafka component ``pubsub``, ``metadata`` added."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pubsub.yaml").write_text(kafka_component_yaml(
        bootstrap, metadata={**TEST_KAFKA_METADATA, **metadata}))
    return folder


def cloudevent(event_id: str, data: Any = None) -> bytes:
    return json.dumps({"specversion": "1.0", "id": event_id, "source": "faults", "type": "t",
                       "datacontenttype": "application/json", "data": data}).encode()


def produce(bootstrap: str, topic: str, records: Sequence[dict[str, Any]]) -> None:
    """Produce ``records`` (``value`` bytes, optional ``key``, ``headers``, ``partition``) with a
    plain aiokafka producer, ``acks=all``, in order; returns once every one is acknowledged."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    max_request_size=8 * 1024 * 1024)
        await producer.start()
        try:
            futures = [await producer.send(topic, **r) for r in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def produce_events(bootstrap: str, topic: str, ids: Sequence[str],
                   partition: int | None = None) -> None:
    produce(bootstrap, topic, [{"value": cloudevent(i, {"id": i}), "partition": partition}
                               for i in ids])


def set_mode(app: Proc, *, retry: Sequence[str] = (), hang: Sequence[str] = ()) -> None:
    status, body = http_json(f"http://127.0.0.1:{app.port}/mode", method="POST",
                             body=json.dumps({"retry": list(retry), "hang": list(hang)}).encode())
    assert status == 200, body


def attempts(app: Proc) -> list[dict[str, Any]]:
    return http_json(f"http://127.0.0.1:{app.port}/attempts")[1]  # type: ignore[no-any-return]


def delivered_event(app: Proc, event_id: str) -> dict[str, Any] | None:
    from urllib.parse import quote

    status, body = http_json(f"http://127.0.0.1:{app.port}/event?id={quote(event_id)}")
    return body if status == 200 else None


def publish_raw(sidecar: Proc, topic: str, body: bytes, *, content_type: str = "application/json",
                query: str = "", timeout_s: float = 10) -> tuple[int, Any]:
    """POST to the sidecar's publish API; ``(status, parsed body)``."""
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/{topic}{query}"
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type})
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
