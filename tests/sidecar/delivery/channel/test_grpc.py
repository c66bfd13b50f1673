"""Tests of the gRPC app channel (``sidecar/delivery/channel/grpc.py``).

The mapping functions are pure and tested as such; the ``TopicEventRequest`` itself is built by
``envelopes/topic_event.py`` (``envelopes/test_topic_event.py``). The channel itself talks over real
TCP to a real grpcio asyncio server on 127.0.0.1 implementing Dapr's ``AppCallback`` service from
the ``dapr`` package's generated modules; nothing is mocked.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import orjson
import pytest
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from multidict import CIMultiDict

from tidings.sidecar.cli.localbroker import free_port
from tidings.sidecar.delivery.channel import open_app_channel
from tidings.sidecar.delivery.channel.grpc import (
    GrpcAppChannel,
    classify_rpc_error,
    classify_status,
    grpc_metadata,
    subscriptions_from_response,
)
from tidings.sidecar.delivery.channel.http import AppChannel
from tidings.sidecar.delivery.channel.types import AppStatus
from tidings.sidecar.delivery.routing import Routes
from tidings.sidecar.envelopes.reading import read_event
from tidings.sidecar.resources.models import BulkOptions, Route, TopicSubscription
from tidings.sidecar.runtime.settings import (
    SidecarSettings,
    add_sidecar_arguments,
    settings_from_args,
)

Status = appcallback_pb2.TopicEventResponse


# --- metadata ------------------------------------------------------------------------------------


def test_grpc_metadata_from_delivery_headers(caplog: pytest.LogCaptureFixture) -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    headers["x-Custom"] = "v"
    headers["__key"] = "k1"
    headers["pubsubName"] = "pubsub"
    headers["Content-Type"] = "application/cloudevents+json"
    headers["grpc-timeout"] = "1S"
    headers["bad key"] = "skipped"
    headers["note"] = "grüße"
    headers["trace-bin"] = "raw"
    with caplog.at_level(logging.WARNING):
        pairs = grpc_metadata(headers, token="secret")
    assert pairs == (
        ("x-custom", "v"),
        ("__key", "k1"),
        ("pubsubname", "pubsub"),
        ("note", "gr%C3%BC%C3%9Fe"),
        ("trace-bin", b"raw"),
        ("dapr-api-token", "secret"),
    )
    assert "'bad key' is not a valid gRPC metadata key" in caplog.text


# --- answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Status.SUCCESS, AppStatus.SUCCESS),
        (Status.RETRY, AppStatus.RETRY),
        (Status.DROP, AppStatus.DROP),
        (7, AppStatus.RETRY),
    ],
)
def test_classify_status(status: int, expected: AppStatus) -> None:
    assert classify_status(status).status is expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNIMPLEMENTED, AppStatus.DROP),
        (grpc.StatusCode.UNKNOWN, AppStatus.RETRY),
        (grpc.StatusCode.UNAVAILABLE, AppStatus.RETRY),
        (grpc.StatusCode.INTERNAL, AppStatus.RETRY),
        (grpc.StatusCode.INVALID_ARGUMENT, AppStatus.RETRY),
        (grpc.StatusCode.DEADLINE_EXCEEDED, AppStatus.RETRY),
    ],
)
def test_classify_rpc_error(code: grpc.StatusCode, expected: AppStatus) -> None:
    assert classify_rpc_error(code, "details").status is expected


# --- subscriptions -------------------------------------------------------------------------------


def _sub(**kw: Any) -> appcallback_pb2.TopicSubscription:
    return appcallback_pb2.TopicSubscription(**kw)


def test_subscriptions_from_response_map_to_the_routing_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = [
        _sub(
            pubsub_name="pubsub",
            topic="orders",
            metadata={"rawPayload": "true"},
            dead_letter_topic="poison",
            routes=appcallback_pb2.TopicRoutes(
                rules=[appcallback_pb2.TopicRule(match='event.type == "widget"', path="widgets")],
                default="products",
            ),
        ),
        _sub(pubsub_name="pubsub", topic="plain", routes=appcallback_pb2.TopicRoutes()),
        _sub(pubsub_name="pubsub", topic="bare"),
        _sub(
            pubsub_name="pubsub",
            topic="bulk",
            bulk_subscribe=appcallback_pb2.BulkSubscribeConfig(
                enabled=True, max_messages_count=10, max_await_duration_ms=250
            ),
        ),
        _sub(
            pubsub_name="pubsub",
            topic="bulk-defaults",
            bulk_subscribe=appcallback_pb2.BulkSubscribeConfig(enabled=True),
        ),
        _sub(
            pubsub_name="pubsub",
            topic="bulk-off",
            bulk_subscribe=appcallback_pb2.BulkSubscribeConfig(max_messages_count=10),
        ),
        _sub(pubsub_name="", topic="nameless"),
        _sub(pubsub_name="pubsub", topic=""),
    ]
    with caplog.at_level(logging.WARNING):
        subs = subscriptions_from_response(response, app_id="a")
    orders, plain, bare, bulk, bulk_defaults, bulk_off = subs
    assert orders == TopicSubscription(
        pubsubname="pubsub",
        topic="orders",
        rules=(Route('event.type == "widget"', "widgets"),),
        default_path="products",
        metadata={"rawPayload": "true"},
        dead_letter_topic="poison",
    )
    assert orders.raw_payload
    # Dapr: a gRPC subscription without routes gets one rule with the empty path.
    for sub in (plain, bare, bulk):
        assert sub.rules == (Route("", ""),) and sub.default_path is None
    assert "subscriptions[6].pubsub_name is required" in caplog.text
    assert "subscriptions[7].topic is required" in caplog.text
    assert bulk.bulk == BulkOptions(10, 250)
    assert bulk_defaults.bulk == BulkOptions(None, None)  # unset (0): the broker's defaults
    assert bulk_off.bulk is None and orders.bulk is None


def test_grpc_routes_keep_the_path_as_listed() -> None:
    orders, plain = subscriptions_from_response(
        [
            _sub(
                pubsub_name="p",
                topic="orders",
                routes=appcallback_pb2.TopicRoutes(
                    rules=[appcallback_pb2.TopicRule(match='event.type == "w"', path="widgets")],
                    default="/products/",
                ),
            ),
            _sub(pubsub_name="p", topic="plain"),
        ]
    )
    routes = Routes.compile(orders, clean_paths=False)
    assert routes.select({"type": "w"}) == "widgets"
    assert routes.select({"type": "other"}) == "/products/"
    assert Routes.compile(plain, clean_paths=False).select({}) == ""
    assert Routes.compile(orders).select({"type": "w"}) == "/widgets"  # HTTP cleans


# --- the channel against a real gRPC app ---------------------------------------------------------


class App(appcallback_pb2_grpc.AppCallbackServicer):
    """A real AppCallback servicer whose answers the tests script."""

    def __init__(self) -> None:
        self.requests: list[tuple[appcallback_pb2.TopicEventRequest, dict[str, Any]]] = []
        self.subscriptions: list[appcallback_pb2.TopicSubscription] | None = None
        self.answer: Callable[[], Any] = lambda: appcallback_pb2.TopicEventResponse()
        self.list_calls = 0

    async def ListTopicSubscriptions(self, request: Any, context: Any) -> Any:
        self.list_calls += 1
        if self.subscriptions is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no subscriptions here")
        return appcallback_pb2.ListTopicSubscriptionsResponse(subscriptions=self.subscriptions)

    async def OnTopicEvent(self, request: Any, context: Any) -> Any:
        self.requests.append((request, dict(context.invocation_metadata())))
        result = self.answer()
        if asyncio.iscoroutine(result):
            result = await result
        if isinstance(result, grpc.StatusCode):
            await context.abort(result, "scripted failure")
        return result


@pytest.fixture
async def grpc_app() -> AsyncIterator[Callable[..., Any]]:
    servers: list[grpc.aio.Server] = []

    async def start(app: App, port: int = 0) -> int:
        server, bound = await _serve(app, port)
        servers.append(server)
        return bound

    yield start
    for server in servers:
        await server.stop(None)


def _read(value: dict[str, Any]) -> Any:
    return read_event(orjson.dumps(value), topic="orders", pubsubname="pubsub", raw_payload=False)


EVENT = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "pub",
    "type": "t",
    "datacontenttype": "application/json",
    "data": {"n": 1},
}


async def test_deliver_sends_the_request_metadata_and_token(grpc_app, channels) -> None:
    app = App()
    app.answer = lambda: appcallback_pb2.TopicEventResponse(status=Status.SUCCESS)
    port = await grpc_app(app)
    channel = channels(port, app_api_token="app-secret")
    headers = CIMultiDict(
        {"__offset": "5", "pubsubName": "pubsub", "Content-Type": "application/cloudevents+json"}
    )
    result = await channel.deliver(
        "widgets", _read(EVENT), headers, topic="orders", pubsubname="pubsub"
    )
    assert result.status is AppStatus.SUCCESS
    ((request, metadata),) = app.requests
    assert (request.id, request.path, request.topic, request.data) == (
        "e-1",
        "widgets",
        "orders",
        b'{"n":1}',
    )
    assert metadata["__offset"] == "5" and metadata["pubsubname"] == "pubsub"
    assert metadata["dapr-api-token"] == "app-secret"


async def test_deliver_keeps_json_numbers_as_published(grpc_app, channels) -> None:
    """The record's number spellings reach the app's ``OnTopicEvent`` unchanged, as the HTTP
    channel's POST of the record bytes does (``read.event`` alone holds them as doubles)."""
    app = App()
    port = await grpc_app(app)
    big = 2**70
    data = (
        b'{"price":1.10,"big":%d,"neg":-0,"e":1e2,"n":[0.1000000000000000055511151231257827]}' % big
    )
    value = (
        b'{"specversion":"1.0","id":"e-1","source":"pub","type":"t",'
        b'"datacontenttype":"application/json","data":' + data + b',"ratio":2.50}'
    )
    readout = read_event(value, topic="orders", pubsubname="pubsub", raw_payload=False)
    assert readout.event["data"]["big"] == float(big)  # what orjson read: not the digits
    result = await channels(port).deliver("", readout, {}, topic="orders", pubsubname="pubsub")
    assert result.status is AppStatus.SUCCESS
    ((request, _),) = app.requests
    assert request.data == data
    assert request.extensions["ratio"] == 2.5


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (lambda: appcallback_pb2.TopicEventResponse(), AppStatus.SUCCESS),
        (lambda: appcallback_pb2.TopicEventResponse(status=Status.RETRY), AppStatus.RETRY),
        (lambda: appcallback_pb2.TopicEventResponse(status=Status.DROP), AppStatus.DROP),
        (lambda: grpc.StatusCode.UNIMPLEMENTED, AppStatus.DROP),
        (lambda: grpc.StatusCode.INTERNAL, AppStatus.RETRY),
        (lambda: 1 / 0, AppStatus.RETRY),  # the app's handler raises: UNKNOWN
    ],
)
async def test_deliver_classifies_the_answer(grpc_app, channels, answer, expected) -> None:
    app = App()
    app.answer = answer
    channel = channels(await grpc_app(app))
    result = await channel.deliver("", _read(EVENT), {}, topic="orders", pubsubname="pubsub")
    assert result.status is expected, result


