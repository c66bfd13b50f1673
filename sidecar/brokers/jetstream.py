"""``pubsub.jetstream``: the :class:`~tidings.sidecar.brokers.base.Broker` for NATS JetStream.

Settings come from ``resources/jetstream.py`` (Dapr's metadata names). Mapping to the broker
contract of ``base.py``:

- **publish**: a topic is a NATS subject; ``js.publish`` returns once the stream stored the
  message (its ``PubAck``). ``streamName``, when set, is sent as the expected stream, so a subject
  outside it is refused instead of landing elsewhere. Record headers become NATS headers; the
  record key (``partitionKey``) travels in the ``Tidings-Partition-Key`` header and comes back as
  the record's key (it orders nothing: a stream has no partitions). ``partitionNumber`` is
  refused, at once and not retriable. ``publish_many`` pipelines single publishes over the one
  connection (JetStream has no batch publish).
- **subscribe**: per topic one durable pull consumer (``consumer_name(durableName, topic)``,
  explicit acks, ``MaxDeliver`` unlimited) and one fetch loop that asks only for as many
  messages as it can start now (``max_in_flight``: 1 in ``single`` mode), so no message waits in
  a client buffer while its AckWait runs. Replicas of one app-id pull from the same consumer and
  share its messages; other app-ids have their own consumers and get every message. A stream
  that does not exist yet, a server that is down and a consumer that was deleted are retried
  (with backoff, logged), never given up on. A missing stream is logged once at WARNING
  ("waiting for stream X"), reported as the subscription's ``lastError`` and by
  :meth:`JetStreamBroker.waiting` (the runner does not call such a topic subscribed), and
  logged at INFO when consumption begins.
- **status** (``tidings status``, ``GET /v1.0/metadata``; ``metrics.PolledConsumer``): each
  fetch loop asks ``consumer_info`` at most every :data:`STATUS_INTERVAL_S`. The consumer
  group shown is the topic's durable consumer, the "partition" its stream, and the lag the
  messages the consumer has not had acknowledged: ``num_pending`` (not delivered yet) plus
  ``num_ack_pending`` (delivered, not acknowledged), like Kafka's log end minus committed
  offset.
- **ack**: ``msg.ack()`` only after ``await handler(record)`` returned (the record is finished).
  While the handler runs, and that includes every engine retry with its backoff, one ticker per
  broker sends ``+WPI`` (in progress) for every unfinished message each ``ackWait / 3``: the
  server then never redelivers a message the engine is still working on, and a message of a
  sidecar that died (SIGKILL, no more ticks) is redelivered ``ackWait`` later to whichever
  replica pulls next. We chose in-progress acks over a long ``ackWait`` because a long one would
  delay exactly that redelivery, and the engine's retries may run forever.
- **close**: stop fetching, give in-flight handlers ``grace_s``, cancel the rest and ``nak`` them
  (immediate redelivery to another replica instead of waiting for AckWait), flush, close. A topic
  dropped by a hot reload is stopped the same way without grace.

Ordering (what JetStream gives): a stream keeps one sequence, and a consumer hands messages out in
that order. In ``single`` mode a lone replica therefore sees each topic in publish order; replicas
of one app-id share a topic with no order between them (set ``maxAckPending: 1`` for strict order
over all replicas, one message at a time), and a redelivered message (after a crash) comes after
later ones. There are no keys or partitions to order by.

Records: ``partition`` is always 0, ``offset`` is the stream sequence, ``timestamp_ms`` the time
the stream stored the message. JetStream's own headers (``Nats-*``, e.g. the expected stream) are
not passed on: they would steer a dead-letter publish.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import ssl
from collections.abc import Collection, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ..resources.jetstream import (
    JetStreamMetadata,
    consumer_name,
    filter_subject_problem,
    subject_problem,
)
from ..resources.loading import LoadedComponent
from ..runtime import metrics
from ..runtime.tasks import stop_tasks
from .base import MESSAGE_HEADERS, ORDERED, BrokerError, Handler, Header, PublishRecord, Record

__all__ = ["KEY_HEADER", "JetStreamBroker"]

log = logging.getLogger(__name__)

KEY_HEADER = "Tidings-Partition-Key"
"""NATS header carrying a record's key (``partitionKey``); JetStream messages have no key."""

