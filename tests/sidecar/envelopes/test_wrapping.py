"""envelopes/wrapping.py: the envelope of §4.1, user CloudEvents (§4.2), TTL parsing (§1.2/§5.2)."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from tidings.sidecar.envelopes.wrapping import (
    MAX_TTL_S,
    CloudEventOverrides,
    InvalidCloudEvent,
    NotACloudEvent,
    dumps_exact,
    is_cloudevent_content_type,
    loads_exact,
    new_traceparent,
    replace_lone_surrogate_escapes,
    ttl_seconds,
    wrap,
    wrap_user_cloudevent,
)

TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")
NOW = datetime(2024, 5, 1, 12, 0, 0, 400000, tzinfo=UTC)
BIG = b"12345678901234567890123"
DECIMAL = b"0.1000000000000000055511151231257827"


def envelope(body: bytes, content_type: str | None = "application/json", **kw: object) -> dict:
    return orjson.loads(
        wrap(
            body,
            content_type=content_type,
            app_id="orders",
            topic="t",
            pubsubname="ps",
            now=NOW,
            **kw,
        )
    )  # type: ignore[arg-type]


def test_envelope_fields() -> None:
    event = envelope(b'{"a":1}')
    assert uuid.UUID(event["id"]).version == 4
    assert event["source"] == "orders"
    assert event["type"] == "com.dapr.event.sent"
    assert event["specversion"] == "1.0"
    assert event["datacontenttype"] == "application/json"
    assert event["topic"] == "t" and event["pubsubname"] == "ps"
    assert event["time"] == "2024-05-01T12:00:00Z"
    assert TRACEPARENT.fullmatch(event["traceparent"])
    assert event["traceid"] == event["traceparent"]
    assert event["tracestate"] == ""
    assert event["data"] == {"a": 1}
    assert "expiration" not in event and "subject" not in event


def test_ids_and_traceparents_are_fresh() -> None:
    assert len({envelope(b"x")["id"] for _ in range(200)}) == 200
    assert len({new_traceparent() for _ in range(200)}) == 200


def test_json_numbers_survive_byte_exact() -> None:
    body = b'{"big": ' + BIG + b', "dec": ' + DECIMAL + b"}"
    value = wrap(
        body, content_type="application/json; charset=utf-8", app_id="a", topic="t", pubsubname="p"
    )
    assert BIG in value and DECIMAL in value
    assert orjson.loads(value)["datacontenttype"] == "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("content_type", "body", "key", "expected"),
    [
        ("application/json", b'{"a": [1, 2]}', "data", {"a": [1, 2]}),
        ("application/json", b"1e400", "data", None),  # valid JSON orjson refuses: still spliced
        ("application/json", b"{not json", "data", "{not json"),
        ("application/json", b"", "data", ""),
        (
            "application/octet-stream",
            b"\x00\xff",
            "data_base64",
            base64.b64encode(b"\x00\xff").decode(),
        ),
        ("text/plain", b"hello", "data", "hello"),
        (None, b"hello", "data", "hello"),
        ("application/xml", b"<a/>", "data", "<a/>"),
        ("application/vnd.x+json", b'{"a":1}', "data", '{"a":1}'),
    ],
)
def test_data_rules(content_type: str | None, body: bytes, key: str, expected: object) -> None:
    raw = wrap(body, content_type=content_type, app_id="a", topic="t", pubsubname="p")
    if expected is None:
        assert b'"data":1e400' in raw
        return
    event = orjson.loads(raw)
    assert event[key] == expected
    assert event["datacontenttype"] == (content_type or "text/plain")
    other = "data" if key == "data_base64" else "data_base64"
    assert other not in event


def test_overrides() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event = envelope(
        b"x",
        overrides=CloudEventOverrides(
            id="my-id",
            source="src",
            type="my.type",
            subject="subj",
            traceid="ignored",
            traceparent=tp,
            tracestate="k=v",
        ),
    )
    assert (event["id"], event["source"], event["type"], event["subject"]) == (
        "my-id",
        "src",
        "my.type",
        "subj",
    )
    assert event["traceparent"] == event["traceid"] == tp  # traceparent wins over traceid
    assert event["tracestate"] == "k=v"
    assert envelope(b"x", overrides=CloudEventOverrides(traceid=tp))["traceparent"] == tp


def test_overrides_from_metadata_are_case_insensitive() -> None:
    o = CloudEventOverrides.from_metadata(
        {"cloudevent.ID": "1", "CloudEvent.Source": "s", "cloudevent.unknown": "x", "other": "y"}
    )
    assert (o.id, o.source, o.type) == ("1", "s", None)
    assert CloudEventOverrides.from_metadata({}) == CloudEventOverrides()


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, None),
        ({"ttlInSeconds": "30"}, 30.0),
        ({"ttl": "30"}, 30.0),
        ({"ttlInSeconds": "30s"}, 30.0),
        ({"ttlInSeconds": "1m30s"}, 90.0),
        ({"ttlInSeconds": "500ms"}, 0.5),
        ({"ttlInSeconds": "0"}, 0.0),  # a valid Go duration: expires at once (§9)
        ({"ttlInSeconds": "0s"}, 0.0),
        ({"ttlInSeconds": "-5"}, None),  # silently ignored
        ({"ttlInSeconds": "-5s"}, None),
        ({"ttlInSeconds": "abc"}, None),
        ({"ttlInSeconds": "1.5"}, None),
        ({"ttlInSeconds": "10", "ttl": "20"}, 10.0),
        # Values Go cannot hold (these used to raise OverflowError while building the envelope):
        ({"ttlInSeconds": "99999999999999999999999"}, None),  # beyond int64: ParseInt refuses it
        ({"ttlInSeconds": "9223372036854775807"}, MAX_TTL_S),  # int64, but seconds overflow: capped
        ({"ttlInSeconds": "99999999999999h"}, None),  # over Go's longest duration
        ({"ttlInSeconds": "inf"}, None),
        ({"ttlInSeconds": "nan"}, None),
        ({"ttlInSeconds": "1e400"}, None),
        ({"ttlInSeconds": "1_000"}, None),  # Python's float() takes it, Go does not
        ({"ttlInSeconds": "\u0663"}, None),  # an Arabic-Indic 3: int() takes it, Go does not
    ],
)
def test_ttl_parsing(metadata: dict[str, str], expected: float | None) -> None:
    assert ttl_seconds(metadata) == expected


def test_expiration_is_now_plus_ttl_in_utc() -> None:
    assert envelope(b"x", ttl_s=30.0)["expiration"] == "2024-05-01T12:00:30Z"
    assert envelope(b"x", ttl_s=0.0)["expiration"] == "2024-05-01T12:00:00Z"
    assert envelope(b"x", ttl_s=MAX_TTL_S)["expiration"] == "2316-08-11T11:47:17Z"
    assert "expiration" not in envelope(b"x", ttl_s=1e30)  # never an OverflowError
    assert "expiration" not in envelope(b"x", ttl_s=float("inf"))


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/cloudevents+json", True),
        ("application/cloudevents+json; charset=utf-8", True),
        ("Application/CloudEvents+JSON", True),
        ("application/json", False),
        (None, False),
    ],
)
def test_cloudevent_content_type(content_type: str | None, expected: bool) -> None:
    assert is_cloudevent_content_type(content_type) is expected


def user_ce(body: bytes, **kw: object) -> dict:
    return orjson.loads(wrap_user_cloudevent(body, topic="t", pubsubname="ps", now=NOW, **kw))  # type: ignore[arg-type]


def test_user_cloudevent_keeps_fields_and_fills_defaults() -> None:
    event = user_ce(b'{"id":"e1","myext":"v","data":{"x":1},"topic":"other","pubsubname":"o"}')
    assert event["id"] == "e1" and event["myext"] == "v" and event["data"] == {"x": 1}
    assert event["topic"] == "t" and event["pubsubname"] == "ps"  # overwritten
    assert event["source"] == "Dapr"  # not the app-id on this path (§4.2)
    assert event["type"] == "com.dapr.event.sent" and event["specversion"] == "1.0"
    assert event["time"] == "2024-05-01T12:00:00Z"
    assert TRACEPARENT.fullmatch(event["traceid"]) and event["traceparent"] == event["traceid"]
    assert event["tracestate"] == ""
    assert "expiration" not in event


def test_user_cloudevent_keeps_its_own_attributes() -> None:
    event = user_ce(
        b'{"id":"e1","source":"s","type":"ty","time":"2020-01-01T00:00:00Z",'
        b'"traceid":"tid","tracestate":"a=b"}',
        ttl_s=10.0,
    )
    assert (event["source"], event["type"], event["time"]) == ("s", "ty", "2020-01-01T00:00:00Z")
    assert event["traceid"] == "tid" and "traceparent" not in event  # traceid present: untouched
    assert event["tracestate"] == "a=b"
    assert event["expiration"] == "2024-05-01T12:00:10Z"  # TTL still applies


def test_user_cloudevent_numbers_survive_byte_exact() -> None:
    body = b'{"id":"1","data":{"big":' + BIG + b',"dec":' + DECIMAL + b',"small":7,"f":1.5}}'
    value = wrap_user_cloudevent(body, topic="t", pubsubname="p")
    assert b'"big":' + BIG in value and b'"dec":' + DECIMAL in value
    assert b'"small":7' in value and b'"f":1.5' in value


def test_user_cloudevent_without_id_is_rejected() -> None:
    # Stricter than Dapr, which neither generates nor requires an id (§9): the CloudEvents spec
    # requires it, so we refuse the event instead of sending an id-less one.
    with pytest.raises(InvalidCloudEvent, match="id"):
        wrap_user_cloudevent(b'{"data":1}', topic="t", pubsubname="p")
    with pytest.raises(InvalidCloudEvent, match="id"):
        wrap_user_cloudevent(b'{"id":""}', topic="t", pubsubname="p")
    with pytest.raises(InvalidCloudEvent, match="id"):
        wrap_user_cloudevent(b'{"id":7}', topic="t", pubsubname="p")


@pytest.mark.parametrize("body", [b"[1,2]", b'"s"', b"12", b"{bad", b"", b"NaN", b"\xff\xfe"])
def test_user_cloudevent_must_be_a_json_object(body: bytes) -> None:
    with pytest.raises(NotACloudEvent):
        wrap_user_cloudevent(body, topic="t", pubsubname="p")


def test_loads_exact_round_trips() -> None:
    text = b'{"a":[' + BIG + b"," + DECIMAL + b',-3,-0,0,true,null,"s"]}'
    assert orjson.dumps(loads_exact(text)) == text


def nested_list(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_loads_exact_refuses_json_nested_too_deeply() -> None:
    # json.loads raised RecursionError (not a ValueError): the API answered ERR_INTERNAL.
    with pytest.raises(ValueError, match="nested too deeply"):
        loads_exact(nested_list(100_000))
    with pytest.raises(NotACloudEvent):
        wrap_user_cloudevent(nested_list(100_000), topic="t", pubsubname="p")


def test_dumps_exact_writes_what_orjson_cannot() -> None:
    value = loads_exact(b'{"n":[' + BIG + b"," + DECIMAL + b'],"d":' + nested_list(600) + b"}")
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(value)  # deeper than orjson writes (254)
    assert dumps_exact(value) == (
        b'{"n":[' + BIG + b"," + DECIMAL + b'],"d":' + nested_list(600) + b"}"
    )
    assert dumps_exact({"s": "a\udc80b", "t": ("x", {})}) == (
        '{"s":"a\ufffdb","t":["x",{}]}'.encode()
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'"a\\ud800b"', b'"a\\ufffdb"'),  # lone high surrogate
        (b'"\\uDC00"', b'"\\ufffd"'),  # lone low surrogate
        (b'"\\ud83d\\ude00"', b'"\\ud83d\\ude00"'),  # a valid pair is kept
        (b'"\\\\ud800"', b'"\\\\ud800"'),  # an escaped backslash, then text
        (b'"\\u00e9"', b'"\\u00e9"'),
    ],
)
def test_replace_lone_surrogate_escapes(text: bytes, expected: bytes) -> None:
    assert replace_lone_surrogate_escapes(text) == expected


def test_user_cloudevent_with_lone_surrogate_and_deep_data() -> None:
    body = b'{"id":"1","source":"s","x":"\\ud800","data":' + nested_list(300) + b"}"
    event = orjson.loads(wrap_user_cloudevent(body, topic="t", pubsubname="p"))
    assert event["x"] == "\ufffd" and event["data"] == orjson.loads(nested_list(300))


@pytest.mark.parametrize(
    ("depth", "as_json"), [(300, True), (1023, True), (1024, False), (100_000, False)]
)
def test_json_data_nesting(depth: int, as_json: bool) -> None:
    # The subscriber reads the envelope with orjson (1024 levels at most), one level more than
    # the data: deeper data travels as a string (§4.1: JSON that does not parse).
    body = nested_list(depth)
    value = wrap(body, content_type="application/json", app_id="a", topic="t", pubsubname="p")
    event = orjson.loads(value)  # readable by the subscriber, whatever the depth
    if as_json:
        assert b'"data":' + body in value
    else:
        assert event["data"] == body.decode()


def test_json_data_with_lone_surrogate_is_json_with_replacement() -> None:
    assert envelope(b'{"k":"a\\ud800"}')["data"] == {"k": "a\ufffd"}
