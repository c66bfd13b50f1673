"""The publish suite of ``test_api.py`` that applies to every broker, parametrised over the real
Kafka-protocol broker (Tansu), the real Redis and the real NATS JetStream: the same HTTP requests,
read back from each broker with its own plain client. What a broker cannot do (Redis and
JetStream: ``partitionNumber``) is a clear publish error, tested here too, and every client
mistake answers 400 (413: too large) on every broker, as on Kafka (README "Where we differ from
Dapr on purpose"). Cases that only one broker has (NATS subjects and headers, ``max_payload``)
run on that broker only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from tidings.sidecar.brokers.base import Broker
from tidings.sidecar.brokers.jetstream import JetStreamBroker
from tidings.sidecar.brokers.kafka import KafkaBroker
from tidings.sidecar.brokers.memory import MemoryBroker
from tidings.sidecar.brokers.redis import RedisBroker
from tidings.sidecar.resources.loading import LoadedComponent

from ...records import Stored, stored_jetstream, stored_kafka, stored_redis
from .test_api import BIG, DECIMAL, Api, component, dapr_error, start_api

# Above NATS's default max_payload (1 MiB), so a message too large for the server reaches it.
API_MAX_BODY = 2 * 1024 * 1024


@dataclass
class Target:
    """The API in front of one broker. ``topic(name)`` is this test's topic for ``name`` (for
    JetStream a subject under the test stream's prefix); ``read(topic, n)`` reads up to ``n``
    stored messages back in order; ``unusable()`` makes a topic name this broker can never
    store to and returns it as written in a URL, with the reason the error names."""

    api: Api
    kind: str
    broker: Broker
    topic: Callable[[str], str]
    read: Callable[[str, int], Awaitable[list[Stored]]]
    unusable: Callable[[], Awaitable[tuple[str, str]]]


@dataclass
class Backend:
    loaded: LoadedComponent
    broker: Broker
    topic: Callable[[str], str]
    read: Callable[[str, int], Awaitable[list[Stored]]]
    unusable: Callable[[], Awaitable[tuple[str, str]]]


async def kafka_backend(servers: dict[str, Any], unique: str, stack: AsyncExitStack) -> Backend:
    bootstrap = servers["kafka_bootstrap"]
    loaded = component("bus", "pubsub.kafka", brokers=bootstrap, authType="none")

    async def unusable() -> tuple[str, str]:
        return "bad+name", "is not a valid Kafka topic name"  # '+' in a path is a space

    return Backend(
        loaded,
        KafkaBroker(loaded, app_id="orders"),
        lambda n: f"api-{n}-{unique}",
        partial(stored_kafka, bootstrap),
        unusable,
    )


async def redis_backend(servers: dict[str, Any], unique: str, stack: AsyncExitStack) -> Backend:
    host = servers["redis_host"]
    loaded = component("bus", "pubsub.redis", redisHost=host)
    hostname, _, port = host.rpartition(":")
    client = aioredis.Redis(host=hostname, port=int(port))
    keys: list[str] = []

    async def cleanup() -> None:
        if keys:
            await client.delete(*keys)
        await client.aclose()

    stack.push_async_callback(cleanup)

    def topic(name: str) -> str:
        keys.append(f"api-{name}-{unique}")
        return keys[-1]

    async def unusable() -> tuple[str, str]:
        name = topic("string")
        await client.set(name, "a key that holds no stream")
        return name, "key is not a stream"

    return Backend(
        loaded, RedisBroker(loaded, app_id="orders"), topic, partial(stored_redis, host), unusable
    )


async def jetstream_backend(servers: dict[str, Any], unique: str, stack: AsyncExitStack) -> Backend:
    url = servers["nats_url"]
    stream, prefix = servers["jetstream_stream"]
    loaded = component("bus", "pubsub.jetstream", natsURL=url, streamName=stream)

    async def unusable() -> tuple[str, str]:
        return f"{prefix}.*", "is not a NATS subject"  # a wildcard: subscribe only

    return Backend(
        loaded,
        JetStreamBroker(loaded, app_id="orders"),
        lambda n: f"{prefix}.{n}",
        partial(stored_jetstream, url, stream),
        unusable,
    )


BACKENDS = {"kafka": kafka_backend, "redis": redis_backend, "jetstream": jetstream_backend}
SERVERS = {
    "kafka": ["kafka_bootstrap"],
    "redis": ["redis_host"],
    "jetstream": ["nats_url", "jetstream_stream"],
}


@pytest.fixture(params=list(BACKENDS))
def kind(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The broker of a test and the fixtures of its real server. A test for some brokers only
    narrows it: ``parametrize("kind", [...], indirect=True)``. Not async: those fixtures run
    their own event loop, so they are set up before the test's loop runs."""
    return request.param, {name: request.getfixturevalue(name) for name in SERVERS[request.param]}


