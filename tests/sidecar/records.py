"""Test helper: read records back from the real broker with a plain aiokafka consumer (no group),
and, whatever the broker (Kafka, Redis, NATS JetStream), as :class:`Stored` messages read with
that broker's own plain client."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import nats
import nats.errors
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from tidings.sidecar.brokers.jetstream import KEY_HEADER


async def read_records(
    bootstrap: str, topic: str, count: int, *, timeout_s: float = 15.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, polling until ``count`` arrived or the
    deadline passed (then the test's own assertion on the count fails)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return records


@dataclass(frozen=True)
class Stored:
    """One stored message, whatever the broker: value, key and metadata headers."""

    value: bytes
    key: bytes | None
    headers: dict[str, bytes]


async def stored_kafka(bootstrap: str, topic: str, count: int) -> list[Stored]:
    """Up to ``count`` records of ``topic`` (see :func:`read_records`)."""
    return [
        Stored(r.value, r.key, dict(r.headers)) for r in await read_records(bootstrap, topic, count)
    ]


async def stored_redis(
    address: str, stream: str, count: int, *, wait_s: float = 0.0
) -> list[Stored]:
    """Up to ``count`` entries of ``stream`` on Redis at ``address`` (``host:port``): those
    there now, or, with ``wait_s``, polling up to that many seconds for ``count``; the
    ``metadata`` field's JSON strings become the headers."""
    host, _, port = address.rpartition(":")
    client = aioredis.Redis(host=host, port=int(port))
    try:
        deadline = time.monotonic() + wait_s
        while True:
            entries = await client.xrange(stream, count=count)
            if len(entries) >= count or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)  # poll interval, bounded by the deadline
    finally:
        await client.aclose()
    out = []
    for _, fields in entries:
        meta = orjson.loads(fields[b"metadata"]) if b"metadata" in fields else {}
        out.append(
            Stored(fields[b"data"], fields.get(b"key"), {k: v.encode() for k, v in meta.items()})
        )
    return out


async def stored_jetstream(
    url: str, stream: str, subject: str, count: int, *, wait_s: float = 0.0
) -> list[Stored]:
    """Up to ``count`` messages of ``subject`` in stream order, through an ephemeral pull
    consumer (as a subscriber reads them): one fetch, or, with ``wait_s``, fetches for up to
    that many seconds until ``count`` came; JetStream's own headers are left out and the key
    header becomes the key."""
    nc = await nats.connect(url)
    out: list[Stored] = []
    try:
        sub = await nc.jetstream().pull_subscribe(subject, stream=stream)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                msgs = await sub.fetch(count - len(out), timeout=1)
            except nats.errors.TimeoutError:
                msgs = []
            for msg in msgs:
                headers = dict(msg.headers or {})
                key = headers.pop(KEY_HEADER, None)
                out.append(
                    Stored(
                        msg.data,
                        key.encode() if key is not None else None,
                        {k: v.encode() for k, v in headers.items() if not k.startswith("Nats-")},
                    )
                )
            if len(out) >= count or time.monotonic() > deadline:
                break
    finally:
        await nc.close()
    return out
