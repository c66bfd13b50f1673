"""Tests of the delivery engine (``sidecar/delivery/engine.py``): the outcome table, HTTP headers,
and ``Dispatcher.handle`` end to end against a real aiohttp app on 127.0.0.1.

The broker is replaced at this layer: records are hand-made :class:`Record` values and the
dead-letter publisher is an in-test recorder function, because the Kafka side (fetching,
per-partition order, commits, revocation) is tested separately in
``brokers/kafka/test_consuming.py`` and the dead-letter produce in ``publishing/test_publisher.py``.
The app side is real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web

from tidings.sidecar.brokers.base import Record
from tidings.sidecar.delivery.channel.http import AppChannel
from tidings.sidecar.delivery.engine import (
    Action,
    Dispatcher,
    Outcome,
    Verdict,
    decide,
    http_headers,
)
from tidings.sidecar.resources import ResourceError, Route, TopicSubscription
from tidings.sidecar.resources.kafka import RetryPolicy
from tidings.sidecar.runtime.metrics import topic_deliveries
from tidings.sidecar.runtime.settings import SidecarSettings

from ..apps import DeadLetters, serving

FOREVER = RetryPolicy("constant", 0.001, 0.001, 1.0, -1)


def bounded(n: int) -> RetryPolicy:
    return RetryPolicy("constant", 0.001, 0.001, 1.0, n)


# --- the policy table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "dlt", "policy", "retries_done", "action"),
    [
        (Verdict.DELIVERED, "dlt", FOREVER, 0, Action.ACK),
        (Verdict.DELIVERED, None, bounded(0), 5, Action.ACK),
        (Verdict.NO_SUBSCRIPTION, "dlt", FOREVER, 0, Action.ACK),
        (Verdict.DROPPED, "dlt", FOREVER, 0, Action.DEAD_LETTER),
        (Verdict.DROPPED, None, FOREVER, 0, Action.ACK),
        (Verdict.EXPIRED, "dlt", FOREVER, 0, Action.DEAD_LETTER),
        (Verdict.EXPIRED, None, FOREVER, 0, Action.ACK),
        (Verdict.UNMATCHED, "dlt", FOREVER, 0, Action.DEAD_LETTER),
        (Verdict.UNMATCHED, None, FOREVER, 0, Action.ACK),
        (Verdict.POISON, "dlt", bounded(5), 0, Action.DEAD_LETTER),
        (Verdict.POISON, None, FOREVER, 1000, Action.RETRY),
        (Verdict.POISON, None, bounded(2), 2, Action.GIVE_UP),
        (Verdict.ROUTING_ERROR, "dlt", FOREVER, 0, Action.DEAD_LETTER),
        (Verdict.ROUTING_ERROR, None, FOREVER, 0, Action.RETRY),
        # a failed delivery with a DLT and the unbounded default: first failure → DLT (as Dapr)
        (Verdict.FAILED, "dlt", FOREVER, 0, Action.DEAD_LETTER),
        # bounded: that many retries first, then the DLT
        (Verdict.FAILED, "dlt", bounded(2), 0, Action.RETRY),
        (Verdict.FAILED, "dlt", bounded(2), 1, Action.RETRY),
        (Verdict.FAILED, "dlt", bounded(2), 2, Action.DEAD_LETTER),
        (Verdict.FAILED, "dlt", bounded(0), 0, Action.DEAD_LETTER),
        (Verdict.FAILED, None, FOREVER, 0, Action.RETRY),
        (Verdict.FAILED, None, FOREVER, 10**6, Action.RETRY),
        (Verdict.FAILED, None, bounded(2), 1, Action.RETRY),
        (Verdict.FAILED, None, bounded(2), 2, Action.GIVE_UP),
    ],
)
def test_decide(
    verdict: Verdict, dlt: str | None, policy: RetryPolicy, retries_done: int, action: Action
) -> None:
    outcome = decide(verdict, dead_letter_topic=dlt, retry=policy, retries_done=retries_done)
    assert outcome.action is action


def test_retry_delay_follows_the_policy() -> None:
    policy = RetryPolicy("exponential", 1.0, 10.0, 2.0, -1)
    delays = [
        decide(Verdict.FAILED, dead_letter_topic=None, retry=policy, retries_done=n)
        for n in range(5)
    ]
    assert delays == [Outcome(Action.RETRY, d) for d in (1.0, 2.0, 4.0, 8.0, 10.0)]


# --- HTTP headers -----------------------------------------------------------------------------


def record(
    value: bytes = b'{"id": "ce-1", "type": "t", "data": {"x": 1}}',
    *,
    topic: str = "orders",
    headers: tuple[tuple[str, bytes | None], ...] = (),
    key: bytes | None = b"key-1",
    offset: int = 41,
) -> Record:
    return Record(
        topic=topic,
        partition=2,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        timestamp_ms=1700000000123,
    )


def test_headers_carry_record_metadata() -> None:
    rec = record(headers=(("h1", b"v1"), ("h1", b"v2"), ("empty", None), ("uni", "é✓".encode())))
    event = {"traceparent": "00-aaa-bbb-01", "tracestate": "k=v"}
    headers = http_headers(rec, event, pubsubname="pubsub")
    assert dict(headers) == {
        "h1": "v2",  # the last of a repeated name wins, like Dapr's metadata map
        "empty": "",
        "uni": "é✓",
        "__key": "key-1",
        "__offset": "41",
        "__partition": "2",
        "__topic": "orders",
        "__timestamp": "1700000000123",
        "traceparent": "00-aaa-bbb-01",
        "tracestate": "k=v",
        "pubsubName": "pubsub",
        "Content-Type": "application/cloudevents+json",
    }


def test_record_facts_and_framing_win_over_record_headers() -> None:
    rec = record(
        key=None,
        headers=(
            ("__offset", b"999"),
            ("content-type", b"text/plain"),
            ("Content-Length", b"1"),
            ("dapr-api-token", b"stolen"),
            ("Traceparent", b"from-header"),
        ),
    )
    headers = http_headers(rec, {"traceparent": "from-event"}, pubsubname="p")
    assert headers["__offset"] == "41"
    assert headers.getall("Content-Type") == ["application/cloudevents+json"]
    assert "Content-Length" not in headers
    assert "dapr-api-token" not in headers
    assert headers.getall("traceparent") == ["from-event"]
    assert "__key" not in headers


def test_invalid_header_bytes_are_percent_encoded() -> None:
    rec = record(
        key=b"k\x00ey",
        headers=(("ctl", b"a\x01b\r\nc"), ("bad-utf8", b"\xff\xfeok"), ("tab", b"a\tb")),
    )
    headers = http_headers(rec, {"traceparent": "x\ny"}, pubsubname="p")
    assert headers["ctl"] == "a%01b%0D%0Ac"
    assert headers["bad-utf8"] == "%FF%FEok"
    assert headers["tab"] == "a\tb"  # HTAB is valid in a field value
    assert headers["__key"] == "k%00ey"
    assert headers["traceparent"] == "x%0Ay"


def test_invalid_header_names_are_escaped_or_skipped(caplog: pytest.LogCaptureFixture) -> None:
    rec = record(headers=(("my header", b"1"), ("", b"2"), ("naïve", b"3")))
    headers = http_headers(rec, {}, pubsubname="p")
    assert headers["my%20header"] == "1"
    assert headers["na%C3%AFve"] == "3"
    assert "" not in headers
    assert "not a valid HTTP header name" in caplog.text


def test_escape_headers_url_escapes_every_value() -> None:
    rec = record(key=b"a b/c", headers=(("h", b"x y&z"),))
    headers = http_headers(rec, {}, pubsubname="p", escape_all=True)
    assert headers["h"] == "x+y%26z"
    assert headers["__key"] == "a+b%2Fc"


# --- Dispatcher against a real app -------------------------------------------------------------


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedApp:
    """A real aiohttp app: answers POSTs from ``script[path]`` (a list consumed in order; the
    last entry repeats; default 200 empty) and records every delivery."""

    deliveries: list[Delivery] = field(default_factory=list)
    script: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    block: asyncio.Event | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handler(self, request: web.Request) -> web.Response:
        self.deliveries.append(Delivery(request.path, dict(request.headers), await request.read()))
        self.arrived.set()
        if self.block is not None:
            await self.block.wait()
        answers = self.script.get(request.path, [(200, b"")])
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        return web.Response(status=status, body=body)

    def paths(self) -> list[str]:
        return [d.path for d in self.deliveries]


@pytest.fixture
async def app() -> AsyncIterator[tuple[ScriptedApp, int]]:
    scripted = ScriptedApp()
    async with serving(scripted.handler) as port:
        yield scripted, port
        if scripted.block is not None:
            scripted.block.set()


@pytest.fixture
async def make_dispatcher(
    app: tuple[ScriptedApp, int],
) -> AsyncIterator[Callable[..., tuple[Dispatcher, DeadLetters]]]:
    _, port = app
    channels: list[AppChannel] = []

    def make(
        *subs: TopicSubscription,
        retry: RetryPolicy = FOREVER,
        dead_letters: DeadLetters | None = None,
        **kw: Any,
    ) -> tuple[Dispatcher, DeadLetters]:
        channel = AppChannel(
            SidecarSettings(app_id="orders-app", app_port=port, delivery_timeout_s=5)
        )
        channels.append(channel)
        dl = dead_letters or DeadLetters()
        dispatcher = Dispatcher(
            app_id="orders-app",
            pubsubname="pubsub",
            channel=channel,
            retry=retry,
            dead_letter=dl,
            **kw,
        )
        dispatcher.set_subscriptions({s.topic: s for s in subs})
        return dispatcher, dl

    yield make
    for channel in channels:
        await channel.close()


def subscription(
    *rules: tuple[str, str],
    default: str | None = "/orders",
    dlt: str | None = None,
    topic: str = "orders",
    **metadata: str,
) -> TopicSubscription:
    return TopicSubscription(
        pubsubname="pubsub",
        topic=topic,
        rules=tuple(Route(m, p) for m, p in rules),
        default_path=default,
        metadata=metadata,
        dead_letter_topic=dlt,
    )


async def handle(dispatcher: Dispatcher, rec: Record) -> None:
    await asyncio.wait_for(dispatcher.handle(rec), timeout=10)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_success_posts_original_bytes_with_headers(app, make_dispatcher) -> None:
    scripted, _ = app
    dispatcher, dl = make_dispatcher(subscription())
    value = (
        b'{"id":"ce-1",  "traceparent":"00-0af7651916cd43dd8448eb211c80319c-'
        b'b7ad6b7169203331-01","data":{"n":1.50}}'
    )
    await handle(dispatcher, record(value, headers=(("tenant", b"acme"),)))
    [d] = scripted.deliveries
    assert d.path == "/orders"
    assert d.body == value
    assert d.headers["Content-Type"] == "application/cloudevents+json"
    assert d.headers["tenant"] == "acme"
    assert d.headers["__key"] == "key-1"
    assert d.headers["__offset"] == "41"
    assert d.headers["__partition"] == "2"
    assert d.headers["__topic"] == "orders"
    assert d.headers["__timestamp"] == "1700000000123"
    assert d.headers["pubsubName"] == "pubsub"
    assert d.headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert dl.calls == []


SUCCESS_ROWS = [
    (200, b""),
    (204, b""),
    (200, b"not json"),
    (200, b"{}"),
    (200, b'{"status": "SUCCESS"}'),
    (200, b'{"status": ""}'),
]
RETRY_ROWS = [
    (200, b'{"status": "RETRY"}'),
    (200, b'{"status": "success"}'),
    (200, b'{"status": "bogus"}'),
    (500, b""),
    (400, b""),
    (503, b'{"status": "DROP"}'),
]
DROP_ROWS = [(200, b'{"status": "DROP"}'), (404, b"")]


@pytest.mark.parametrize(("status", "body"), SUCCESS_ROWS)
async def test_success_rows_ack_after_one_post(app, make_dispatcher, status, body) -> None:
    scripted, _ = app
    scripted.script["/orders"] = [(status, body)]
    dispatcher, dl = make_dispatcher(subscription(dlt="dead"))
    await handle(dispatcher, record())
    assert scripted.paths() == ["/orders"]
    assert dl.calls == []


@pytest.mark.parametrize(("status", "body"), RETRY_ROWS)
async def test_retry_rows_are_retried_until_success(app, make_dispatcher, status, body) -> None:
    scripted, _ = app
    scripted.script["/orders"] = [(status, body), (status, body), (200, b"")]
    dispatcher, dl = make_dispatcher(subscription())
    await handle(dispatcher, record())
    assert scripted.paths() == ["/orders"] * 3
    assert dl.calls == []


@pytest.mark.parametrize(("status", "body"), DROP_ROWS)
async def test_drop_rows_go_to_the_dead_letter_topic(app, make_dispatcher, status, body) -> None:
    scripted, _ = app
    scripted.script["/orders"] = [(status, body)]
    dispatcher, dl = make_dispatcher(subscription(dlt="dead"))
    rec = record()
    await handle(dispatcher, rec)
    assert scripted.paths() == ["/orders"]
    assert dl.calls == [("dead", rec)]  # the original record, unchanged


@pytest.mark.parametrize(("status", "body"), DROP_ROWS)
async def test_drop_rows_without_dlt_are_acked(
    app, make_dispatcher, status, body, caplog: pytest.LogCaptureFixture
) -> None:
    scripted, _ = app
    scripted.script["/orders"] = [(status, body)]
    dispatcher, dl = make_dispatcher(subscription())
    await handle(dispatcher, record())
    assert scripted.paths() == ["/orders"]
    assert dl.calls == []
    [line] = [r for r in caplog.records if r.name == "tidings.sidecar.delivery.engine"]
    assert (
        line.app_id,
        line.pubsubname,
        line.topic,
        line.partition,
        line.offset,
        line.cloudevent_id,
    ) == ("orders-app", "pubsub", "orders", 2, 41, "ce-1")
    assert line.levelno == (logging.ERROR if status == 404 else logging.WARNING)


async def test_bounded_retries_then_dead_letter(app, make_dispatcher) -> None:
    scripted, _ = app
    scripted.script["/orders"] = [(500, b"")]
    dispatcher, dl = make_dispatcher(subscription(dlt="dead"), retry=bounded(3))
    rec = record()
    await handle(dispatcher, rec)
    assert scripted.paths() == ["/orders"] * 4  # first attempt + 3 retries
    assert dl.calls == [("dead", rec)]


async def test_unbounded_policy_with_dlt_dead_letters_the_first_failure(
    app, make_dispatcher
) -> None:
    """Dapr without an inbound Resiliency policy: the first failure goes to the DLT (§5.3)."""
    scripted, _ = app
    scripted.script["/orders"] = [(200, b'{"status": "RETRY"}')]
    dispatcher, dl = make_dispatcher(subscription(dlt="dead"), retry=FOREVER)
    await handle(dispatcher, record())
    assert scripted.paths() == ["/orders"]
    assert [t for t, _ in dl.calls] == ["dead"]


async def test_bounded_retries_without_dlt_give_up_with_an_error_line(
    app, make_dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    scripted, _ = app
    scripted.script["/orders"] = [(500, b"")]
    dispatcher, dl = make_dispatcher(subscription(), retry=bounded(2))
    await handle(dispatcher, record())
    assert scripted.paths() == ["/orders"] * 3
    assert dl.calls == []
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "too many failed attempts (3)" in line.getMessage()
    assert (line.topic, line.partition, line.offset, line.cloudevent_id) == (
        "orders",
        2,
        41,
        "ce-1",
    )


async def test_unreachable_app_is_retried_then_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Transport errors (§2.3 last row) are RETRY: with bounded retries and a DLT, the record
    goes to the DLT after them. Nothing listens on the port here."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    channel = AppChannel(SidecarSettings(app_id="a", app_port=dead_port))
    dl = DeadLetters()
    dispatcher = Dispatcher(
        app_id="a", pubsubname="pubsub", channel=channel, retry=bounded(2), dead_letter=dl
    )
    dispatcher.set_subscriptions({"orders": subscription(dlt="dead")})
    try:
        await handle(dispatcher, record())
    finally:
        await channel.close()
    assert [t for t, _ in dl.calls] == ["dead"]
    assert caplog.text.count("error delivering to the app") == 3  # 1 attempt + 2 retries


async def test_unmatched_goes_to_dlt_or_is_acked(app, make_dispatcher) -> None:
    scripted, _ = app
    rules = [('event.type == "never"', "/never")]
    with_dlt, dl = make_dispatcher(subscription(*rules, default=None, dlt="dead"))
    await handle(with_dlt, record())
    assert [t for t, _ in dl.calls] == ["dead"]
    without, dl2 = make_dispatcher(subscription(*rules, default=None))
    await handle(without, record())
    assert dl2.calls == []
    assert scripted.deliveries == []


def expiring(delta: timedelta) -> bytes:
    when = (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")
    return orjson.dumps({"id": "ce-exp", "expiration": when, "data": {}})


async def test_expired_goes_to_dlt_or_is_acked(
    app, make_dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    scripted, _ = app
    with_dlt, dl = make_dispatcher(subscription(dlt="dead"))
    await handle(with_dlt, record(expiring(-timedelta(minutes=1))))
    assert [t for t, _ in dl.calls] == ["dead"]
    without, dl2 = make_dispatcher(subscription())
    await handle(without, record(expiring(-timedelta(minutes=1))))
    assert dl2.calls == []
    assert scripted.deliveries == []
    assert caplog.text.count("dropping expired pub/sub event ce-exp") == 2
    # not yet expired: delivered
    await handle(without, record(expiring(timedelta(minutes=5))))
    assert scripted.paths() == ["/orders"]


async def test_poison_goes_to_dlt(app, make_dispatcher, caplog: pytest.LogCaptureFixture) -> None:
    scripted, _ = app
    dispatcher, dl = make_dispatcher(subscription(dlt="dead"))
    rec = record(b"[1, 2, 3]")
    await handle(dispatcher, rec)
    assert dl.calls == [("dead", rec)]
    assert scripted.deliveries == []
    assert "error deserializing cloud event" in caplog.text


async def test_poison_without_dlt_is_retried_forever_by_default(
    app, make_dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    """A poison pill blocks its partition unless a DLT is set (§5.9); cancel stops it."""
    dispatcher, dl = make_dispatcher(subscription(), retry=FOREVER)
    task = asyncio.create_task(dispatcher.handle(record(b"not json")))
    await wait_for(lambda: caplog.text.count("error deserializing cloud event") >= 5)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dl.calls == []


async def test_cel_routing_with_event_twice_and_int_conversion(app, make_dispatcher) -> None:
    scripted, _ = app
    dispatcher, _ = make_dispatcher(
        subscription(
            ('event.type == "order" && event.source == "shop"', "/shop"),
            ("int(event.data.x) > 10", "/big"),
            ("event.data.amount > 10000.0", "/large"),
            default="/rest",
        )
    )
    for value in [
        {"type": "order", "source": "shop", "data": {"x": 1}},
        {"type": "order", "source": "web", "data": {"x": 20.5}},
        {"type": "order", "source": "web", "data": {"x": 1, "amount": 20000}},
        {"type": "order", "source": "web", "data": {"x": 3, "amount": 5}},
    ]:
        await handle(dispatcher, record(orjson.dumps({"id": str(uuid.uuid4()), **value})))
    assert scripted.paths() == ["/shop", "/big", "/large", "/rest"]


async def test_routing_error_goes_to_dlt_else_retries(app, make_dispatcher) -> None:
    scripted, _ = app
    rules = [("event.data.missing > 1", "/x")]
    with_dlt, dl = make_dispatcher(subscription(*rules, dlt="dead"))
    await handle(with_dlt, record())
    assert [t for t, _ in dl.calls] == ["dead"]
    without, dl2 = make_dispatcher(subscription(*rules), retry=bounded(2))
    await handle(without, record())  # gives up after 2 retries, nothing delivered
    assert dl2.calls == []
    assert scripted.deliveries == []


async def test_invalid_header_bytes_are_delivered_escaped(app, make_dispatcher) -> None:
    """components-contrib#3507: control bytes in a Kafka header must not stall the partition."""
    scripted, _ = app
    dispatcher, dl = make_dispatcher(subscription())
    await handle(dispatcher, record(headers=(("bin", b"a\x01b\xff"), ("nl", b"x\r\ny"))))
    [d] = scripted.deliveries
    assert d.headers["bin"] == "a%01b%FF"
    assert d.headers["nl"] == "x%0D%0Ay"
    assert dl.calls == []


