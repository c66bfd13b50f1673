"""The publish suite of ``test_api.py`` that applies to every broker, parametrised over the real
Kafka-protocol broker (Tansu) and the real Redis: the same HTTP requests, read back from each
broker with its own plain client. What a broker cannot do (Redis: ``partitionNumber``) is a
clear publish error, tested here too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson
import pytest
import redis.asyncio as aioredis

from tidings.sidecar.brokers.base import Broker
from tidings.sidecar.brokers.kafka import KafkaBroker
from tidings.sidecar.brokers.memory import MemoryBroker
from tidings.sidecar.brokers.redis import RedisBroker

from .records import read_records
from .test_api import BIG, DECIMAL, Api, component, dapr_error, start_api


@dataclass(frozen=True)
class Stored:
    """One stored message, whatever the broker: value, key and metadata headers."""

    value: bytes
    key: bytes | None
    headers: dict[str, bytes]


ReadBack = Callable[[str, int], Awaitable[list[Stored]]]


@dataclass
class Target:
    api: Api
    kind: str
    read: ReadBack


@pytest.fixture(params=["kafka", "redis"])
async def target(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Target]:
    memory = MemoryBroker("mem")
    await memory.start()
    if request.param == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        loaded = component("bus", "pubsub.kafka", brokers=bootstrap, authType="none")
        broker: KafkaBroker | RedisBroker = KafkaBroker(loaded, app_id="orders")

        async def read(topic: str, n: int) -> list[Stored]:
            return [Stored(r.value, r.key, {k: v for k, v in r.headers})
                    for r in await read_records(bootstrap, topic, n)]
        cleanup: list[str] = []
    else:
        host = request.getfixturevalue("redis_host")
        loaded = component("bus", "pubsub.redis", redisHost=host)
        broker = RedisBroker(loaded, app_id="orders")
        hostname, _, port = host.rpartition(":")
        client = aioredis.Redis(host=hostname, port=int(port))
        cleanup = []

        async def read(topic: str, n: int) -> list[Stored]:
            cleanup.append(topic)
            out = []
            for _, fields in await client.xrange(topic, count=n):
                meta = orjson.loads(fields[b"metadata"]) if b"metadata" in fields else {}
                out.append(Stored(fields[b"data"], fields.get(b"key"),
                                  {k: v.encode() for k, v in meta.items()}))
            return out
    await broker.start()
    components = {"mem": component("mem", "pubsub.in-memory"), "bus": loaded}
    brokers: dict[str, Broker] = {"mem": memory, "bus": broker}
    try:
        async for api in start_api(components, brokers, memory):
            yield Target(api, request.param, read)
    finally:
        await broker.close(grace_s=0)
        if request.param == "redis":
            if cleanup:
                await client.delete(*cleanup)
            await client.aclose()


async def test_metadata_becomes_key_and_headers(target: Target, unique: str) -> None:
    topic = f"api-headers-{unique}"
    query = ("metadata.partitionKey=order-1&metadata.custom=v%C3%A9&metadata.custom=second"
             "&metadata.cloudevent.ID=my-id&metadata.cloudevent.subject=subj&other=ignored")
    status, _, _ = await target.api.post(f"/v1.0/publish/bus/{topic}?{query}", b'{"a":1}',
                                         "application/json")
    assert status == 204
    [stored] = await target.read(topic, 1)
    assert stored.key == b"order-1"
    headers = dict(stored.headers)
    # the trace context of the publish (a new one, since the request carried none) travels too
    assert headers.pop("traceparent").startswith(b"00-")
    assert headers == {"custom": "vé".encode(), "cloudevent.ID": b"my-id",
                       "cloudevent.subject": b"subj"}
    event = orjson.loads(stored.value)
    assert event["traceparent"] == stored.headers["traceparent"].decode()
    assert event["id"] == "my-id" and event["subject"] == "subj" and event["data"] == {"a": 1}
    assert event["pubsubname"] == "bus" and event["topic"] == topic


async def test_raw_payload(target: Target, unique: str) -> None:
    topic = f"api-raw-{unique}"
    payload = b"\x00\x01 not json \xff"
    status, _, _ = await target.api.post(f"/v1.0/publish/bus/{topic}?metadata.rawPayload=true",
                                         payload, "application/octet-stream")
    assert status == 204
    [stored] = await target.read(topic, 1)
    headers = dict(stored.headers)
    assert headers.pop("traceparent").startswith(b"00-")  # no envelope, the trace still travels
    assert stored.value == payload and headers == {"rawPayload": b"true"}


async def test_numbers_survive_byte_exact(target: Target, unique: str) -> None:
    topic = f"api-numbers-{unique}"
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


async def test_bulk_publish(target: Target, unique: str) -> None:
    topic = f"api-bulk-{unique}"
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


async def test_partition_number_is_honoured_or_refused(target: Target, unique: str) -> None:
    """Kafka puts the record in that partition; Redis has none and says so: a publish error
    naming ``partitionNumber``, a failed bulk entry, nothing stored."""
    topic = f"api-partition-{unique}"
    status, ctype, body = await target.api.post(
        f"/v1.0/publish/bus/{topic}?metadata.partitionNumber=1", b"x")
    bulk = orjson.dumps([{"entryId": "p", "event": "a", "contentType": "text/plain",
                          "metadata": {"partitionNumber": "1"}},
                         {"entryId": "ok", "event": "b", "contentType": "text/plain"}])
    bulk_status, _, bulk_body = await target.api.post(f"/v1.0/publish/bulk/bus/{topic}", bulk,
                                                      "application/json")
    if target.kind == "kafka":
        assert status == 204 and bulk_status == 204
        return
    error = dapr_error(status, ctype, body)
    assert (status, error["errorCode"]) == (500, "ERR_PUBSUB_PUBLISH_MESSAGE")
    assert "partitionNumber is not supported" in error["message"]
    answer = orjson.loads(bulk_body)
    assert bulk_status == 500 and [e["entryId"] for e in answer["failedEntries"]] == ["p"]
    [stored] = await target.read(topic, 5)
    assert orjson.loads(stored.value)["data"] == "b"
