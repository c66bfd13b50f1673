"""Subscriber-side reading of a consumed record value (dapr-pubsub-contract.md §4.4, §5.2). Pure.

Turns a Kafka record value into two things:

- the *event map* used for routing (CEL variable ``event``, §2.2) and the expiry check;
- the *body* POSTed to the app.

Rules, following Dapr (dapr/dapr#pkg/runtime/subscription/subscription.go):

- a value that is a JSON object is accepted, CloudEvent fields or not, and delivered as the
  ORIGINAL bytes: Dapr does not re-serialise, so unknown fields, number spellings and key order
  reach the app untouched;
- a value that is not JSON, or JSON that is not an object (an array, a string...), raises
  :class:`CloudEventError` (``error deserializing cloud event``): the delivery engine sends it to
  the dead-letter topic if one is set, else retries it (a poison pill, §5.9);
- with subscription metadata ``rawPayload=true`` the value is wrapped in a synthesised CloudEvent
  (a new ``id`` for every delivery, ``data_base64``, ``source`` ``"Dapr"``) and that JSON is the
  body;
- trace fields (``traceid``, ``traceparent``, ``tracestate``) missing from the event are taken from
  the record's headers.

JSON numbers: parsed with orjson, which reads integers beyond 64 bits as doubles, as Dapr's Go
decoder does for routing (§2.2: numbers are doubles in CEL). Values orjson refuses but Go accepts
(a number out of double range, a lone UTF-16 surrogate) are re-read with the standard ``json``
module; ``NaN``/``Infinity`` literals are refused by both Go and us.

Neighbours: ``wrapping.py`` builds envelopes on publish; ``delivery/engine.py`` calls this module.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

__all__ = [
    "TRACE_FIELDS",
    "CloudEventError",
    "ReadEvent",
    "expiration_time",
    "expired",
    "read_event",
    "synthesise_raw",
]

TRACE_FIELDS = ("traceid", "traceparent", "tracestate")
"""CloudEvent extensions carrying W3C trace context; filled from record headers when missing."""

DEFAULT_SOURCE = "Dapr"
DEFAULT_TYPE = "com.dapr.event.sent"


class CloudEventError(ValueError):
    """The record value cannot be read as a CloudEvent: not JSON, or not a JSON object.

    The message starts with Dapr's ``error deserializing cloud event``.
    """


@dataclass(frozen=True, slots=True)
class ReadEvent:
    """A consumed value ready for routing and delivery.

    ``event`` is the parsed CloudEvent map (JSON types; integers may be ``int`` or ``float``);
    ``body`` the exact bytes to POST with ``Content-Type: application/cloudevents+json``.
    """

    event: dict[str, Any]
    body: bytes

    @property
    def cloudevent_id(self) -> str:
        """The event's ``id`` as a string for logs, ``""`` when absent."""
        value = self.event.get("id")
        return "" if value is None else str(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as first:
        try:
            return json.loads(value, parse_constant=_reject_constant)
        except RecursionError:
            # nested deeper than Python's parser goes: as unreadable as broken JSON
            raise first from None
        except (ValueError, UnicodeDecodeError):
            raise first from None


def _header_text(headers: Sequence[tuple[str, bytes | None]], name: str) -> str | None:
    """The last header called ``name`` (Dapr's metadata map keeps the last), as text."""
    found: str | None = None
    for key, raw in headers:
        if key == name:
            found = "" if raw is None else raw.decode("utf-8", "replace")
    return found


def synthesise_raw(
    value: bytes,
    *,
    topic: str,
    pubsubname: str,
    headers: Sequence[tuple[str, bytes | None]] = (),
) -> dict[str, Any]:
    """The CloudEvent Dapr builds for a ``rawPayload=true`` subscription (§4.4).

    ``id`` is a new UUIDv4 on every call, so redeliveries do not share an id (as in Dapr).
    Trace fields come from the record ``headers`` when present.
    """
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "specversion": "1.0",
        "datacontenttype": "application/octet-stream",
        "source": DEFAULT_SOURCE,
        "type": DEFAULT_TYPE,
        "topic": topic,
        "pubsubname": pubsubname,
        "data_base64": base64.b64encode(value).decode("ascii"),
    }
    for name in TRACE_FIELDS:
        text = _header_text(headers, name)
        if text is not None:
            event[name] = text
    return event


def read_event(
    value: bytes,
    *,
    topic: str,
    pubsubname: str,
    raw_payload: bool,
    headers: Sequence[tuple[str, bytes | None]] = (),
) -> ReadEvent:
    """Read one consumed record ``value`` for delivery.

    ``headers`` are the record's Kafka headers (only the trace fields are read).
    Raises :class:`CloudEventError` when ``raw_payload`` is false and ``value`` is not a JSON
    object.
    """
    if raw_payload:
        event = synthesise_raw(value, topic=topic, pubsubname=pubsubname, headers=headers)
        return ReadEvent(event=event, body=orjson.dumps(event))
    try:
        parsed = _loads(value)
    except ValueError as exc:
        raise CloudEventError(
            f"error deserializing cloud event in pubsub {pubsubname} and topic {topic}: {exc}"
        ) from None
    if not isinstance(parsed, dict):
        raise CloudEventError(
            f"error deserializing cloud event in pubsub {pubsubname} and topic {topic}: "
            f"a JSON {type(parsed).__name__} is not an object"
        )
    if headers:
        for name in TRACE_FIELDS:
            if name not in parsed:
                text = _header_text(headers, name)
                if text is not None:
                    parsed[name] = text
    return ReadEvent(event=parsed, body=value)


def expiration_time(event: Mapping[str, Any]) -> float | None:
    """The CE ``expiration`` as seconds since the epoch, or ``None``.

    ``None`` when absent, empty, not a string, or not RFC 3339 with a zone offset: like Dapr's
    ``HasExpired``, an unreadable expiration never expires a message (§5.2).
    """
    text = event.get("expiration")
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # RFC 3339 requires a zone; Go's time.Parse(time.RFC3339) refuses a naive time, so do we.
    if moment.tzinfo is None or "T" not in text.upper():
        return None
    return moment.timestamp()


def expired(event: Mapping[str, Any], now: float) -> bool:
    """Whether the event's ``expiration`` is strictly before ``now`` (seconds since the epoch)."""
    at = expiration_time(event)
    return at is not None and at < now