async def test_cancellation_during_retry_sleep_stops_at_once_without_dlt(
    app, make_dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    scripted, _ = app
    scripted.script["/orders"] = [(500, b"")]
    slow = RetryPolicy("constant", 30.0, 30.0, 1.0, 5)  # would sleep 30 s before the retry
    dispatcher, dl = make_dispatcher(subscription(dlt="dead"), retry=slow)
    task = asyncio.create_task(dispatcher.handle(record()))
    await wait_for(lambda: "retrying in 30s" in caplog.text)  # logged just before the sleep
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.get_running_loop().time() - started < 0.5
    assert dl.calls == [] and dl.attempts == 0
    assert len(scripted.deliveries) == 1


async def test_cancellation_during_the_post_propagates(app, make_dispatcher) -> None:
    scripted, _ = app
    scripted.block = asyncio.Event()
    dispatcher, dl = make_dispatcher(subscription(dlt="dead"))
    task = asyncio.create_task(dispatcher.handle(record()))
    await asyncio.wait_for(scripted.arrived.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1)
    assert dl.attempts == 0


async def test_raw_payload_subscription_posts_a_synthesised_cloudevent(
    app, make_dispatcher
) -> None:
    scripted, _ = app
    dispatcher, _ = make_dispatcher(subscription(rawPayload="true"))
    value = b"\x00raw bytes, not JSON"
    await handle(dispatcher, record(value, headers=(("traceparent", b"00-t-s-01"),)))
    await handle(dispatcher, record(value))
    first, second = (orjson.loads(d.body) for d in scripted.deliveries)
    assert base64.b64decode(first["data_base64"]) == value
    assert (first["source"], first["type"], first["topic"], first["pubsubname"]) == (
        "Dapr",
        "com.dapr.event.sent",
        "orders",
        "pubsub",
    )
    assert first["datacontenttype"] == "application/octet-stream"
    assert first["traceparent"] == "00-t-s-01"
    assert scripted.deliveries[0].headers["traceparent"] == "00-t-s-01"
    assert first["id"] != second["id"]  # a new id on every delivery


async def test_dead_letter_publish_is_retried_until_stored(app, make_dispatcher) -> None:
    scripted, _ = app
    scripted.script["/orders"] = [(200, b'{"status": "DROP"}')]
    dl = DeadLetters(fail_first=3)
    dispatcher, _ = make_dispatcher(subscription(dlt="dead"), dead_letters=dl)
    rec = record()
    await handle(dispatcher, rec)
    assert dl.attempts == 4
    assert dl.calls == [("dead", rec)]
    assert scripted.paths() == ["/orders"]  # the app is not asked again


async def test_cancellation_during_dead_letter_retries_propagates(app, make_dispatcher) -> None:
    scripted, _ = app
    scripted.script["/orders"] = [(404, b"")]
    dl = DeadLetters(fail_first=10**9)
    dispatcher, _ = make_dispatcher(subscription(dlt="dead"), dead_letters=dl)
    task = asyncio.create_task(dispatcher.handle(record()))
    await wait_for(lambda: dl.attempts >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dl.calls == []


async def test_cancellation_inside_the_dead_letter_publish_propagates(app, make_dispatcher) -> None:
    dl = DeadLetters(block=asyncio.Event())
    dispatcher, _ = make_dispatcher(subscription(dlt="dead"), dead_letters=dl)
    task = asyncio.create_task(dispatcher.handle(record(b"poison")))
    await wait_for(lambda: dl.attempts == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1)
    assert dl.attempts == 1 and dl.calls == []  # not retried after cancellation


async def test_vanished_subscription_is_acked_with_a_log_line(
    app, make_dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    scripted, _ = app
    dispatcher, dl = make_dispatcher(subscription())
    dispatcher.set_subscriptions({})
    await handle(dispatcher, record())
    assert scripted.deliveries == [] and dl.calls == []
    assert "has no subscription any more" in caplog.text


async def test_hot_reload_applies_to_a_record_in_retry(app, make_dispatcher) -> None:
    scripted, _ = app
    scripted.script["/old"] = [(500, b"")]
    slowish = RetryPolicy("constant", 0.05, 0.05, 1.0, -1)
    dispatcher, _ = make_dispatcher(subscription(default="/old"), retry=slowish)
    task = asyncio.create_task(dispatcher.handle(record()))
    await wait_for(lambda: len(scripted.deliveries) >= 1)
    dispatcher.set_subscriptions({"orders": subscription(default="/new")})
    await asyncio.wait_for(task, timeout=5)
    assert scripted.paths()[-1] == "/new"


def test_set_subscriptions_refuses_bad_cel_and_keeps_the_old_set() -> None:
    channel = AppChannel(SidecarSettings(app_id="a", app_port=1))
    dispatcher = Dispatcher(
        app_id="a", pubsubname="pubsub", channel=channel, retry=FOREVER, dead_letter=DeadLetters()
    )
    dispatcher.set_subscriptions({"orders": subscription()})
    with pytest.raises(ResourceError, match=r"routes.rules\[0\].match"):
        dispatcher.set_subscriptions({"orders": subscription(("event.(", "/x"))})
    assert set(dispatcher._targets) == {"orders"}


async def test_delivery_state_counts_retries_dead_letters_and_the_last_error(
    app, make_dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    """What /metrics and GET /v1.0/metadata read (metrics.topic_deliveries): two retries, one
    dead-lettered record, the last failure's reason, nothing in flight after; every log line
    says what happens next (``outcome``)."""
    scripted, _ = app
    topic = f"counted-{uuid.uuid4().hex[:8]}"
    scripted.script["/orders"] = [(500, b"")]
    dispatcher, _dl = make_dispatcher(subscription(topic=topic, dlt="dead"), retry=bounded(2))
    state = topic_deliveries("orders-app", "pubsub", topic)
    task = asyncio.create_task(handle(dispatcher, record(topic=topic)))
    await scripted.arrived.wait()
    assert state.in_flight == 1
    await task
    assert (state.in_flight, state.retries, state.dead_lettered) == (0, 2, 1)
    assert state.last_error is not None and "failed" in state.last_error
    outcomes = [r.outcome for r in caplog.records if r.name == "tidings.sidecar.delivery.engine"]
    assert outcomes == ["retry", "retry", "dead-letter"]
