"""``pubsub.redis``: the :class:`~tidings.sidecar.brokers.base.Broker` for Redis Streams.

Mapping (Dapr's Redis Streams component; ``resources/redis.py`` for the metadata):

- a topic is a stream of the same name; a publish is ``XADD topic * data <value>`` (plus
  ``metadata``, a JSON object of the publish metadata, as Dapr writes it, and ``key`` for
  ``partitionKey``), trimmed with ``MAXLEN ~ maxLenApprox`` or ``MINID ~ <now - streamTTL>`` when
  set; ``publish_many`` pipelines
  the ``XADD``\\ s in one round trip;
- the app-id's consumer group (``consumerID``, default the app-id) is created on each subscribed
  stream at ``0`` with ``MKSTREAM`` (as Dapr does: a new group starts at the stream's oldest
  entry); every sidecar process is one consumer of it, named ``<app-id>-<host>-<pid>-<random>``,
  so replicas of one app-id share the entries and each app-id gets all of them;
- one reader per stream (``XREADGROUP ... >``, as many entries as the queue has room for) feeds
  one queue of ``queueDepth`` entries, which ``concurrency`` workers hand to the handler;
- an entry is acknowledged (``XACK``, batched) only after ``await handler(record)`` returned, the
  ``brokers/base.py`` contract;
- entries another consumer took and did not acknowledge for ``processingTimeout`` (it crashed)
  are taken over every ``redeliverInterval`` with ``XAUTOCLAIM``. So that a live consumer's slow
  deliveries (a retrying app) are not taken from it, every entry it holds is touched (``XCLAIM``
  to itself, only while it still owns the entry) every third of ``processingTimeout``;
- on close, entries not finished within the grace period are made reclaimable at once (their idle
  time is set to ``processingTimeout``) so another replica takes them at its next reclaim;
- what ``tidings status`` and ``GET /v1.0/metadata`` show (``metrics.PolledConsumer``): each
  reader asks ``XINFO GROUPS`` at most every ``STATUS_INTERVAL_S``. The lag is the group's
  entries not acknowledged yet, like Kafka's log end minus committed offset: ``lag`` (entries
  not delivered to the group, Redis >= 7) plus ``pending`` (delivered, not acknowledged). Where
  Redis cannot say ``lag`` (before 7.0, or ``nil`` after ``XDEL`` or trimming past the group)
  the lag shown is ``pending`` alone, a lower bound.

Ordering: entries of one stream reach the handler in stream order when ``concurrency`` is 1 (the
only configuration that reports ``ORDERED``), except entries reclaimed from a failed consumer,
which arrive when reclaimed. Across streams there is no order. Redis has no partitions:
``partitionNumber`` is refused at publish; ``partitionKey`` is stored and delivered back as
``__key`` but chooses nothing. ``Record.partition`` is always 0 and ``Record.offset`` is the entry
id ``<ms>-<seq>`` as ``ms * 1_000_000 + seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..resources.loading import LoadedComponent
from ..resources.redis import RedisMetadata
from ..runtime import metrics
from ..runtime.tasks import stop_tasks
from .base import (
    BULK_PUBLISH,
    MESSAGE_HEADERS,
    ORDERED,
    BrokerError,
    Handler,
    PublishRecord,
    Record,
)

__all__ = ["RedisBroker", "entry_offset"]

log = logging.getLogger(__name__)

DATA_FIELD = b"data"
METADATA_FIELD = b"metadata"
KEY_FIELD = b"key"

HANDLER_ERROR_RETRY_S = 0.1
STATUS_INTERVAL_S = 5.0  # seconds between XINFO GROUPS of one stream (status, lag gauge)
"""Pause before handing an entry again to a handler that raised (a handler bug, not an outcome)."""

# Touch the entries we hold, but only those still ours: a consumer that was paused longer than
# processingTimeout may have lost them to another member's XAUTOCLAIM, and must not take them
# back. Returns the ids that were no longer ours.
_TOUCH_SCRIPT = """
local lost = {}
for i = 3, #ARGV do
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #mine == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""


