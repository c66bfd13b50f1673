"""Tests of bulk subscribe delivery (``sidecar/delivery/bulk.py``,
``sidecar/delivery/channel/bulk_format.py``, §2.4).

The wire format functions are pure and tested as tables. :class:`BulkDispatcher` runs against a
real aiohttp app on 127.0.0.1 that answers per entry as each event's ``data.answer`` says; the
records are hand-made and the dead-letter publisher is an in-test recorder, as in
``test_engine.py`` (the Kafka side is ``brokers/kafka/test_consuming.py``; end to end with processes
is ``tests/integration/test_bulk.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from tidings.sidecar.brokers.base import BatchPolicy, Record
from tidings.sidecar.delivery.bulk import BatchingHandler, BulkDispatcher
from tidings.sidecar.delivery.channel.bulk_format import bulk_request_body, classify_bulk
from tidings.sidecar.delivery.channel.http import AppChannel
from tidings.sidecar.delivery.channel.types import AppStatus, BulkEvent
from tidings.sidecar.envelopes.reading import read_event
from tidings.sidecar.resources import Route, TopicSubscription
from tidings.sidecar.resources.kafka import RetryPolicy
from tidings.sidecar.resources.models import BulkOptions
from tidings.sidecar.runtime.metrics import topic_deliveries
from tidings.sidecar.runtime.settings import SidecarSettings

from ..apps import DeadLetters, serving

FOREVER = RetryPolicy("constant", 0.001, 0.001, 1.0, -1)
IDS = ["a", "b", "c"]


# --- the answer, per entry ----------------------------------------------------------------------


def statuses(*pairs: tuple[str, Any]) -> bytes:
    return orjson.dumps({"statuses": [{"entryId": e, "status": s} for e, s in pairs]})


@pytest.mark.parametrize(
    ("http_status", "body", "expected"),
    [
        (
            200,
            statuses(("a", "SUCCESS"), ("b", "RETRY"), ("c", "DROP")),
            ["SUCCESS", "RETRY", "DROP"],
        ),
        # a missing entry, "" and unknown (case-sensitive) statuses are retried
        (200, statuses(("a", "SUCCESS"), ("b", "")), ["SUCCESS", "RETRY", "RETRY"]),
        (
            200,
            statuses(("a", "success"), ("b", "SUCCESS"), ("c", 3)),
            ["RETRY", "SUCCESS", "RETRY"],
        ),
        # an unknown entryId is ignored
        (
            200,
            statuses(("zzz", "DROP"), ("a", "SUCCESS"), ("b", "SUCCESS"), ("c", "SUCCESS")),
            ["SUCCESS"] * 3,
        ),
        # Go's JSON field names match case-insensitively
        (200, b'{"Statuses":[{"EntryID":"a","Status":"DROP"}]}', ["DROP", "RETRY", "RETRY"]),
        (201, statuses(*[(i, "SUCCESS") for i in IDS]), ["SUCCESS"] * 3),
        (200, b"", ["RETRY"] * 3),
        (200, b"not json", ["RETRY"] * 3),
        (200, b"{}", ["RETRY"] * 3),
        (200, b"null", ["RETRY"] * 3),
        (200, b'{"statuses": {"a": "SUCCESS"}}', ["RETRY"] * 3),
        (404, statuses(*[(i, "SUCCESS") for i in IDS]), ["DROP"] * 3),
        (500, b"", ["RETRY"] * 3),
        (400, statuses(*[(i, "SUCCESS") for i in IDS]), ["RETRY"] * 3),
    ],
)
def test_classify_bulk(http_status: int, body: bytes, expected: list[str]) -> None:
    answers = classify_bulk(http_status, body, IDS)
    assert [a.status.value for a in answers] == expected
    assert all(a.http_status == http_status for a in answers)


def test_bulk_body_embeds_the_exact_event_bytes() -> None:
    value = (
        b'{"id":"ce-1","type":"t","specversion":"1.0","source":"s",'
        b'"data":{"n":12345678901234567890123}}'
    )
    read = read_event(value, topic="orders", pubsubname="pubsub", raw_payload=False, headers=())
    body = bulk_request_body(
        [BulkEvent("e-1", read, {"__offset": "7"})],
        request_id="r-1",
        topic="orders",
        pubsubname="pubsub",
    )
    assert b'"event":' + value in body  # numbers beyond 64 bits survive unchanged
    parsed = json.loads(body)
    assert parsed == {
        "id": "r-1",
        "type": "com.dapr.event.sent.bulk",
        "topic": "orders",
        "pubsubname": "pubsub",
        "metadata": {},
        "entries": [
            {
                "entryId": "e-1",
                "event": json.loads(value),
                "metadata": {"__offset": "7"},
                "contentType": "application/cloudevents+json",
            }
        ],
    }


# --- BulkDispatcher against a real app ----------------------------------------------------------


@dataclass
class BulkApp:
    """A real aiohttp app taking bulk POSTs. Each entry is answered as its event's
    ``data.answer`` says: ``SUCCESS``, ``DROP``, ``RETRY_ONCE`` (RETRY the first time),
    ``OMIT_ONCE`` (no status the first time); ``status_code`` overrides the whole answer."""

    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    status_code: list[int] = field(default_factory=list)

    async def handler(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append((request.path, dict(request.headers), body))
        if self.status_code:
            return web.Response(status=self.status_code.pop(0))
        if "entries" not in body:  # a single delivery: the CloudEvent itself
            return web.json_response({"status": "SUCCESS"})
        answers = []
        for entry in body["entries"]:
            event_id = entry["event"]["id"]
            self.seen[event_id] += 1
            wanted = (entry["event"].get("data") or {}).get("answer", "SUCCESS")
            first = self.seen[event_id] == 1
            if wanted == "OMIT_ONCE" and first:
                continue
            if wanted.endswith("_ONCE"):
                wanted = "RETRY" if first else "SUCCESS"
            answers.append({"entryId": entry["entryId"], "status": wanted})
        return web.json_response({"statuses": answers})

    def entry_ids(self, index: int) -> list[str]:
        return [e["event"]["id"] for e in self.requests[index][2]["entries"]]


@pytest.fixture
async def bulk_app() -> AsyncIterator[tuple[BulkApp, int]]:
    app = BulkApp()
    async with serving(app.handler) as port:
        yield app, port


@pytest.fixture
async def make_dispatcher(
    bulk_app: tuple[BulkApp, int],
) -> AsyncIterator[Callable[..., tuple[BulkDispatcher, DeadLetters]]]:
    _, port = bulk_app
    channels: list[AppChannel] = []

    def make(
        *subs: TopicSubscription, retry: RetryPolicy = FOREVER
    ) -> tuple[BulkDispatcher, DeadLetters]:
        channel = AppChannel(
            SidecarSettings(app_id="orders-app", app_port=port, delivery_timeout_s=5)
        )
        channels.append(channel)
        dl = DeadLetters()
        dispatcher = BulkDispatcher(
            app_id="orders-app", pubsubname="pubsub", channel=channel, retry=retry, dead_letter=dl
        )
        dispatcher.set_subscriptions({s.topic: s for s in subs})
        return dispatcher, dl

    yield make
    for channel in channels:
        await channel.close()


BULK = BulkOptions(10, 50)


def bulk_sub(
    *rules: tuple[str, str],
    default: str | None = "/orders",
    dlt: str | None = None,
    bulk: BulkOptions | None = BULK,
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
        bulk=bulk,
    )


def rec(
    event_id: str,
    answer: str = "SUCCESS",
    offset: int = 0,
    *,
    type_: str = "t",
    topic: str = "orders",
) -> Record:
    value = orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "s",
            "type": type_,
            "datacontenttype": "application/json",
            "data": {"answer": answer},
        }
    )
    return Record(
        topic=topic,
        partition=1,
        offset=offset,
        key=b"k",
        value=value,
        headers=(("h", b"v"),),
        timestamp_ms=1700000000123,
    )


async def run(coro: Any) -> None:
    await asyncio.wait_for(coro, timeout=10)


def test_batch_policy_only_for_bulk_topics() -> None:
    d = BulkDispatcher(
        app_id="a",
        pubsubname="pubsub",
        channel=AppChannel(SidecarSettings(app_id="a", app_port=1)),
        retry=FOREVER,
        dead_letter=DeadLetters(),
    )
    assert d.batch_policy("orders") is None
    d.set_subscriptions(
        {
            "orders": bulk_sub(bulk=BulkOptions(7, 250)),
            "defaults": bulk_sub(topic="defaults", bulk=BulkOptions()),
            "single": bulk_sub(topic="single", bulk=None),
        }
    )
    assert d.batch_policy("orders") == BatchPolicy(7, 0.25)
    assert d.batch_policy("defaults") == BatchPolicy(None, None)
    assert d.batch_policy("single") is None and d.batch_policy("other") is None


async def test_one_request_carries_the_batch_in_the_section_2_4_shape(
    bulk_app, make_dispatcher
) -> None:
    app, _ = bulk_app
    dispatcher, dl = make_dispatcher(bulk_sub())
    records = [rec(f"e{i}", offset=10 + i) for i in range(3)]
    await run(dispatcher.handle_batch(records))
    [(path, headers, body)] = app.requests
    assert path == "/orders"
    assert headers["Content-Type"] == "application/json"
    assert body["type"] == "com.dapr.event.sent.bulk"
    assert (body["topic"], body["pubsubname"]) == ("orders", "pubsub")
    assert body["id"]
    assert [e["event"] for e in body["entries"]] == [json.loads(r.value) for r in records]
    assert len({e["entryId"] for e in body["entries"]}) == 3
    first = body["entries"][0]
    assert first["contentType"] == "application/cloudevents+json"
    assert {
        k: first["metadata"][k]
        for k in ("__offset", "__partition", "__topic", "__key", "h", "pubsubName")
    } == {
        "__offset": "10",
        "__partition": "1",
        "__topic": "orders",
        "__key": "k",
        "h": "v",
        "pubsubName": "pubsub",
    }
    assert "Content-Type" not in first["metadata"]
    assert dl.calls == []


async def test_per_entry_retry_is_redelivered_alone_and_drop_dead_letters(
    bulk_app, make_dispatcher
) -> None:
    app, _ = bulk_app
    # bounded retries: with the unbounded default a dead-letter topic takes the first failure
    dispatcher, dl = make_dispatcher(
        bulk_sub(dlt="dead"), retry=RetryPolicy("constant", 0.001, 0.001, 1.0, 5)
    )
    records = [
        rec("ok"),
        rec("retry", "RETRY_ONCE", 1),
        rec("drop", "DROP", 2),
        rec("omit", "OMIT_ONCE", 3),
    ]
    await run(dispatcher.handle_batch(records))
    assert app.entry_ids(0) == ["ok", "retry", "drop", "omit"]
    # only the entries answered RETRY or not at all come again, with the same entryIds
    assert app.entry_ids(1) == ["retry", "omit"]
    assert len(app.requests) == 2
    first_ids = {e["event"]["id"]: e["entryId"] for e in app.requests[0][2]["entries"]}
    assert all(first_ids[e["event"]["id"]] == e["entryId"] for e in app.requests[1][2]["entries"])
    assert dl.calls == [("dead", records[2])]  # the original record


async def test_drop_without_dead_letter_topic_is_acked(bulk_app, make_dispatcher) -> None:
    app, _ = bulk_app
    dispatcher, dl = make_dispatcher(bulk_sub())
    await run(dispatcher.handle_batch([rec("drop", "DROP"), rec("ok", offset=1)]))
    assert len(app.requests) == 1 and dl.calls == []


@pytest.mark.parametrize(
    ("codes", "requests", "dead"),
    [
        ([500], 2, 0),  # every entry retried, then delivered
        ([404], 1, 2),  # every entry dropped: dead-letter topic
    ],
)
async def test_whole_request_statuses(
    bulk_app, make_dispatcher, codes: list[int], requests: int, dead: int
) -> None:
    app, _ = bulk_app
    app.status_code = list(codes)
    dispatcher, dl = make_dispatcher(
        bulk_sub(dlt="dead"), retry=RetryPolicy("constant", 0.001, 0.001, 1.0, 3)
    )
    await run(dispatcher.handle_batch([rec("a"), rec("b", offset=1)]))
    assert len(app.requests) == requests
    assert len(dl.calls) == dead


async def test_bounded_retries_then_dead_letter_per_entry(bulk_app, make_dispatcher) -> None:
    app, _ = bulk_app
    dispatcher, dl = make_dispatcher(
        bulk_sub(dlt="dead"), retry=RetryPolicy("constant", 0.001, 0.001, 1.0, 2)
    )
    records = [rec("ok"), rec("never", "RETRY", 1)]
    await run(dispatcher.handle_batch(records))
    assert [app.entry_ids(i) for i in range(len(app.requests))] == [
        ["ok", "never"],
        ["never"],
        ["never"],
    ]
    assert dl.calls == [("dead", records[1])]


async def test_routes_are_chosen_per_entry_one_request_per_path(bulk_app, make_dispatcher) -> None:
    app, _ = bulk_app
    dispatcher, dl = make_dispatcher(
        bulk_sub(
            ('event.type == "widget"', "/widgets"),
            ('event.type == "gadget"', "/gadgets"),
            default=None,
            dlt="dead",
        )
    )
    records = [
        rec("w1", type_="widget"),
        rec("g1", type_="gadget", offset=1),
        rec("x", type_="other", offset=2),
        rec("w2", type_="widget", offset=3),
    ]
    await run(dispatcher.handle_batch(records))
    by_path = {path: [e["event"]["id"] for e in body["entries"]] for path, _, body in app.requests}
    assert by_path == {"/widgets": ["w1", "w2"], "/gadgets": ["g1"]}
    assert dl.calls == [("dead", records[2])]  # no route matched: dead-letter topic


async def test_poison_and_expired_entries_never_reach_the_app(bulk_app, make_dispatcher) -> None:
    app, _ = bulk_app
    dispatcher, dl = make_dispatcher(bulk_sub(dlt="dead"))
    poison = Record("orders", 1, 0, None, b"not json")
    expired = Record(
        "orders",
        1,
        1,
        None,
        orjson.dumps(
            {
                "specversion": "1.0",
                "id": "old",
                "source": "s",
                "type": "t",
                "expiration": "2000-01-01T00:00:00Z",
            }
        ),
    )
    await run(dispatcher.handle_batch([poison, expired, rec("ok", offset=2)]))
    assert [app.entry_ids(0)] == [["ok"]]
    assert dl.calls == [("dead", poison), ("dead", expired)]


async def test_a_single_record_of_a_bulk_topic_goes_as_a_batch_of_one(
    bulk_app, make_dispatcher
) -> None:
    app, _ = bulk_app
    dispatcher, _ = make_dispatcher(bulk_sub(), bulk_sub(topic="single", bulk=None))
    await run(dispatcher(rec("one")))  # as a broker that does not batch calls it
    assert app.entry_ids(0) == ["one"]
    await run(dispatcher(rec("plain", topic="single")))
    assert app.requests[1][2]["id"] == "plain"  # single delivery: the CloudEvent itself


async def test_cancellation_propagates_and_nothing_is_dead_lettered(
    bulk_app, make_dispatcher
) -> None:
    app, _ = bulk_app
    dispatcher, dl = make_dispatcher(bulk_sub())
    task = asyncio.create_task(dispatcher.handle_batch([rec("never", "RETRY")]))
    deadline = asyncio.get_running_loop().time() + 10
    while len(app.requests) < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dl.calls == []


async def test_unbounded_policy_with_dead_letter_topic_dead_letters_the_first_failure(
    bulk_app, make_dispatcher
) -> None:
    app, _ = bulk_app
    dispatcher, dl = make_dispatcher(bulk_sub(dlt="dead"))  # backOffMaxRetries -1, as Dapr
    records = [rec("ok"), rec("retry", "RETRY_ONCE", 1)]
    await run(dispatcher.handle_batch(records))
    assert len(app.requests) == 1
    assert dl.calls == [("dead", records[1])]


def test_statuses_map_to_app_status() -> None:
    assert [a.status for a in classify_bulk(200, statuses(("a", "DROP")), ["a"])] == [
        AppStatus.DROP
    ]


async def test_bulk_outcomes_feed_the_topic_delivery_state(bulk_app, make_dispatcher) -> None:
    """What ``GET /v1.0/metadata`` and ``/metrics`` show (retries, dead-lettered, in flight,
    last error) counts bulk entries like single deliveries."""
    topic = "orders-state"
    dispatcher, _ = make_dispatcher(
        bulk_sub(topic=topic, dlt="dead"), retry=RetryPolicy("constant", 0.001, 0.001, 1.0, 5)
    )
    records = [
        rec("ok", topic=topic),
        rec("retry", "RETRY_ONCE", 1, topic=topic),
        rec("drop", "DROP", 2, topic=topic),
    ]
    await run(dispatcher.handle_batch(records))
    state = topic_deliveries("orders-app", "pubsub", topic)
    assert (state.retries, state.dead_lettered, state.in_flight) == (1, 1, 0)
    assert state.last_error is not None and "DROP" in state.last_error


async def test_batching_handler_batches_only_the_topics_it_is_told(
    bulk_app, make_dispatcher
) -> None:
    """The runner's broker handler: a topic served by a streaming subscription is never batched
    for the app's bulk dispatcher, even if the app also declared it bulk."""
    app, _ = bulk_app
    dispatcher, _ = make_dispatcher(bulk_sub(), bulk_sub(topic="streamed"))
    handled: list[Record] = []

    async def handle(record: Record) -> None:
        handled.append(record)

    handler = BatchingHandler(handle, dispatcher, lambda topic: topic != "streamed")
    assert handler.batch_policy("orders") == BatchPolicy(10, 0.05)
    assert handler.batch_policy("streamed") is None
    assert handler.batch_policy("unknown") is None
    one = rec("single")
    await run(handler(one))
    assert handled == [one]  # the plain path is the given handle
    await run(handler.handle_batch([rec("a"), rec("b", offset=1)]))
    assert app.entry_ids(0) == ["a", "b"]
