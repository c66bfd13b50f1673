"""Bulk subscribe delivery (dapr-pubsub-contract.md §2.4): many records of a partition, one request.

A subscription with ``bulkSubscribe.enabled`` (declarative, ``/dapr/subscribe``, or gRPC
``ListTopicSubscriptions``; ``TopicSubscription.bulk``) is delivered by :class:`BulkDispatcher`,
the single-record :class:`~.engine.Dispatcher` extended with the broker's
:class:`~.brokers.base.BatchHandler` side:

- the Kafka partition worker (``brokers/kafka/consuming.py``) asks :meth:`BulkDispatcher.
  batch_policy` per topic and hands up to ``maxMessagesCount`` consecutive records of one
  partition (waiting at most ``maxAwaitDurationMs`` for the batch to fill) to
  :meth:`BulkDispatcher.handle_batch`, which returns only when every record is finished; the
  worker then marks them finished, so at-least-once and the commit rule
  (``brokers/kafka/offsets.py``) are those of single delivery. A broker that does not batch (the
  in-memory one) calls the plain handler: a bulk topic's record is then delivered as a batch of one,
  still in the bulk format;
- every attempt reads, checks expiry and routes each entry on its own (same steps as
  ``Dispatcher._attempt``), then sends one request per route path with the entries routed
  there, in order: an HTTP POST with the §2.4 body (``delivery/channel/bulk_format.py``) or
  ``OnBulkTopicEvent`` (``delivery/channel/grpc.py``);
- each entry's answer becomes a :class:`~.engine.Verdict` and goes through the same
  :func:`~.engine.decide` table as single delivery: SUCCESS acks, DROP (or 404) acks or
  dead-letters, RETRY (also a missing or unknown status, a failed request) retries. Entries to
  retry are sent again together, in a new bulk request holding only them, after the
  component's back-off; their retry count is the batch's round (they all entered together).

Neighbours: ``engine.py`` (the policy and the single path), ``delivery/channel/bulk_format.py``
(HTTP body and answer), ``runtime/runner.py`` (creates one per pubsub component).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..brokers.base import BatchPolicy, Record
from ..resources.models import TopicSubscription
from ..runtime.metrics import TopicDeliveries, topic_deliveries
from ..runtime.tracing import start_delivery
from .channel.types import BulkEvent
from .engine import (
    _NO_SUBSCRIPTION,
    Action,
    Dispatcher,
    Verdict,
    _Attempt,
    http_headers,
)

__all__ = ["BatchingHandler", "BulkDispatcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Entry:
    record: Record
    entry_id: str  # stable across the entry's retries


@dataclass(frozen=True, slots=True)
class _Ready:
    """An entry that passed the checks and goes to the app at ``path``."""

    index: int
    event: BulkEvent
    dead_letter_topic: str | None
    span: Any  # tracing.start_delivery's, None without tracing


class BulkDispatcher(Dispatcher):
    """A :class:`~.engine.Dispatcher` that also delivers bulk subscriptions in batches; the
    broker's ``BatchHandler`` (``brokers/base.py``). Call it like a handler:
    ``await dispatcher(record)``. Constructor arguments are the ``Dispatcher``'s."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._policies: dict[str, BatchPolicy] = {}

    def set_subscriptions(self, subscriptions: Mapping[str, TopicSubscription]) -> None:
        """As :meth:`Dispatcher.set_subscriptions`, and the batch policy of each bulk topic."""
        super().set_subscriptions(subscriptions)
        self._policies = {
            topic: BatchPolicy(
                sub.bulk.max_messages_count,
                None
                if sub.bulk.max_await_duration_ms is None
                else sub.bulk.max_await_duration_ms / 1000,
            )
            for topic, sub in subscriptions.items()
            if sub.bulk is not None
        }

    def batch_policy(self, topic: str) -> BatchPolicy | None:
        """How records of ``topic`` may be batched: ``None`` unless its subscription is bulk."""
        return self._policies.get(topic)

    def __call__(self, record: Record) -> Awaitable[None]:
        return self.handle(record)

    async def handle(self, record: Record) -> None:
        """:meth:`Dispatcher.handle`; a record of a bulk topic goes as a batch of one."""
        if self.batch_policy(record.topic) is not None:
            await self.handle_batch((record,))
            return
        await super().handle(record)

    async def handle_batch(self, records: Sequence[Record]) -> None:
        """Deliver ``records`` (of one partition, in offset order) until every one is finished:
        acked, dead-lettered or given up on, per the ``engine.py`` table. Raises only
        ``CancelledError`` (then none of them counts as finished)."""
        if not records:
            return
        state = topic_deliveries(self.app_id, self.pubsubname, records[0].topic)
        state.in_flight += len(records)
        try:
            await self._handle_batch(records, state)
        finally:
            state.in_flight -= len(records)

    async def _handle_batch(self, records: Sequence[Record], state: TopicDeliveries) -> None:
        pending = [_Entry(record, str(uuid.uuid4())) for record in records]
        retries_done = 0
        while pending:
            try:
                attempts = await self._attempt_batch(pending)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill the partition worker: retry them
                log.exception(
                    "unexpected error delivering a batch",
                    extra=self._extra(pending[0].record, _Attempt(Verdict.FAILED), retries_done),
                )
                attempts = [_Attempt(Verdict.FAILED, f"unexpected error: {exc!r}")] * len(pending)
            again: list[_Entry] = []
            delay_s = 0.0
            dead_letters = []
            for entry, attempt in zip(pending, attempts):
                outcome = self._conclude(entry.record, attempt, state, retries_done)
                if outcome.action is Action.RETRY:
                    again.append(entry)
                    delay_s = max(delay_s, outcome.delay_s)
                elif outcome.action is Action.DEAD_LETTER:
                    assert attempt.dead_letter_topic is not None
                    dead_letters.append(
                        self._dead_letter_until_stored(
                            attempt.dead_letter_topic, entry.record, attempt, retries_done
                        )
                    )
            if dead_letters:
                await asyncio.gather(*dead_letters)
                state.dead_lettered += len(dead_letters)
            if again:
                state.retries += len(again)
                await asyncio.sleep(delay_s)  # backoff; cancellation stops it at once
                retries_done += 1
            pending = again

    async def _attempt_batch(self, entries: Sequence[_Entry]) -> list[_Attempt]:
        """One attempt for every entry, aligned with ``entries``."""
        attempts: list[_Attempt | None] = [None] * len(entries)
        groups: dict[tuple[str, str], list[_Ready]] = {}
        for index, entry in enumerate(entries):
            record = entry.record
            target = self._targets.get(record.topic)
            if target is None:
                attempts[index] = _NO_SUBSCRIPTION
                continue
            if target.subscription.bulk is None:  # no longer bulk (hot reload): one at a time
                attempts[index] = await self._attempt(record)
                continue
            checked = self._checked(record, target)  # per entry (§2.4: rules are per event)
            if isinstance(checked, _Attempt):
                attempts[index] = checked
                continue
            read, path = checked
            metadata = http_headers(
                record, read.event, pubsubname=self.pubsubname, escape_all=self._escape_headers
            )
            metadata.popall("Content-Type", None)
            # one span per entry, as single delivery; the entry carries its context to the app
            span = start_delivery(
                metadata,
                app_id=self.app_id,
                pubsubname=self.pubsubname,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            # str(): CIMultiDict keys are istr, which orjson refuses as keys
            groups.setdefault((record.topic, path), []).append(
                _Ready(
                    index,
                    BulkEvent(entry.entry_id, read, {str(k): v for k, v in metadata.items()}),
                    target.dead_letter_topic,
                    span,
                )
            )
        for (topic, path), ready in groups.items():
            started = time.perf_counter()
            responses = await self._channel.deliver_bulk(
                path, [r.event for r in ready], topic=topic, pubsubname=self.pubsubname
            )
            elapsed_s = time.perf_counter() - started
            for item, response in zip(ready, responses):
                verdict = self._answered(topic, item.span, response, elapsed_s)
                attempts[item.index] = _Attempt(
                    verdict,
                    response.reason,
                    item.event.read.cloudevent_id,
                    path,
                    response.http_status,
                    item.dead_letter_topic,
                )
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "bulk delivery of %d events to %s",
                    len(ready),
                    path,
                    extra={
                        "app_id": self.app_id,
                        "pubsubname": self.pubsubname,
                        "topic": topic,
                        "path": path,
                    },
                )
        return [a if a is not None else _Attempt(Verdict.FAILED, "not attempted") for a in attempts]


class BatchingHandler:
    """A broker handler with a :class:`BulkDispatcher`'s batch side (``brokers/base.py``
    ``BatchHandler``): ``await handler(record)`` is ``handle(record)`` (which may route some
    topics elsewhere, such as streaming subscriptions); topics for which ``batched(topic)`` is
    true are batched as ``dispatcher`` says."""

    __slots__ = ("_batched", "_dispatcher", "_handle")

    def __init__(
        self,
        handle: Callable[[Record], Awaitable[None]],
        dispatcher: BulkDispatcher,
        batched: Callable[[str], bool],
    ) -> None:
        self._handle = handle
        self._dispatcher = dispatcher
        self._batched = batched

    def __call__(self, record: Record) -> Awaitable[None]:
        return self._handle(record)

    def batch_policy(self, topic: str) -> BatchPolicy | None:
        """The dispatcher's policy for ``topic``, if ``batched(topic)``; else ``None``."""
        policy = self._dispatcher.batch_policy(topic)
        return policy if policy is not None and self._batched(topic) else None

    def handle_batch(self, records: Sequence[Record]) -> Awaitable[None]:
        """:meth:`BulkDispatcher.handle_batch`."""
        return self._dispatcher.handle_batch(records)
