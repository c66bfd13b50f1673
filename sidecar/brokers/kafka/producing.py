"""The Kafka producer of one ``pubsub.kafka`` component: publish returns only after ``acks=all``.

Rules from aiokafka-pitfalls.md:

- ``acks="all"`` explicitly and idempotence off (items 20; the local broker cannot give producer
  ids, and idempotent batches never expire during an outage);
- ``send()`` only buffers; a publish is reported done only when the future it returns resolved
  (item 3). ``publish_many`` sends everything first and then awaits all futures (item 21);
- ``linger_ms`` defaults to 0: aiokafka keeps one request in flight per broker, so concurrent
  publishes batch up behind it anyway and a lone publish is not delayed;
- ``max_request_size`` follows ``maxMessageBytes`` when set (item 22); else it fits the largest
  record a publish body within ``--max-body-size`` can become (:func:`record_size_bound`), so
  what the API accepts is not refused by the client's 1 MiB default (the broker's own limit,
  ``message.max.bytes``, still applies);
- every aiokafka error becomes :class:`BrokerError` with the error's own ``retriable`` flag;
- a topic name Kafka cannot hold (``topics.py``) and a partition the topic does not have are
  refused before aiokafka sees them (aiokafka would wait ``request_timeout_ms`` for metadata, or
  fail an ``assert``), with a :class:`BrokerError` that is not retriable;
- ``start()`` tries once and raises; a producer whose start failed is thrown away and never
  sent to (item 19, aiokafka #759); ``stop()`` is bounded because it flushes (item 19);
- a broker that stops answering keeps its TCP connections open (a frozen or partitioned broker),
  so aiokafka notices nothing until a request times out; a watch task asks a broker for metadata
  (no topics) every ``probe_interval_s`` and :meth:`KafkaProducer.ready` is false after
  ``probe_failures`` probes in a row went unanswered within ``probe_timeout_s`` (healthz reports
  the outage, dapr-pubsub-contract.md §1.5), true again at the first answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    NoBrokersAvailable,
    NodeNotReadyError,
)
from aiokafka.protocol.metadata import MetadataRequest

from ...resources.kafka import KafkaMetadata
from ...resources.kafka_topics import invalid_topic_message, kafka_topic_problem
from ..base import BrokerError, PublishRecord
from .clients import client_kwargs, connection_problem

__all__ = ["KafkaProducer"]

log = logging.getLogger(__name__)


# Envelope attributes, bulk/metadata headers and record framing around a body; metadata comes in
# the query string and headers, which aiohttp bounds to well under this.
_ENVELOPE_OVERHEAD = 64 * 1024


def record_size_bound(max_body_size: int) -> int:
    """Bytes of the largest record a publish body of ``max_body_size`` bytes can become, plus the
    envelope around it: a text body becomes a JSON string in ``data``, where each control
    character is escaped to six bytes (``\\u0001``); that bounds binary bodies too, which travel
    base64-encoded in ``data_base64`` (4/3)."""
    return max_body_size * 6 + _ENVELOPE_OVERHEAD


def _broker_error(exc: BaseException) -> BrokerError:
    if isinstance(exc, BrokerError):
        return exc
    retriable = bool(getattr(exc, "retriable", False))
    name, said = type(exc).__name__, str(exc)
    # aiokafka's errors often start with their own class name already
    text = said if said.startswith(name) else f"{name}: {said}" if said else name
    # item 22: too large for max_request_size (client side) or the broker's limit: never retried
    refused = "size" if isinstance(exc, MessageSizeTooLargeError) else None
    return BrokerError(text, retriable=retriable, refused=refused)


# aiokafka's ways of saying no connection to a broker could be used (stopped, crashed, network).
_UNREACHABLE = (NodeNotReadyError, KafkaConnectionError, NoBrokersAvailable)


def _check_topic(topic: str) -> None:
    problem = kafka_topic_problem(topic)
    if problem is not None:
        raise BrokerError(invalid_topic_message(topic, problem), refused="request")


async def _check_partition(producer: AIOKafkaProducer, topic: str, partition: int) -> None:
    # partitions_for waits for the topic's metadata (as send() would; a new topic is created by
    # the broker here) and raises KafkaTimeoutError after request_timeout_ms.
    partitions = await producer.partitions_for(topic)
    if partition not in partitions:
        raise BrokerError(
            f"partition number {partition} is out of range: topic {topic} has "
            f"{len(partitions)} partitions (0-{max(partitions, default=0)})"
            if partitions
            else f"partition number {partition} is out of range",
            refused="request",
        )


async def _probe(producer: AIOKafkaProducer) -> None:
    """One Metadata request for no topics (the broker list only: cheap on clusters with many
    topics) to a known broker. Raises ``KafkaError`` when it is not answered."""
    client = producer.client
    node_id = client.get_random_node()
    if node_id is None:
        raise KafkaError("no broker is known")
    await client.send(node_id, MetadataRequest([]))


class KafkaProducer:
    """Producer side of a Kafka component named ``pubsubname``.

    ``request_timeout_s`` bounds one produce attempt including retries and the metadata wait of a
    first send to a topic (aiokafka's ``request_timeout_ms``); ``retry_backoff_s`` is the pause
    between retries of a retriable error.
    """

    def __init__(
        self,
        meta: KafkaMetadata,
        *,
        pubsubname: str,
        request_timeout_s: float = 30.0,
        retry_backoff_s: float = 0.1,
        linger_ms: int = 0,
        max_body_size: int | None = None,
        probe_interval_s: float = 1.0,
        probe_timeout_s: float = 2.5,
        probe_failures: int = 2,
    ) -> None:
        self.meta = meta
        self.pubsubname = pubsubname
        self.request_timeout_s = request_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.linger_ms = linger_ms
        self.max_body_size = max_body_size
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.probe_failures = probe_failures
        self._producer: AIOKafkaProducer | None = None
        self._watch: asyncio.Task[None] | None = None
        self._unanswered = 0  # metadata probes in a row without an answer
        self._client_kwargs: dict[str, Any] = {}

    def _new_producer(self) -> AIOKafkaProducer:
        kwargs = client_kwargs(self.meta)
        self._client_kwargs = dict(kwargs)
        if self.meta.max_message_bytes > 0:
            kwargs["max_request_size"] = self.meta.max_message_bytes
        elif self.max_body_size:
            kwargs["max_request_size"] = max(1_048_576, record_size_bound(self.max_body_size))
        return AIOKafkaProducer(
            acks="all",
            enable_idempotence=False,
            linger_ms=self.linger_ms,
            request_timeout_ms=int(self.request_timeout_s * 1000),
            retry_backoff_ms=int(self.retry_backoff_s * 1000),
            **kwargs,
        )

    async def start(self) -> None:
        """Connect to the bootstrap brokers once. Raises :class:`BrokerError` (retriable) when
        none answers or the TLS/SASL settings are refused; the runner decides whether to retry
        (calling ``start()`` again builds a fresh client)."""
        if self._producer is not None:
            return
        try:
            producer = self._new_producer()
        except (ValueError, OSError) as exc:  # ssl/PEM problems, bad option values
            raise BrokerError(
                f"kafka producer settings of pubsub {self.pubsubname}: {exc}"
            ) from exc
        try:
            await producer.start()
        except Exception as exc:  # noqa: BLE001 - KafkaError, OSError, SASL/SCRAM ValueErrors...
            # Never reuse a producer whose start failed (aiokafka #759: sends on it hang). Closing
            # it releases whatever sockets the bootstrap attempt opened.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=1.0)
            # aiokafka says only "Unable to bootstrap" for a refused TLS handshake or SASL
            # login: say why.
            why = await connection_problem(self._client_kwargs)
            raise BrokerError(
                f"cannot connect to kafka brokers {','.join(self.meta.brokers)}: "
                f"{_broker_error(exc)}" + (f"; {why}" if why else ""),
                retriable=True,
            ) from exc
        self._producer = producer
        self._unanswered = 0
        self._watch = asyncio.create_task(self._watch_broker(producer))
        log.info("kafka producer connected", extra={"pubsubname": self.pubsubname})

    def ready(self) -> bool:
        """Whether the producer is started and the broker answered lately (outbound health,
        §1.5; see the module docstring)."""
        return self._producer is not None and self._unanswered < self.probe_failures

    async def _watch_broker(self, producer: AIOKafkaProducer) -> None:
        extra = {"pubsubname": self.pubsubname}
        while True:
            await asyncio.sleep(self.probe_interval_s)  # probe period
            try:
                await asyncio.wait_for(_probe(producer), self.probe_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - timeout or KafkaError: no answer
                self._unanswered += 1
                if self._unanswered == self.probe_failures:
                    log.warning(
                        "kafka brokers %s do not answer (%d probes in a row, last: %s);"
                        " reporting not ready",
                        ",".join(self.meta.brokers),
                        self._unanswered,
                        type(exc).__name__,
                        extra=extra,
                    )
                continue
            if self._unanswered >= self.probe_failures:
                log.info("kafka brokers answer again; reporting ready", extra=extra)
            self._unanswered = 0

    def _error(self, exc: BaseException) -> BrokerError:
        """``exc`` of a publish as a :class:`BrokerError`. When the broker cannot be reached (a
        connection error, or any error while the probes get no answer) the message says so
        first, for the publisher's 500, and keeps aiokafka's text as detail: "kafka brokers
        127.0.0.1:9092 are unreachable (NodeNotReadyError: ...)"."""
        error = _broker_error(exc)
        if error.refused is None and (isinstance(exc, _UNREACHABLE) or not self.ready()):
            return BrokerError(
                f"kafka brokers {','.join(self.meta.brokers)} are unreachable ({error})",
                retriable=True,
            )
        return error

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BrokerError(
                f"the kafka producer of pubsub {self.pubsubname} is not connected", retriable=True
            )
        return self._producer

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        """Produce one record and wait for the broker's ``acks=all`` acknowledgement.
        ``partition`` (>= 0) selects the partition explicitly; ``None`` lets aiokafka's
        partitioner choose by ``key``.

        Raises :class:`BrokerError` when the record was not stored or may not have been (a timed
        out attempt can still land: at-least-once, a retry may duplicate it); at once and not
        retriable for a topic name Kafka cannot hold or a partition the topic does not have.
        """
        _check_topic(topic)
        producer = self._started()
        try:
            if partition is not None:
                await _check_partition(producer, topic, partition)
            future = await producer.send(
                topic,
                value=value,
                key=key,
                partition=partition,
                headers=[(k, v) for k, v in headers],
            )
            await future
        except KafkaError as exc:
            raise self._error(exc) from exc

    async def publish_many(self, records: Sequence[PublishRecord]) -> list[BrokerError | None]:
        """Produce ``records`` together; one outcome per record in order (``None`` =
        acknowledged). Never raises for a single record."""
        try:
            producer = self._started()
        except BrokerError as exc:
            return [exc for _ in records]
        outcomes: list[BrokerError | None] = [None] * len(records)
        futures: list[tuple[int, asyncio.Future[object]]] = []
        for i, record in enumerate(records):
            try:
                _check_topic(record.topic)
                if record.partition is not None:
                    await _check_partition(producer, record.topic, record.partition)
                fut = await producer.send(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=[(k, v) for k, v in record.headers],
                )
            except BrokerError as exc:
                outcomes[i] = exc
                continue
            except KafkaError as exc:
                outcomes[i] = self._error(exc)
                continue
            futures.append((i, fut))
        results = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
        for (i, _), result in zip(futures, results):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                outcomes[i] = self._error(result)
        return outcomes

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Flush and disconnect within ``timeout_s`` seconds (records still buffered after that
        are abandoned, and their publishers already got an error or will). Never raises."""
        producer, self._producer = self._producer, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), timeout=timeout_s)
        except TimeoutError:
            log.warning(
                "kafka producer did not stop within %.1f s",
                timeout_s,
                extra={"pubsubname": self.pubsubname},
            )
        except Exception:
            log.exception("kafka producer stop failed", extra={"pubsubname": self.pubsubname})
