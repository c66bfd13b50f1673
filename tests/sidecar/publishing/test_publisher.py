"""publishing/publisher.py: the Publisher over a real in-memory broker (§1.2 matrix at the Python
level, bulk entries, dead-letter; the dead-letter row for a Kafka topic name uses the real Tansu
broker). The HTTP rows are in inbound/http/test_api.py."""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
import pytest

from tidings.sidecar.brokers.base import Broker, BrokerError, Record
from tidings.sidecar.brokers.kafka import KafkaBroker
from tidings.sidecar.brokers.memory import MemoryBroker
from tidings.sidecar.errors import DaprError
from tidings.sidecar.publishing.publisher import (
    BulkEntry,
    Publisher,
    event_bytes,
    parse_bool,
    partition_number,
)
from tidings.sidecar.resources.loading import LoadedComponent, check_component
from tidings.sidecar.resources.models import Component


def component(name: str, ctype: str = "pubsub.in-memory", **metadata: str) -> LoadedComponent:
    return check_component(
        Component.model_validate(
            {
                "apiVersion": "dapr.io/v1alpha1",
                "kind": "Component",
                "metadata": {"name": name},
                "spec": {
                    "type": ctype,
                    "version": "v1",
                    "metadata": [{"name": k, "value": v} for k, v in metadata.items()],
                },
            }
        ),
        app_id="app",
        source="test",
    )


class FailingBroker(MemoryBroker):
    """A broker that refuses every record: stands in for a broker outage at this level (the real
    outage, a Kafka component on a closed port, is tested over HTTP in test_api.py)."""

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        raise BrokerError("broker down", retriable=True)

    async def publish_many(self, records):  # type: ignore[no-untyped-def]
        return [BrokerError("broker down") if i % 2 else None for i, _ in enumerate(records)]


async def make(**metadata: str) -> tuple[Publisher, MemoryBroker]:
    broker = MemoryBroker("mem")
    await broker.start()
    brokers: dict[str, Broker] = {"mem": broker}
    return Publisher(
        app_id="app", brokers=brokers, components={"mem": component("mem", **metadata)}
    ), broker


def records(broker: MemoryBroker, topic: str) -> list[Record]:
    return list(broker._topics[topic].log) if topic in broker._topics else []


async def error_of(coro) -> DaprError:  # type: ignore[no-untyped-def]
    with pytest.raises(DaprError) as info:
        await coro
    return info.value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("t", True),
        ("T", True),
        ("TRUE", True),
        ("true", True),
        ("True", True),
        ("0", False),
        ("f", False),
        ("F", False),
        ("FALSE", False),
        ("false", False),
        ("False", False),
    ],
)
def test_parse_bool_is_go_parsebool(value: str, expected: bool) -> None:
    assert parse_bool(value) is expected


@pytest.mark.parametrize("value", ["yes", "tRUE", "2", " true"])
def test_parse_bool_refuses_others(value: str) -> None:
    with pytest.raises(ValueError):
        parse_bool(value)


async def test_publish_wraps_and_maps_key_and_headers() -> None:
    publisher, broker = await make()
    await publisher.publish(
        "mem",
        "t",
        b'{"a":1}',
        content_type="application/json",
        metadata={"partitionKey": "k", "custom": "v", "cloudevent.id": "i"},
    )
    [record] = records(broker, "t")
    assert record.key == b"k"
    event = orjson.loads(record.value)
    assert record.headers == (
        ("custom", b"v"),
        ("cloudevent.id", b"i"),
        ("traceparent", event["traceparent"].encode()),
    )
    assert event["id"] == "i" and event["data"] == {"a": 1} and event["source"] == "app"


async def test_dunder_key_is_the_record_key() -> None:
    publisher, broker = await make()
    await publisher.publish("mem", "t", b"x", content_type=None, metadata={"__key": "k2"})
    assert records(broker, "t")[0].key == b"k2"
    assert [name for name, _ in records(broker, "t")[0].headers] == ["traceparent"]


async def test_raw_payload_is_untouched() -> None:
    publisher, broker = await make()
    await publisher.publish(
        "mem",
        "t",
        b"\x00raw",
        content_type="application/json",
        metadata={"rawPayload": "true", "ttlInSeconds": "5"},
    )
    assert records(broker, "t")[0].value == b"\x00raw"


