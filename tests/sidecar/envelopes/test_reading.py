"""Tests of subscriber-side reading of record values (``sidecar/envelopes/reading.py``, §4.4)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tidings.sidecar.envelopes.reading import (
    CloudEventError,
    expiration_time,
    expired,
    read_event,
    synthesise_raw,
)

KW = {"topic": "orders", "pubsubname": "pubsub"}


def test_json_object_is_delivered_as_the_original_bytes() -> None:
    # Odd spacing, key order, an unknown extension and number spellings survive: no re-serialising.
    value = (
        b'{ "id":"1", "zeta":1, "data": {"n": 1.50, '
        b'"big": 123456789012345678901234567890}, "x-ext": true }'
    )
    read = read_event(value, raw_payload=False, **KW)
    assert read.body is value
    assert read.event["id"] == "1"
    assert read.event["x-ext"] is True
    assert read.cloudevent_id == "1"


def test_any_json_object_is_accepted_even_without_cloudevent_fields() -> None:
    read = read_event(b'{"hello": "world"}', raw_payload=False, **KW)
    assert read.event == {"hello": "world"}
    assert read.cloudevent_id == ""


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"",
        b"[1, 2, 3]",
        b'"a string"',
        b"42",
        b"null",
        b'{"a": NaN}',
        b'{"a": 1',
        b"\xff\xfe",
    ],
)
def test_non_object_values_are_poison(value: bytes) -> None:
    with pytest.raises(CloudEventError, match="error deserializing cloud event"):
        read_event(value, raw_payload=False, **KW)


def test_values_orjson_refuses_but_go_accepts_are_read() -> None:
    # A number beyond double range and a lone surrogate: Go's decoder accepts both.
    read = read_event(b'{"id": "x", "a": 1e400, "s": "\\ud800"}', raw_payload=False, **KW)
    assert read.event["id"] == "x"
    assert read.event["a"] == float("inf")


def test_missing_trace_fields_are_filled_from_headers_without_touching_the_body() -> None:
    value = b'{"id": "1", "traceparent": "00-keep-01"}'
    headers = (
        ("traceparent", b"00-header-01"),
        ("tracestate", b"k=v"),
        ("traceid", None),
        ("other", b"x"),
    )
    read = read_event(value, raw_payload=False, headers=headers, **KW)
    assert read.event["traceparent"] == "00-keep-01"  # present in the event: kept
    assert read.event["tracestate"] == "k=v"
    assert read.event["traceid"] == ""
    assert "other" not in read.event
    assert read.body == value


def test_raw_payload_subscription_synthesises_a_cloudevent() -> None:
    value = b"\x00\x01binary"
    headers = (("traceparent", b"00-abc-01"), ("tracestate", b"s=1"))
    read = read_event(value, raw_payload=True, headers=headers, **KW)
    event = orjson.loads(read.body)
    assert event == read.event
    assert uuid.UUID(event["id"]).version == 4
    assert event["specversion"] == "1.0"
    assert event["datacontenttype"] == "application/octet-stream"
    assert event["source"] == "Dapr"
    assert event["type"] == "com.dapr.event.sent"
    assert event["topic"] == "orders"
    assert event["pubsubname"] == "pubsub"
    assert base64.b64decode(event["data_base64"]) == value
    assert event["traceparent"] == "00-abc-01"
    assert event["tracestate"] == "s=1"
    assert "traceid" not in event


def test_raw_payload_id_is_new_on_every_delivery() -> None:
    ids = {synthesise_raw(b"{}", **KW)["id"] for _ in range(5)}
    assert len(ids) == 5


def test_raw_payload_accepts_values_that_are_not_json() -> None:
    read = read_event(b"plain text", raw_payload=True, **KW)
    assert base64.b64decode(read.event["data_base64"]) == b"plain text"


NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("expiration", "is_expired"),
    [
        ("2026-01-02T03:04:04Z", True),
        ("2026-01-02T03:04:05Z", False),  # strictly before now
        ("2026-01-02T03:04:06Z", False),
        ("2026-01-02T04:04:04+01:00", True),  # offsets honoured
        ("2026-01-02T03:04:04.999Z", True),
        ("2020-01-01T00:00:00Z", True),
        ("2026-01-02T03:04:04", False),  # no zone: not RFC 3339, never expires (like Go)
        ("garbage", False),
        ("", False),
        (12345, False),
        (None, False),
    ],
)
def test_expired(expiration: object, is_expired: bool) -> None:
    event = {"id": "1"} if expiration is None else {"id": "1", "expiration": expiration}
    assert expired(event, NOW) is is_expired


def test_expiration_time_is_epoch_seconds() -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=30)
    text = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert expiration_time({"expiration": text}) == when.timestamp()


def test_value_nested_deeper_than_any_parser_goes_is_poison() -> None:
    """Found by trying to break it: 100,000 nested arrays made the fallback parser raise
    RecursionError, which is not a poison verdict (the record must go to the DLT, not crash)."""
    from tidings.sidecar.envelopes.reading import CloudEventError, read_event

    deep = b'{"id": "1", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(CloudEventError):
        read_event(deep, topic="t", pubsubname="p", raw_payload=False)