CONNECT_TIMEOUT_S = 5.0
"""Bound on one ``start`` (every server of ``natsURL`` tried); the runner retries with backoff."""
PUBLISH_TIMEOUT_S = 10.0
"""How long a publish waits for the stream's acknowledgement before it is reported failed."""
FETCH_WAIT_S = 5.0
"""Long-poll of one fetch request: how long the server holds it when the consumer is empty."""
SETUP_RETRY_MAX_S = 10.0
"""Longest pause between attempts to create a topic's consumer (stream missing, server down)."""
STATUS_INTERVAL_S = 5.0
"""Least time between two ``consumer_info`` requests of one topic for its status and lag."""
HANDLER_ERROR_RETRY_S = 0.1
"""Pause before handing a record again to a handler that raised (a handler bug, not an outcome)."""

_DELIVER_POLICIES = {
    "all": DeliverPolicy.ALL,
    "new": DeliverPolicy.NEW,
    "last": DeliverPolicy.LAST,
    "sequence": DeliverPolicy.BY_START_SEQUENCE,
    "time": DeliverPolicy.BY_START_TIME,
}
# HTTP-style header names (NATS headers follow MIME); values must not break the header block.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n]")


def _nats_headers(headers: Sequence[tuple[str, bytes]], key: bytes | None) -> dict[str, str]:
    """Record headers and key as NATS headers. Raises :class:`BrokerError` (refused
    ``"request"``: the caller's mistake) for a name or value NATS headers cannot hold."""
    out: dict[str, str] = {}
    for name, raw in headers:
        if not _HEADER_NAME.fullmatch(name):
            raise BrokerError(
                f"metadata name {name!r} cannot be a NATS header name", refused="request"
            )
        try:
            value = raw.decode("utf-8") if raw is not None else ""
        except UnicodeDecodeError:
            raise BrokerError(
                f"metadata {name!r} is not UTF-8 text, which NATS headers need", refused="request"
            ) from None
        if _BAD_VALUE.search(value):
            raise BrokerError(
                f"metadata {name!r} holds a line break, which NATS headers cannot",
                refused="request",
            )
        out[name] = value
    if key is not None:
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            raise BrokerError(
                "partitionKey is not UTF-8 text, which NATS headers need", refused="request"
            ) from None
        if _BAD_VALUE.search(text):
            raise BrokerError(
                "partitionKey holds a line break, which NATS headers cannot", refused="request"
            )
        out[KEY_HEADER] = text
    return out


def _record(topic: str, msg: Msg) -> Record:
    meta = msg.metadata
    key: bytes | None = None
    headers: list[Header] = []
    for name, value in (msg.headers or {}).items():
        if name == KEY_HEADER:
            key = value.encode()
        elif not name.lower().startswith("nats-"):
            headers.append((name, value.encode()))
    return Record(
        topic=topic,
        partition=0,
        offset=meta.sequence.stream,
        key=key,
        value=msg.data,
        headers=tuple(headers),
        timestamp_ms=int(meta.timestamp.timestamp() * 1000),
    )


def _publish_error(topic: str, exc: Exception, *, size: int, max_payload: int) -> BrokerError:
    if isinstance(exc, nats.errors.MaxPayloadError):
        return BrokerError(
            f"the message has {size} bytes; the NATS server takes at most "
            f"{max_payload} (its max_payload)",
            refused="size",
        )
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return BrokerError(
            f"no JetStream stream takes subject {topic!r}: create one that does (nats stream add)"
        )
    if isinstance(exc, nats.js.errors.APIError):
        return BrokerError(
            f"JetStream refused the message: {exc.description or exc}",
            retriable=isinstance(exc, nats.js.errors.ServiceUnavailableError),
        )
    if isinstance(exc, asyncio.TimeoutError | nats.errors.TimeoutError):
        return BrokerError(
            "no acknowledgement from JetStream in time; the message may or may not be stored",
            retriable=True,
        )
    return BrokerError(f"JetStream publish failed: {exc!r}", retriable=True)