async def test_error_rows() -> None:
    publisher, _ = await make()
    e = await error_of(publisher.publish("", "t", b"", content_type=None, metadata={}))
    assert (e.status, e.error_code, e.reason) == (404, "ERR_PUBSUB_EMPTY", "DAPR_PUBSUB_NAME_EMPTY")
    e = await error_of(publisher.publish("nope", "t", b"", content_type=None, metadata={"m": "1"}))
    assert (e.status, e.error_code, e.message) == (
        404,
        "ERR_PUBSUB_NOT_FOUND",
        "pubsub nope is not found",
    )
    assert e.resource is None and e.metadata == {"m": "1"}
    e = await error_of(publisher.publish("mem", "", b"", content_type=None, metadata={}))
    assert (e.status, e.error_code, e.message) == (
        404,
        "ERR_TOPIC_NAME_EMPTY",
        "topic is empty in pubsub mem",
    )
    e = await error_of(
        publisher.publish("mem", "t", b"", content_type=None, metadata={"rawPayload": "yes"})
    )
    assert (e.status, e.error_code) == (400, "ERR_PUBSUB_REQUEST_METADATA")
    assert e.message == (
        "failed deserializing metadata. Error: rawPayload value must be a valid "
        "boolean: actual is 'yes'"
    )
    e = await error_of(
        publisher.publish(
            "mem", "t", b"[1]", metadata={}, content_type="application/cloudevents+json"
        )
    )
    assert (e.status, e.error_code, e.message) == (
        400,
        "ERR_PUBSUB_CLOUD_EVENTS_SER",
        "cannot create cloudevent",
    )
    empty = Publisher(app_id="app", brokers={}, components={})
    e = await error_of(empty.publish("mem", "t", b"", content_type=None, metadata={}))
    assert (e.status, e.error_code, e.message) == (
        400,
        "ERR_PUBSUB_NOT_CONFIGURED",
        "pubsub mem is not configured",
    )


async def test_component_without_broker_is_the_race_row() -> None:
    publisher = Publisher(app_id="app", brokers={}, components={"mem": component("mem")})
    e = await error_of(publisher.publish("mem", "t", b"", content_type=None, metadata={}))
    assert (e.status, e.error_code, e.reason, e.message) == (
        400,
        "ERR_PUBSUB_NOT_FOUND",
        "DAPR_PUBSUB_TEST_NOT_FOUND",
        "pubsub 'mem' not found",
    )


async def test_forbidden_topic() -> None:
    publisher, broker = await make(publishingScopes="app=allowed")
    e = await error_of(publisher.publish("mem", "other", b"", content_type=None, metadata={}))
    assert (e.status, e.error_code, e.message) == (
        403,
        "ERR_PUBSUB_FORBIDDEN",
        "topic other is not allowed for app id app",
    )
    await publisher.publish("mem", "allowed", b"", content_type=None, metadata={})
    assert len(records(broker, "allowed")) == 1 and not records(broker, "other")


async def test_broker_failure_is_500_and_not_success() -> None:
    broker = FailingBroker("mem")
    await broker.start()
    publisher = Publisher(
        app_id="app", brokers={"mem": broker}, components={"mem": component("mem")}
    )
    e = await error_of(publisher.publish("mem", "t", b"x", content_type=None, metadata={}))
    assert (e.status, e.error_code, e.reason) == (
        500,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        "DAPR_PUBSUB_PUBLISH_MESSAGE",
    )
    assert e.message == "error when publishing to topic t in pubsub mem: broker down"

    assert e.metadata == {"topic": "t", "error": "broker down"}


class RefusingBroker(MemoryBroker):
    """Refuses every record as too large or as a request it can never store (stands in for the
    Kafka producer's MessageSizeTooLargeError and topic checks, tested in test_producing.py)."""

    refused = "size"

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        raise BrokerError("no", refused=self.refused)


