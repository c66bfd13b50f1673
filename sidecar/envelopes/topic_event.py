"""A read event as Dapr's gRPC ``TopicEventRequest`` (dapr-pubsub-contract.md §2.5, §1.6). Pure.

The one builder for both gRPC deliveries: ``OnTopicEvent`` of the gRPC app channel
(``delivery/channel/grpc.py``, ``--app-protocol grpc``) and the ``event_message`` of a streaming
subscription (``inbound/grpc/streaming.py``, ``SubscribeTopicEventsAlpha1``). Dapr too builds both
with one function (dapr/dapr ``pkg/runtime/pubsub`` ``GRPCEnvelopeFromSubscriptionMessage``), whose
rules this follows:

- ``id``, ``source``, ``type``, ``specversion``, ``datacontenttype`` go to their own fields; an
  attribute that is not a string becomes ``""``;
- ``data`` becomes bytes by the content type: ``data_base64`` decoded; under ``text/*`` or
  ``application/xml`` the string's UTF-8 bytes; under a JSON type its compact JSON;
- every other attribute travels in ``extensions`` (a ``google.protobuf.Struct``).

Where Dapr sends no data at all (no content type, ``+json`` types, other types) this sends what
an app expects instead: JSON when the content type is absent (CloudEvents' JSON format implies
``application/json``) or ends in ``+json``; under another type a string's bytes, anything else as
JSON.

Exact numbers: ``data`` keeps every JSON number as the publisher wrote it (``1.10`` stays
``1.10``, an integer beyond 64 bits keeps its digits), as the HTTP delivery does by sending the
record's bytes. ``ReadEvent.event`` holds numbers as orjson read them (doubles for decimals and
huge integers, what routing needs), so data holding such a number is re-read from
``ReadEvent.body`` with :func:`~.wrapping.loads_exact`; data without one, the common case, is
encoded from the read event directly. ``extensions`` are a ``Struct``, whose numbers are doubles
in protobuf itself (as in Dapr).

Neighbours: ``reading.py`` makes the :class:`~.reading.ReadEvent`; ``wrapping.py`` owns the
exact JSON codec.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import orjson
from dapr.proto.runtime.v1 import appcallback_pb2
from google.protobuf import struct_pb2

from .reading import ReadEvent
from .wrapping import dumps_exact, loads_exact

__all__ = ["EnvelopeDataError", "event_data", "topic_event_request"]

# CloudEvent attributes with a TopicEventRequest field of their own; every other attribute is an
# extension (dapr/dapr ``cloudEventDuplicateKeys``). ``topic`` and ``pubsubname`` are NOT here,
# although the request has fields of those names, for two reasons: Dapr keeps them in
# ``extensions`` on both gRPC paths, and SDKs rebuild the CloudEvent from ``extensions`` (the
# Python SDK's ``SubscriptionMessage.extensions()``, its legacy ``v1.Event``), so an app reading
# the event's own ``pubsubname``/``topic`` finds them as under Dapr. The fields say where the
# record was delivered from; the attributes say what the publisher wrote (equal for events
# published through a sidecar, possibly absent for records written by other Kafka producers).
_OWN_FIELDS = frozenset(
    {"id", "source", "datacontenttype", "type", "specversion", "data", "data_base64"}
)

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# A "-0" number token (not "-01..." as in a date, not "-0.5"): orjson reads it as the int 0.
_NEGATIVE_ZERO = re.compile(rb"-0(?![0-9.eE])")


class EnvelopeDataError(ValueError):
    """The CloudEvent's ``data``/``data_base64`` cannot become ``TopicEventRequest.data``.

    Dapr answers the same case with a retriable error (``unexpected data type encountered in
    envelope``); the engine then retries it or sends it to the dead-letter topic.
    """


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_string_type(media_type: str) -> bool:
    # components-contrib contenttype.IsStringContentType
    return media_type.startswith("text/") or media_type == "application/xml"


def _is_json_type(media_type: str) -> bool:
    return media_type in (
        "",
        "application/json",
        "application/cloudevents+json",
    ) or media_type.endswith("+json")


def _valid_text(value: str) -> str:
    # A lone surrogate (only the json fallback of reading.py yields one) cannot be UTF-8 in a
    # protobuf string; Go decodes it as U+FFFD, and so does this.
    if value.isascii() or _LONE_SURROGATE.search(value) is None:
        return value
    return _LONE_SURROGATE.sub("\ufffd", value)


def _numbers_as_read(value: Any, body: bytes) -> bool:
    """Whether ``orjson.dumps(value)`` writes every number of ``value`` as ``body`` spells it.

    Integers within 64 bits keep their digits; a float does not (orjson read decimals,
    exponents and integers beyond 64 bits as doubles, so ``1.10`` is ``1.1``), nor a 0 when
    ``body`` has a ``-0``. Walks ``value`` without recursion.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float or (kind is int and item == 0 and _NEGATIVE_ZERO.search(body)):
            return False
    return True