class _TopicConsumer:
    """The fetch loop of one subscribed topic and the messages it has in flight."""

    def __init__(self, broker: JetStreamBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.stream: str | None = None
        self.consumer = consumer_name(broker.meta.durable_name, topic)
        self.in_flight: dict[asyncio.Task[None], Msg] = {}
        self.free = broker.meta.max_in_flight  # deliveries this loop may still start
        self.freed = asyncio.Event()
        self.ready = asyncio.Event()  # set once the consumer exists (or setup gave up for now)
        self.fetcher: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self.waiting_for: str | None = None  # why the consumer is not set up yet, or None
        self._next_status = 0.0  # loop time of the next consumer_info for the status
        if broker.status is not None:
            broker.status.name_group(topic, self.consumer)

    def _extra(self, **more: Any) -> dict[str, Any]:
        return {
            "app_id": self.broker.app_id,
            "pubsubname": self.broker.name,
            "topic": self.topic,
            "stream": self.stream,
            "consumer": self.consumer,
            **more,
        }

    def start(self) -> None:
        self.fetcher = asyncio.create_task(
            self._run(), name=f"jetstream:{self.broker.name}:{self.topic}"
        )

    async def _setup(self) -> None:
        js = self.broker.js
        meta = self.broker.meta
        self.stream = meta.stream_name or await js.find_stream_name_by_subject(self.topic)
        config = ConsumerConfig(
            durable_name=self.consumer,
            filter_subject=self.topic,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=meta.ack_wait_s,
            max_deliver=-1,
            deliver_policy=_DELIVER_POLICIES[meta.deliver_policy],
            opt_start_seq=meta.start_sequence,
            opt_start_time=meta.start_time,
            max_ack_pending=meta.max_ack_pending,
            num_replicas=meta.replicas,
            mem_storage=meta.memory_storage or None,
        )
        try:
            await js.add_consumer(self.stream, config)
        except nats.js.errors.APIError as exc:
            # The consumer exists with a start position of its own: deliverPolicy only applies
            # when a consumer is created, so keep its position and update the rest.
            existing = await js.consumer_info(self.stream, self.consumer)
            if (
                existing.config.deliver_policy == config.deliver_policy
                and existing.config.opt_start_seq == config.opt_start_seq
            ):
                raise
            log.warning(
                "consumer %s exists with deliverPolicy %s; keeping its position (%s)",
                self.consumer,
                existing.config.deliver_policy,
                exc.description,
                extra=self._extra(),
            )
            await js.add_consumer(
                self.stream,
                config.evolve(
                    deliver_policy=existing.config.deliver_policy,
                    opt_start_seq=existing.config.opt_start_seq,
                    opt_start_time=existing.config.opt_start_time,
                ),
            )
        self._sub = await js.pull_subscribe_bind(durable=self.consumer, stream=self.stream)

    async def _run(self) -> None:
        problem = filter_subject_problem(self.topic)
        if problem is not None:  # delivery/subscriptions.py leaves these out; a retry cannot help
            log.error(
                "topic %r is not a NATS subject (%s); it is not consumed",
                self.topic,
                problem,
                extra=self._extra(),
            )
            self.ready.set()
            return
        delay = 0.2
        while True:
            try:
                await self._setup()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._setup_failed(exc, delay)
                self.ready.set()
                await asyncio.sleep(delay)  # backoff between setup attempts
                delay = min(delay * 2, SETUP_RETRY_MAX_S)
        log.info(
            "consuming topic %s from stream %s as durable consumer %s%s",
            self.topic,
            self.stream,
            self.consumer,
            f" (was: {self.waiting_for})" if self.waiting_for else "",
            extra=self._extra(),
        )
        self.waiting_for = None
        self.ready.set()
        delay = 0.2
        idle = 0
        while True:
            while self.free < 1:
                self.freed.clear()
                await self.freed.wait()
            await self._poll_status()
            sub = self._sub
            assert sub is not None
            try:
                # Ask only for what can start now: a fetched message's AckWait is running.
                msgs = await sub.fetch(batch=self.free, timeout=FETCH_WAIT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                # A deleted consumer answers nothing at all: look every other idle fetch.
                idle += 1
                if idle % 2 == 0 and await self._consumer_gone():
                    log.warning(
                        "durable consumer %s is gone (deleted?); creating it again",
                        self.consumer,
                        extra=self._extra(),
                    )
                    await self._resubscribe()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # disconnected, server restarting, consumer deleted
                log.warning(
                    "fetch from consumer %s failed (retrying in %.1fs): %r",
                    self.consumer,
                    delay,
                    exc,
                    extra=self._extra(),
                )
                await asyncio.sleep(delay)  # backoff while the server is unreachable
                delay = min(delay * 2, SETUP_RETRY_MAX_S)
                await self._resubscribe()
                continue
            delay, idle = 0.2, 0
            self.free -= len(msgs)
            for msg in msgs:
                task = asyncio.create_task(self._deliver(msg))
                self.in_flight[task] = msg

    def _setup_failed(self, exc: Exception, delay: float) -> None:
        """Log why the consumer cannot be set up (a missing stream once, at WARNING, as it is
        an expected state until someone creates the stream) and show it as the subscription's
        ``lastError``."""
        if isinstance(exc, nats.js.errors.NotFoundError):
            why = (
                f"waiting for stream {self.broker.meta.stream_name}: it does not exist"
                if self.broker.meta.stream_name
                else f"waiting for a stream: no JetStream stream takes subject {self.topic}"
            )
            if why != self.waiting_for:
                log.warning(
                    "topic %s is not consumed yet, %s (retrying every %.0fs at most)",
                    self.topic,
                    why,
                    SETUP_RETRY_MAX_S,
                    extra=self._extra(),
                )
            else:
                log.debug("still %s", why, extra=self._extra())
        else:
            why = f"cannot set up consumer {self.consumer}: {exc!r}"
            log.error(
                "cannot consume topic %s (retrying in %.1fs): %r",
                self.topic,
                delay,
                exc,
                extra=self._extra(),
            )
        if why != self.waiting_for:
            metrics.topic_deliveries(self.broker.app_id, self.broker.name, self.topic).failed(why)
        self.waiting_for = why

    async def _poll_status(self) -> None:
        """Record the consumer's lag for the status, at most every :data:`STATUS_INTERVAL_S`
        (see the module docstring); a failure is left to the fetch loop to notice."""
        status = self.broker.status
        now = asyncio.get_running_loop().time()
        if status is None or self.stream is None or now < self._next_status:
            return
        self._next_status = now + STATUS_INTERVAL_S
        try:
            info = await self.broker.js.consumer_info(self.stream, self.consumer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # server down or consumer gone: the fetch loop handles both
            log.debug("consumer_info for the status failed: %r", exc, extra=self._extra())
            return
        pending = info.num_ack_pending or 0
        status.polled(
            self.topic, self.stream, lag=(info.num_pending or 0) + pending, pending=pending
        )

    async def _consumer_gone(self) -> bool:
        assert self.stream is not None
        try:
            await self.broker.js.consumer_info(self.stream, self.consumer)
        except nats.js.errors.NotFoundError:
            return True
        except Exception:  # server unreachable: the fetch loop deals with that
            return False
        return False

    async def _resubscribe(self) -> None:
        """Create (if it went away: deleted, a server that lost its state) and bind the consumer
        again; a server still down just fails here and the fetch loop tries later."""
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        try:
            await self._setup()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "cannot set up consumer %s again yet: %r", self.consumer, exc, extra=self._extra()
            )
            self._sub = old
            return
        log.info(
            "consuming topic %s again as durable consumer %s",
            self.topic,
            self.consumer,
            extra=self._extra(),
        )

    async def _deliver(self, msg: Msg) -> None:
        task = asyncio.current_task()
        try:
            try:
                record = _record(self.topic, msg)
            except Exception:  # not a JetStream message: never acked, so it comes back
                log.exception(
                    "cannot read a message of consumer %s; it is left unacknowledged",
                    self.consumer,
                    extra=self._extra(),
                )
                return
            while True:
                handler = self.broker.handler
                assert handler is not None
                try:
                    await handler(record)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The handler contract says it returns only when finished; raising is a bug
                    # in it. Keep the message (never ack it unfinished) and try again shortly.
                    log.exception(
                        "handler failed for record; it is retried",
                        extra=self._extra(partition=0, offset=record.offset),
                    )
                    await asyncio.sleep(HANDLER_ERROR_RETRY_S)
            self.in_flight.pop(task, None)  # type: ignore[arg-type]
            try:
                await msg.ack()
            except Exception as exc:  # the connection dropped: the server redelivers it
                log.warning(
                    "ack of offset %s failed; it will be redelivered: %r",
                    record.offset,
                    exc,
                    extra=self._extra(partition=0, offset=record.offset),
                )
        finally:
            self.in_flight.pop(task, None)  # type: ignore[arg-type]
            self.free += 1
            self.freed.set()

    async def stop(self, grace_s: float) -> None:
        """Stop fetching; wait up to ``grace_s`` for in-flight deliveries, cancel and nak the
        rest, unsubscribe (the durable consumer stays, like a Kafka group's offsets)."""
        if self.fetcher is not None:
            await stop_tasks([self.fetcher], what="jetstream fetch loop", extra=self._extra())
        pending = dict(self.in_flight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=max(grace_s, 0.0))
            await stop_tasks(late, what="jetstream deliveries", extra=self._extra())
            for task in late:
                with contextlib.suppress(Exception):  # redeliver now, not after AckWait
                    await asyncio.wait_for(pending[task].nak(), CONNECT_TIMEOUT_S)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sub.unsubscribe(), CONNECT_TIMEOUT_S)
            self._sub = None


class JetStreamBroker:
    """The ``pubsub.jetstream`` component ``component`` as used by the sidecar of ``app_id``.

    ``features``: ``MESSAGE_HEADERS``, and ``ORDERED`` in ``single`` mode (one replica sees a
    topic in stream order). No partitions (``partitionNumber`` refused, ``partitionKey`` orders
    nothing), no batch publish. Raises ``ValueError`` for a component that is not JetStream.
    """

    def __init__(self, component: LoadedComponent, *, app_id: str) -> None:
        if component.jetstream is None:
            raise ValueError(f"component {component.name} is not pubsub.jetstream")
        self.name = component.name
        self.app_id = app_id
        self.meta: JetStreamMetadata = component.jetstream
        self.features = frozenset(
            {MESSAGE_HEADERS} | ({ORDERED} if self.meta.max_in_flight == 1 else set())
        )
        self.handler: Handler | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._topics: dict[str, _TopicConsumer] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False
        self._last_error: Exception | None = None
        self.status: metrics.PolledConsumer | None = None

    def _extra(self, **more: Any) -> dict[str, Any]:
        return {"app_id": self.app_id, "pubsubname": self.name, **more}

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BrokerError(f"pubsub {self.name} is not connected to NATS", retriable=True)
        return self._js

    # --- connection ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to NATS. Raises :class:`BrokerError` (retriable) if no server answers within
        :data:`CONNECT_TIMEOUT_S`. Logs, once, the metadata given that has no effect here."""
        if self._nc is not None and self._nc.is_connected:
            return
        self._last_error = None
        meta = self.meta
        options: dict[str, Any] = {
            "servers": list(meta.servers),
            "name": meta.connection_name,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "max_reconnect_attempts": -1,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if meta.token:
            options["token"] = meta.token
        if meta.jwt and meta.seed_key:
            options["user_jwt_cb"] = _jwt_callback(meta.jwt)
            options["signature_cb"] = _signature_callback(meta.seed_key)
        if meta.tls_client_cert and meta.tls_client_key:
            context = ssl.create_default_context()
            try:
                context.load_cert_chain(meta.tls_client_cert, meta.tls_client_key)
            except OSError as exc:
                raise BrokerError(f"cannot read tls_client_cert/tls_client_key: {exc}") from None
            options["tls"] = context
        try:
            # nats-py retries the first connection forever with max_reconnect_attempts=-1;
            # the runner owns the retry loop, so one bounded attempt here.
            nc = await asyncio.wait_for(nats.connect(**options), CONNECT_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            cause = self._last_error or exc  # e.g. the server's "Authorization Violation"
            raise BrokerError(
                f"cannot connect to NATS at {', '.join(meta.servers)}: {cause!r}", retriable=True
            ) from None
        self._nc = nc
        self._js = nc.jetstream(domain=meta.domain, prefix=meta.api_prefix or "$JS.API")
        self._ticker = asyncio.create_task(
            self._tick_in_progress(), name=f"jetstream:{self.name}:in-progress"
        )
        for name in meta.unused:
            log.warning(
                "metadata %s of pubsub.jetstream has no effect: %s",
                name,
                "replicas of one app-id already share its durable pull consumer"
                if name == "queueGroupName"
                else "it configures push consumers, and this component uses pull consumers",
                extra=self._extra(),
            )
        log.info(
            "pubsub.jetstream has no partitions: metadata.partitionNumber is refused, "
            "partitionKey is carried as header %s and orders nothing; bulk publish sends "
            "single messages, pipelined",
            KEY_HEADER,
            extra=self._extra(),
        )

    async def _on_error(self, exc: Exception) -> None:
        # The server's own verdict (e.g. "Authorization Violation") is followed by the reset of
        # the connection it closes; keep the verdict as the cause a failed start() reports.
        if not (
            isinstance(exc, OSError)
            and self._last_error is not None
            and not isinstance(self._last_error, OSError)
        ):
            self._last_error = exc
        log.warning("NATS connection error: %r", exc, extra=self._extra())

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("disconnected from NATS; reconnecting", extra=self._extra())

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS", extra=self._extra())

    def ready(self) -> bool:
        """Whether the connection to NATS is up (outbound health, §1.5)."""
        return self._nc is not None and self._nc.is_connected and not self._closing

    # --- publish -----------------------------------------------------------------------------
    def _check(self, topic: str, partition: int | None) -> None:
        if partition is not None:
            raise BrokerError(
                "pubsub.jetstream has no partitions: metadata.partitionNumber is not supported",
                refused="request",
            )
        problem = subject_problem(topic)
        if problem is not None:
            raise BrokerError(
                f"topic {topic!r} is not a NATS subject one can publish to: {problem}",
                refused="request",
            )
        if self._closing:
            raise BrokerError(f"pubsub {self.name} is closing", retriable=True)

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        """Store one message on subject ``topic``; return after the stream's acknowledgement.

        Raises :class:`BrokerError`: refused (``BrokerError.refused``, the caller's mistake, never
        stored as it is) for a ``partition`` (JetStream has none), a topic that is not a
        publishable subject, a header NATS cannot hold (``"request"``) or a message over the
        server's ``max_payload`` (``"size"``); not retriable, not refused, for a subject no stream
        (or not ``streamName``) takes (an operator may still create that stream); retriable when
        not connected or on timeout.
        """
        self._check(topic, partition)
        nats_headers = _nats_headers(headers, key)
        try:
            await self.js.publish(
                topic,
                value,
                timeout=PUBLISH_TIMEOUT_S,
                stream=self.meta.stream_name,
                headers=nats_headers or None,
            )
        except BrokerError:
            raise
        except Exception as exc:
            max_payload = self._nc.max_payload if self._nc is not None else 0
            raise _publish_error(topic, exc, size=len(value), max_payload=max_payload) from None

    async def publish_many(self, records: Sequence[PublishRecord]) -> list[BrokerError | None]:
        """Store ``records``, pipelined over the connection; one outcome per record, in order."""

        async def one(record: PublishRecord) -> BrokerError | None:
            try:
                await self.publish(
                    record.topic,
                    record.value,
                    key=record.key,
                    headers=record.headers,
                    partition=record.partition,
                )
            except BrokerError as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(r) for r in records)))

    # --- consume -----------------------------------------------------------------------------
    async def subscribe(self, topics: Collection[str], handler: Handler) -> None:
        """Consume exactly ``topics`` with ``handler`` (empty: stop consuming). Topics no longer
        listed stop: their in-flight deliveries are cancelled and nak'ed (redelivered). Returns
        once each new topic's consumer exists, or its first setup attempt failed (then it keeps
        trying in the background, logging why)."""
        self.handler = handler
        wanted = set(topics)
        for name in [t for t in self._topics if t not in wanted]:
            await self._topics.pop(name).stop(0.0)  # bounded: see _TopicConsumer.stop
        if self.status is not None:
            self.status.forget(wanted)
        if self._closing:
            return
        if self.status is None and wanted:
            self.status = metrics.polled_consumer(self.app_id, self.name, self.meta.durable_name)
        started = []
        for name in wanted - set(self._topics):
            consumer = self._topics[name] = _TopicConsumer(self, name)
            consumer.start()
            started.append(consumer)
        for consumer in started:
            await consumer.ready.wait()

    async def _tick_in_progress(self) -> None:
        """Every ``ackWait / 3``: tell the server each unfinished message is still worked on."""
        interval = self.meta.in_progress_interval_s
        while not self._closing:
            await asyncio.sleep(interval)  # the period of the in-progress heartbeat
            for consumer in list(self._topics.values()):
                for msg in list(consumer.in_flight.values()):
                    with contextlib.suppress(Exception):  # disconnected: the server redelivers
                        await msg.in_progress()

    def waiting(self) -> dict[str, str]:
        """Subscribed topics whose consumer is not set up yet, each with the reason (e.g.
        ``waiting for stream X: it does not exist``); set up again, they leave this dict."""
        return {t: c.waiting_for for t, c in self._topics.items() if c.waiting_for}

    def consumers(self) -> list[str]:
        """The durable consumers in use, as ``topic=stream/consumer`` (stream empty until
        found)."""
        return sorted(f"{t}={c.stream or ''}/{c.consumer}" for t, c in self._topics.items())

    async def close(self, *, grace_s: float) -> None:
        """Stop fetching, give in-flight deliveries ``grace_s`` seconds, nak the rest, flush
        the acks and close the connection. Never raises."""
        self._closing = True
        if self.status is not None:
            metrics.drop_consumer(self.app_id, self.name, self.status)
            self.status = None
        try:
            await asyncio.gather(
                *(c.stop(grace_s) for c in self._topics.values()), return_exceptions=True
            )
            self._topics.clear()
            if self._ticker is not None:
                await stop_tasks(
                    [self._ticker], what="jetstream in-progress ticker", extra=self._extra()
                )
            if self._nc is not None and not self._nc.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.flush(), CONNECT_TIMEOUT_S)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.close(), CONNECT_TIMEOUT_S)
        except Exception:  # never raise from close
            log.exception("error closing pubsub.jetstream", extra=self._extra())


def _jwt_callback(jwt: str):  # type: ignore[no-untyped-def]
    def user_jwt() -> bytearray:
        return bytearray(jwt.encode())

    return user_jwt


def _signature_callback(seed: str):  # type: ignore[no-untyped-def]
    """Sign the server's nonce with the user's NKEY seed (decentralised JWT auth)."""

    def sign(nonce: str) -> bytes:
        import nkeys

        keypair = nkeys.from_seed(bytearray(seed.encode()))
        try:
            return base64.b64encode(keypair.sign(nonce.encode()))
        finally:
            keypair.wipe()

    return sign
