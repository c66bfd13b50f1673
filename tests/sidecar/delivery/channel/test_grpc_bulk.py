"""Bulk delivery over the gRPC app channel (``GrpcAppChannel.deliver_bulk``, §2.4): pure mapping
tables, then the channel over real TCP against real grpcio asyncio servers implementing
``AppCallback.OnBulkTopicEvent`` and/or ``AppCallbackAlpha.OnBulkTopicEventAlpha1``; nothing is
mocked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import orjson
import pytest
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc

from tidings.sidecar.cli.localbroker import free_port
from tidings.sidecar.delivery.channel.grpc import (
    bulk_request_entry,
    classify_bulk_response,
)
from tidings.sidecar.delivery.channel.types import AppStatus, BulkEvent
from tidings.sidecar.envelopes.reading import read_event

Status = appcallback_pb2.TopicEventResponse


def event(event_id: str, **extra: Any) -> BulkEvent:
    value = {
        "specversion": "1.0",
        "id": event_id,
        "source": "pub",
        "type": "t",
        "datacontenttype": "application/json",
        "data": {"n": 1},
        **extra,
    }
    read = read_event(orjson.dumps(value), topic="orders", pubsubname="pubsub", raw_payload=False)
    return BulkEvent(f"entry-{event_id}", read, {"__offset": "3", "pubsubName": "pubsub"})


def test_bulk_request_entry_carries_the_cloudevent_and_metadata() -> None:
    entry = bulk_request_entry(
        event("e-1", traceparent="00-ab-cd-01", custom="x"),
        topic="orders",
        pubsubname="pubsub",
        path="widgets",
    )
    assert entry.entry_id == "entry-e-1"
    assert entry.content_type == "application/cloudevents+json"
    assert dict(entry.metadata) == {"__offset": "3", "pubsubName": "pubsub"}
    ce = entry.cloud_event
    assert (ce.id, ce.source, ce.type, ce.spec_version, ce.data_content_type, ce.data) == (
        "e-1",
        "pub",
        "t",
        "1.0",
        "application/json",
        b'{"n":1}',
    )
    assert ce.extensions["traceparent"] == "00-ab-cd-01" and ce.extensions["custom"] == "x"


def test_classify_bulk_response(caplog: pytest.LogCaptureFixture) -> None:
    response = appcallback_pb2.TopicEventBulkResponse(
        statuses=[
            appcallback_pb2.TopicEventBulkResponseEntry(entry_id="a", status=Status.SUCCESS),
            appcallback_pb2.TopicEventBulkResponseEntry(entry_id="b", status=Status.DROP),
            appcallback_pb2.TopicEventBulkResponseEntry(entry_id="zzz", status=Status.DROP),
            appcallback_pb2.TopicEventBulkResponseEntry(entry_id="c", status=Status.RETRY),
        ]
    )
    with caplog.at_level(logging.WARNING):
        answers = classify_bulk_response(response, ["a", "b", "c", "d"])
    assert [a.status for a in answers] == [
        AppStatus.SUCCESS,
        AppStatus.DROP,
        AppStatus.RETRY,
        AppStatus.RETRY,
    ]  # d: no status, retried
    assert "unknown entry_id 'zzz'" in caplog.text


class Stable(appcallback_pb2_grpc.AppCallbackServicer):
    """``OnBulkTopicEvent``: DROP for entries whose id ends in ``drop``, else SUCCESS."""

    def __init__(self) -> None:
        self.requests: list[tuple[appcallback_pb2.TopicEventBulkRequest, dict[str, Any]]] = []

    async def OnBulkTopicEvent(self, request: Any, context: Any) -> Any:
        self.requests.append((request, dict(context.invocation_metadata())))
        return answer(request)


class Alpha(appcallback_pb2_grpc.AppCallbackAlphaServicer):
    def __init__(self) -> None:
        self.requests: list[appcallback_pb2.TopicEventBulkRequest] = []

    async def OnBulkTopicEventAlpha1(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return answer(request)


class Unimplemented(appcallback_pb2_grpc.AppCallbackServicer):
    """The generated base: every method answers UNIMPLEMENTED."""


def answer(request: Any) -> Any:
    return appcallback_pb2.TopicEventBulkResponse(
        statuses=[
            appcallback_pb2.TopicEventBulkResponseEntry(
                entry_id=e.entry_id,
                status=Status.DROP if e.entry_id.endswith("drop") else Status.SUCCESS,
            )
            for e in request.entries
        ]
    )


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    servers: list[grpc.aio.Server] = []

    async def start(stable: Any = None, alpha: Any = None) -> int:
        server = grpc.aio.server()
        if stable is not None:
            appcallback_pb2_grpc.add_AppCallbackServicer_to_server(stable, server)
        if alpha is not None:
            appcallback_pb2_grpc.add_AppCallbackAlphaServicer_to_server(alpha, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(None)


async def test_on_bulk_topic_event_one_answer_per_entry(serve, channels) -> None:
    app = Stable()
    channel = channels(await serve(stable=app), app_api_token="app-secret")
    answers = await channel.deliver_bulk(
        "widgets", [event("a"), event("b-drop")], topic="orders", pubsubname="pubsub"
    )
    assert [a.status for a in answers] == [AppStatus.SUCCESS, AppStatus.DROP]
    ((request, metadata),) = app.requests
    assert (request.topic, request.pubsub_name, request.path, request.type) == (
        "orders",
        "pubsub",
        "widgets",
        "com.dapr.event.sent.bulk",
    )
    assert request.id and [e.entry_id for e in request.entries] == ["entry-a", "entry-b-drop"]
    assert metadata["dapr-api-token"] == "app-secret"


async def test_an_app_with_only_the_alpha_callback_is_served_and_remembered(
    serve, channels
) -> None:
    alpha = Alpha()
    channel = channels(await serve(stable=Unimplemented(), alpha=alpha))
    for _ in range(2):
        answers = await channel.deliver_bulk("", [event("a")], topic="orders", pubsubname="pubsub")
        assert [a.status for a in answers] == [AppStatus.SUCCESS]
    assert len(alpha.requests) == 2
    assert channel._bulk_alpha  # the second batch went to the alpha callback first


async def test_no_bulk_callback_at_all_drops_every_entry(serve, channels) -> None:
    channel = channels(await serve(stable=Unimplemented()))
    answers = await channel.deliver_bulk(
        "", [event("a"), event("b")], topic="orders", pubsubname="pubsub"
    )
    assert [a.status for a in answers] == [AppStatus.DROP, AppStatus.DROP]


async def test_an_unreachable_app_retries_every_entry(channels) -> None:
    channel = channels(free_port(), delivery_timeout_s=2)
    answers = await channel.deliver_bulk(
        "", [event("a"), event("b")], topic="orders", pubsubname="pubsub"
    )
    assert [a.status for a in answers] == [AppStatus.RETRY, AppStatus.RETRY]


async def test_an_entry_whose_data_cannot_be_carried_is_retried_alone(serve, channels) -> None:
    app = Stable()
    channel = channels(await serve(stable=app))
    bad = event("bad", datacontenttype="text/plain")  # text content type with JSON object data
    answers = await channel.deliver_bulk("", [event("a"), bad], topic="orders", pubsubname="pubsub")
    assert [a.status for a in answers] == [AppStatus.SUCCESS, AppStatus.RETRY]
    ((request, _),) = app.requests
    assert [e.entry_id for e in request.entries] == ["entry-a"]