@pytest.fixture
async def target(kind: tuple[str, dict[str, Any]], unique: str) -> AsyncIterator[Target]:
    """The API with pubsub ``bus`` on one real broker (``mem``: the in-memory one beside it)."""
    memory = MemoryBroker("mem")
    await memory.start()
    async with AsyncExitStack() as stack:
        backend = await BACKENDS[kind[0]](kind[1], unique, stack)
        await backend.broker.start()
        stack.push_async_callback(backend.broker.close, grace_s=0)
        components = {"mem": component("mem", "pubsub.in-memory"), "bus": backend.loaded}
        brokers: dict[str, Broker] = {"mem": memory, "bus": backend.broker}
        async for api in start_api(components, brokers, memory, max_body_size=API_MAX_BODY):
            yield Target(
                api, kind[0], backend.broker, backend.topic, backend.read, backend.unusable
            )


def refusal(status: int, ctype: str, body: bytes, expected_status: int) -> str:
    """The message of a publish error the broker refused as the caller's mistake."""
    error = dapr_error(status, ctype, body)
    assert (status, error["errorCode"]) == (expected_status, "ERR_PUBSUB_PUBLISH_MESSAGE"), error
    return str(error["message"])


async def test_metadata_becomes_key_and_headers(target: Target) -> None:
    topic = target.topic("headers")
    query = (
        "metadata.partitionKey=order-1&metadata.custom=v%C3%A9&metadata.custom=second"
        "&metadata.cloudevent.ID=my-id&metadata.cloudevent.subject=subj&other=ignored"
    )
    status, _, _ = await target.api.post(
        f"/v1.0/publish/bus/{topic}?{query}", b'{"a":1}', "application/json"
    )
    assert status == 204
    [stored] = await target.read(topic, 1)
    assert stored.key == b"order-1"
    headers = dict(stored.headers)
    # the trace context of the publish (a new one, since the request carried none) travels too
    assert headers.pop("traceparent").startswith(b"00-")
    assert headers == {
        "custom": "vé".encode(),
        "cloudevent.ID": b"my-id",
        "cloudevent.subject": b"subj",
    }
    event = orjson.loads(stored.value)
    assert event["traceparent"] == stored.headers["traceparent"].decode()
    assert event["id"] == "my-id" and event["subject"] == "subj" and event["data"] == {"a": 1}
    assert event["pubsubname"] == "bus" and event["topic"] == topic


async def test_raw_payload(target: Target) -> None:
    topic = target.topic("raw")
    payload = b"\x00\x01 not json \xff"
    status, _, _ = await target.api.post(
        f"/v1.0/publish/bus/{topic}?metadata.rawPayload=true", payload, "application/octet-stream"
    )
    assert status == 204
    [stored] = await target.read(topic, 1)
    headers = dict(stored.headers)
    assert headers.pop("traceparent").startswith(b"00-")  # no envelope, the trace still travels
    assert stored.value == payload and headers == {"rawPayload": b"true"}


async def test_numbers_survive_byte_exact(target: Target) -> None:
    topic = target.topic("numbers")
    data = b'{"big":' + BIG + b',"dec":' + DECIMAL + b"}"
    user_ce = b'{"id":"ce-1","source":"me","myext":"x","data":' + data + b"}"
    api = target.api
    assert (await api.post(f"/v1.0/publish/bus/{topic}", data, "application/json"))[0] == 204
    assert (await api.post(f"/v1.0/publish/bus/{topic}", user_ce, "application/cloudevents+json"))[
        0
    ] == 204
    stored = await target.read(topic, 2)
    assert len(stored) == 2
    for s in stored:
        assert b'"big":' + BIG in s.value and b'"dec":' + DECIMAL in s.value


