"""The Kafka consume side: one consumer group session per component per app-id, at-least-once.

What this module guarantees (issue 2 "Delivery engine"; dapr-pubsub-contract.md §5.5, §5.9):

- one ``AIOKafkaConsumer`` per component per app-id, ``group_id = meta.consumer_group`` (the
  app-id unless ``consumerGroup``/``consumerID`` says otherwise), subscribed to every topic of
  the component's subscriptions;
- records of one partition go to the handler strictly in order, one at a time, by that
  partition's worker task; partitions run concurrently. For a topic the handler's
  ``batch_policy`` says may be batched (bulk subscriptions, ``brokers/base.py``
  ``BatchHandler``) the worker hands consecutive records to ``handle_batch`` at once instead;
- only offsets of *finished* records are committed (the handler returned,
  ``brokers/base.py``), as explicit ``{tp: offset + 1}`` of the highest contiguous finished
  record (``offsets.py``), batched: every ``commit_interval_s`` or after ``commit_every``
  finished records, one commit round at a time, each bounded by ``commit_timeout_s`` (a commit
  not confirmed by then is cancelled, which also ends aiokafka's retries, and counts as not
  committed); a partition whose commits keep failing (its topic was deleted, or lost with a
  broker's memory) is committed on its own with back-off, so it never holds up the others;
- on revocation (every rebalance revokes everything: aiokafka is eager) dispatch stops, in-flight
  handlers get ``revoke_grace_s`` to finish and are then cancelled, what finished is committed,
  and the assignment epoch moves on so nothing from the old assignment commits later;
- :meth:`ConsumerGroup.stop` stops fetching, lets in-flight handlers finish within ``grace_s``,
  cancels the rest, commits what finished and leaves the group, every step bounded.

A crash loses nothing: whatever was not committed is fetched again by the next owner of the
partition (duplicates are possible, losses are not). The numbers refer to
``aiokafka-pitfalls.md`` items.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from ...resources.kafka import KafkaMetadata
from ...runtime import metrics
from ..base import BatchPolicy, Handler, Record
from .clients import client_kwargs
from .offsets import PartitionOffsets

__all__ = ["ConsumerGroup"]

log = logging.getLogger(__name__)

# Dapr's Kafka component defaults for bulk subscriptions that leave them unset
# (components-contrib common/component/kafka/utils.go; dapr-pubsub-contract.md §2.4).
BULK_MAX_RECORDS = 80
BULK_MAX_AWAIT_S = 10.0


@dataclass(eq=False, slots=True)
class _Partition:
    """Dispatch state of one assigned partition for one assignment epoch."""

    tp: TopicPartition
    epoch: int
    queue: deque[Any] = field(default_factory=deque)  # fetched ConsumerRecords not yet handled
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    worker: asyncio.Task[None] | None = None
    paused: bool = False
    closing: bool = False
    current: int | None = None  # offset the handler is working on


class _Listener(ConsumerRebalanceListener):
    """Forwards aiokafka's rebalance callbacks to the group (6, 7, 9)."""

    def __init__(self, group: ConsumerGroup) -> None:
        self._group = group

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._group._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._group._on_assigned(assigned)


