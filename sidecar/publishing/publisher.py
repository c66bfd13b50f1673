"""Publish: validate → wrap → scope-check → produce; returns only after the broker acknowledged.

The one place that turns a publish request into a broker record and every failure into the
Dapr error of the §1.2 matrix (dapr-pubsub-contract.md §1.2, §1.3, §4, §5.1, §5.9). The HTTP layer
(``inbound/http/publish.py``) only decodes the request; the delivery engine (``delivery/engine.py``)
uses :meth:`Publisher.dead_letter`.

Record mapping (Kafka, §5.9): ``partitionKey`` (or ``__key``) becomes the record key,
``partitionNumber`` the record's explicit partition, every other metadata key a record header
with its UTF-8 value.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..brokers.base import Broker, BrokerError, PublishRecord, Record
from ..envelopes.wrapping import (
    CloudEventOverrides,
    InvalidCloudEvent,
    NotACloudEvent,
    dumps_exact,
    is_cloudevent_content_type,
    new_traceparent,
    ttl_seconds,
    wrap,
    wrap_user_cloudevent,
)
from ..errors import DaprError
from ..resources.loading import LoadedComponent
from ..runtime.metrics import record_egress
from ..runtime.tracing import end_span, start_publish
from .scoping import scopes_of

__all__ = [
    "BulkEntry",
    "BulkFailure",
    "Publisher",
    "body_too_large",
    "event_bytes",
    "parse_bool",
    "partition_number",
]

log = logging.getLogger(__name__)

KEY_METADATA = ("partitionKey", "__key")
PARTITION_METADATA = "partitionNumber"

_PARTITION_NUMBER = re.compile(r"[+-]?[0-9]+")
_INT32_MAX = 2**31 - 1  # Kafka partition ids are int32

_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))


def parse_bool(value: str) -> bool:
    """Go's ``strconv.ParseBool``: ``1 t T TRUE true True`` / ``0 f F FALSE false False``.
    Raises ``ValueError`` for anything else."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(value)


def _raw_payload(pubsubname: str, metadata: Mapping[str, str]) -> bool:
    value = metadata.get("rawPayload")
    if not value:
        return False
    try:
        return parse_bool(value)
    except ValueError:
        message = (
            "failed deserializing metadata. Error: rawPayload value must be a valid "
            f"boolean: actual is '{value}'"
        )
        raise DaprError(
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
            message,
            reason="DAPR_PUBSUB_METADATA_DESERIALIZATION",
            metadata=dict(metadata),
            resource=pubsubname,
        ) from None


def partition_number(metadata: Mapping[str, str]) -> int | None:
    """The explicit partition from ``partitionNumber`` (§1.2, §5.9), or ``None`` when not given
    (absent or empty). Raises :class:`BrokerError` (not retriable; Dapr answers it as a publish
    error) for a value that is not an integer, is negative, or is beyond Kafka's int32 range."""
    raw = metadata.get(PARTITION_METADATA)
    if not raw:
        return None
    if not _PARTITION_NUMBER.fullmatch(raw):
        raise BrokerError(
            f"{PARTITION_METADATA} must be a non-negative integer: actual is '{raw}'",
            refused="request",
        )
    value = int(raw)
    if value < 0:
        raise BrokerError(
            f"{PARTITION_METADATA} must be a non-negative integer: actual is '{raw}'",
            refused="request",
        )
    if value > _INT32_MAX:
        raise BrokerError(f"partition number {value} is out of range", refused="request")
    return value


def body_too_large(pubsubname: str, topic: str, limit: int) -> DaprError:
    """The 413 for a publish whose body (bulk: all events together) is over ``limit`` bytes
    (``--max-body-size``), over HTTP and gRPC alike. Stricter than Dapr, which answers 500
    (README "Where we differ from Dapr on purpose")."""
    error = f"request body exceeds the maximum of {limit} bytes (--max-body-size)"
    return DaprError(
        413,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        f"error when publishing to topic {topic} in pubsub {pubsubname}: {error}",
        reason="DAPR_PUBSUB_PUBLISH_MESSAGE",
        metadata={"topic": topic, "error": error},
        resource=pubsubname,
    )


