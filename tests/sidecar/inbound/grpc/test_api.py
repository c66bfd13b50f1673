"""inbound/grpc/: the Dapr gRPC API of a whole in-process sidecar (``runtime.runner.Sidecar``) over
real gRPC on 127.0.0.1, with real brokers (in-memory, and Kafka on the session's Tansu, read back
with a plain aiokafka consumer). Clients are the generated stubs the Dapr SDK ships; the SDK itself
is exercised with real processes in ``tests/integration/test_dapr_sdk.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from aiohttp import ClientSession
from dapr.proto.runtime.v1 import (
    appcallback_pb2,
    dapr_pb2_grpc,
    metadata_pb2,
    pubsub_pb2,
    state_pb2,
)
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tidings.sidecar.cli.localdev import kafka_component_yaml
from tidings.sidecar.runtime.runner import Sidecar
from tidings.sidecar.runtime.settings import SidecarSettings

from ...records import read_records

APP_ID = "orders"
SUCCESS = appcallback_pb2.TopicEventResponse.SUCCESS
RETRY = appcallback_pb2.TopicEventResponse.RETRY
DROP = appcallback_pb2.TopicEventResponse.DROP
KAFKA_FAST = {
    "sessionTimeout": "3s",
    "heartbeatInterval": "1s",
    "backOffInitialInterval": "50ms",
    "backOffMaxInterval": "200ms",
}


def memory_component(name: str = "memory", **metadata: str) -> str:
    items = "".join(
        f"  - {{name: {k}, value: {orjson.dumps(v).decode()}}}\n" for k, v in metadata.items()
    )
    return (
        f"apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}}}\n"
        f"spec:\n  type: pubsub.in-memory\n  version: v1\n"
        + (f"  metadata:\n{items}" if items else "")
    )


async def started_sidecar(folder: Path, files: dict[str, str], **settings: Any) -> Sidecar:
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a few small files, before the start
    for name, text in files.items():
        (folder / name).write_text(text)
    sidecar = Sidecar(
        SidecarSettings(
            app_id=APP_ID,
            dapr_http_port=0,
            dapr_grpc_port=0,
            resources_paths=(folder,),
            resources_poll_interval_s=60,
            **settings,
        )
    )
    await sidecar.start()
    return sidecar


async def until(what: str, check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # poll interval, bounded by the deadline


@pytest.fixture
async def memory_sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    sidecar = await started_sidecar(
        tmp_path / "res",
        {
            "memory.yaml": memory_component(),
            "scoped.yaml": memory_component("scoped", publishingScopes=f"{APP_ID}=allowed"),
        },
    )
    yield sidecar
    await sidecar.stop()


@pytest.fixture
async def kafka_sidecar(tmp_path: Path, kafka_bootstrap: str) -> AsyncIterator[Sidecar]:
    sidecar = await started_sidecar(
        tmp_path / "res",
        {"pubsub.yaml": kafka_component_yaml(kafka_bootstrap, metadata=KAFKA_FAST)},
    )
    await until("the Kafka producer", sidecar.outbound_ready)
    yield sidecar
    await sidecar.stop()


def stub_of(sidecar: Sidecar) -> tuple[grpc.aio.Channel, dapr_pb2_grpc.DaprStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}")
    return channel, dapr_pb2_grpc.DaprStub(channel)


@pytest.fixture
async def stub(memory_sidecar: Sidecar) -> AsyncIterator[dapr_pb2_grpc.DaprStub]:
    """A client of ``memory_sidecar``."""
    channel, stub = stub_of(memory_sidecar)
    yield stub
    await channel.close()


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


def publish_request(
    pubsub: str,
    topic: str,
    data: bytes = b'{"a": 1}',
    content_type: str = "application/json",
    **metadata: str,
) -> pubsub_pb2.PublishEventRequest:
    return pubsub_pb2.PublishEventRequest(
        pubsub_name=pubsub,
        topic=topic,
        data=data,
        data_content_type=content_type,
        metadata=metadata,
    )


# --- publishing ---------------------------------------------------------------------------------


async def test_publish_event_wraps_like_http_and_is_stored(
    kafka_sidecar: Sidecar, kafka_bootstrap: str, unique: str
) -> None:
    channel, stub = stub_of(kafka_sidecar)
    topic = f"grpc-{unique}"
    async with channel:
        await stub.PublishEvent(
            publish_request("pubsub", topic, b'{"n": 1.10}', partitionKey="k1", custom="v")
        )
        # One key: one partition, so the records read back in publish order.
        await stub.PublishEvent(publish_request("pubsub", topic, b"plain", "", partitionKey="k1"))
        await stub.PublishEvent(
            publish_request(
                "pubsub",
                topic,
                b"\x00\xff",
                "application/octet-stream",
                rawPayload="true",
                partitionKey="k1",
            )
        )
    records = await read_records(kafka_bootstrap, topic, 3)
    assert len(records) == 3
    first = orjson.loads(records[0].value)
    assert first["data"] == {"n": 1.1} and b'"n": 1.10' in records[0].value  # byte-exact JSON
    assert (first["source"], first["topic"], first["pubsubname"]) == (APP_ID, topic, "pubsub")
    assert records[0].key == b"k1" and ("custom", b"v") in records[0].headers
    second = orjson.loads(records[1].value)
    assert (second["data"], second["datacontenttype"]) == ("plain", "text/plain")
    assert records[2].value == b"\x00\xff"


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (publish_request("nope", "t"), grpc.StatusCode.INVALID_ARGUMENT, "DAPR_PUBSUB_NOT_FOUND"),
        (publish_request("", "t"), grpc.StatusCode.INVALID_ARGUMENT, "DAPR_PUBSUB_NAME_EMPTY"),
        (
            publish_request("memory", ""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
        ),
        (
            publish_request("scoped", "denied"),
            grpc.StatusCode.PERMISSION_DENIED,
            "DAPR_PUBSUB_FORBIDDEN",
        ),
        (
            publish_request("memory", "t", rawPayload="maybe"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DAPR_PUBSUB_METADATA_DESERIALIZATION",
        ),
        (
            publish_request("memory", "t", b"[1]", "application/cloudevents+json"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
        ),
    ],
    ids=[
        "unknown-pubsub",
        "empty-pubsub",
        "empty-topic",
        "forbidden",
        "bad-rawPayload",
        "cloudevent-not-object",
    ],
)
async def test_publish_errors_are_grpc_codes_with_error_info(
    stub: dapr_pb2_grpc.DaprStub,
    request_: pubsub_pb2.PublishEventRequest,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PublishEvent(request_)
    assert caught.value.code() is code
    info = error_info(caught.value)
    assert (info.reason, info.domain) == (reason, "dapr.io")


@pytest.mark.parametrize(
    ("topic", "metadata", "problem"),
    [
        ("bad topic", {}, "bad topic"),
        ("t-{unique}", {"partitionNumber": "99"}, "out of range"),
        ("t-{unique}", {"partitionNumber": "99999999999"}, "out of range"),
    ],
    ids=["topic-kafka-cannot-hold", "partition-out-of-range", "partition-beyond-int32"],
)
async def test_client_mistake_is_invalid_argument_as_http_400(
    kafka_sidecar: Sidecar, unique: str, topic: str, metadata: dict[str, str], problem: str
) -> None:
    """Regression: the SDK's ``publish_event("pubsub", "bad topic", "x")`` and
    ``partitionNumber=99`` got INTERNAL, while HTTP answers 400 (issue 5); the Dapr reason
    stays."""
    channel, stub = stub_of(kafka_sidecar)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PublishEvent(
                publish_request("pubsub", topic.format(unique=unique), **metadata)
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.domain) == ("DAPR_PUBSUB_PUBLISH_MESSAGE", "dapr.io")
    assert problem in (caught.value.details() or "")


async def test_broker_failure_is_internal_with_publish_reason(
    tmp_path: Path, nats_url: str, unique: str
) -> None:
    """A real broker failure stays INTERNAL (HTTP 500): JetStream has no stream for the
    subject, which an operator may still create."""
    sidecar = await started_sidecar(
        tmp_path / "res",
        {
            "bus.yaml": (
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: bus}\n"
                "spec:\n  type: pubsub.jetstream\n  version: v1\n"
                f"  metadata:\n  - {{name: natsURL, value: '{nats_url}'}}\n"
            )
        },
    )
    try:
        await until("the JetStream connection", sidecar.outbound_ready)
        channel, stub = stub_of(sidecar)
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.PublishEvent(publish_request("bus", f"nostream-{unique}"))
    finally:
        await sidecar.stop()
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert error_info(caught.value).reason == "DAPR_PUBSUB_PUBLISH_MESSAGE"


async def test_message_over_max_body_size_is_resource_exhausted(
    stub: dapr_pb2_grpc.DaprStub,
) -> None:
    """Regression: grpcio's own ``Received message larger than max`` answered, without Dapr's
    ErrorInfo; tidings' check now answers as HTTP's 413 does. Exactly the limit is stored."""
    limit = 4 * 1024 * 1024
    for size in (limit + 1, 5_000_000):  # the newcomer's publish_event(..., b"a" * 5_000_000)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PublishEvent(publish_request("memory", "t", b"x" * size, "text/plain"))
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(caught.value)
        assert (info.reason, info.metadata["topic"]) == ("DAPR_PUBSUB_PUBLISH_MESSAGE", "t")
        assert str(limit) in (caught.value.details() or "")
    await stub.PublishEvent(publish_request("memory", "t", b"x" * limit, "text/plain"))
    entry = pubsub_pb2.BulkPublishRequestEntry
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BulkPublishEvent(
            pubsub_pb2.BulkPublishRequest(
                pubsub_name="memory",
                topic="t",
                entries=[
                    entry(entry_id="1", event=b"x" * (limit // 2), content_type="text/plain"),
                    entry(entry_id="2", event=b"x" * (limit // 2 + 1), content_type="text/plain"),
                ],
            )
        )
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "DAPR_PUBSUB_PUBLISH_MESSAGE"


@pytest.mark.parametrize("ttl", ["abc", "-5"])
async def test_invalid_ttl_is_ignored_as_over_http(
    memory_sidecar: Sidecar, stub: dapr_pb2_grpc.DaprStub, ttl: str
) -> None:
    """The newcomer's ``ttlInSeconds=abc``/``-5``: no error, no ``expiration``, as Dapr does
    (contract §1.2, §9) and as the HTTP API does (test_api); the value travels as a header."""
    topic = f"ttl{ttl}"
    await stub.PublishEvent(publish_request("memory", topic, ttlInSeconds=ttl))
    entry = pubsub_pb2.BulkPublishRequestEntry(
        entry_id="1", event=b"x", content_type="text/plain", metadata={"ttlInSeconds": ttl}
    )
    response = await stub.BulkPublishEvent(
        pubsub_pb2.BulkPublishRequest(pubsub_name="memory", topic=topic, entries=[entry])
    )
    assert not response.failedEntries
    records = memory_sidecar._brokers["memory"]._topics[topic].log  # type: ignore[attr-defined]
    assert len(records) == 2
    assert all("expiration" not in orjson.loads(r.value) for r in records)
    assert all(("ttlInSeconds", ttl.encode()) in r.headers for r in records)


@pytest.mark.parametrize("rpc", ["BulkPublishEvent", "BulkPublishEventAlpha1"])
async def test_bulk_publish_returns_failed_entries(
    kafka_sidecar: Sidecar, kafka_bootstrap: str, unique: str, rpc: str
) -> None:
    channel, stub = stub_of(kafka_sidecar)
    topic = f"bulk-{unique}"
    entry = pubsub_pb2.BulkPublishRequestEntry
    request = pubsub_pb2.BulkPublishRequest(
        pubsub_name="pubsub",
        topic=topic,
        entries=[
            entry(entry_id="1", event=b'{"n": 1}', content_type="application/json"),
            entry(
                entry_id="2",
                event=b"two",
                content_type="text/plain",
                metadata={"partitionNumber": "99999999999"},
            ),
            entry(entry_id="3", event=b"three", content_type="text/plain"),
        ],
        metadata={"ttlInSeconds": "60"},
    )
    async with channel:
        response = await getattr(stub, rpc)(request)
    assert [(f.entry_id, "out of range" in f.error) for f in response.failedEntries] == [
        ("2", True)
    ]
    records = await read_records(kafka_bootstrap, topic, 2)
    events = [orjson.loads(r.value) for r in records]
    assert sorted(orjson.dumps(e["data"]) for e in events) == [b'"three"', b'{"n":1}']
    assert all("expiration" in e for e in events)  # request metadata reaches every entry


async def test_bulk_publish_request_errors(stub: dapr_pb2_grpc.DaprStub) -> None:
    entry = pubsub_pb2.BulkPublishRequestEntry(entry_id="1", event=b"x", content_type="text/plain")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BulkPublishEvent(
            pubsub_pb2.BulkPublishRequest(pubsub_name="memory", topic="t", entries=[entry, entry])
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "DAPR_PUBSUB_MARSHAL_EVENTS"
    assert "entryId is duplicated" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BulkPublishEvent(
            pubsub_pb2.BulkPublishRequest(pubsub_name="scoped", topic="denied", entries=[entry])
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


# --- metadata, unimplemented, token -------------------------------------------------------------


async def test_get_metadata_answers_like_http_and_set_metadata_is_shared(
    memory_sidecar: Sidecar,
) -> None:
    channel, stub = stub_of(memory_sidecar)
    async with channel:
        await stub.SetMetadata(metadata_pb2.SetMetadataRequest(key="color", value="blue"))
        answer = await stub.GetMetadata(metadata_pb2.GetMetadataRequest())
    async with (
        ClientSession() as http,
        http.get(f"http://127.0.0.1:{memory_sidecar.bound_port}/v1.0/metadata") as r,
    ):
        body = await r.json()
    assert answer.id == body["id"] == APP_ID
    assert answer.runtime_version == body["runtimeVersion"]
    assert sorted((c.name, c.type, c.version) for c in answer.registered_components) == sorted(
        (c["name"], c["type"], c["version"]) for c in body["components"]
    )
    assert dict(answer.extended_metadata) == body["extended"]
    assert body["extended"]["color"] == "blue"
    assert answer.app_connection_properties.protocol == "http"


async def test_other_rpcs_are_unimplemented_with_a_clear_message(
    stub: dapr_pb2_grpc.DaprStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetState(state_pb2.GetStateRequest(store_name="s", key="k"))
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "GetState is not implemented" in (caught.value.details() or "")


async def test_api_token_is_enforced(tmp_path: Path) -> None:
    sidecar = await started_sidecar(
        tmp_path / "res", {"memory.yaml": memory_component()}, api_token="s3cret"
    )
    channel, stub = stub_of(sidecar)
    try:
        for metadata, message in [
            ((), "missing api token"),
            ((("dapr-api-token", "wrong"),), "api token mismatch"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.PublishEvent(publish_request("memory", "t"), metadata=metadata)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert message in (caught.value.details() or "")
            call = stub.SubscribeTopicEventsAlpha1(metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        await stub.PublishEvent(
            publish_request("memory", "t"), metadata=(("dapr-api-token", "s3cret"),)
        )
    finally:
        await channel.close()
        await sidecar.stop()


# --- streaming subscriptions --------------------------------------------------------------------


def initial(
    pubsub: str, topic: str, dead_letter: str | None = None, **metadata: str
) -> pubsub_pb2.SubscribeTopicEventsRequestAlpha1:
    return pubsub_pb2.SubscribeTopicEventsRequestAlpha1(
        initial_request=pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1(
            pubsub_name=pubsub, topic=topic, metadata=metadata, dead_letter_topic=dead_letter
        )
    )


def processed(event_id: str, status: int) -> pubsub_pb2.SubscribeTopicEventsRequestAlpha1:
    return pubsub_pb2.SubscribeTopicEventsRequestAlpha1(
        event_processed=pubsub_pb2.SubscribeTopicEventsRequestProcessedAlpha1(
            id=event_id, status=appcallback_pb2.TopicEventResponse(status=status)
        )
    )


async def open_stream(stub: dapr_pb2_grpc.DaprStub, request: Any) -> Any:
    call = stub.SubscribeTopicEventsAlpha1()
    await call.write(request)
    first = await asyncio.wait_for(call.read(), 30)
    assert first.WhichOneof("subscribe_topic_events_response_type") == "initial_response"
    return call


async def next_event(call: Any, timeout_s: float = 30.0) -> appcallback_pb2.TopicEventRequest:
    message = await asyncio.wait_for(call.read(), timeout_s)
    assert message.WhichOneof("subscribe_topic_events_response_type") == "event_message"
    return message.event_message


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ([], "initial request is required"),
        ([processed("x", 0)], "initial request is required"),
        ([initial("", "t")], "pubsubName is required"),
        ([initial("memory", "")], "topic is required"),
        ([initial("nope", "t")], "pubsub nope is not found"),
    ],
    ids=["nothing", "processed-first", "no-pubsub", "no-topic", "unknown-pubsub"],
)
async def test_stream_protocol_errors(
    stub: dapr_pb2_grpc.DaprStub, requests: list[Any], message: str
) -> None:
    call = stub.SubscribeTopicEventsAlpha1()
    for request in requests:
        await call.write(request)
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_duplicate_initial_request_and_second_stream_are_refused(
    stub: dapr_pb2_grpc.DaprStub,
) -> None:
    call = await open_stream(stub, initial("memory", "dup"))
    second = stub.SubscribeTopicEventsAlpha1()
    await second.write(initial("memory", "dup"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(second.read(), 30)
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
    await call.write(initial("memory", "dup"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate initial request received" in (caught.value.details() or "")


async def test_stream_receives_events_and_is_listed_as_streaming(memory_sidecar: Sidecar) -> None:
    channel, stub = stub_of(memory_sidecar)
    async with channel:
        call = await open_stream(stub, initial("memory", "orders", rawPayload="false"))
        await stub.PublishEvent(
            publish_request(
                "memory",
                "orders",
                b'{"n": 1, "price": 1.10}',
                **{"cloudevent.type": "order.created"},
            )
        )
        await stub.PublishEvent(publish_request("memory", "orders", b"hello", "text/plain"))
        first = await next_event(call)
        assert (first.topic, first.pubsub_name, first.type) == ("orders", "memory", "order.created")
        # The same request as for a gRPC app (envelopes/topic_event.py): numbers as published,
        # Dapr's route "/", the event's own topic and pubsubname among the extensions.
        assert (first.data, first.data_content_type) == (
            b'{"n":1,"price":1.10}',
            "application/json",
        )
        assert first.source == APP_ID and first.spec_version == "1.0" and first.path == "/"
        assert "traceparent" in first.extensions
        assert (first.extensions["topic"], first.extensions["pubsubname"]) == ("orders", "memory")
        await call.write(processed(first.id, SUCCESS))
        second = await next_event(call)
        assert (second.data, second.data_content_type) == (b"hello", "text/plain")
        await call.write(processed(second.id, SUCCESS))
        answer = await stub.GetMetadata(metadata_pb2.GetMetadataRequest())
        [sub] = [s for s in answer.subscriptions if s.topic == "orders"]
        assert (sub.type, sub.pubsub_name) == (metadata_pb2.STREAMING, "memory")
        call.cancel()
    await until("the stream to be forgotten", lambda: not memory_sidecar.streams.subscriptions())


async def test_retry_is_redelivered_and_drop_goes_to_dead_letter(
    kafka_sidecar: Sidecar, kafka_bootstrap: str, unique: str
) -> None:
    """The answers are read by the one policy table (``delivery.engine.decide``): RETRY redelivers
    (no dead-letter topic), DROP and RETRY with a dead-letter topic and unbounded retries go there
    (Dapr's rule, delivery/engine.py)."""
    topic, dropped, dead = f"s-{unique}", f"d-{unique}", f"dead-{unique}"
    channel, stub = stub_of(kafka_sidecar)
    async with channel:
        call = await open_stream(stub, initial("pubsub", topic))
        await stub.PublishEvent(publish_request("pubsub", topic, b'{"n": 1}'))
        first = await next_event(call)
        await call.write(processed(first.id, RETRY))
        again = await next_event(call)
        assert again.id == first.id
        await call.write(processed(again.id, SUCCESS))
        with_dlt = await open_stream(stub, initial("pubsub", dropped, dead))
        await stub.PublishEvent(publish_request("pubsub", dropped, b'{"n": 2}'))
        await stub.PublishEvent(publish_request("pubsub", dropped, b'{"n": 3}'))
        answers = {}
        for status in (DROP, RETRY):
            event = await next_event(with_dlt)
            answers[event.id] = status
            await with_dlt.write(processed(event.id, status))
        records = await read_records(kafka_bootstrap, dead, 2)
        assert sorted(orjson.loads(r.value)["id"] for r in records) == sorted(answers)
        call.cancel()
        with_dlt.cancel()


async def test_unanswered_events_are_redelivered_to_the_next_stream(
    kafka_sidecar: Sidecar, unique: str
) -> None:
    """At-least-once across streams (§1.6): an event the app did not answer before its stream
    ended is delivered again on the next stream; answered events are not."""
    topic = f"s-{unique}"
    channel, stub = stub_of(kafka_sidecar)
    async with channel:
        call = await open_stream(stub, initial("pubsub", topic))
        # One partition: the second event comes only once the first one's answer was taken.
        for n in range(2):
            await stub.PublishEvent(
                publish_request("pubsub", topic, b'{"n": %d}' % n, partitionKey="one")
            )
        answered = await next_event(call)
        await call.write(processed(answered.id, SUCCESS))
        unanswered = await next_event(call)
        call.cancel()
        again = await open_stream(stub, initial("pubsub", topic))
        redelivered = await next_event(again, timeout_s=60)
        assert redelivered.id == unanswered.id and redelivered.data == unanswered.data
        await again.write(processed(redelivered.id, SUCCESS))
        await stub.PublishEvent(publish_request("pubsub", topic, b'{"n": 9}', partitionKey="one"))
        after = await next_event(again, timeout_s=60)
        assert after.data == b'{"n":9}'  # the answered event did not come back in between
        again.cancel()


async def test_unanswered_events_come_back_from_the_broker_once_the_topic_was_released(
    kafka_sidecar: Sidecar, unique: str
) -> None:
    """No stream within the reconnect window: the topic is unsubscribed, the waiting delivery is
    cancelled unacknowledged, and the next stream gets the event from the broker again."""
    kafka_sidecar.streams.linger_s = 0.2
    topic = f"s-{unique}"
    channel, stub = stub_of(kafka_sidecar)
    async with channel:
        call = await open_stream(stub, initial("pubsub", topic))
        await stub.PublishEvent(publish_request("pubsub", topic, b'{"n": 1}'))
        unanswered = await next_event(call)
        call.cancel()
        await until(
            "the topic to be released",
            lambda: kafka_sidecar.streams.dispatcher("pubsub", topic) is None,
        )
        assert not any(
            p.startswith(f"{topic}:")
            for p in kafka_sidecar.extended()["kafka.assignment.pubsub"].split(",")
        )
        again = await open_stream(stub, initial("pubsub", topic))
        redelivered = await next_event(again, timeout_s=60)
        assert redelivered.id == unanswered.id
        again.cancel()


async def test_stream_on_a_topic_the_app_subscribed_to_is_refused(tmp_path: Path) -> None:
    """One delivery path per topic: a topic of the app's programmatic subscriptions (served here
    by a real aiohttp app on 127.0.0.1) cannot also be streamed."""
    from aiohttp import web

    from tidings.sidecar.cli.localbroker import free_port

    async def subscribe(_: web.Request) -> web.Response:
        return web.json_response([{"pubsubname": "memory", "topic": "taken", "route": "/taken"}])

    app = web.Application()
    app.router.add_get("/dapr/subscribe", subscribe)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sidecar = await started_sidecar(
        tmp_path / "res", {"memory.yaml": memory_component()}, app_port=port
    )
    channel, stub = stub_of(sidecar)
    try:
        await until("the app's subscription", lambda: sidecar.subscriptions())
        call = stub.SubscribeTopicEventsAlpha1()
        await call.write(initial("memory", "taken"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 30)
        assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert "already has a programmatic subscription" in (caught.value.details() or "")
        free = await open_stream(stub, initial("memory", "free"))
        free.cancel()
    finally:
        await channel.close()
        await sidecar.stop()
        await runner.cleanup()


async def test_stream_ends_when_hot_reload_removes_its_pubsub(tmp_path: Path) -> None:
    folder = tmp_path / "res"
    sidecar = await started_sidecar(
        folder, {"memory.yaml": memory_component(), "gone.yaml": memory_component("gone")}
    )
    channel, stub = stub_of(sidecar)
    try:
        call = await open_stream(stub, initial("gone", "orders"))
        (folder / "gone.yaml").unlink()
        await sidecar.reload()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 30)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "pubsub gone was removed" in (caught.value.details() or "")
    finally:
        await channel.close()
        await sidecar.stop()


async def test_grpc_port_in_use(tmp_path: Path) -> None:
    """An asked-for port in use stops the start (the sidecar exits 2); Dapr's default port in
    use only costs the gRPC API (several bare sidecars on one host), never a shared port."""
    first = await started_sidecar(tmp_path / "a", {"memory.yaml": memory_component()})
    try:
        assert first.grpc_port
        taken = SidecarSettings(
            app_id=APP_ID,
            dapr_http_port=0,
            dapr_grpc_port=first.grpc_port,
            dapr_grpc_port_explicit=True,
        )
        second = Sidecar(taken)
        with pytest.raises(OSError, match="cannot bind the gRPC API"):
            await second.start()
        await second.stop()
        third = Sidecar(
            SidecarSettings(app_id=APP_ID, dapr_http_port=0, dapr_grpc_port=first.grpc_port)
        )
        await third.start()
        assert third.grpc_port is None and third.bound_port
        await third.stop()
    finally:
        await first.stop()
