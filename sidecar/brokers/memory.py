"""``pubsub.in-memory``: a single-process broker for local use and tests.

Implements the :class:`~tidings.sidecar.brokers.base.Broker` protocol with one partition (0) per
topic. Each topic keeps a log of records with increasing offsets; a subscribed topic has one
worker that hands records to the handler strictly in order and drops a record from the log only
after ``await handler(record)`` returned (the record is *finished*). A cancelled handler (the
topic was unsubscribed, or the shutdown grace ran out) leaves the record at the head of the log, so
a later subscription gets it again: the same at-least-once contract as Kafka.

Records published to a topic nobody subscribes to stay in the log until someone does (like a
Kafka topic with ``initialOffset: oldest``); the log lives only as long as the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Collection, Sequence

from ..runtime.tasks import stop_tasks
from .base import MESSAGE_HEADERS, ORDERED, BrokerError, Handler, PublishRecord, Record

__all__ = ["MemoryBroker"]

log = logging.getLogger(__name__)

HANDLER_ERROR_RETRY_S = 0.1
"""Pause before handing a record again to a handler that raised (a handler bug, not an outcome)."""


class _Topic:
    __slots__ = ("arrived", "busy", "log", "name", "next_offset", "worker")

    def __init__(self, name: str) -> None:
        self.name = name
        self.log: deque[Record] = deque()
        self.next_offset = 0
        self.arrived = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None
        self.busy = False


class MemoryBroker:
    """An in-process broker named ``name`` (the component name). One partition per topic:
    ``partitionKey`` is kept as the record key, ``partitionNumber`` is ignored (as Dapr's
    in-memory component does), which the runner's start-up log says."""

    features = frozenset({MESSAGE_HEADERS, ORDERED})

    def __init__(self, name: str) -> None:
        self.name = name
        self._topics: dict[str, _Topic] = {}
        self._handler: Handler | None = None
        self._started = False
        self._closing = False

    async def start(self) -> None:
        """Nothing to connect; marks the broker ready."""
        self._started = True

    def ready(self) -> bool:
        return self._started and not self._closing

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic(name)
        return topic

    def _append(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        t = self._topic(topic)
        t.log.append(
            Record(
                topic=topic,
                partition=0,
                offset=t.next_offset,
                key=key,
                value=value,
                headers=tuple(headers),
                timestamp_ms=int(time.time() * 1000),
            )
        )
        t.next_offset += 1
        t.arrived.set()

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        """Append one record. Any topic name is taken (as Dapr's in-memory component does), and
        ``partition`` is ignored: every topic has the one partition 0. Raises
        :class:`BrokerError` when the broker is not started or is closing."""
        if not self.ready():
            raise BrokerError(f"in-memory pubsub {self.name} is not running")
        self._append(topic, value, key, headers)

    async def publish_many(self, records: Sequence[PublishRecord]) -> list[BrokerError | None]:
        """Append every record (``partition`` ignored); one outcome per record (all ``None``
        while running)."""
        if not self.ready():
            err = BrokerError(f"in-memory pubsub {self.name} is not running")
            return [err for _ in records]
        for record in records:
            self._append(record.topic, record.value, record.key, record.headers)
        return [None] * len(records)

    async def subscribe(self, topics: Collection[str], handler: Handler) -> None:
        """Consume exactly ``topics`` with ``handler``; topics no longer listed stop (their
        in-flight record is cancelled and stays in the log)."""
        self._handler = handler
        wanted = set(topics)
        stopping = [t for t in self._topics.values() if t.worker and t.name not in wanted]
        await stop_tasks(
            [t.worker for t in stopping if t.worker is not None],
            what="in-memory topic workers",
            extra={"pubsubname": self.name},
        )
        for t in stopping:
            t.worker = None
        if self._closing:
            return
        for name in wanted:
            t = self._topic(name)
            if t.worker is None or t.worker.done():
                t.worker = asyncio.create_task(self._run(t), name=f"memory:{self.name}:{name}")

    async def _run(self, t: _Topic) -> None:
        while not self._closing:
            if not t.log:
                t.arrived.clear()
                await t.arrived.wait()
                continue
            record = t.log[0]
            handler = self._handler
            assert handler is not None
            t.busy = True
            try:
                await handler(record)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The handler contract says it returns only when finished; raising is a bug in it.
                # Keep the record (never drop it silently) and try again shortly.
                log.exception(
                    "handler failed for record; it stays in the log and is retried",
                    extra={
                        "pubsubname": self.name,
                        "topic": t.name,
                        "partition": 0,
                        "offset": record.offset,
                    },
                )
                await asyncio.sleep(HANDLER_ERROR_RETRY_S)
                continue
            finally:
                t.busy = False
            if t.log and t.log[0] is record:
                t.log.popleft()

    async def close(self, *, grace_s: float) -> None:
        """Stop taking new records, wait up to ``grace_s`` seconds for in-flight handlers, cancel
        the rest (their records stay unfinished). Never raises."""
        self._closing = True
        workers = [t.worker for t in self._topics.values() if t.worker is not None]
        for t in self._topics.values():
            if t.worker is not None and not t.busy:
                t.worker.cancel()
            t.arrived.set()
        if workers:
            await asyncio.wait(workers, timeout=max(grace_s, 0.0))
            await stop_tasks(
                workers, what="in-memory topic workers", extra={"pubsubname": self.name}
            )
        for t in self._topics.values():
            t.worker = None

    def pending(self, topic: str) -> int:
        """How many records of ``topic`` are not finished yet (for tests and metrics)."""
        t = self._topics.get(topic)
        return len(t.log) if t else 0
