"""Tests of ``envelopes/topic_event.py``: the ``TopicEventRequest`` both gRPC deliveries send (the
gRPC app channel's ``OnTopicEvent`` and a streaming subscription's ``event_message``). Pure
functions, fed with what ``envelopes.reading.read_event`` makes of a record value.

End to end over real gRPC: ``delivery/channel/test_grpc.py`` (app channel),
``inbound/grpc/test_api.py`` (streams), ``tests/integration/test_grpc_app.py`` (an SDK app behind a
sidecar process).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from tidings.sidecar.envelopes.reading import ReadEvent, read_event
from tidings.sidecar.envelopes.topic_event import (
    EnvelopeDataError,
    event_data,
    topic_event_request,
)

BIG = 2**70  # beyond 64 bits: orjson reads it as a double


def read(
    value: bytes | dict[str, Any],
    *,
    raw_payload: bool = False,
    headers: list[tuple[str, bytes | None]] | None = None,
) -> ReadEvent:
    body = value if isinstance(value, bytes) else orjson.dumps(value)
    return read_event(
        body, topic="orders", pubsubname="pubsub", raw_payload=raw_payload, headers=headers or ()
    )


# --- data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {"datacontenttype": "application/json", "data": {"a": 1, "b": [True, None]}},
            b'{"a":1,"b":[true,null]}',
        ),
        ({"datacontenttype": "application/json; charset=utf-8", "data": "hello"}, b'"hello"'),
        ({"datacontenttype": "application/json", "data": '"quoted"'}, b'"\\"quoted\\""'),
        ({"datacontenttype": "application/cloudevents+json", "data": {"x": 1}}, b'{"x":1}'),
        ({"datacontenttype": "application/vnd.api+json", "data": [1, 2]}, b"[1,2]"),
        # No content type: CloudEvents' JSON format implies application/json.
        ({"data": {"implied": "json"}}, b'{"implied":"json"}'),
        ({"data": "implied"}, b'"implied"'),
        ({"datacontenttype": "text/plain", "data": "grüße"}, "grüße".encode()),
        ({"datacontenttype": "Text/CSV", "data": "a,b"}, b"a,b"),
        ({"datacontenttype": "application/xml", "data": "<a/>"}, b"<a/>"),
        (
            {
                "datacontenttype": "application/octet-stream",
                "data_base64": base64.b64encode(b"\x00\xffbin").decode(),
            },
            b"\x00\xffbin",
        ),
        ({"datacontenttype": "application/octet-stream", "data_base64": "AAH+"}, b"\x00\x01\xfe"),
        ({"datacontenttype": "application/x-custom", "data": "as is"}, b"as is"),
        ({"datacontenttype": "application/x-custom", "data": {"as": "json"}}, b'{"as":"json"}'),
        ({"datacontenttype": "application/json"}, b""),
        ({"datacontenttype": "application/json", "data": None}, b""),
        ({"data": None}, b""),
    ],
    ids=[
        "json",
        "json-string",
        "json-quoted-string",
        "cloudevents-json",
        "plus-json",
        "implied-json",
        "implied-json-string",
        "text",
        "text-uppercase",
        "xml",
        "base64",
        "base64-short",
        "other-string",
        "other-object",
        "json-absent",
        "json-null",
        "no-data",
    ],
)
def test_event_data(event: dict[str, Any], expected: bytes) -> None:
    assert event_data(read(event)) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"n":1.10}', b'{"n":1.10}'),
        (b'{"big":%d}' % BIG, b'{"big":%d}' % BIG),
        (b'{"neg":-%d}' % BIG, b'{"neg":-%d}' % BIG),
        (b"%d" % BIG, b"%d" % BIG),
        (b"[1e2, 2.50E-3, -0, 0, 7]", b"[1e2,2.50E-3,-0,0,7]"),
        (
            b'{"d":0.1000000000000000055511151231257827,"k":{"deep":[3.0]}}',
            b'{"d":0.1000000000000000055511151231257827,"k":{"deep":[3.0]}}',
        ),
        (
            b'{"u64":18446744073709551615,"i":-9223372036854775808}',
            b'{"u64":18446744073709551615,"i":-9223372036854775808}',
        ),
        (b'{"zero":0}', b'{"zero":0}'),  # "-0" elsewhere in the body (the time) changes nothing
    ],
    ids=[
        "decimal",
        "big",
        "negative-big",
        "top-level-big",
        "exponents-and-zeros",
        "long-decimal",
        "64-bit-limits",
        "zero",
    ],
)
@pytest.mark.parametrize("content_type", ["application/json", "application/x-custom", None])
def test_json_data_keeps_every_number_as_written(
    data: bytes, expected: bytes, content_type: str | None
) -> None:
    ct = b"" if content_type is None else b'"datacontenttype":"%s",' % content_type.encode()
    body = (
        b'{"specversion":"1.0","id":"e","source":"s","type":"t",'
        b'"time":"2024-01-02T03:04:05-01:00",' + ct + b'"data": ' + data + b"}"
    )
    assert event_data(read(body)) == expected


def test_big_numbers_read_by_the_json_fallback_keep_their_text() -> None:
    # 1e400 is beyond a double: orjson refuses the body, reading.py falls back to json, whose
    # integers are Python ints (orjson cannot write those beyond 64 bits).
    body = (
        b'{"id":"e","datacontenttype":"application/json","other":1e400,'
        b'"data":{"big":%d,"n":1.10}}' % BIG
    )
    assert event_data(read(body)) == b'{"big":%d,"n":1.10}' % BIG


def test_lone_surrogates_become_replacement_characters_as_in_go() -> None:
    body = (
        b'{"id":"e\\ud800","datacontenttype":"text/plain","data":"a\\udc00b",'
        b'"ext\\ud800":"x\\udfff","other":1e400}'
    )
    request = topic_event_request(read(body), topic="t", pubsubname="p", path="")
    assert request.data == "a\ufffdb".encode()
    assert request.id == "e\ufffd"
    assert dict(request.extensions)["ext\ufffd"] == "x\ufffd"
    json_body = b'{"id":"e","datacontenttype":"application/json","data":["a\\ud800"],"o":1e400}'
    assert event_data(read(json_body)) == '["a\ufffd"]'.encode()


@pytest.mark.parametrize(
    "event",
    [
        {"datacontenttype": "text/plain", "data": {"not": "a string"}},
        {"datacontenttype": "application/xml", "data": 7},
        {"datacontenttype": "application/octet-stream", "data_base64": "!!not base64!!"},
        {"datacontenttype": "application/octet-stream", "data_base64": 12},
    ],
)
def test_data_that_cannot_be_carried_is_an_envelope_error(event: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeDataError):
        event_data(read(event))


# --- the request ---------------------------------------------------------------------------------


def test_topic_event_request_fields_and_extensions() -> None:
    body = (
        b'{"specversion":"1.0","id":"e-1","source":"orders-app","type":"order.created",'
        b'"datacontenttype":"application/json","data":{"n":1.10},"topic":"published-to",'
        b'"pubsubname":"pubsub","traceparent":"00-abc-def-01","custom":{"deep":[1,"x"]},'
        b'"time":"2024-01-01T00:00:00Z","big":%d}' % BIG
    )
    request = topic_event_request(read(body), topic="orders", pubsubname="kafka", path="widgets")
    assert (request.id, request.source, request.type, request.spec_version) == (
        "e-1",
        "orders-app",
        "order.created",
        "1.0",
    )
    assert request.data_content_type == "application/json"
    assert request.data == b'{"n":1.10}'
    # The fields say where the record was delivered from, the attributes what was published.
    assert (request.topic, request.pubsub_name, request.path) == ("orders", "kafka", "widgets")
    extensions = dict(request.extensions)
    # As in Dapr: topic and pubsubname stay in the extensions (see _OWN_FIELDS).
    assert set(extensions) == {"topic", "pubsubname", "traceparent", "custom", "time", "big"}
    assert (extensions["topic"], extensions["pubsubname"]) == ("published-to", "pubsub")
    assert extensions["traceparent"] == "00-abc-def-01"
    assert extensions["custom"]["deep"][1] == "x"
    assert extensions["big"] == float(BIG)  # a Struct number is a double, in Dapr too


def test_non_string_attributes_become_empty_like_dapr() -> None:
    request = topic_event_request(
        read({"id": 7, "source": None, "type": ["x"], "data": "x"}),
        topic="t",
        pubsubname="p",
        path="",
    )
    assert (request.id, request.source, request.type) == ("", "", "")
    assert not {"id", "source", "type"} & set(request.extensions)


def test_trace_fields_taken_from_record_headers_are_extensions() -> None:
    # read.event gets them from the headers; read.body (the record value) does not have them.
    readout = read(
        {"id": "e", "data": {"n": 1}},
        headers=[("traceparent", b"00-11-22-01"), ("tracestate", b"k=v")],
    )
    request = topic_event_request(readout, topic="t", pubsubname="p", path="")
    assert dict(request.extensions) == {"traceparent": "00-11-22-01", "tracestate": "k=v"}


def test_raw_payload_event_carries_the_original_bytes() -> None:
    readout = read(b"\x00not json", raw_payload=True)
    request = topic_event_request(readout, topic="orders", pubsubname="pubsub", path="")
    assert request.data == b"\x00not json"
    assert request.data_content_type == "application/octet-stream"
    assert request.id == readout.event["id"] and request.source == "Dapr"
    assert set(request.extensions) == {"topic", "pubsubname"}