async def test_bulk_publish(target: Target) -> None:
    topic = target.topic("bulk")
    body = (
        b'[{"entryId":"1","event":{"n":' + BIG + b'},"contentType":"application/json"},'
        b'{"entryId":"2","event":"hello","contentType":"text/plain",'
        b'"metadata":{"partitionKey":"k2"}},'
        b'{"entryId":"3","event":"AAE=","contentType":"application/octet-stream"}]'
    )
    status, _, _ = await target.api.post(
        f"/v1.0/publish/bulk/bus/{topic}", body, "application/json"
    )
    assert status == 204
    stored = await target.read(topic, 3)
    assert len(stored) == 3
    by_type = {orjson.loads(s.value)["datacontenttype"]: s for s in stored}
    assert b'"data":{"n":' + BIG + b"}" in by_type["application/json"].value
    assert orjson.loads(by_type["application/octet-stream"].value)["data_base64"] == "AAE="
    assert by_type["text/plain"].key == b"k2" and by_type["application/json"].key is None


async def test_partition_number_is_honoured_or_refused(target: Target) -> None:
    """Kafka puts the record in that partition; Redis and JetStream have none and say so: 400
    naming ``partitionNumber`` (the caller's mistake, as Kafka's partition out of range), a
    failed bulk entry (400: the only failure is such a mistake), nothing stored for either."""
    topic = target.topic("partition")
    status, ctype, body = await target.api.post(
        f"/v1.0/publish/bus/{topic}?metadata.partitionNumber=1", b"x"
    )
    bulk = orjson.dumps(
        [
            {
                "entryId": "p",
                "event": "a",
                "contentType": "text/plain",
                "metadata": {"partitionNumber": "1"},
            },
            {"entryId": "ok", "event": "b", "contentType": "text/plain"},
        ]
    )
    bulk_status, _, bulk_body = await target.api.post(
        f"/v1.0/publish/bulk/bus/{topic}", bulk, "application/json"
    )
    if target.kind == "kafka":
        assert status == 204 and bulk_status == 204
        return
    assert "partitionNumber is not supported" in refusal(status, ctype, body, 400)
    answer = orjson.loads(bulk_body)
    assert bulk_status == 400 and [e["entryId"] for e in answer["failedEntries"]] == ["p"]
    [stored] = await target.read(topic, 5)
    assert orjson.loads(stored.value)["data"] == "b"


async def test_a_topic_the_broker_cannot_hold_is_400(target: Target) -> None:
    """Kafka: not a topic name; Redis: a key that holds no stream; JetStream: not a subject one
    can publish to. The caller's mistake on every broker: 400, single and bulk (Dapr: 500)."""
    raw, reason = await target.unusable()
    status, ctype, body = await target.api.post(f"/v1.0/publish/bus/{raw}", b"x", "text/plain")
    assert reason in refusal(status, ctype, body, 400)
    entries = orjson.dumps([{"entryId": "1", "event": "x", "contentType": "text/plain"}])
    status, _, body = await target.api.post(
        f"/v1.0/publish/bulk/bus/{raw}", entries, "application/json"
    )
    [failed] = orjson.loads(body)["failedEntries"]
    assert status == 400 and reason in failed["error"]


@pytest.mark.parametrize("kind", ["jetstream"], indirect=True)
@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("metadata.a%20b=v", "cannot be a NATS header name"),
        ("metadata.team=a%0D%0Ab", "holds a line break"),
        ("metadata.partitionKey=a%0Ab", "partitionKey holds a line break"),
    ],
)
async def test_metadata_nats_headers_cannot_hold_is_400(
    target: Target, query: str, reason: str
) -> None:
    """Kafka and Redis store any header; a NATS header cannot hold these: 400, nothing stored."""
    topic = target.topic("headers")
    status, ctype, body = await target.api.post(
        f"/v1.0/publish/bus/{topic}?{query}", b"x", "text/plain"
    )
    assert reason in refusal(status, ctype, body, 400)
    assert (await target.api.post(f"/v1.0/publish/bus/{topic}", b"y", "text/plain"))[0] == 204
    [stored] = await target.read(topic, 5)
    assert orjson.loads(stored.value)["data"] == "y"


@pytest.mark.parametrize("kind", ["jetstream"], indirect=True)
async def test_a_message_over_nats_max_payload_is_413(target: Target) -> None:
    """Within the API's body limit but over the NATS server's ``max_payload``: 413, as a record
    over Kafka's size limit (Redis takes up to 512 MB, more than the API lets through)."""
    max_payload = target.broker._nc.max_payload  # type: ignore[attr-defined]
    assert max_payload < API_MAX_BODY
    topic = target.topic("large")
    status, ctype, body = await target.api.post(
        f"/v1.0/publish/bus/{topic}?metadata.rawPayload=true",
        b"x" * (max_payload + 1),
        "application/octet-stream",
    )
    assert "max_payload" in refusal(status, ctype, body, 413)
