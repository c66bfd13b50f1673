"""tracing.py and the trace context of a publish: request headers → CloudEvent → record headers
(the delivery side is in delivery/test_engine.py and, end to end with spans, in
tests/integration/test_observability.py)."""

from __future__ import annotations

import orjson
import pytest

from tidings.sidecar.brokers.memory import MemoryBroker
from tidings.sidecar.publishing.publisher import Publisher
from tidings.sidecar.runtime import tracing
from tidings.sidecar.runtime.tracing import valid_traceparent

from ..publishing.test_publisher import component, records

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (TRACEPARENT, True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", True),  # later version
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),  # upper case
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", False),
        ("garbage", False),
        ("", False),
        (None, False),
    ],
)
def test_valid_traceparent(value: str | None, valid: bool) -> None:
    assert valid_traceparent(value) is valid


async def publisher() -> tuple[Publisher, MemoryBroker]:
    broker = MemoryBroker("mem")
    await broker.start()
    return Publisher(
        app_id="app", brokers={"mem": broker}, components={"mem": component("mem")}
    ), broker


async def test_the_callers_trace_context_reaches_event_and_record() -> None:
    assert not tracing.enabled()  # no OTEL_EXPORTER_OTLP_ENDPOINT in the tests' environment
    pub, broker = await publisher()
    await pub.publish(
        "mem",
        "t",
        b"{}",
        content_type="application/json",
        metadata={},
        traceparent=TRACEPARENT,
        tracestate="vendor=1",
    )
    [record] = records(broker, "t")
    event = orjson.loads(record.value)
    assert (event["traceparent"], event["traceid"], event["tracestate"]) == (
        TRACEPARENT,
        TRACEPARENT,
        "vendor=1",
    )
    assert dict(record.headers) == {"traceparent": TRACEPARENT.encode(), "tracestate": b"vendor=1"}


async def test_an_invalid_traceparent_starts_a_new_trace() -> None:
    pub, broker = await publisher()
    await pub.publish(
        "mem",
        "t",
        b"x",
        content_type=None,
        metadata={},
        traceparent="00-zz-yy-01",
        tracestate="dropped=1",
    )
    [record] = records(broker, "t")
    event = orjson.loads(record.value)
    assert valid_traceparent(event["traceparent"]) and "zz" not in event["traceparent"]
    assert event["tracestate"] == ""
    assert dict(record.headers) == {"traceparent": event["traceparent"].encode()}


async def test_the_event_keeps_its_own_and_overridden_trace_context() -> None:
    pub, broker = await publisher()
    own = "00-11111111111111111111111111111111-2222222222222222-01"
    await pub.publish(
        "mem",
        "t",
        orjson.dumps(
            {
                "id": "1",
                "source": "s",
                "type": "t",
                "specversion": "1.0",
                "traceid": own,
                "traceparent": own,
            }
        ),
        content_type="application/cloudevents+json",
        metadata={},
        traceparent=TRACEPARENT,
    )
    await pub.publish(
        "mem",
        "t",
        b"{}",
        content_type="application/json",
        metadata={"cloudevent.traceparent": own},
        traceparent=TRACEPARENT,
    )
    first, second = (orjson.loads(r.value) for r in records(broker, "t"))
    assert first["traceparent"] == own and second["traceparent"] == own  # as in Dapr


async def test_a_user_cloudevent_without_trace_fields_gets_the_callers() -> None:
    pub, broker = await publisher()
    await pub.publish(
        "mem",
        "t",
        orjson.dumps({"id": "1", "source": "s", "type": "t", "specversion": "1.0"}),
        content_type="application/cloudevents+json",
        metadata={},
        traceparent=TRACEPARENT,
        tracestate="v=1",
    )
    [record] = records(broker, "t")
    event = orjson.loads(record.value)
    assert (event["traceparent"], event["traceid"], event["tracestate"]) == (
        TRACEPARENT,
        TRACEPARENT,
        "v=1",
    )


def test_configure_without_an_endpoint_exports_nothing() -> None:
    assert tracing.configure("app", environ={}) is False
    assert not tracing.enabled()
    assert tracing.start_publish(TRACEPARENT, "k=v", system="kafka", topic="t") == (
        TRACEPARENT,
        "k=v",
        None,
    )
    headers = {"traceparent": TRACEPARENT}
    assert (
        tracing.start_delivery(
            headers, app_id="a", pubsubname="p", topic="t", partition=0, offset=1
        )
        is None
    )
    assert headers == {"traceparent": TRACEPARENT}


async def test_bulk_entries_carry_the_requests_trace_context() -> None:
    from tidings.sidecar.publishing.publisher import BulkEntry

    pub, broker = await publisher()
    entries = [BulkEntry("1", {"n": 1}, "application/json"), BulkEntry("2", "text", "text/plain")]
    assert (
        await pub.publish_bulk("mem", "t", entries, {}, traceparent=TRACEPARENT, tracestate="v=1")
        == []
    )
    for record in records(broker, "t"):
        assert orjson.loads(record.value)["traceparent"] == TRACEPARENT
        assert dict(record.headers) == {"traceparent": TRACEPARENT.encode(), "tracestate": b"v=1"}