# Remove consumers of the group that hold nothing (pending 0) and were idle at least ARGV[2] ms,
# or only the consumer named ARGV[3]. Atomic, so no entry can be handed to a consumer between
# the check and its removal (XGROUP DELCONSUMER drops its pending entries for good). A live
# consumer removed this way is created again by its next XREADGROUP. Returns the removed names.
_REAP_SCRIPT = """
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2])
      and (ARGV[3] == '' or ARGV[3] == info['name']) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"""


def entry_offset(entry_id: bytes | str) -> int:
    """The ``Record.offset`` of a stream entry id ``<ms>-<seq>``: ``ms * 1_000_000 + seq``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms) * 1_000_000 + int(seq or 0)


def _fields(
    value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> dict[bytes, bytes]:
    """The entry of one record. Raises :class:`BrokerError` (not retriable) for a header value
    that is not UTF-8: Dapr's ``metadata`` field is a JSON object of strings."""
    fields = {DATA_FIELD: value}
    if headers:
        try:
            meta = {name: (v.decode() if v is not None else None) for name, v in headers}
        except UnicodeDecodeError:
            raise BrokerError(
                "pubsub.redis keeps metadata as JSON strings; a metadata value is not UTF-8",
                refused="request",
            ) from None
        fields[METADATA_FIELD] = orjson.dumps(meta)
    if key is not None:
        fields[KEY_FIELD] = key
    return fields


