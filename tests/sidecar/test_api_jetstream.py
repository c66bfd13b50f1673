"""The publish suite of ``test_api.py`` that applies to every broker, on the real NATS JetStream:
the same HTTP requests, read back from the stream with plain nats-py. What JetStream cannot do
(``partitionNumber``) is a clear publish error, tested here too. (The Redis branch has the same
suite parametrised over Kafka and Redis in ``test_api_brokers.py``; these cases fold into it.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import orjson
import pytest

from tidings.sidecar.brokers.base import Broker
from tidings.sidecar.brokers.jetstream import KEY_HEADER, JetStreamBroker
from tidings.sidecar.brokers.memory import MemoryBroker

from .test_api import BIG, DECIMAL, Api, component, dapr_error, start_api


@dataclass(frozen=True)
class Stored:
    """One stored message: value, key and metadata headers."""

    value: bytes
    key: bytes | None
    headers: dict[str, bytes]


@dataclass
class Target:
    api: Api
    prefix: str
    stream: str
    nats_url: str

    async def read(self, subject: str, n: int) -> list[Stored]:
        """Up to ``n`` messages of ``subject`` in stream order, through an ephemeral pull
        consumer (as a subscriber reads them); JetStream's own headers are left out."""
        nc = await nats.connect(self.nats_url)
        try:
            sub = await nc.jetstream().pull_subscribe(subject, stream=self.stream)
            out: list[Stored] = []
            for msg in await sub.fetch(n, timeout=5):
                headers = {k: v.encode() for k, v in (msg.headers or {}).items()
                           if not k.startswith("Nats-") and k != KEY_HEADER}
                key = (msg.headers or {}).get(KEY_HEADER)
                out.append(Stored(msg.data, key.encode() if key is not None else None,
                                  headers))
            return out
        finally:
            await nc.close()


@pytest.fixture
async def target(nats_url: str, jetstream_stream: tuple[str, str]) -> AsyncIterator[Target]:
    stream, prefix = jetstream_stream
    memory = MemoryBroker("mem")
    await memory.start()
    loaded = component("bus", "pubsub.jetstream", natsURL=nats_url, streamName=stream)
    broker = JetStreamBroker(loaded, app_id="orders")
    await broker.start()
    components = {"mem": component("mem", "pubsub.in-memory"), "bus": loaded}
    brokers: dict[str, Broker] = {"mem": memory, "bus": broker}
    try:
        async for api in start_api(components, brokers, memory):
            yield Target(api, prefix, stream, nats_url)
    finally:
        await broker.close(grace_s=0)


async def test_metadata_becomes_key_and_headers(target: Target) -> None:
    topic = f"{target.prefix}.headers"
    query = ("metadata.partitionKey=order-1&metadata.custom=v%C3%A9&metadata.custom=second"
             "&metadata.cloudevent.ID=my-id&metadata.cloudevent.subject=subj&other=ignored")
    status, _, _ = await target.api.post(f"/v1.0/publish/bus/{topic}?{query}", b'{"a":1}',
                                         "application/json")
    assert status == 204
    [stored] = await target.read(topic, 1)
    assert stored.key == b"order-1"
    headers = dict(stored.headers)
    assert headers.pop("traceparent").startswith(b"00-")  # the publish's trace context
    assert headers == {"custom": "vé".encode(), "cloudevent.ID": b"my-id",
                       "cloudevent.subject": b"subj"}
    event = orjson.loads(stored.value)
    assert event["id"] == "my-id" and event["subject"] == "subj" and event["data"] == {"a": 1}
    assert event["pubsubname"] == "bus" and event["topic"] == topic


async def test_raw_payload(target: Target) -> None:
    topic = f"{target.prefix}.raw"
    payload = b"\x00\x01 not json \xff"
    status, _, _ = await target.api.post(f"/v1.0/publish/bus/{topic}?metadata.rawPayload=true",
                                         payload, "application/octet-stream")
    assert status == 204
    [stored] = await target.read(topic, 1)
    headers = dict(stored.headers)
    assert headers.pop("traceparent").startswith(b"00-")
    assert stored.value == payload and headers == {"rawPayload": b"true"}


async def test_numbers_survive_byte_exact(target: Target) -> None:
    topic = f"{target.prefix}.numbers"
    data = b'{"big":' + BIG + b',"dec":' + DECIMAL + b"}"
    user_ce = b'{"id":"ce-1","source":"me","myext":"x","data":' + data + b"}"
    api = target.api
    assert (await api.post(f"/v1.0/publish/bus/{topic}", data, "application/json"))[0] == 204
    assert (await api.post(f"/v1.0/publish/bus/{topic}", user_ce,
                           "application/cloudevents+json"))[0] == 204
    stored = await target.read(topic, 2)
    assert len(stored) == 2
    for s in stored:
        assert b'"big":' + BIG in s.value and b'"dec":' + DECIMAL in s.value


async def test_bulk_publish(target: Target) -> None:
    topic = f"{target.prefix}.bulk"
    body = (b'[{"entryId":"1","event":{"n":' + BIG + b'},"contentType":"application/json"},'
            b'{"entryId":"2","event":"hello","contentType":"text/plain",'
            b'"metadata":{"partitionKey":"k2"}},'
            b'{"entryId":"3","event":"AAE=","contentType":"application/octet-stream"}]')
    status, _, _ = await target.api.post(f"/v1.0/publish/bulk/bus/{topic}", body,
                                         "application/json")
    assert status == 204
    stored = await target.read(topic, 3)
    assert len(stored) == 3
    by_type = {orjson.loads(s.value)["datacontenttype"]: s for s in stored}
    assert b'"data":{"n":' + BIG + b"}" in by_type["application/json"].value
    assert orjson.loads(by_type["application/octet-stream"].value)["data_base64"] == "AAE="
    assert by_type["text/plain"].key == b"k2" and by_type["application/json"].key is None


async def test_partition_number_is_refused(target: Target) -> None:
    """JetStream has no partitions and says so: a publish error naming ``partitionNumber``, a
    failed bulk entry, nothing stored for either."""
    topic = f"{target.prefix}.partition"
    status, ctype, body = await target.api.post(
        f"/v1.0/publish/bus/{topic}?metadata.partitionNumber=1", b"x")
    error = dapr_error(status, ctype, body)
    assert (status, error["errorCode"]) == (500, "ERR_PUBSUB_PUBLISH_MESSAGE")
    assert "partitionNumber is not supported" in error["message"]
    bulk = orjson.dumps([{"entryId": "p", "event": "a", "contentType": "text/plain",
                          "metadata": {"partitionNumber": "1"}},
                         {"entryId": "ok", "event": "b", "contentType": "text/plain"}])
    bulk_status, _, bulk_body = await target.api.post(f"/v1.0/publish/bulk/bus/{topic}", bulk,
                                                      "application/json")
    answer = orjson.loads(bulk_body)
    assert bulk_status == 500 and [e["entryId"] for e in answer["failedEntries"]] == ["p"]
    [stored] = await target.read(topic, 5)
    assert orjson.loads(stored.value)["data"] == "b"


async def test_a_topic_that_is_no_subject_is_a_publish_error(target: Target) -> None:
    status, ctype, body = await target.api.post(f"/v1.0/publish/bus/{target.prefix}.*", b"x",
                                                "text/plain")
    error = dapr_error(status, ctype, body)
    assert (status, error["errorCode"]) == (500, "ERR_PUBSUB_PUBLISH_MESSAGE")
    assert "not a NATS subject" in error["message"]