class ConsumerGroup:
    """The consumer group of one Kafka component for one app-id.

    ``handler`` follows the ``brokers/base.py`` contract: it returns when the record is finished;
    if it is cancelled the record is not finished and is delivered again later. A handler that
    raises is a bug upstream; the record is retried after a back-off (logged), never skipped.

    Durations are seconds. ``max_records`` bounds one ``getmany`` (12); ``max_queued`` is the
    per-partition queue length above which the partition is paused (13); ``revoke_grace_s`` is
    how long in-flight handlers of revoked partitions may run before they are cancelled.
    ``fetch_max_wait_s`` is how long the broker may hold a fetch that has no data yet (aiokafka's
    ``fetch_max_wait_ms``, default 0.5 s): 0.1 s bounds the delivery latency on brokers that hold
    a fetch for the whole wait even once data arrived (Tansu, the local broker, does), for at most
    10 empty fetches a second per broker from an idle consumer.
    ``commit_timeout_s`` bounds each commit; a partition whose commit failed is retried on its
    own after ``commit_timeout_s``, doubling up to ``commit_retry_max_s``, and warned about at
    most once per ``commit_log_interval_s``.
    ``rebalance_timeout_ms`` and ``request_timeout_ms`` are derived from these so the revoke
    drain fits inside the group's rebalance timeout (8).

    Call :meth:`set_topics` to start or change consumption and :meth:`stop` to end it.
    """

    def __init__(
        self,
        meta: KafkaMetadata,
        handler: Handler,
        *,
        app_id: str,
        pubsubname: str,
        max_records: int = 500,
        max_queued: int = 2000,
        poll_timeout_s: float = 0.2,
        fetch_max_wait_s: float = 0.1,
        commit_interval_s: float = 0.2,
        commit_every: int = 1000,
        commit_timeout_s: float = 5.0,
        commit_retry_max_s: float = 30.0,
        commit_log_interval_s: float = 60.0,
        revoke_grace_s: float = 2.0,
        cancel_wait_s: float = 1.0,
        reload_grace_s: float = 5.0,
        leave_timeout_s: float = 5.0,
        start_backoff_s: float = 0.2,
        max_start_backoff_s: float = 10.0,
        start_wait_s: float = 30.0,
    ) -> None:
        self.handler = handler
        self._meta = meta
        self._app_id = app_id
        self._pubsubname = pubsubname
        self._max_records = max_records
        self._max_queued = max_queued
        self._resume_at = max_queued // 2
        self._poll_timeout_ms = int(poll_timeout_s * 1000)
        self._fetch_max_wait_ms = int(fetch_max_wait_s * 1000)
        self._commit_interval_s = commit_interval_s
        self._commit_every = commit_every
        self._commit_timeout_s = commit_timeout_s
        self._commit_retry_max_s = commit_retry_max_s
        self._commit_log_interval_s = commit_log_interval_s
        self._revoke_grace_s = revoke_grace_s
        self._cancel_wait_s = cancel_wait_s
        self._reload_grace_s = reload_grace_s
        self._leave_timeout_s = leave_timeout_s
        self._start_backoff_s = start_backoff_s
        self._max_start_backoff_s = max_start_backoff_s
        self._start_wait_s = start_wait_s

        self._topics: frozenset[str] = frozenset()
        self._consumer: AIOKafkaConsumer | None = None
        self._live: AIOKafkaConsumer | None = None  # self._consumer once start() succeeded
        self._hold_dispatch = False
        self._run_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._trouble: dict[TopicPartition, _CommitTrouble] = {}  # partitions committed alone
        self._uncancelled: dict[TopicPartition, asyncio.Future[Any]] = {}
        self._fenced_epoch: int | None = None  # 4: a commit of this epoch got CommitFailedError
        self._batch_logged_at: float | None = None
        self._commit_wakeup = asyncio.Event()
        self._commit_lock = asyncio.Lock()  # one commit in flight
        self._drain_lock = asyncio.Lock()  # revoke and stop never drain at the same time
        self._control_lock = asyncio.Lock()  # set_topics / stop one at a time
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._epoch = 0
        self._finished_since_commit = 0
        self._stopped = False
        self._log = {"app_id": app_id, "pubsubname": pubsubname}
        # lag, rebalances and commit latency for /metrics and GET /v1.0/metadata
        self.progress = metrics.consumer_progress(app_id, pubsubname, meta.consumer_group)

    # ----------------------------------------------------------------------------- public API

    @property
    def topics(self) -> frozenset[str]:
        """The topics this group consumes now."""
        return self._topics

    def assignment(self) -> frozenset[TopicPartition]:
        """Partitions currently assigned to this member (empty while joining or stopped)."""
        consumer = self._consumer
        if consumer is None:
            return frozenset()
        return frozenset(consumer.assignment())

    async def set_topics(self, topics: Collection[str]) -> None:
        """Consume exactly ``topics``; an empty collection stops consuming (hot reload, §5.8).

        A change on a running consumer first drains like a revoke (in-flight handlers get
        ``reload_grace_s``, then are cancelled; finished offsets are committed), then
        re-subscribes the same consumer: one rebalance, as in Dapr (§5.9). An empty set ends
        the session and leaves the group. The first non-empty set creates the consumer,
        subscribed before ``start()`` so aiokafka waits for the topics' metadata (25).
        Returns once the first start attempt ended (aiokafka's ``start()`` includes the first
        group join) or after ``start_wait_s``; a failed start (broker down) is retried in the
        background with back-off, each time with a new consumer (18).
        """
        async with self._control_lock:
            if self._stopped:
                raise RuntimeError("consumer group is stopped")
            wanted = frozenset(topics)
            if wanted == self._topics:
                return
            live = self._live
            self._topics = wanted
            if (
                wanted
                and live is not None
                and live is self._consumer
                and await self._resubscribe(live, wanted)
            ):
                log.info("consuming topics %s", sorted(wanted), extra=self._log)
                return
            if self._run_task is not None:
                await self._end_session(self._reload_grace_s)
            if wanted:
                attempted = asyncio.get_running_loop().create_future()
                self._commit_task = asyncio.create_task(self._commit_loop())
                self._run_task = asyncio.create_task(self._run(attempted))
                # start() returns after the first assignment (aiokafka waits for it, unbounded)
                await asyncio.wait(
                    {attempted, self._run_task},
                    timeout=self._start_wait_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            log.info("consuming topics %s", sorted(wanted), extra=self._log)

    async def _resubscribe(self, consumer: AIOKafkaConsumer, topics: frozenset[str]) -> bool:
        """Drain and commit, then subscribe ``consumer`` to ``topics``. False if aiokafka
        refused the subscription (the caller then restarts the session)."""
        async with self._drain_lock:
            # Records fetched meanwhile are dropped, not dispatched: subscribe() makes a new
            # assignment whose positions reload from the committed offsets (6), so they are
            # fetched again. That only holds once subscribe() has run, hence the restart below.
            self._hold_dispatch = True
            try:
                await self._drain(
                    list(self._partitions.values()), self._reload_grace_s, "re-subscribing"
                )
                await self._commit("re-subscribing", final=True)
                self._epoch += 1
                self._partitions.clear()
                try:
                    consumer.subscribe(topics=sorted(topics), listener=_Listener(self))
                except Exception as exc:  # noqa: BLE001
                    log.error(
                        "re-subscribing failed, restarting the consumer: %r", exc, extra=self._log
                    )
                    return False
                return True
            finally:
                self._hold_dispatch = False

    async def stop(self, grace_s: float) -> None:
        """Stop fetching, let in-flight handlers finish for up to ``grace_s`` seconds, cancel the
        rest, commit what finished and leave the group (17). Bounded by about ``grace_s +
        leave_timeout_s``, a few ``cancel_wait_s`` and two commit rounds (``commit_timeout_s +
        cancel_wait_s`` each: a periodic one may be running). Never raises. Idempotent."""
        async with self._control_lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                await self._end_session(grace_s)
            except Exception:  # noqa: BLE001 - stop must never raise
                log.exception("error while stopping the consumer group", extra=self._log)
            self._topics = frozenset()
            metrics.drop_consumer(self._app_id, self._pubsubname, self.progress)

    # ------------------------------------------------------------------------------- session

    def _new_consumer(self, topics: frozenset[str]) -> AIOKafkaConsumer:
        meta = self._meta
        session_ms = int(meta.session_timeout_s * 1000)
        # 8: the revoke drain must fit in the rebalance timeout (aiokafka defaults it to the
        # session timeout), and JoinGroup uses request_timeout_ms, so that must be above it.
        # The drain: handlers' grace and cancellation, then the revoke's commit round, which may
        # first wait for a periodic round to end; a round takes commit_timeout_s + cancel_wait_s
        # at most.
        commit_round_s = self._commit_timeout_s + self._cancel_wait_s
        drain_ms = int((self._revoke_grace_s + self._cancel_wait_s + 2 * commit_round_s + 2) * 1000)
        rebalance_ms = max(session_ms, drain_ms)
        kwargs: dict[str, Any] = dict(client_kwargs(meta))
        kwargs.update(
            group_id=meta.consumer_group,
            enable_auto_commit=False,  # 1: we commit finished offsets only
            auto_offset_reset="earliest" if meta.initial_offset == "oldest" else "latest",
            max_poll_records=self._max_records,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            # 22: at least the largest record the component accepts (aiokafka default 1 MiB)
            max_partition_fetch_bytes=max(1_048_576, meta.max_message_bytes),
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=int(meta.heartbeat_interval_s * 1000),
            rebalance_timeout_ms=rebalance_ms,
            request_timeout_ms=max(40_000, rebalance_ms + 5_000),
            # no key/value deserializers: raw bytes, decoded by the handler (16)
        )
        consumer = AIOKafkaConsumer(**kwargs)
        # 6: the listener is registered with subscribe(), before start()
        consumer.subscribe(topics=sorted(topics), listener=_Listener(self))
        return consumer

    async def _run(self, attempted: asyncio.Future[None]) -> None:
        """Start a consumer (retrying with back-off and a new instance each time, 18) and poll
        until cancelled. A fatal error from ``getmany`` restarts the consumer."""
        backoff = self._start_backoff_s
        while True:
            topics = self._topics
            consumer = self._new_consumer(topics)
            self._consumer = consumer
            try:
                await consumer.start()
            except Exception as exc:  # noqa: BLE001 - KafkaConnectionError, timeouts, DNS...
                log.warning(
                    "consumer start failed, retrying in %.1f s: %r", backoff, exc, extra=self._log
                )
                if not attempted.done():
                    attempted.set_result(None)
                self._consumer = None
                await self._close_consumer(consumer)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_start_backoff_s)
                continue
            if not attempted.done():
                attempted.set_result(None)
            self._live = consumer
            backoff = self._start_backoff_s
            log.info(
                "consumer started, group %s, topics %s",
                self._meta.consumer_group,
                sorted(topics),
                extra=self._log,
            )
            try:
                await self._poll(consumer)
            except Exception as exc:  # noqa: BLE001
                # 18: e.g. the coordination task died; every later getmany would raise again
                log.error("consumer failed, restarting it: %r", exc, extra=self._log)
                await self._drain_and_commit(self._revoke_grace_s, "consumer failed")
                self._consumer = self._live = None
                await self._close_consumer(consumer)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_start_backoff_s)

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        timeout_ms = self._poll_timeout_ms
        max_records = self._max_records
        while True:
            # 11/12: always a timeout and a bound; keep polling even with every partition
            # paused so the member stays in the group.
            batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            if batch:
                # No await between getmany returning and dispatch: fetched_records only hands
                # out records of the active assignment (10), so these belong to the current
                # epoch; a revoke cannot run in between.
                self._dispatch(consumer, batch)

    def _dispatch(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        if self._hold_dispatch:
            return  # see _resubscribe: refetched from the committed offsets
        partitions = self._partitions
        progress = self.progress
        for tp, records in batch.items():
            progress.fetched(tp.topic, tp.partition, records[0].offset, consumer.highwater(tp))
            st = partitions.get(tp)
            if st is None:
                # 9: workers are created lazily on the first record of a partition
                st = _Partition(tp, self._epoch)
                partitions[tp] = st
                st.worker = asyncio.create_task(self._work(st))
            st.offsets.handed_out_many([r.offset for r in records])
            st.queue.extend(records)
            st.wakeup.set()
            # > rather than >=: one getmany may bring max_records at once; pausing on a single
            # batch would throw away the prefetch every time (13)
            if not st.paused and len(st.queue) > self._max_queued:
                consumer.pause(tp)  # 13: refetched from the position after resume
                st.paused = True

    async def _work(self, st: _Partition) -> None:
        """Hand the partition's records to the handler one at a time, in offset order."""
        queue = st.queue
        while not st.closing:
            if not queue:
                st.wakeup.clear()
                await st.wakeup.wait()
                continue
            r = queue.popleft()
            if st.paused and len(queue) <= self._resume_at:
                self._resume(st)
            policy = self._batch_policy(r.topic)
            if policy is not None:
                await self._work_batch(st, r, policy)
                continue
            record = Record(
                r.topic,
                r.partition,
                r.offset,
                r.key,
                r.value if r.value is not None else b"",
                r.headers,
                r.timestamp,
            )
            st.current = r.offset
            try:
                await self.handler(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                await self._retry(record, exc)
            st.current = None
            st.offsets.finished(r.offset)
            self._finished_since_commit += 1
            if self._finished_since_commit >= self._commit_every:
                self._commit_wakeup.set()

    def _batch_policy(self, topic: str) -> BatchPolicy | None:
        batch_policy = getattr(self.handler, "batch_policy", None)  # a BatchHandler
        return None if batch_policy is None else batch_policy(topic)

    async def _work_batch(self, st: _Partition, first: Any, policy: BatchPolicy) -> None:
        """Bulk subscribe (dapr-pubsub-contract.md §2.4): take ``first`` and the records that
        follow it, up to ``policy.max_records``, waiting at most ``policy.max_await_s`` after
        ``first`` for more, and hand them to ``handler.handle_batch`` at once. Every one is
        marked finished when it returns. If the partition closes while the batch fills, none of
        them is finished: the next owner fetches them again."""
        limit = policy.max_records or BULK_MAX_RECORDS
        wait_s = BULK_MAX_AWAIT_S if policy.max_await_s is None else policy.max_await_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        queue = st.queue
        batch = [first]
        while len(batch) < limit and not st.closing:
            if queue:
                batch.append(queue.popleft())
                if st.paused and len(queue) <= self._resume_at:
                    self._resume(st)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            st.wakeup.clear()
            try:
                await asyncio.wait_for(st.wakeup.wait(), remaining)
            except TimeoutError:
                break
        if st.closing:
            return
        records = [
            Record(
                r.topic,
                r.partition,
                r.offset,
                r.key,
                r.value if r.value is not None else b"",
                r.headers,
                r.timestamp,
            )
            for r in batch
        ]
        st.current = first.offset
        backoff = 0.5
        while True:
            try:
                await self.handler.handle_batch(records)  # type: ignore[attr-defined]
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a handler bug: retry, never skip
                log.error(
                    "batch handler raised; retrying %d records in %.1f s",
                    len(records),
                    backoff,
                    exc_info=exc,
                    extra={
                        **self._log,
                        "topic": first.topic,
                        "partition": first.partition,
                        "offset": first.offset,
                    },
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        st.current = None
        for r in batch:
            st.offsets.finished(r.offset)
        self._finished_since_commit += len(batch)
        if self._finished_since_commit >= self._commit_every:
            self._commit_wakeup.set()

    async def _retry(self, record: Record, error: Exception) -> None:
        """The handler raised: it broke its contract. Retry the record with back-off until it
        finishes, so it is never dropped and the partition stays in order."""
        backoff = 0.5
        while True:
            log.error(
                "handler raised; retrying the record in %.1f s",
                backoff,
                exc_info=error,
                extra={
                    **self._log,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            try:
                await self.handler(record)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                error = exc

    def _resume(self, st: _Partition) -> None:
        st.paused = False
        consumer = self._consumer
        # 13: pause state lives in the assignment; never touch a partition no longer ours
        if consumer is not None and st.epoch == self._epoch and st.tp in consumer.assignment():
            consumer.resume(st.tp)

    # ---------------------------------------------------------------------------- rebalance

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """7: stop dispatch, give in-flight handlers ``revoke_grace_s``, cancel the rest, commit
        what finished, then move the epoch on (10). Never waits for ``getmany``."""
        try:
            async with self._drain_lock:
                # Eager protocol (6): every assignment change starts a new assignment whose
                # positions reload from the committed offsets, so everything we hold is
                # stale now, whatever ``revoked`` lists.
                states = list(self._partitions.values())
                if states:
                    await self._drain(states, self._revoke_grace_s, "revoked")
                    await self._commit("revoke", final=True)
                self._epoch += 1
                for st in states:
                    self._partitions.pop(st.tp, None)
                self.progress.revoke()
            if revoked:
                log.info("partitions revoked: %s", _names(revoked), extra=self._log)
        except Exception:  # aiokafka would only log it; say which group
            log.exception("error while revoking partitions", extra=self._log)

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # 9: no heartbeats while this runs: keep it short; workers start lazily.
        self.progress.assign((tp.topic, tp.partition) for tp in assigned)
        log.info("partitions assigned: %s", _names(assigned), extra=self._log)

    async def _drain(self, states: list[_Partition], grace_s: float, why: str) -> None:
        """Stop dispatching to ``states``, wait up to ``grace_s`` for handlers in flight, then
        cancel them (their records are not finished) and wait ``cancel_wait_s`` at most."""
        for st in states:
            st.closing = True
            st.queue.clear()  # not started: not finished, fetched again by the next owner
            st.wakeup.set()
        workers = [st.worker for st in states if st.worker is not None and not st.worker.done()]
        if not workers:
            return
        pending: set[asyncio.Task[None]] = set(workers)
        if grace_s > 0:
            _, pending = await asyncio.wait(workers, timeout=grace_s)
        if not pending:
            return
        for st in states:
            if st.worker in pending:
                log.info(
                    "%s: cancelling the handler in flight",
                    why,
                    extra={
                        **self._log,
                        "topic": st.tp.topic,
                        "partition": st.tp.partition,
                        "offset": st.current,
                    },
                )
                st.worker.cancel()
        _, stuck = await asyncio.wait(pending, timeout=self._cancel_wait_s)
        if stuck:
            log.error(
                "%d handler(s) did not stop when cancelled; their records stay uncommitted",
                len(stuck),
                extra=self._log,
            )

    async def _drain_and_commit(self, grace_s: float, why: str) -> None:
        async with self._drain_lock:
            await self._drain(list(self._partitions.values()), grace_s, why)
            await self._commit(why, final=True)
            self._epoch += 1
            self._partitions.clear()

    async def _end_session(self, grace_s: float) -> None:
        """17: stop polling, drain, commit, leave; each step bounded."""
        run, self._run_task = self._run_task, None
        if run is not None:
            run.cancel()  # also wakes a getmany stuck waiting for an assignment
            await asyncio.wait({run}, timeout=self._cancel_wait_s)
        await self._drain_and_commit(grace_s, "stopping")
        committer, self._commit_task = self._commit_task, None
        if committer is not None:
            committer.cancel()
            await asyncio.wait({committer}, timeout=self._cancel_wait_s)
        consumer, self._consumer, self._live = self._consumer, None, None
        if consumer is not None:
            await self._close_consumer(consumer)
            log.info("left consumer group %s", self._meta.consumer_group, extra=self._log)

    async def _close_consumer(self, consumer: AIOKafkaConsumer) -> None:
        try:
            # stop() sends LeaveGroup; it does not call the revoke listener (17)
            await asyncio.wait_for(consumer.stop(), self._leave_timeout_s)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 - best effort
            log.warning("consumer did not stop cleanly: %r", exc, extra=self._log)

    # ------------------------------------------------------------------------------- commits

    async def _commit_loop(self) -> None:
        wakeup = self._commit_wakeup
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), self._commit_interval_s)
            wakeup.clear()
            try:
                await self._commit("periodic")
            except Exception:  # noqa: BLE001 - a bug here must not end committing for good
                log.exception("periodic commit failed", extra=self._log)

    async def _commit(self, why: str, *, final: bool = False) -> None:
        """Commit ``{tp: offset + 1}`` of the highest contiguous finished record of every
        partition of the current epoch that is still assigned (1, 2, 4, 10).

        One commit round at a time. Partitions without commit trouble go in one request; a
        partition whose last commit failed goes in a request of its own, retried after a
        back-off (``commit_timeout_s`` doubling up to ``commit_retry_max_s``; at once when
        ``final``: revoke, stop), so one partition the broker keeps refusing (a deleted topic:
        UnknownTopicOrPartition, which aiokafka retries for ever) never holds up the others.
        Each request is bounded by ``commit_timeout_s`` (5): one not confirmed by then is
        cancelled, which ends aiokafka's retries, and counts as not committed. A failure is
        logged, rate-limited per partition (``commit_log_interval_s``), and leaves those
        records to be delivered again (duplicates, never losses).
        """
        async with self._commit_lock:
            consumer = self._consumer
            if consumer is None:
                return
            epoch = self._epoch
            if self._fenced_epoch == epoch:
                return  # 4: membership was lost; this assignment's progress is not committed
            assigned = consumer.assignment()
            now = asyncio.get_running_loop().time()
            trouble = self._trouble
            for tp in [tp for tp in trouble if tp not in assigned]:
                del trouble[tp]
            uncancelled = self._uncancelled
            for tp in [tp for tp, task in uncancelled.items() if task.done()]:
                del uncancelled[tp]
            together: dict[TopicPartition, int] = {}
            requests: list[dict[TopicPartition, int]] = []
            for tp, st in self._partitions.items():
                if st.epoch != epoch or tp not in assigned:
                    continue
                c = st.offsets.to_commit()
                if c is None:
                    continue
                if tp in uncancelled:
                    continue  # see _send_commits: never two commits of a partition at once
                t = trouble.get(tp)
                if t is None:
                    together[tp] = c
                elif final or t.retry_at <= now:
                    requests.append({tp: c})
            if together:
                requests.insert(0, together)
            if not requests:
                return
            self._finished_since_commit = 0
            outcomes = await self._send_commits(consumer, requests)
            self._note_outcomes(why, epoch, requests, outcomes)

    async def _send_commits(
        self,
        consumer: AIOKafkaConsumer,
        requests: list[dict[TopicPartition, int]],
    ) -> list[BaseException | None]:
        """Run ``consumer.commit()`` for each request at once (their partitions are disjoint),
        each bounded by ``commit_timeout_s``. Returns, per request, ``None`` if committed, else
        the error (``asyncio.TimeoutError`` for one cancelled before it was confirmed).

        Why a cancelled commit cannot move a committed offset backwards (1, 5): aiokafka's retry
        loop (``GroupCoordinator.commit_offsets``: ``while True``, retrying every retriable
        error after ``retry_backoff_ms``) runs in the task we cancel; only one request at a time
        (``_do_commit_offsets``) is under ``asyncio.shield``. So cancelling ends the retries, and
        what can outlive the round is at most the one OffsetCommit request already written.
        Every later commit of that partition carries an offset at least as high (offsets only
        grow within an assignment; a new assignment starts from the committed offsets, read by
        an OffsetFetch that also comes after it), and goes to the coordinator over the same
        connection (aiokafka keeps one per node for coordination), which the broker processes
        in order (Kafka protocol guide: requests on one connection are handled in the order
        sent). If that connection broke meanwhile, aiokafka failed the request with it. A task
        that did not even end when cancelled keeps its partitions out of later rounds
        (``_uncancelled``) until it does, rather than racing it.
        """
        tasks = [asyncio.ensure_future(consumer.commit(offsets)) for offsets in requests]
        timed = _CommitTimer(self.progress, asyncio.get_running_loop())
        for task in tasks:
            task.add_done_callback(_swallow)  # read below, unless this round is cancelled
            task.add_done_callback(timed)
        try:
            _, pending = await asyncio.wait(tasks, timeout=self._commit_timeout_s)
        finally:
            for task in tasks:  # also when this round itself is cancelled (stop)
                if not task.done():
                    task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=self._cancel_wait_s)
            for task in stuck:
                offsets = requests[tasks.index(task)]
                for tp in offsets:
                    self._uncancelled[tp] = task
                log.error(
                    "a commit did not end when cancelled; not committing %s until it does",
                    _names(offsets),
                    extra=self._log,
                )
        outcomes: list[BaseException | None] = []
        for task in tasks:
            if not task.done() or task.cancelled():
                outcomes.append(TimeoutError())
            else:
                outcomes.append(task.exception())
        return outcomes

    def _note_outcomes(
        self,
        why: str,
        epoch: int,
        requests: list[dict[TopicPartition, int]],
        outcomes: list[BaseException | None],
    ) -> None:
        now = asyncio.get_running_loop().time()
        trouble = self._trouble
        answered = any(outcome is None for outcome in outcomes)
        for offsets, outcome in zip(requests, outcomes):
            if outcome is None:
                for tp, c in offsets.items():
                    st = self._partitions.get(tp)
                    if st is not None and st.epoch == epoch:
                        st.offsets.committed(c)
                    self.progress.committed(tp.topic, tp.partition, c)
                    t = trouble.pop(tp, None)
                    if t is not None and t.logged_at is not None:
                        log.info(
                            "%s: committed again after %d failed attempt(s)",
                            why,
                            t.failures,
                            extra=self._tp_log(tp, c),
                        )
                    elif log.isEnabledFor(logging.DEBUG):
                        log.debug("%s: committed", why, extra=self._tp_log(tp, c))
            elif isinstance(outcome, CommitFailedError):
                # 4: aiokafka already reset the generation or asked to rejoin; a revoke follows.
                # Don't retry, and commit nothing more of this assignment: after a reset the
                # next commit would carry generation -1, which the broker does not fence, and
                # the partitions may belong to another member by now.
                self._fenced_epoch = epoch
                log.warning(
                    "%s: commit failed, the group is rebalancing; what finished since the"
                    " last commit will be delivered again: %s",
                    why,
                    _names(offsets),
                    extra=self._log,
                )
            elif isinstance(outcome, IllegalStateError):
                log.info("%s: commit skipped: %s", why, outcome, extra=self._log)  # 10
            elif len(offsets) > 1:
                # aiokafka reports one error for the whole request, or none while it retries: we
                # don't know which partition is to blame, so from the next round each goes alone
                for tp in offsets:
                    trouble.setdefault(tp, _CommitTrouble())
                if self._batch_logged_at is None or (
                    now - self._batch_logged_at >= self._commit_log_interval_s
                ):
                    self._batch_logged_at = now
                    log.warning(
                        "%s: commit of %d partitions failed (%s); committing them one"
                        " at a time until each succeeds",
                        why,
                        len(offsets),
                        self._describe(outcome),
                        extra=self._log,
                    )
            else:
                ((tp, c),) = offsets.items()
                t = trouble.setdefault(tp, _CommitTrouble())
                t.failures += 1
                t.isolated = answered
                delay = min(
                    self._commit_retry_max_s, self._commit_timeout_s * 2 ** min(t.failures - 1, 16)
                )
                t.retry_at = now + delay
                if t.logged_at is None or now - t.logged_at >= self._commit_log_interval_s:
                    t.logged_at = now
                    log.warning(
                        "%s: commit of this partition failed (%d time(s) in a row, last:"
                        " %s); its finished records stay uncommitted; trying again in"
                        " %.0f s",
                        why,
                        t.failures,
                        self._describe(outcome),
                        delay,
                        extra=self._tp_log(tp, c),
                    )
        if answered:
            # The coordinator answers: partitions that failed only while everything failed
            # (an outage, not them) are tried again now rather than after their back-off.
            for t in trouble.values():
                if not t.isolated:
                    t.retry_at = min(t.retry_at, now)

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, asyncio.TimeoutError):
            return f"not confirmed within {self._commit_timeout_s:g} s, maybe not committed"
        return repr(error)

    def _tp_log(self, tp: TopicPartition, offset: int) -> dict[str, Any]:
        return {**self._log, "topic": tp.topic, "partition": tp.partition, "offset": offset}


@dataclass(eq=False, slots=True)
class _CommitTrouble:
    """Commit failures of one partition, kept across assignment epochs."""

    failures: int = 0  # consecutive failed commits of the partition on its own
    retry_at: float = 0.0  # loop time from which it is committed again (on its own)
    isolated: bool = False  # its last failure was in a round where another commit succeeded
    logged_at: float | None = None  # loop time of the last warning about it


class _CommitTimer:
    """Done-callback of one round's commit requests: how long each took, and whether it
    succeeded, into the consumer's progress (commit latency metric)."""

    __slots__ = ("_loop", "_progress", "_started")

    def __init__(self, progress: metrics.ConsumerProgress, loop: asyncio.AbstractEventLoop) -> None:
        self._progress = progress
        self._loop = loop
        self._started = loop.time()

    def __call__(self, task: asyncio.Future[Any]) -> None:
        success = not task.cancelled() and task.exception() is None
        self._progress.commit_took(self._loop.time() - self._started, success=success)


def _swallow(task: asyncio.Future[Any]) -> None:
    # Marks a commit's error as read when nobody will: its round was cancelled or gave up on it.
    if not task.cancelled():
        task.exception()


def _names(tps: Collection[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)) or "-"