def _json_data(read: ReadEvent, data: Any) -> bytes:
    """Compact JSON of ``data`` (the read event's), every number as the publisher wrote it."""
    if _numbers_as_read(data, read.body):
        try:
            return orjson.dumps(data)
        except orjson.JSONEncodeError:  # a lone surrogate or a huge int (reading's json fallback)
            pass
    try:
        exact = loads_exact(read.body)
    except ValueError:
        # Nested too deeply for the exact parser, which orjson still read: the numbers as read.
        return dumps_exact(data)
    # read.body is the JSON object read.event was parsed from; only trace fields were added.
    return dumps_exact(exact.get("data") if isinstance(exact, dict) else data)


def event_data(read: ReadEvent) -> bytes:
    """``TopicEventRequest.data`` for ``read`` (dapr/dapr ``GRPCEnvelopeFromSubscriptionMessage``).

    - ``data_base64`` (a string): its decoded bytes (what binary publishes and ``rawPayload``
      subscriptions carry);
    - ``data`` with a ``text/*`` or ``application/xml`` content type: the string's UTF-8 bytes;
    - ``data`` with a JSON or CloudEvents content type (also ``+json``), or none: its compact
      JSON, numbers byte-exact;
    - ``data`` with another content type: a string's bytes, anything else as JSON;
    - no data: ``b""``.

    Raises :class:`EnvelopeDataError` for ``data_base64`` that is not base64 text, and for
    ``data`` that is not a string under a string content type.
    """
    event = read.event
    content_type = event.get("datacontenttype")
    media_type = _media_type(content_type) if isinstance(content_type, str) else ""
    encoded = event.get("data_base64")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise EnvelopeDataError(
                "unexpected data type encountered in envelope: data_base64 is not a string"
            )
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EnvelopeDataError(
                f"unable to base64 decode cloudEvent field data_base64: {exc}"
            ) from None
    data = event.get("data")
    if data is None:
        return b""
    if _is_string_type(media_type):
        if not isinstance(data, str):
            raise EnvelopeDataError(
                f"unexpected data type encountered in envelope: {type(data).__name__} data "
                f"with content type {content_type!r}"
            )
        return _valid_text(data).encode()
    if isinstance(data, str) and not _is_json_type(media_type):
        return _valid_text(data).encode()
    return _json_data(read, data)


def _text(event: dict[str, Any], name: str) -> str:
    value = event.get(name)
    return _valid_text(value) if isinstance(value, str) else ""


def _set_extensions(extensions: struct_pb2.Struct, event: dict[str, Any]) -> None:
    rest = {k: v for k, v in event.items() if k not in _OWN_FIELDS}
    if not rest:
        return
    try:
        extensions.update(rest)  # in place: a Struct passed to the constructor would be copied
    except (TypeError, ValueError):
        # A lone surrogate in a key or string (reading's json fallback): dumps_exact writes it
        # as U+FFFD, as Go reads it. Struct numbers are doubles either way.
        extensions.Clear()
        try:
            extensions.update(json.loads(dumps_exact(rest)))
        except (TypeError, ValueError) as exc:
            raise EnvelopeDataError(f"unable to carry the cloudEvent extensions: {exc}") from None


def topic_event_request(
    read: ReadEvent,
    *,
    topic: str,
    pubsubname: str,
    path: str,
) -> appcallback_pb2.TopicEventRequest:
    """The ``TopicEventRequest`` for one read event. Pure.

    ``id``, ``source``, ``type``, ``spec_version``, ``data_content_type`` from the CloudEvent
    (``read.event``; a non-string attribute becomes ``""``, as in Dapr), ``data`` by
    :func:`event_data` (numbers byte-exact from ``read.body``), ``topic``/``pubsub_name``/
    ``path`` from the arguments (the record's topic, the component, the matched route's path),
    and every other attribute in ``extensions``: ``topic``, ``pubsubname``, ``traceparent``
    (also when taken from the record's headers), ``time``, custom extensions...

    Raises :class:`EnvelopeDataError` (see :func:`event_data`).
    """
    event = read.event
    request = appcallback_pb2.TopicEventRequest(
        id=_text(event, "id"),
        source=_text(event, "source"),
        type=_text(event, "type"),
        spec_version=_text(event, "specversion"),
        data_content_type=_text(event, "datacontenttype"),
        data=event_data(read),
        topic=topic,
        pubsub_name=pubsubname,
        path=path,
    )
    _set_extensions(request.extensions, event)
    return request