def _key_and_headers(metadata: Mapping[str, str]) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = []
    for name, value in metadata.items():
        if name == "partitionKey" or name == "__key":
            if key is None or name == "partitionKey":
                key = value.encode()
            continue
        if name == PARTITION_METADATA:
            continue
        headers.append((name, value.encode()))
    return key, headers


def _system(component: LoadedComponent) -> str:
    """``messaging.system`` of a component: ``kafka`` for ``pubsub.kafka``, else its type."""
    return "kafka" if component.kafka is not None else component.type


def _add_trace_headers(
    headers: list[tuple[str, bytes]],
    metadata: Mapping[str, str],
    traceparent: str,
    tracestate: str | None,
) -> None:
    # The record carries the trace context for consumers that read headers, not the event
    # (W3C trace context for Kafka); a publisher's own metadata.traceparent header wins.
    if "traceparent" not in metadata:
        headers.append(("traceparent", traceparent.encode()))
        if tracestate and "tracestate" not in metadata:
            headers.append(("tracestate", tracestate.encode()))


@dataclass(frozen=True, slots=True)
class BulkEntry:
    """One entry of a bulk publish (§1.3): ``event`` is the decoded JSON value (numbers exact, see
    ``envelopes.wrapping.loads_exact``) of an HTTP entry, or the bytes of a gRPC entry (taken
    as they are); ``metadata`` is ``None`` when the entry had none."""

    entry_id: str
    event: Any
    content_type: str
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class BulkFailure:
    """An entry the broker did not store: ``error`` is the broker's message; ``refused``: the
    entry itself can never be stored as it is (``BrokerError.refused``), the caller's mistake."""

    entry_id: str
    error: str
    refused: bool = False