async def test_a_request_the_broker_can_never_store_is_not_a_500() -> None:
    """Regression (issue 5, publish fuzz): a topic name Kafka cannot hold answered 500, which
    reads as an outage; the caller's mistake is 400, a record over the size limit 413."""
    broker = RefusingBroker("mem")
    await broker.start()
    publisher = Publisher(
        app_id="app", brokers={"mem": broker}, components={"mem": component("mem")}
    )
    e = await error_of(publisher.publish("mem", "t", b"x", content_type=None, metadata={}))
    assert (e.status, e.error_code) == (413, "ERR_PUBSUB_PUBLISH_MESSAGE")
    broker.refused = "request"
    e = await error_of(publisher.publish("mem", "t", b"x", content_type=None, metadata={}))
    assert (e.status, e.error_code) == (400, "ERR_PUBSUB_PUBLISH_MESSAGE")


@pytest.mark.parametrize(
    ("event", "content_type", "expected"),
    [
        ("aGk=", "application/octet-stream", b"hi"),
        ("hi", "text/plain", b"hi"),
        ("<a/>", "application/xml", b"<a/>"),
        ({"a": 1}, "application/json", b'{"a":1}'),
        ([1], "application/cloudevents+json", b"[1]"),
    ],
)
def test_event_bytes(event: object, content_type: str, expected: bytes) -> None:
    assert event_bytes(event, content_type) == expected


@pytest.mark.parametrize(
    ("event", "content_type"),
    [
        ({"a": 1}, "text/plain"),
        (1, "application/octet-stream"),
        ("!!", "application/octet-stream"),
        ("x", ""),
        ("x", "image/png"),
    ],
)
def test_event_bytes_mismatch(event: object, content_type: str) -> None:
    with pytest.raises(ValueError):
        event_bytes(event, content_type)


async def test_bulk_publish_metadata_precedence() -> None:
    publisher, broker = await make()
    failures = await publisher.publish_bulk(
        "mem",
        "t",
        [
            BulkEntry("1", {"n": 1}, "application/json", {"cloudevent.id": "own", "h": "entry"}),
            BulkEntry("2", "two", "text/plain"),
        ],
        {"ttlInSeconds": "60", "h": "request"},
    )
    assert failures == []
    first, second = records(broker, "t")
    e1, e2 = orjson.loads(first.value), orjson.loads(second.value)
    assert e1["id"] == "own" and e1["data"] == {"n": 1}
    assert dict(first.headers)["h"] == b"entry"  # entry metadata wins (pinned, §9)
    assert "expiration" in e1 and "expiration" in e2  # request TTL applies to every entry
    assert e2["data"] == "two" and e1["id"] != e2["id"]


async def test_bulk_publish_rows() -> None:
    publisher, _ = await make(publishingScopes="app=t")
    e = await error_of(
        publisher.publish_bulk(
            "mem", "t", [BulkEntry("1", "a", "text/plain"), BulkEntry("1", "b", "text/plain")], {}
        )
    )
    assert (e.status, e.error_code) == (400, "ERR_PUBSUB_EVENTS_SER")
    assert "entryId is duplicated or not present for entry" in e.message
    e = await error_of(publisher.publish_bulk("mem", "t", [BulkEntry("", "a", "text/plain")], {}))
    assert e.status == 400
    e = await error_of(publisher.publish_bulk("mem", "t", [BulkEntry("1", "a", "")], {}))
    assert (e.status, e.error_code) == (400, "ERR_PUBSUB_EVENTS_SER")
    e = await error_of(publisher.publish_bulk("mem", "x", [BulkEntry("1", "a", "text/plain")], {}))
    assert e.status == 403


async def test_bulk_publish_returns_failed_entries() -> None:
    broker = FailingBroker("mem")
    await broker.start()
    publisher = Publisher(
        app_id="app", brokers={"mem": broker}, components={"mem": component("mem")}
    )
    failures = await publisher.publish_bulk(
        "mem", "t", [BulkEntry(str(i), "x", "text/plain") for i in range(4)], {}
    )
    assert [(f.entry_id, f.error) for f in failures] == [("1", "broker down"), ("3", "broker down")]


