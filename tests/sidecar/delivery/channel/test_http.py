"""Tests of the app channel (``sidecar/delivery/channel/http.py``) against a real aiohttp app on
127.0.0.1.

Nothing is mocked: each test serves a small aiohttp app on a free port and the channel talks to
it over real TCP.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from tidings.sidecar.delivery.channel.http import AppChannel, classify
from tidings.sidecar.delivery.channel.types import AppStatus
from tidings.sidecar.runtime.settings import SidecarSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    """A real aiohttp app on 127.0.0.1; ``requests`` records what arrived."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes, object]] = []
        self.runners: list[web.AppRunner] = []

    async def start(self, routes: dict[tuple[str, str], Handler], port: int = 0) -> int:
        app = web.Application()

        def recording(handler: Handler) -> Handler:
            async def wrapped(request: web.Request) -> web.StreamResponse:
                body = await request.read()
                peer = request.transport.get_extra_info("peername") if request.transport else None
                self.requests.append(
                    (request.method, request.path, dict(request.headers), body, peer)
                )
                return await handler(request)

            return wrapped

        for (method, path), handler in routes.items():
            app.router.add_route(method, path, recording(handler))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self.runners.append(runner)
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[AppServer]:
    srv = AppServer()
    yield srv
    await srv.close()


def settings_for(port: int, **kw: object) -> SidecarSettings:
    return SidecarSettings(app_id="orders-app", app_port=port, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def channel_factory() -> AsyncIterator[Callable[..., AppChannel]]:
    made: list[AppChannel] = []

    def make(port: int, **kw: object) -> AppChannel:
        ch = AppChannel(settings_for(port, **kw))
        made.append(ch)
        return ch

    yield make
    for ch in made:
        await ch.close()


def reply(status: int = 200, body: bytes = b"", content_type: str = "application/json") -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


# --- the §2.3 response table ----------------------------------------------------------------

TABLE = [
    # (http status, body, expected)
    (200, b"", AppStatus.SUCCESS),
    (204, b"", AppStatus.SUCCESS),
    (200, b"   \n", AppStatus.SUCCESS),
    (200, b"not json at all", AppStatus.SUCCESS),
    (200, b"[1, 2]", AppStatus.SUCCESS),
    (200, b'"RETRY"', AppStatus.SUCCESS),
    (200, b"null", AppStatus.SUCCESS),
    (200, b"{}", AppStatus.SUCCESS),
    (200, b'{"status": "SUCCESS"}', AppStatus.SUCCESS),
    (200, b'{"status": ""}', AppStatus.SUCCESS),
    (200, b'{"status": 5}', AppStatus.SUCCESS),  # Go: a type error while decoding = success
    (201, b'{"status": "SUCCESS", "extra": 1}', AppStatus.SUCCESS),
    (200, b'{"status": "RETRY"}', AppStatus.RETRY),
    (200, b'{"Status": "RETRY"}', AppStatus.RETRY),  # Go matches field names case-insensitively
    (200, b'{"status": "RETRY"} trailing', AppStatus.RETRY),  # Go decodes the first value only
    (200, b'{"status": "DROP"}', AppStatus.DROP),
    (200, b'{"status": "success"}', AppStatus.RETRY),  # statuses are case-sensitive
    (200, b'{"status": "drop"}', AppStatus.RETRY),
    (200, b'{"status": "OK"}', AppStatus.RETRY),
    (404, b"", AppStatus.DROP),
    (404, b'{"status": "SUCCESS"}', AppStatus.DROP),
    (400, b"", AppStatus.RETRY),
    (403, b'{"status": "SUCCESS"}', AppStatus.RETRY),
    (500, b"", AppStatus.RETRY),
    (503, b'{"status": "DROP"}', AppStatus.RETRY),
    (302, b"", AppStatus.RETRY),  # redirects are not followed
]


@pytest.mark.parametrize(("status", "body", "expected"), TABLE)
def test_classify_table(status: int, body: bytes, expected: AppStatus) -> None:
    result = classify(status, body)
    assert result.status is expected
    assert result.http_status == status


@pytest.mark.parametrize(("status", "body", "expected"), TABLE)
async def test_post_event_over_http(
    server: AppServer,
    channel_factory: Callable[..., AppChannel],
    status: int,
    body: bytes,
    expected: AppStatus,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        headers = {"Location": "/elsewhere"} if status == 302 else None
        return web.Response(status=status, body=body, headers=headers)

    port = await server.start({("POST", "/orders"): handler, ("POST", "/elsewhere"): reply(200)})
    channel = channel_factory(port)
    result = await channel.post_event(
        "/orders", b'{"id":"1"}', {"Content-Type": "application/cloudevents+json"}
    )
    assert result.status is expected
    assert result.http_status == status
    assert [r[1] for r in server.requests] == ["/orders"]  # one POST, no redirect followed


async def test_post_event_sends_body_headers_and_token(
    server: AppServer, channel_factory: Callable[..., AppChannel]
) -> None:
    port = await server.start({("POST", "/a/b"): reply(200)})
    channel = channel_factory(port, app_api_token="s3cret")
    body = b'{"id": "1", "data": {"n": 1.50}}'
    result = await channel.post_event(
        "/a/b", body, {"Content-Type": "application/cloudevents+json", "__offset": "7"}
    )
    assert result.status is AppStatus.SUCCESS
    method, path, headers, got, _ = server.requests[0]
    assert (method, path, got) == ("POST", "/a/b", body)
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert headers["__offset"] == "7"
    assert headers["dapr-api-token"] == "s3cret"


async def test_no_token_header_without_app_api_token(
    server: AppServer, channel_factory: Callable[..., AppChannel]
) -> None:
    port = await server.start({("POST", "/x"): reply(200)})
    await channel_factory(port).post_event("/x", b"{}", {})
    assert "dapr-api-token" not in server.requests[0][2]


async def test_connections_are_reused(
    server: AppServer, channel_factory: Callable[..., AppChannel]
) -> None:
    port = await server.start({("POST", "/x"): reply(200)})
    channel = channel_factory(port)
    for _ in range(5):
        assert (await channel.post_event("/x", b"{}", {})).status is AppStatus.SUCCESS
    peers = {r[4] for r in server.requests}
    assert len(server.requests) == 5
    assert len(peers) == 1  # one pooled keep-alive connection served every delivery


async def test_unreachable_app_is_retry(channel_factory: Callable[..., AppChannel]) -> None:
    result = await channel_factory(free_port()).post_event("/x", b"{}", {})
    assert result.status is AppStatus.RETRY
    assert result.http_status is None


async def test_timeout_is_retry(
    server: AppServer, channel_factory: Callable[..., AppChannel]
) -> None:
    never = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    port = await server.start({("POST", "/slow"): stuck})
    result = await channel_factory(port, delivery_timeout_s=0.2).post_event("/slow", b"{}", {})
    assert result.status is AppStatus.RETRY
    assert result.http_status is None
    assert "did not answer" in result.reason
    never.set()  # release the handler so the server shuts down at once


# --- reachability ---------------------------------------------------------------------------


async def test_wait_until_reachable_returns_once_the_port_opens(
    server: AppServer, channel_factory: Callable[..., AppChannel]
) -> None:
    port = free_port()
    channel = channel_factory(port)
    waiter = asyncio.create_task(channel.wait_until_reachable(asyncio.Event()))
    await asyncio.sleep(0.05)  # let it fail at least once; nothing listens yet
    assert not waiter.done()
    await server.start({("GET", "/"): reply(200)}, port=port)
    assert await asyncio.wait_for(waiter, timeout=5) is True


async def test_wait_until_reachable_stops_on_the_stop_event(
    channel_factory: Callable[..., AppChannel],
) -> None:
    stop = asyncio.Event()
    waiter = asyncio.create_task(channel_factory(free_port()).wait_until_reachable(stop))
    stop.set()
    assert await asyncio.wait_for(waiter, timeout=2) is False


async def test_wait_until_reachable_honours_the_connect_timeout(
    channel_factory: Callable[..., AppChannel],
) -> None:
    channel = channel_factory(free_port(), app_connect_timeout_s=0.1)
    assert await asyncio.wait_for(channel.wait_until_reachable(None), timeout=5) is False


# --- discovery (GET /dapr/subscribe, §2.1) ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, b"", []),
        (404, b'[{"pubsubname": "p", "topic": "t", "route": "/r"}]', []),
        (200, b"", []),
        (200, b"null", []),
        (200, b"not json", []),
        (200, b'{"pubsubname": "p"}', []),  # an object, not an array
        (500, b'[{"pubsubname": "p", "topic": "t"}]', []),
        (
            200,
            b'[{"pubsubname": "p", "topic": "t", "route": "/r"}, 3, "x"]',
            [{"pubsubname": "p", "topic": "t", "route": "/r"}],
        ),
        (200, b"[]", []),
    ],
)
async def test_get_subscriptions(
    server: AppServer,
    channel_factory: Callable[..., AppChannel],
    status: int,
    body: bytes,
    expected: list[object],
) -> None:
    port = await server.start({("GET", "/dapr/subscribe"): reply(status, body)})
    assert await channel_factory(port).get_subscriptions() == expected
    _, _, headers, _, _ = server.requests[0]
    assert headers["dapr-app-id"] == "orders-app"


async def test_get_subscriptions_retries_until_the_app_listens(
    server: AppServer, channel_factory: Callable[..., AppChannel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.sidecar.delivery.channel.http")
    port = free_port()
    task = asyncio.create_task(channel_factory(port).get_subscriptions())
    deadline = asyncio.get_running_loop().time() + 5
    while "did not answer GET /dapr/subscribe" not in caplog.text:
        assert asyncio.get_running_loop().time() < deadline, "no failed attempt was logged"
        await asyncio.sleep(0.01)
    assert not task.done()
    await server.start(
        {
            ("GET", "/dapr/subscribe"): reply(
                200, b'[{"pubsubname": "p", "topic": "t", "route": "r"}]'
            )
        },
        port=port,
    )
    assert await asyncio.wait_for(task, timeout=10) == [
        {"pubsubname": "p", "topic": "t", "route": "r"}
    ]


def test_channel_needs_an_app_port() -> None:
    with pytest.raises(ValueError, match="app_port"):
        AppChannel(SidecarSettings(app_id="a"))