def event_bytes(event: Any, content_type: str) -> bytes:
    """A bulk entry's event as bytes, as Dapr's ``ConvertEventToBytes`` (§1.3):
    ``application/octet-stream`` takes a base64 string; ``text/*`` and ``application/xml`` a
    string; ``application/json`` and ``application/cloudevents+json`` any JSON (re-encoded with
    exact numbers). Raises ``ValueError`` for any other content type (an empty one included) or a
    mismatching event. ``bytes`` (a gRPC ``BulkPublishRequestEntry.event``) are the event's bytes
    already, whatever the content type, as in Dapr's gRPC API."""
    if isinstance(event, bytes):
        return event
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/octet-stream":
        if not isinstance(event, str):
            raise ValueError("mismatch between contentType and event")
        try:
            return base64.b64decode(event, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("event is not valid base64") from None
    if media.startswith("text/") or media == "application/xml":
        if not isinstance(event, str):
            raise ValueError("mismatch between contentType and event")
        return event.encode()
    if media in ("application/json", "application/cloudevents+json"):
        return dumps_exact(event)
    raise ValueError(f"mismatch between contentType {content_type!r} and event")


class Publisher:
    """Publishes for ``app_id`` through the started ``brokers`` of the loaded ``components``.

    Both dicts are shared by reference with the runner, which mutates them on hot reload; a
    component present without a broker (being started or stopped) answers Dapr's race error.
    """

    def __init__(
        self, *, app_id: str, brokers: dict[str, Broker], components: dict[str, LoadedComponent]
    ) -> None:
        self.app_id = app_id
        self.brokers = brokers
        self.components = components

    # -- validation shared by every path ------------------------------------------------------

    def validate_target(
        self, pubsubname: str, topic: str, metadata: Mapping[str, str]
    ) -> LoadedComponent:
        """The component for a publish to ``topic`` of ``pubsubname``, checked in Dapr's order
        (§1.2): no component at all (400), empty pubsub name (404), unknown pubsub (404), empty
        topic (404). Raises :class:`DaprError`."""
        if not self.components:
            raise DaprError(
                400,
                "ERR_PUBSUB_NOT_CONFIGURED",
                f"pubsub {pubsubname} is not configured",
                reason="DAPR_PUBSUB_NOT_CONFIGURED",
                metadata=dict(metadata),
                resource=pubsubname,
            )
        if not pubsubname:
            raise DaprError(
                404,
                "ERR_PUBSUB_EMPTY",
                "pubsub name is empty",
                reason="DAPR_PUBSUB_NAME_EMPTY",
                metadata=dict(metadata),
                resource="",
            )
        component = self.components.get(pubsubname)
        if component is None:
            raise DaprError(
                404,
                "ERR_PUBSUB_NOT_FOUND",
                f"pubsub {pubsubname} is not found",
                reason="DAPR_PUBSUB_NOT_FOUND",
                metadata=dict(metadata),
            )
        if not topic:
            raise DaprError(
                404,
                "ERR_TOPIC_NAME_EMPTY",
                f"topic is empty in pubsub {pubsubname}",
                reason="DAPR_PUBSUB_TOPIC_NAME_EMPTY",
                metadata=dict(metadata),
                resource=pubsubname,
            )
        return component

    def _check_scope(self, component: LoadedComponent, topic: str) -> None:
        if not scopes_of(component.metadata).publish_allowed(self.app_id, topic):
            message = f"topic {topic} is not allowed for app id {self.app_id}"
            raise DaprError(
                403,
                "ERR_PUBSUB_FORBIDDEN",
                message,
                reason="DAPR_PUBSUB_FORBIDDEN",
                metadata={"topic": topic, "error": message},
                resource=component.name,
            )

    def _broker(self, pubsubname: str, topic: str) -> Broker:
        broker = self.brokers.get(pubsubname)
        if broker is None:
            message = f"pubsub '{pubsubname}' not found"
            raise DaprError(
                400,
                "ERR_PUBSUB_NOT_FOUND",
                message,
                reason="DAPR_PUBSUB_TEST_NOT_FOUND",
                metadata={"topic": topic, "error": message},
                resource=pubsubname,
            )
        return broker

    def _envelope(
        self,
        pubsubname: str,
        topic: str,
        body: bytes,
        content_type: str | None,
        metadata: Mapping[str, str],
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> bytes:
        ttl_s = ttl_seconds(metadata)
        if ttl_s is None and (metadata.get("ttlInSeconds") or metadata.get("ttl")):
            # Dapr ignores a TTL it cannot read (§1.2, §9) and so do we; the log says so.
            log.warning(
                "metadata.ttlInSeconds %r is not a TTL (seconds or a Go duration, "
                "not negative): published without expiration, as Dapr does",
                metadata.get("ttlInSeconds") or metadata.get("ttl"),
                extra={"app_id": self.app_id, "pubsubname": pubsubname, "topic": topic},
            )
        if is_cloudevent_content_type(content_type):
            try:
                return wrap_user_cloudevent(
                    body,
                    topic=topic,
                    pubsubname=pubsubname,
                    ttl_s=ttl_s,
                    traceparent=traceparent,
                    tracestate=tracestate,
                )
            except NotACloudEvent:
                # Stricter than Dapr (500): a body that is not a JSON object is the client's
                # mistake, and a client mistake is never a 500 (issue 5).
                raise DaprError(
                    400,
                    "ERR_PUBSUB_CLOUD_EVENTS_SER",
                    "cannot create cloudevent",
                    reason="DAPR_PUBSUB_CLOUD_EVENT_CREATION",
                    metadata=dict(metadata),
                    resource=pubsubname,
                ) from None
            except InvalidCloudEvent as exc:
                # Stricter than Dapr (§9): the CloudEvents spec requires id/source/type/specversion.
                raise DaprError(
                    400,
                    "ERR_PUBSUB_CLOUD_EVENTS_SER",
                    f"cannot create cloudevent: {exc}",
                    reason="DAPR_PUBSUB_CLOUD_EVENT_CREATION",
                    metadata=dict(metadata),
                    resource=pubsubname,
                ) from None
        return wrap(
            body,
            content_type=content_type,
            app_id=self.app_id,
            topic=topic,
            pubsubname=pubsubname,
            overrides=CloudEventOverrides.from_metadata(metadata),
            ttl_s=ttl_s,
            traceparent=traceparent,
            tracestate=tracestate,
        )

    @staticmethod
    def _publish_error(pubsubname: str, topic: str, exc: BrokerError) -> DaprError:
        message = f"error when publishing to topic {topic} in pubsub {pubsubname}: {exc}"
        # Stricter than Dapr (500 for all): a request the broker can never store as it is (topic
        # name, partition, size) is the client's mistake, and those are never a 500 (issue 5).
        status = {"request": 400, "size": 413}.get(exc.refused or "", 500)
        return DaprError(
            status,
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            message,
            reason="DAPR_PUBSUB_PUBLISH_MESSAGE",
            metadata={"topic": topic, "error": str(exc)},
            resource=pubsubname,
        )

    # -- public API ---------------------------------------------------------------------------

    async def publish(
        self,
        pubsubname: str,
        topic: str,
        body: bytes,
        *,
        content_type: str | None,
        metadata: dict[str, str],
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        """Publish ``body`` to ``topic`` of ``pubsubname`` (§1.2) and return once the broker
        acknowledged it.

        ``metadata`` is the request's ``metadata.*`` with the prefix stripped.
        ``traceparent``/``tracestate`` are the request's W3C trace headers: the event and the
        record's ``traceparent``/``tracestate`` headers carry them on (``runtime/tracing.py``; with
        spans exported, a publish span's context instead). Raises
        :class:`DaprError` for every row of the §1.2 error matrix: 400 not configured / bad
        ``rawPayload`` / user CloudEvent without ``id`` (ours) / broker missing (race), 404 empty
        or unknown pubsub or empty topic, 403 scoping, 500 CloudEvent body not a JSON object or
        broker failure (the record was not, or may not have been, stored).
        """
        component = self.validate_target(pubsubname, topic, metadata)
        traceparent, tracestate, span = start_publish(
            traceparent, tracestate, system=_system(component), topic=topic
        )
        if span is None:
            return await self._publish(
                component,
                topic,
                body,
                content_type,
                metadata,
                traceparent or new_traceparent(),
                tracestate,
            )
        try:
            await self._publish(
                component, topic, body, content_type, metadata, traceparent, tracestate
            )
        except DaprError as exc:
            end_span(span, exc.message)
            raise
        end_span(span)

    async def _publish(
        self,
        component: LoadedComponent,
        topic: str,
        body: bytes,
        content_type: str | None,
        metadata: dict[str, str],
        traceparent: str,
        tracestate: str | None,
    ) -> None:
        pubsubname = component.name
        if _raw_payload(pubsubname, metadata):
            value = body
        else:
            value = self._envelope(
                pubsubname, topic, body, content_type, metadata, traceparent, tracestate
            )
        self._check_scope(component, topic)
        broker = self._broker(pubsubname, topic)
        key, headers = _key_and_headers(metadata)
        _add_trace_headers(headers, metadata, traceparent, tracestate)
        started = time.perf_counter()
        try:
            partition = partition_number(metadata)
            await broker.publish(topic, value, key=key, headers=headers, partition=partition)
        except BrokerError as exc:
            record_egress(
                self.app_id,
                pubsubname,
                topic,
                success=False,
                elapsed_s=time.perf_counter() - started,
            )
            log.warning(
                "publish failed: %s",
                exc,
                extra={"app_id": self.app_id, "pubsubname": pubsubname, "topic": topic},
            )
            raise self._publish_error(pubsubname, topic, exc) from exc
        record_egress(
            self.app_id, pubsubname, topic, success=True, elapsed_s=time.perf_counter() - started
        )

    async def publish_bulk(
        self,
        pubsubname: str,
        topic: str,
        entries: Sequence[BulkEntry],
        metadata: dict[str, str],
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> list[BulkFailure]:
        """Publish ``entries`` together (§1.3); returns the entries the broker did not store
        (empty: all acknowledged).

        Each entry gets its own envelope unless the request's ``rawPayload`` is true. Metadata
        precedence is pinned (§9): an entry's ``metadata`` overrides the request's, for the
        envelope and the record headers alike, and an entry without ``metadata`` uses the
        request's (Dapr drops request-level TTL and ``cloudevent.*`` for such entries, and its
        Kafka component lets the request win for headers; we do neither). An entry's metadata is
        validated like the request's (``rawPayload`` must be a boolean), but only the request's
        ``rawPayload`` chooses raw publishing, as in Dapr.

        Raises :class:`DaprError`: the §1.2 validation rows; 400 ``ERR_PUBSUB_REQUEST_METADATA``
        for a bad ``rawPayload`` in the request or an entry; 400 ``ERR_PUBSUB_EVENTS_SER`` for a
        missing/duplicate ``entryId`` or an event that does not match its ``contentType``; 403
        when scoping denies the topic. Broker failures, and a bad ``partitionNumber`` of an
        entry, are returned as failed entries (the other entries are still published), not
        raised.

        ``traceparent``/``tracestate`` (the request's W3C headers) are every entry's trace
        context, as for :meth:`publish` (one publish span for the request when spans are
        exported); without them each entry starts its own trace.
        """
        component = self.validate_target(pubsubname, topic, metadata)
        traceparent, tracestate, span = start_publish(
            traceparent, tracestate, system=_system(component), topic=topic
        )
        try:
            failures = await self._publish_bulk(
                component, topic, entries, metadata, traceparent, tracestate
            )
        except DaprError as exc:
            end_span(span, exc.message)
            raise
        end_span(span, f"{len(failures)} of {len(entries)} entries failed" if failures else None)
        return failures

    async def _publish_bulk(
        self,
        component: LoadedComponent,
        topic: str,
        entries: Sequence[BulkEntry],
        metadata: dict[str, str],
        traceparent: str | None,
        tracestate: str | None,
    ) -> list[BulkFailure]:
        pubsubname = component.name
        raw = _raw_payload(pubsubname, metadata)
        seen: set[str] = set()
        records: list[PublishRecord | BrokerError] = []
        for entry in entries:
            if not entry.entry_id or entry.entry_id in seen:
                raise self._events_error(
                    pubsubname, topic, "entryId is duplicated or not present for entry"
                )
            seen.add(entry.entry_id)
            try:
                data = event_bytes(entry.event, entry.content_type)
            except ValueError as exc:
                raise self._events_error(pubsubname, topic, str(exc)) from None
            if entry.metadata is None:
                entry_metadata = metadata
            else:
                entry_metadata = {**metadata, **entry.metadata}
                _raw_payload(pubsubname, entry_metadata)
            trace = traceparent or new_traceparent()
            value = (
                data
                if raw
                else self._envelope(
                    pubsubname, topic, data, entry.content_type, entry_metadata, trace, tracestate
                )
            )
            key, headers = _key_and_headers(entry_metadata)
            _add_trace_headers(headers, entry_metadata, trace, tracestate)
            try:
                partition = partition_number(entry_metadata)
            except BrokerError as exc:
                records.append(exc)
                continue
            records.append(PublishRecord(topic, value, key, headers, partition))
        self._check_scope(component, topic)
        broker = self._broker(pubsubname, topic)
        to_send = [r for r in records if isinstance(r, PublishRecord)]
        sent = iter(await broker.publish_many(to_send) if to_send else ())
        outcomes = [next(sent) if isinstance(r, PublishRecord) else r for r in records]
        failures = [
            BulkFailure(entry.entry_id, str(err), err.refused is not None)
            for entry, err in zip(entries, outcomes)
            if err is not None
        ]
        if failures:
            log.warning(
                "bulk publish: %d of %d entries failed: %s",
                len(failures),
                len(entries),
                failures[0].error,
                extra={"app_id": self.app_id, "pubsubname": pubsubname, "topic": topic},
            )
        return failures

    @staticmethod
    def _events_error(pubsubname: str, topic: str, error: str) -> DaprError:
        message = f"error marshaling events to bytes for topic {topic} pubsub {pubsubname}"
        return DaprError(
            400,
            "ERR_PUBSUB_EVENTS_SER",
            f"{message}. error: {error}",
            reason="DAPR_PUBSUB_MARSHAL_EVENTS",
            metadata={"error": error},
            resource=pubsubname,
        )

    async def dead_letter(self, pubsubname: str, topic: str, record: Record) -> None:
        """Produce the original ``record`` (value, key, headers) to ``topic`` through the broker of
        ``pubsubname``, scope-checked like a publish (§5.1, §5.3).

        Returns once the broker acknowledged. Raises :class:`BrokerError` (retriable when the
        broker says so, or when the broker is momentarily missing; at once and not retriable
        when the broker cannot hold the topic name, e.g. Kafka and ``a/b``) when it was not
        stored, and :class:`DaprError` (403) when scoping forbids the topic or the pubsub is
        unknown.
        """
        component = self.validate_target(pubsubname, topic, {})
        self._check_scope(component, topic)
        broker = self.brokers.get(pubsubname)
        if broker is None:
            raise BrokerError(f"pubsub {pubsubname} has no running broker", retriable=True)
        # Headers go out exactly as consumed; aiokafka accepts ``None`` header values.
        await broker.publish(topic, record.value, key=record.key, headers=record.headers)  # type: ignore[arg-type]