async def test_dead_letter_produces_the_original_record() -> None:
    publisher, broker = await make(publishingScopes="app=dlq")
    original = Record(
        topic="t", partition=2, offset=7, key=b"k", value=b"\x01orig", headers=(("h", b"v"),)
    )
    await publisher.dead_letter("mem", "dlq", original)
    [record] = records(broker, "dlq")
    assert (record.key, record.value, record.headers) == (b"k", b"\x01orig", (("h", b"v"),))
    e = await error_of(publisher.dead_letter("mem", "other", original))
    assert e.status == 403
    missing = Publisher(app_id="app", brokers={}, components={"mem": component("mem")})
    with pytest.raises(BrokerError) as info:
        await missing.dead_letter("mem", "dlq", original)
    assert info.value.retriable


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("0", 0), ("2", 2), ("+3", 3), ("2147483647", 2147483647)],
)
def test_partition_number(value: str | None, expected: int | None) -> None:
    metadata = {} if value is None else {"partitionNumber": value}
    assert partition_number(metadata) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x", "partitionNumber must be a non-negative integer: actual is 'x'"),
        ("-1", "partitionNumber must be a non-negative integer: actual is '-1'"),
        (" 1", "partitionNumber must be a non-negative integer: actual is ' 1'"),
        ("\u0663", "partitionNumber must be a non-negative integer: actual is '\u0663'"),
        ("2147483648", "partition number 2147483648 is out of range"),
    ],
)
def test_bad_partition_number(value: str, message: str) -> None:
    with pytest.raises(BrokerError) as info:
        partition_number({"partitionNumber": value})
    assert str(info.value) == message and not info.value.retriable


async def test_partition_number_is_not_a_header_and_bad_ones_are_publish_errors() -> None:
    publisher, broker = await make()
    await publisher.publish(
        "mem", "t", b"x", content_type=None, metadata={"partitionNumber": "0", "h": "v"}
    )
    assert records(broker, "t")[0].headers[0] == ("h", b"v")
    assert [name for name, _ in records(broker, "t")[0].headers[1:]] == ["traceparent"]
    e = await error_of(
        publisher.publish("mem", "t", b"x", content_type=None, metadata={"partitionNumber": "-1"})
    )
    assert (e.status, e.error_code) == (400, "ERR_PUBSUB_PUBLISH_MESSAGE")  # Dapr: 500
    assert e.message == (
        "error when publishing to topic t in pubsub mem: partitionNumber must be "
        "a non-negative integer: actual is '-1'"
    )
    failures = await publisher.publish_bulk(
        "mem",
        "t",
        [
            BulkEntry("1", "a", "text/plain", {"partitionNumber": "nope"}),
            BulkEntry("2", "b", "text/plain"),
        ],
        {},
    )
    assert [f.entry_id for f in failures] == ["1"]
    assert [orjson.loads(r.value)["data"] for r in records(broker, "t")[1:]] == ["b"]


async def test_bulk_entry_metadata_is_validated_like_the_request() -> None:
    publisher, broker = await make()
    e = await error_of(
        publisher.publish_bulk(
            "mem",
            "t",
            [
                BulkEntry("1", "a", "text/plain"),
                BulkEntry("2", "b", "text/plain", {"rawPayload": "maybe"}),
            ],
            {},
        )
    )
    assert (e.status, e.error_code, e.reason) == (
        400,
        "ERR_PUBSUB_REQUEST_METADATA",
        "DAPR_PUBSUB_METADATA_DESERIALIZATION",
    )
    assert not records(broker, "t")


async def test_bulk_event_nested_deeper_than_orjson_writes() -> None:
    publisher, broker = await make()
    nested: list = []
    for _ in range(400):
        nested = [nested]
    assert (
        await publisher.publish_bulk("mem", "t", [BulkEntry("1", nested, "application/json")], {})
        == []
    )
    assert orjson.loads(records(broker, "t")[0].value)["data"] == nested


async def test_dead_letter_to_a_topic_kafka_cannot_hold_fails_at_once(kafka_bootstrap: str) -> None:
    kafka = component("kafka", "pubsub.kafka", brokers=kafka_bootstrap, authType="none")
    broker = KafkaBroker(kafka, app_id="app")
    await broker.start()
    publisher = Publisher(app_id="app", brokers={"kafka": broker}, components={"kafka": kafka})
    original = Record(topic="t", partition=0, offset=1, key=None, value=b"v")
    try:
        t0 = time.monotonic()
        with pytest.raises(BrokerError, match='topic "dead/letters" is not a valid Kafka') as info:
            await publisher.dead_letter("kafka", "dead/letters", original)
        assert not info.value.retriable and time.monotonic() - t0 < 2
    finally:
        await broker.close(grace_s=0)