async def test_unreachable_app_and_timeout_are_retry(grpc_app, channels) -> None:
    result = await channels(free_port()).deliver(
        "", _read(EVENT), {}, topic="orders", pubsubname="pubsub"
    )
    assert result.status is AppStatus.RETRY

    app = App()
    app.answer = lambda: asyncio.sleep(30)
    channel = channels(await grpc_app(app), delivery_timeout_s=0.2)
    result = await channel.deliver("", _read(EVENT), {}, topic="orders", pubsubname="pubsub")
    assert result.status is AppStatus.RETRY
    assert "did not answer within 0.2s" in result.reason


async def test_undeliverable_data_is_retry_without_a_call(grpc_app, channels) -> None:
    app = App()
    channel = channels(await grpc_app(app))
    bad = {**EVENT, "datacontenttype": "text/plain", "data": {"n": 1}}
    result = await channel.deliver("", _read(bad), {}, topic="orders", pubsubname="pubsub")
    assert result.status is AppStatus.RETRY and "unexpected data type" in result.reason
    assert app.requests == []


async def test_discover_retries_until_the_app_serves(
    grpc_app, channels, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    channel = channels(port)
    app = App()
    app.subscriptions = [_sub(pubsub_name="pubsub", topic="orders", dead_letter_topic="dlt")]
    with caplog.at_level(logging.WARNING):
        discovery = asyncio.create_task(channel.discover())
        deadline = asyncio.get_running_loop().time() + 30
        while "did not answer ListTopicSubscriptions" not in caplog.text:
            assert asyncio.get_running_loop().time() < deadline, "no retry was logged"
            await asyncio.sleep(0.02)  # poll the log for the first failed attempt
        assert not discovery.done()
        await grpc_app(app, port)
        subs = await asyncio.wait_for(discovery, 30)
    assert [(s.pubsubname, s.topic, s.dead_letter_topic) for s in subs] == [
        ("pubsub", "orders", "dlt")
    ]


async def test_discover_unimplemented_means_none_without_retry(grpc_app, channels) -> None:
    app = App()  # subscriptions None: ListTopicSubscriptions answers UNIMPLEMENTED
    channel = channels(await grpc_app(app))
    assert await channel.discover() == []
    assert app.list_calls == 1


async def test_wait_until_reachable(grpc_app, channels) -> None:
    port = await grpc_app(App())
    assert await channels(port).wait_until_reachable()
    stop = asyncio.Event()
    stop.set()
    assert not await channels(free_port()).wait_until_reachable(stop)


# --- settings ------------------------------------------------------------------------------------


def test_app_protocol_flag() -> None:
    parser = argparse.ArgumentParser()
    add_sidecar_arguments(parser)
    assert settings_from_args(parser.parse_args(["--app-id", "a"]), {}).app_protocol == "http"
    grpc_settings = settings_from_args(
        parser.parse_args(["--app-id", "a", "--app-protocol", "grpc", "--app-port", "5000"]), {}
    )
    assert grpc_settings.app_protocol == "grpc"
    assert isinstance(open_app_channel(grpc_settings), GrpcAppChannel)
    assert isinstance(open_app_channel(SidecarSettings(app_id="a", app_port=1)), AppChannel)
    with pytest.raises(SystemExit):
        parser.parse_args(["--app-id", "a", "--app-protocol", "h2c"])


async def _serve(app: App, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(app, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def test_app_restart_is_retry_then_delivered_again(channels) -> None:
    first, port = await _serve(App())
    channel = channels(port)

    async def deliver() -> AppStatus:
        result = await channel.deliver("", _read(EVENT), {}, topic="orders", pubsubname="pubsub")
        return result.status

    try:
        assert await deliver() is AppStatus.SUCCESS
    finally:
        await first.stop(None)
    assert await deliver() is AppStatus.RETRY  # the app is down
    second, _ = await _serve(App(), port)  # and back on the same port
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while await deliver() is not AppStatus.SUCCESS:
            assert asyncio.get_running_loop().time() < deadline, "never reconnected"
            await asyncio.sleep(0.05)  # the engine's retry backoff, shortened
    finally:
        await second.stop(None)