def _record(topic: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Record:
    headers: tuple[tuple[str, bytes | None], ...] = ()
    raw_meta = fields.get(METADATA_FIELD)
    if raw_meta:
        try:
            meta = orjson.loads(raw_meta)
        except orjson.JSONDecodeError:
            meta = None
        if isinstance(meta, dict):
            headers = tuple(
                (str(k), None if v is None else str(v).encode()) for k, v in meta.items()
            )
        else:
            log.warning(
                "entry metadata is not a JSON object; delivered without it",
                extra={"topic": topic, "offset": entry_id.decode()},
            )
    offset = entry_offset(entry_id)
    return Record(
        topic=topic,
        partition=0,
        offset=offset,
        key=fields.get(KEY_FIELD),
        value=fields.get(DATA_FIELD, b""),
        headers=headers,
        timestamp_ms=offset // 1_000_000,
    )


def _error(exc: RedisError) -> BrokerError:
    """The :class:`BrokerError` of a Redis error: retriable when Redis is unreachable; refused
    (the caller's mistake, ``BrokerError.refused``) when the topic names a key that holds no
    stream, which no retry can change."""
    if isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE"):
        return BrokerError(f"redis: key is not a stream: {exc}", refused="request")
    retriable = isinstance(exc, (RedisConnectionError, RedisTimeoutError))
    return BrokerError(f"redis: {exc}", retriable=retriable)


class RedisBroker:
    """The Redis Streams component ``component`` as used by the sidecar of ``app_id``.

    ``consumer`` names this process's consumer in the group (default: unique per process).
    Durations are seconds: ``block_s`` bounds one ``XREADGROUP`` wait, ``ack_interval_s`` how
    long a finished entry may wait for its batched ``XACK``, ``error_backoff_s`` the pause after
    a Redis error in a background loop (doubling up to ``max_error_backoff_s``). Consumers of
    the group that hold no entries and were idle for ``reap_idle_s`` (default: ten times
    ``processingTimeout``, at least 5 minutes; crashed replicas) are removed at each reclaim,
    and this one on close if it holds nothing, so the group does not grow with every restart.
    Raises ``ValueError`` for a component that is not ``pubsub.redis``.
    """

    def __init__(
        self,
        component: LoadedComponent,
        *,
        app_id: str,
        consumer: str | None = None,
        block_s: float = 1.0,
        ack_interval_s: float = 0.005,
        error_backoff_s: float = 0.2,
        max_error_backoff_s: float = 5.0,
        reap_idle_s: float | None = None,
    ) -> None:
        if component.redis is None:
            raise ValueError(f"component {component.name} is not pubsub.redis")
        self.name = component.name
        self.app_id = app_id
        self.meta: RedisMetadata = component.redis
        features = {BULK_PUBLISH, MESSAGE_HEADERS}
        if self.meta.concurrency == 1:
            features.add(ORDERED)
        self.features = frozenset(features)
        self.consumer = consumer or (
            f"{app_id}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._block_ms = max(1, int(block_s * 1000))
        self._ack_interval_s = ack_interval_s
        self._error_backoff_s = error_backoff_s
        self._max_error_backoff_s = max_error_backoff_s
        if reap_idle_s is None:
            reap_idle_s = max(10 * self.meta.processing_timeout_s, 300.0)
        self._reap_idle_ms = int(reap_idle_s * 1000)
        self._reap: Any = None
        self._client: aioredis.Redis | None = None
        self._touch: Any = None
        self._started = False
        self._connected = asyncio.Event()  # start() succeeded: readers may begin
        self._closing = False
        self._handler: Handler | None = None
        self._topics: set[str] = set()
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._reading: set[str] = set()  # streams whose group exists and whose reader runs
        self._queue: asyncio.Queue[tuple[str, bytes, Record]] = asyncio.Queue(
            maxsize=self.meta.queue_depth
        )
        self._held: dict[str, set[bytes]] = {}  # entries read or claimed, not yet acknowledged
        self._to_ack: dict[str, list[bytes]] = {}
        self._ack_wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._busy: dict[asyncio.Task[None], tuple[str, bytes]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._log = {"app_id": app_id, "pubsubname": self.name}
        self._status: metrics.PolledConsumer | None = None

    # ------------------------------------------------------------------------- producer side

    async def start(self) -> None:
        """Connect and ``PING``. Raises :class:`BrokerError` (retriable) if Redis is unreachable
        or refuses the credentials."""
        meta = self.meta
        client = aioredis.Redis(
            host=meta.host,
            port=meta.port,
            db=meta.db,
            username=meta.username,
            password=meta.password,
            ssl=meta.enable_tls,
            socket_connect_timeout=meta.dial_timeout_s,
            # a connection that died without a FIN must not hang a publish or a read for ever;
            # the longest legitimate wait is one blocking XREADGROUP
            socket_timeout=self._block_ms / 1000 + meta.dial_timeout_s,
            health_check_interval=30,
            client_name=self.consumer[:64],
        )
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            raise BrokerError(f"redis {meta.host}:{meta.port}: {exc}", retriable=True) from None
        self._client = client
        self._touch = client.register_script(_TOUCH_SCRIPT)
        self._reap = client.register_script(_REAP_SCRIPT)
        self._started = True
        self._connected.set()
        log.info(
            "pubsub.redis at %s:%s db %s, consumer group %s, consumer %s; partitionNumber is "
            "refused and partitionKey only travels as __key (streams have no partitions); "
            "%s",
            meta.host,
            meta.port,
            meta.db,
            meta.consumer_group,
            self.consumer,
            "in order per stream (concurrency 1)"
            if meta.concurrency == 1
            else f"no delivery order (concurrency {meta.concurrency}; set 1 for stream order)",
            extra=self._log,
        )
        if not meta.reclaims:
            log.warning(
                "processingTimeout or redeliverInterval is 0: entries of a consumer that "
                "dies are never redelivered to another",
                extra=self._log,
            )
        if meta.ignored:
            log.warning(
                "metadata %s has no effect with this pubsub.redis (go-redis tuning)",
                ", ".join(meta.ignored),
                extra=self._log,
            )

    def ready(self) -> bool:
        """Whether the client is connected and not closing (outbound health, §1.5)."""
        return self._started and not self._closing

    def _redis(self) -> aioredis.Redis:
        # While closing, the client stays usable until consumption stopped: handlers finishing
        # in the grace period may still publish to a dead-letter topic (as Kafka's producer
        # stops last).
        if self._client is None:
            raise BrokerError(f"pubsub {self.name} is not connected", retriable=True)
        return self._client

    def _xadd_args(
        self,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        partition: int | None,
    ) -> dict[str, Any]:
        if partition is not None:
            raise BrokerError(
                "pubsub.redis has no partitions: metadata partitionNumber is not supported",
                refused="request",
            )
        kwargs: dict[str, Any] = {"fields": _fields(value, key, headers)}
        if self.meta.max_len_approx is not None:
            kwargs.update(maxlen=self.meta.max_len_approx, approximate=True)
        elif self.meta.stream_ttl_s is not None:
            # Dapr's streamTTL: drop entries older than the TTL (ids start with their ms)
            oldest_ms = int((time.time() - self.meta.stream_ttl_s) * 1000)
            kwargs.update(minid=f"{oldest_ms}-1", approximate=True)
        return kwargs

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        """``XADD`` one entry; returns once Redis stored it. Raises :class:`BrokerError`: refused
        (``"request"``, the caller's mistake) for ``partition`` (Redis has none), a key that is not
        a stream or metadata that is not UTF-8; retriable when Redis is unreachable."""
        kwargs = self._xadd_args(value, key, headers, partition)
        try:
            await self._redis().xadd(topic, **kwargs)
        except RedisError as exc:
            raise _error(exc) from None

    async def publish_many(self, records: Sequence[PublishRecord]) -> list[BrokerError | None]:
        """``XADD`` every record in one pipelined round trip; one outcome per record."""
        outcomes: list[BrokerError | None] = [None] * len(records)
        try:
            pipe = self._redis().pipeline(transaction=False)
        except BrokerError as exc:
            return [exc] * len(records)
        sent: list[int] = []
        for i, r in enumerate(records):
            try:
                kwargs = self._xadd_args(r.value, r.key, r.headers, r.partition)
            except BrokerError as exc:
                outcomes[i] = exc
                continue
            pipe.xadd(r.topic, **kwargs)
            sent.append(i)
        if not sent:
            return outcomes
        try:
            results = await pipe.execute(raise_on_error=False)
        except RedisError as exc:
            err = _error(exc)
            for i in sent:
                outcomes[i] = err
            return outcomes
        for i, result in zip(sent, results):
            if isinstance(result, Exception):
                outcomes[i] = (
                    _error(result) if isinstance(result, RedisError) else BrokerError(str(result))
                )
        return outcomes

    # ------------------------------------------------------------------------- consumer side

    async def subscribe(self, topics: Collection[str], handler: Handler) -> None:
        """Consume exactly ``topics`` with ``handler`` (empty: stop reading). Returns once the
        group exists on every new stream and its reader runs, or, before :meth:`start`
        succeeded or while Redis is unreachable, sooner (the readers begin once connected).
        Entries of a dropped stream that were read but not started stay pending and become
        reclaimable; one in flight finishes."""
        self._handler = handler
        wanted = set(topics)
        dropped = [t for t in self._readers if t not in wanted]
        await stop_tasks(
            [self._readers.pop(t) for t in dropped], what="redis readers", extra=self._log
        )
        self._reading.difference_update(dropped)
        self._topics = wanted
        if self._status is not None:
            self._status.forget(wanted)
        if self._closing or not wanted:
            return
        if self._status is None:
            self._status = metrics.polled_consumer(self.app_id, self.name, self.meta.consumer_group)
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"redis:{self.name}:worker")
                for _ in range(self.meta.concurrency)
            ]
            self._loops = [asyncio.create_task(self._ack_loop(), name=f"redis:{self.name}:ack")]
            if self.meta.reclaims:
                self._loops += [
                    asyncio.create_task(self._reclaim_loop(), name=f"redis:{self.name}:reclaim"),
                    asyncio.create_task(self._touch_loop(), name=f"redis:{self.name}:touch"),
                ]
        new = [t for t in wanted if t not in self._readers]
        for topic in new:
            self._readers[topic] = asyncio.create_task(
                self._read(topic), name=f"redis:{self.name}:{topic}"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.meta.dial_timeout_s
        while (
            new
            and self._connected.is_set()
            and not all(t in self._reading for t in new)
            and loop.time() < deadline
        ):
            await asyncio.sleep(0.01)  # poll for the readers' first step; bounded by dialTimeout

    def streams(self) -> list[str]:
        """The streams this consumer reads now (group created, reader running)."""
        return sorted(self._reading)

    async def _ensure_group(self, client: aioredis.Redis, topic: str) -> None:
        try:
            await client.xgroup_create(topic, self.meta.consumer_group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, topic: str) -> None:
        """Read new entries of ``topic`` for this consumer, for ever; Redis errors back off."""
        backoff = self._error_backoff_s
        extra = {**self._log, "topic": topic}
        group = self.meta.consumer_group
        have_group = False
        loop = asyncio.get_running_loop()
        next_status = 0.0
        await self._connected.wait()  # subscribed before start() connected (the runner does)
        while not self._closing:
            try:
                client = self._redis()
                if not have_group:
                    await self._ensure_group(client, topic)
                    have_group = True
                    self._reading.add(topic)
                    log.info(
                        "reading stream %s as consumer %s of group %s",
                        topic,
                        self.consumer,
                        group,
                        extra=extra,
                    )
                # read no more than the queue takes, so a consumer holds at most about
                # queueDepth + concurrency entries (what a crash leaves to be reclaimed)
                room = max(1, self._queue.maxsize - self._queue.qsize())
                if loop.time() >= next_status:
                    next_status = loop.time() + STATUS_INTERVAL_S
                    await self._poll_status(client, topic)
                batches = await client.xreadgroup(
                    group, self.consumer, {topic: ">"}, count=room, block=self._block_ms
                )
                backoff = self._error_backoff_s
            except (RedisError, BrokerError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    have_group = False  # the stream was deleted: create group and stream again
                    self._reading.discard(topic)
                log.warning(
                    "reading stream %s failed, retrying in %.1f s: %s",
                    topic,
                    backoff,
                    exc,
                    extra=extra,
                )
                await asyncio.sleep(backoff)  # back-off while Redis is unreachable
                backoff = min(backoff * 2, self._max_error_backoff_s)
                continue
            for _stream, entries in batches or ():
                await self._enqueue(topic, entries)

    async def _poll_status(self, client: aioredis.Redis, topic: str) -> None:
        """Record the group's lag on ``topic`` (see the module docstring). Raises RedisError
        when Redis is unreachable (the reader backs off)."""
        if self._status is None:
            return
        try:
            groups = await client.xinfo_groups(topic)
        except ResponseError as exc:  # the stream was deleted: XREADGROUP's NOGROUP handles it
            log.debug("XINFO GROUPS %s: %s", topic, exc, extra={**self._log, "topic": topic})
            return
        for info in groups:
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) != self.meta.consumer_group:
                continue
            pending = int(info.get("pending") or 0)
            undelivered = info.get("lag")
            self._status.polled(
                topic,
                topic,
                pending=pending,
                lag=pending + int(undelivered) if undelivered is not None else pending,
            )
            return

    async def _enqueue(
        self, topic: str, entries: list[tuple[bytes, dict[bytes, bytes] | None]]
    ) -> None:
        held = self._held.setdefault(topic, set())
        for entry_id, fields in entries:
            if fields is None:  # deleted (XDEL, trimmed) after it was read: nothing to deliver
                log.error(
                    "entry %s was deleted from the stream before it was delivered",
                    entry_id.decode(),
                    extra={**self._log, "topic": topic},
                )
                self._to_ack.setdefault(topic, []).append(entry_id)
                self._ack_wakeup.set()
                continue
            held.add(entry_id)
            await self._queue.put((topic, entry_id, _record(topic, entry_id, fields)))

    async def _work(self) -> None:
        while not self._closing:
            topic, entry_id, record = await self._queue.get()
            if self._closing:
                return  # not started: stays held, released to the group by close()
            if topic not in self._topics:
                # unsubscribed: stays pending for this consumer; no longer kept alive, so it
                # is reclaimed after processingTimeout by whoever reads the stream then
                self._held.get(topic, set()).discard(entry_id)
                continue
            task = asyncio.current_task()
            assert task is not None
            self._busy[task] = (topic, entry_id)
            try:
                await self._handle(record)
            finally:
                del self._busy[task]
            self._to_ack.setdefault(topic, []).append(entry_id)
            self._ack_wakeup.set()

    async def _handle(self, record: Record) -> None:
        while True:
            handler = self._handler
            assert handler is not None
            try:
                await handler(record)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # The handler contract says it returns only when finished; raising is a bug in
                # it. Keep the entry (never drop it silently) and try again shortly.
                log.exception(
                    "handler failed for an entry; it is handed over again",
                    extra={
                        **self._log,
                        "topic": record.topic,
                        "partition": 0,
                        "offset": record.offset,
                    },
                )
                await asyncio.sleep(HANDLER_ERROR_RETRY_S)

    async def _ack_loop(self) -> None:
        # ``_closing`` ends the loop even when a cancellation was swallowed inside redis-py (it
        # has done so at a connection reset during ``pipeline.execute``); close() flushes last.
        while not self._closing:
            await self._ack_wakeup.wait()
            await asyncio.sleep(self._ack_interval_s)  # gather a batch of finished entries
            self._ack_wakeup.clear()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        """``XACK`` every finished entry, one pipelined round trip. An entry whose ack fails
        stays pending and is redelivered after ``processingTimeout`` (a duplicate, not a
        loss)."""
        batch, self._to_ack = self._to_ack, {}
        if not batch or self._client is None:
            return
        pipe = self._client.pipeline(transaction=False)
        for topic, ids in batch.items():
            pipe.xack(topic, self.meta.consumer_group, *ids)
        try:
            await pipe.execute()
        except RedisError as exc:
            log.warning(
                "acknowledging %d entries failed; they will be delivered again: %s",
                sum(map(len, batch.values())),
                exc,
                extra=self._log,
            )
        for topic, ids in batch.items():
            held = self._held.get(topic)
            if held is not None:
                held.difference_update(ids)

    async def _touch_loop(self) -> None:
        """Reset the idle time of every entry this consumer holds, every third of
        ``processingTimeout``, so no other consumer reclaims what is merely slow."""
        interval = self.meta.processing_timeout_s / 3
        while not self._closing:
            await asyncio.sleep(interval)  # period of the keep-alive, not an event
            for topic, held in list(self._held.items()):
                if not held:
                    continue
                ids = list(held)
                try:
                    lost = await self._touch(
                        keys=[topic], args=[self.meta.consumer_group, self.consumer, *ids]
                    )
                except RedisError as exc:
                    log.warning(
                        "keeping %d entries claimed failed: %s",
                        len(ids),
                        exc,
                        extra={**self._log, "topic": topic},
                    )
                    continue
                if lost:
                    log.warning(
                        "%d entries were taken over by another consumer after this one "
                        "held them longer than processingTimeout; they may be delivered "
                        "twice",
                        len(lost),
                        extra={**self._log, "topic": topic},
                    )

    async def _reclaim_loop(self) -> None:
        """Every ``redeliverInterval``, ``XAUTOCLAIM`` the entries idle for ``processingTimeout``
        (their consumer died, or this one dropped them) and queue them for delivery."""
        meta = self.meta
        idle_ms = int(meta.processing_timeout_s * 1000)
        while not self._closing:
            for topic in sorted(self._reading):
                try:
                    await self._reclaim(topic, idle_ms)
                    await self._remove_consumers(topic, self._reap_idle_ms, "")
                except (RedisError, BrokerError) as exc:
                    log.warning(
                        "reclaiming pending entries failed: %s",
                        exc,
                        extra={**self._log, "topic": topic},
                    )
            await asyncio.sleep(meta.redeliver_interval_s)  # Dapr's redeliverInterval period

    async def _reclaim(self, topic: str, idle_ms: int) -> None:
        client = self._redis()
        cursor: bytes | str = "0-0"
        held = self._held.setdefault(topic, set())
        while True:
            reply = await client.xautoclaim(
                topic,
                self.meta.consumer_group,
                self.consumer,
                idle_ms,
                cursor,
                count=self.meta.queue_depth,
            )
            cursor, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            fresh = [(i, f) for i, f in entries if i not in held]
            if fresh:
                log.info(
                    "reclaimed %d entries idle for over %.3g s",
                    len(fresh),
                    idle_ms / 1000,
                    extra={**self._log, "topic": topic},
                )
                await self._enqueue(topic, fresh)
            if deleted:
                log.error(
                    "%d pending entries were trimmed from the stream before they were "
                    "acknowledged (maxLenApprox too small?); they cannot be delivered",
                    len(deleted),
                    extra={**self._log, "topic": topic},
                )
            if cursor in (b"0-0", "0-0"):
                return

    async def _remove_consumers(self, topic: str, idle_ms: int, only: str) -> None:
        removed = await self._reap(keys=[topic], args=[self.meta.consumer_group, idle_ms, only])
        if removed:
            log.info(
                "removed idle consumers holding no entries from group %s: %s",
                self.meta.consumer_group,
                ", ".join(n.decode() for n in removed),
                extra={**self._log, "topic": topic},
            )

    # ----------------------------------------------------------------------------- shutdown

    async def close(self, *, grace_s: float) -> None:
        """Stop reading and reclaiming, let in-flight handlers finish within ``grace_s``
        seconds, cancel the rest, acknowledge what finished, make what did not finish
        reclaimable by the group at once, then disconnect. Never raises."""
        if self._closing:
            return
        self._closing = True
        try:
            await self._stop_consuming(grace_s)
        except Exception:  # noqa: BLE001 - close must never raise
            log.exception("error while closing", extra=self._log)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), self.meta.dial_timeout_s)

    async def _stop_consuming(self, grace_s: float) -> None:
        if self._status is not None:
            metrics.drop_consumer(self.app_id, self.name, self._status)
            self._status = None
        streams = sorted(self._reading)
        await stop_tasks(
            [*self._readers.values(), *self._loops], what="redis readers", extra=self._log
        )
        self._readers.clear()
        self._reading.clear()
        busy = [t for t in self._workers if t in self._busy]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=max(grace_s, 0.0))
            for task in pending:
                if task in self._busy:
                    log.info(
                        "stopping: cancelling the handler in flight",
                        extra={
                            **self._log,
                            "topic": self._busy[task][0],
                            "offset": self._busy[task][1].decode(),
                        },
                    )
        await stop_tasks(self._workers, what="redis delivery workers", extra=self._log)
        self._workers.clear()
        await self._flush_acks()
        await self._release_held()
        for topic in streams:  # leave the group tidy: this consumer, if it holds nothing
            try:
                await self._remove_consumers(topic, 0, self.consumer)
            except RedisError as exc:
                log.info(
                    "could not remove this consumer from the group: %s",
                    exc,
                    extra={**self._log, "topic": topic},
                )

    async def _release_held(self) -> None:
        """Set the idle time of every entry still held to ``processingTimeout``, so the next
        ``XAUTOCLAIM`` of another consumer of the group takes it without waiting."""
        client = self._client
        if client is None or not any(self._held.values()):
            return
        idle_ms = int(self.meta.processing_timeout_s * 1000)
        pipe = client.pipeline(transaction=False)
        count = 0
        for topic, held in self._held.items():
            if held:
                count += len(held)
                pipe.xclaim(
                    topic,
                    self.meta.consumer_group,
                    self.consumer,
                    0,
                    list(held),
                    idle=idle_ms,
                    justid=True,
                )
        try:
            await pipe.execute()
            log.info("left %d unfinished entries to the group", count, extra=self._log)
        except RedisError as exc:
            log.warning(
                "could not release %d unfinished entries; they are reclaimed after "
                "processingTimeout: %s",
                count,
                exc,
                extra=self._log,
            )
        self._held.clear()
