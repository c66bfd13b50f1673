"""inbound/http/: the sidecar HTTP API over real HTTP (aiohttp TestServer on a 127.0.0.1 port) with
real brokers: the in-memory broker and, for Kafka rows, a KafkaProducer against the Tansu broker of
``kafka_bootstrap`` (read back with a plain aiokafka consumer).

``FakeRuntime`` stands in for the runner's RuntimeView (the runner is not part of this module);
it only reports state the tests set.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from yarl import URL

from tidings.sidecar.brokers.base import Broker, BrokerError
from tidings.sidecar.brokers.kafka import KafkaBroker
from tidings.sidecar.brokers.kafka.producing import KafkaProducer
from tidings.sidecar.brokers.memory import MemoryBroker
from tidings.sidecar.inbound.http.app import create_app
from tidings.sidecar.publishing.publisher import Publisher
from tidings.sidecar.resources.loading import LoadedComponent, check_component
from tidings.sidecar.resources.models import Component, Route, SubscriptionType, TopicSubscription
from tidings.sidecar.runtime.settings import SidecarSettings
from tidings.sidecar.runtime.tracing import valid_traceparent

from ...records import read_records

APP_ID = "orders"
MAX_BODY = 64 * 1024
BIG = b"12345678901234567890123"
DECIMAL = b"0.1000000000000000055511151231257827"


def component(name: str, ctype: str, **metadata: str) -> LoadedComponent:
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
        app_id=APP_ID,
        source="test",
    )


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@dataclass
class FakeRuntime:
    comps: dict[str, LoadedComponent]
    subs: list[TopicSubscription] = field(default_factory=list)
    outbound: bool = True
    app_channel: bool = True
    app_id: str = APP_ID
    fail: bool = False

    def components(self) -> list[LoadedComponent]:
        if self.fail:
            raise RuntimeError("secret internal detail")
        return list(self.comps.values())

    def subscriptions(self) -> list[TopicSubscription]:
        return self.subs

    def outbound_ready(self) -> bool:
        return self.outbound

    def outbound_problems(self) -> dict[str, str]:
        return {} if self.outbound else {"pubsub": "not connected"}

    def app_channel_ready(self) -> bool:
        return self.app_channel

    def capabilities(self, pubsubname: str) -> list[str]:
        # what the runner reports: the features of the component's broker class
        brokers = {"pubsub.kafka": KafkaBroker, "pubsub.in-memory": MemoryBroker}
        broker = brokers.get(self.comps[pubsubname].type)
        return sorted(broker.features) if broker is not None else []

    def extended(self) -> dict[str, str]:
        return {"kafka.assignment.pubsub": "orders:0"}


@dataclass
class Api:
    server: TestServer
    session: ClientSession
    runtime: FakeRuntime
    memory: MemoryBroker
    components: dict[str, LoadedComponent]
    brokers: dict[str, Broker]

    def url(self, path: str) -> URL:
        # encoded=True: the path goes on the wire exactly as written (escapes included)
        return URL(f"http://127.0.0.1:{self.server.port}{path}", encoded=True)

    async def call(
        self, method: str, path: str, body: bytes = b"", *, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        async with self.session.request(
            method, self.url(path), data=body, headers=headers or {}
        ) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()

    async def post(
        self, path: str, body: bytes = b"", content_type: str | None = None, **headers: str
    ) -> tuple[int, str, bytes]:
        h = dict(headers)
        if content_type:
            h["Content-Type"] = content_type
        return await self.call("POST", path, body, headers=h)

    def memory_values(self, topic: str) -> list[bytes]:
        return [r.value for r in self.memory._topics[topic].log]


async def start_api(
    components: dict[str, LoadedComponent],
    brokers: dict[str, Broker],
    memory: MemoryBroker,
    **settings: object,
) -> AsyncIterator[Api]:
    runtime = FakeRuntime(components)
    publisher = Publisher(app_id=APP_ID, brokers=brokers, components=components)
    settings = {"max_body_size": MAX_BODY, **settings}
    app = create_app(
        SidecarSettings(app_id=APP_ID, app_port=6000, **settings),  # type: ignore[arg-type]
        publisher,
        runtime,
    )
    async with TestServer(app, host="127.0.0.1") as server, ClientSession() as session:
        yield Api(server, session, runtime, memory, components, brokers)


@pytest.fixture
async def api(kafka_bootstrap: str) -> AsyncIterator[Api]:
    memory = MemoryBroker("mem")
    await memory.start()
    kafka = KafkaProducer(
        component("kafka", "pubsub.kafka", brokers=kafka_bootstrap, authType="none").kafka,
        pubsubname="kafka",
    )  # type: ignore[arg-type]
    await kafka.start()
    # A Kafka component whose broker is unreachable: its start failed, the runner keeps it.
    down = KafkaProducer(
        component("down", "pubsub.kafka", brokers=closed_port(), authType="none").kafka,
        pubsubname="down",  # type: ignore[arg-type]
        request_timeout_s=1,
    )
    with pytest.raises(BrokerError):
        await down.start()
    scoped = MemoryBroker("scoped")
    await scoped.start()
    components = {
        "mem": component("mem", "pubsub.in-memory"),
        "kafka": component("kafka", "pubsub.kafka", brokers=kafka_bootstrap, authType="none"),
        "down": component("down", "pubsub.kafka", brokers="127.0.0.1:1", authType="none"),
        "scoped": component("scoped", "pubsub.in-memory", publishingScopes=f"{APP_ID}=ok"),
        "starting": component("starting", "pubsub.in-memory"),  # no broker yet (race row)
    }
    brokers: dict[str, Broker] = {
        "mem": memory,
        "kafka": kafka,
        "down": down,  # type: ignore[dict-item]
        "scoped": scoped,
    }
    try:
        async for a in start_api(components, brokers, memory):
            yield a
    finally:
        await kafka.stop(5)


def dapr_error(status: int, ctype: str, body: bytes) -> dict:
    assert ctype.startswith("application/json"), (status, ctype, body)
    error = orjson.loads(body)
    assert b"Traceback" not in body
    return error


def error_info(error: dict) -> dict:
    return next(d for d in error["details"] if d["@type"].endswith("ErrorInfo"))


# -- §1.2 error matrix, one row per test case ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "ctype", "status", "code", "reason", "message"),
    [
        (
            "/v1.0/publish//t",
            b"",
            None,
            404,
            "ERR_PUBSUB_EMPTY",
            "DAPR_PUBSUB_NAME_EMPTY",
            "pubsub name is empty",
        ),
        (
            "/v1.0/publish/nope/t?metadata.m=1",
            b"",
            None,
            404,
            "ERR_PUBSUB_NOT_FOUND",
            "DAPR_PUBSUB_NOT_FOUND",
            "pubsub nope is not found",
        ),
        (
            "/v1.0/publish/mem/",
            b"",
            None,
            404,
            "ERR_TOPIC_NAME_EMPTY",
            "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
            "topic is empty in pubsub mem",
        ),
        (
            "/v1.0/publish/mem",
            b"",
            None,
            404,
            "ERR_TOPIC_NAME_EMPTY",
            "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
            "topic is empty in pubsub mem",
        ),
        (
            "/v1.0/publish/mem/t?metadata.rawPayload=yes",
            b"",
            None,
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
            "DAPR_PUBSUB_METADATA_DESERIALIZATION",
            "failed deserializing metadata. Error: rawPayload value must be a valid boolean: "
            "actual is 'yes'",
        ),
        (
            "/v1.0/publish/mem/t",
            b"[1,2]",
            "application/cloudevents+json",
            400,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
            "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
            "cannot create cloudevent",
        ),
        (
            "/v1.0/publish/mem/t",
            b"not json",
            "application/cloudevents+json; charset=utf-8",
            400,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
            "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
            "cannot create cloudevent",
        ),
        (
            "/v1.0/publish/scoped/denied",
            b"x",
            None,
            403,
            "ERR_PUBSUB_FORBIDDEN",
            "DAPR_PUBSUB_FORBIDDEN",
            f"topic denied is not allowed for app id {APP_ID}",
        ),
        (
            "/v1.0/publish/starting/t",
            b"x",
            None,
            400,
            "ERR_PUBSUB_NOT_FOUND",
            "DAPR_PUBSUB_TEST_NOT_FOUND",
            "pubsub 'starting' not found",
        ),
    ],
)
async def test_error_matrix(
    api: Api,
    path: str,
    body: bytes,
    ctype: str | None,
    status: int,
    code: str,
    reason: str,
    message: str,
) -> None:
    got_status, got_ctype, got_body = await api.post(path, body, ctype)
    assert got_status == status
    error = dapr_error(got_status, got_ctype, got_body)
    assert error["errorCode"] == code and error["message"] == message
    assert error_info(error)["reason"] == reason and error_info(error)["domain"] == "dapr.io"
    if code == "ERR_PUBSUB_NOT_FOUND" and status == 404:
        # no ResourceInfo; the ErrorInfo carries the request metadata
        assert len(error["details"]) == 1 and error_info(error)["metadata"] == {"m": "1"}


async def test_not_configured_when_there_is_no_pubsub_at_all() -> None:
    memory = MemoryBroker("mem")
    async for api in start_api({}, {}, memory):
        status, ctype, body = await api.post("/v1.0/publish/pubsub/t", b"x")
        error = dapr_error(status, ctype, body)
        assert (status, error["errorCode"], error["message"]) == (
            400,
            "ERR_PUBSUB_NOT_CONFIGURED",
            "pubsub pubsub is not configured",
        )
        assert error_info(error)["reason"] == "DAPR_PUBSUB_NOT_CONFIGURED"


async def test_user_cloudevent_without_id_is_400(api: Api) -> None:
    # Stricter than Dapr on purpose (issue 2): Dapr forwards an id-less CloudEvent; the
    # CloudEvents spec requires id, so we refuse it with a clear message.
    status, ctype, body = await api.post(
        "/v1.0/publish/mem/t", b'{"data":1}', "application/cloudevents+json"
    )
    error = dapr_error(status, ctype, body)
    assert status == 400 and error["errorCode"] == "ERR_PUBSUB_CLOUD_EVENTS_SER"
    assert "id" in error["message"]
    assert "t" not in api.memory._topics or not api.memory_values("t")


async def test_broker_failure_is_500_and_not_success(api: Api) -> None:
    t0 = time.monotonic()
    status, ctype, body = await api.post("/v1.0/publish/down/t", b"x")
    error = dapr_error(status, ctype, body)
    assert status == 500 and error["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert error["message"].startswith("error when publishing to topic t in pubsub down: ")
    assert error_info(error)["reason"] == "DAPR_PUBSUB_PUBLISH_MESSAGE"
    assert error_info(error)["metadata"]["topic"] == "t"
    assert time.monotonic() - t0 < 5


async def test_body_over_max_size_is_413(api: Api) -> None:
    # Stricter than Dapr on purpose (issue 2): Dapr answers 500 for an over-size body; we answer
    # 413 with a Dapr-style body so callers can tell "too big" from "broker down".
    status, ctype, body = await api.post("/v1.0/publish/mem/big", b"x" * (MAX_BODY + 1))
    error = dapr_error(status, ctype, body)
    assert status == 413 and error["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert str(MAX_BODY) in error["message"]
    assert "big" not in api.memory._topics
    status, _, _ = await api.post("/v1.0/publish/mem/big", b"x" * MAX_BODY)
    assert status == 204


async def test_body_over_max_size_without_content_length_is_413(api: Api) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(4):
            yield b"x" * (MAX_BODY // 2)

    async with api.session.post(api.url("/v1.0/publish/mem/chunked"), data=chunks()) as r:
        assert r.status == 413
        assert (await r.json())["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1.0/publish/mem/100%", "*"),
        ("/v1.0/publish/mem/a%zzb", "*"),
        ("/v1.0/publish/m%2/t", "pubsubname"),
    ],
)
async def test_invalid_escape_is_400_text(api: Api, path: str, param: str) -> None:
    status, ctype, body = await api.post(path, b"x")
    assert status == 400 and ctype.startswith("text/plain")
    assert body.decode().startswith(
        f'failed to unescape request parameter "{param}". Error: invalid URL escape "%'
    )


# -- topic decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "topic"),
    [
        ("a/b/c", "a/b/c"),
        ("orders%23eu", "orders#eu"),
        ("a%2Fb", "a/b"),
        ("%E2%82%AC-caf%C3%A9", "€-café"),
        ("with+space", "with space"),
        ("plain.topic_1-x", "plain.topic_1-x"),
    ],
)
async def test_topic_is_everything_after_the_pubsub_name(api: Api, raw: str, topic: str) -> None:
    status, _, _ = await api.post(f"/v1.0/publish/mem/{raw}", b"x")
    assert status == 204
    [value] = api.memory_values(topic)
    assert orjson.loads(value)["topic"] == topic


async def test_put_and_success_body(api: Api) -> None:
    status, _, body = await api.call("PUT", "/v1.0/publish/mem/put", b"x")
    assert (status, body) == (204, b"")


# -- Kafka: metadata to key/headers, raw payload, exact numbers --------------------------------


async def test_metadata_becomes_key_and_headers_on_kafka(
    api: Api, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"api-headers-{unique}"
    query = (
        "metadata.partitionKey=order-1&metadata.custom=v%C3%A9&metadata.custom=second"
        "&metadata.cloudevent.ID=my-id&metadata.cloudevent.subject=subj&other=ignored"
    )
    status, _, _ = await api.post(
        f"/v1.0/publish/kafka/{topic}?{query}", b'{"a":1}', "application/json"
    )
    assert status == 204
    [record] = await read_records(kafka_bootstrap, topic, 1)
    assert record.key == b"order-1"
    headers = dict(record.headers)
    assert valid_traceparent(headers.pop("traceparent").decode())  # runtime/tracing.py
    assert headers == {
        "custom": "vé".encode(),
        "cloudevent.ID": b"my-id",
        "cloudevent.subject": b"subj",
    }  # first value kept; key not a header
    event = orjson.loads(record.value)
    assert event["id"] == "my-id" and event["subject"] == "subj" and event["data"] == {"a": 1}
    assert event["source"] == APP_ID and event["pubsubname"] == "kafka" and event["topic"] == topic


async def test_raw_payload_on_kafka(api: Api, kafka_bootstrap: str, unique: str) -> None:
    topic = f"api-raw-{unique}"
    payload = b"\x00\x01 not json \xff"
    status, _, _ = await api.post(
        f"/v1.0/publish/kafka/{topic}?metadata.rawPayload=true", payload, "application/octet-stream"
    )
    assert status == 204
    [record] = await read_records(kafka_bootstrap, topic, 1)
    assert record.value == payload
    headers = dict(record.headers)
    assert valid_traceparent(headers.pop("traceparent").decode())  # runtime/tracing.py
    assert headers == {"rawPayload": b"true"}


async def test_numbers_survive_byte_exact_on_kafka(
    api: Api, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"api-numbers-{unique}"
    data = b'{"big":' + BIG + b',"dec":' + DECIMAL + b"}"
    user_ce = b'{"id":"ce-1","source":"me","myext":"x","data":' + data + b"}"
    assert (await api.post(f"/v1.0/publish/kafka/{topic}", data, "application/json"))[0] == 204
    assert (
        await api.post(f"/v1.0/publish/kafka/{topic}", user_ce, "application/cloudevents+json")
    )[0] == 204
    records = await read_records(kafka_bootstrap, topic, 2)
    assert len(records) == 2
    for record in records:
        assert b'"big":' + BIG in record.value and b'"dec":' + DECIMAL in record.value


async def test_user_cloudevent_fields_kept(api: Api) -> None:
    body = (
        b'{"id":"ce-1","source":"me","type":"my.type","myext":"x","data":{"k":1},"topic":"spoofed"}'
    )
    status, _, _ = await api.post(
        "/v1.0/publish/mem/ce?metadata.cloudevent.id=ignored&metadata.ttlInSeconds=60",
        body,
        "application/cloudevents+json",
    )
    assert status == 204
    event = orjson.loads(api.memory_values("ce")[0])
    assert (event["id"], event["source"], event["type"], event["myext"], event["data"]) == (
        "ce-1",
        "me",
        "my.type",
        "x",
        {"k": 1},
    )
    assert event["topic"] == "ce" and event["pubsubname"] == "mem" and "expiration" in event


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("ttl", "seconds"), [("30", 30), ("1m", 60), ("0", 0), ("-3", None), ("junk", None)]
)
async def test_ttl_sets_expiration(api: Api, ttl: str, seconds: int | None) -> None:
    status, _, _ = await api.post(f"/v1.0/publish/mem/ttl?metadata.ttlInSeconds={ttl}", b"x")
    assert status == 204
    event = orjson.loads(api.memory_values("ttl")[0])
    if seconds is None:
        assert "expiration" not in event  # silently ignored (§5.2)
    else:
        delta = parse_time(event["expiration"]) - parse_time(event["time"])
        assert delta.total_seconds() == seconds


# -- bulk publish (§1.3) ------------------------------------------------------------------------


def bulk(*entries: dict) -> bytes:
    return orjson.dumps(list(entries))


@pytest.mark.parametrize("prefix", ["/v1.0-alpha1/publish/bulk", "/v1.0/publish/bulk"])
async def test_bulk_publish_to_kafka(
    api: Api, kafka_bootstrap: str, unique: str, prefix: str
) -> None:
    topic = f"api-bulk-{unique}"
    body = (
        b'[{"entryId":"1","event":{"n":' + BIG + b'},"contentType":"application/json"},'
        b'{"entryId":"2","event":"hello","contentType":"text/plain",'
        b'"metadata":{"partitionKey":"k2"}},'
        b'{"entryId":"3","event":"AAE=","contentType":"application/octet-stream"}]'
    )
    status, _, _ = await api.post(f"{prefix}/kafka/{topic}", body, "application/json")
    assert status == 204
    records = await read_records(kafka_bootstrap, topic, 3)
    assert len(records) == 3
    by_type = {orjson.loads(r.value)["datacontenttype"]: r for r in records}
    assert sorted(by_type) == ["application/json", "application/octet-stream", "text/plain"]
    assert b'"data":{"n":' + BIG + b"}" in by_type["application/json"].value
    assert orjson.loads(by_type["application/octet-stream"].value)["data_base64"] == "AAE="
    text = by_type["text/plain"]
    assert orjson.loads(text.value)["data"] == "hello"
    assert text.key == b"k2" and by_type["application/json"].key is None
    assert len({orjson.loads(r.value)["id"] for r in records}) == 3  # one envelope per entry


async def test_bulk_publish_failed_entries(api: Api) -> None:
    status, _ctype, body = await api.post(
        "/v1.0-alpha1/publish/bulk/down/t",
        bulk(
            {"entryId": "a", "event": "x", "contentType": "text/plain"},
            {"entryId": "b", "event": "y", "contentType": "text/plain"},
        ),
    )
    assert status == 500
    answer = orjson.loads(body)
    assert answer["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert [e["entryId"] for e in answer["failedEntries"]] == ["a", "b"]
    assert all(e["error"] for e in answer["failedEntries"])


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1.0-alpha1/publish/bulk/mem/t", b"{not an array", 400, "ERR_PUBSUB_EVENTS_SER"),
        ("/v1.0-alpha1/publish/bulk/mem/t", b'{"entryId":"1"}', 400, "ERR_PUBSUB_EVENTS_SER"),
        (
            "/v1.0-alpha1/publish/bulk/mem/t",
            bulk(
                {"entryId": "1", "event": "x", "contentType": "text/plain"},
                {"entryId": "1", "event": "y", "contentType": "text/plain"},
            ),
            400,
            "ERR_PUBSUB_EVENTS_SER",
        ),
        (
            "/v1.0-alpha1/publish/bulk/mem/t",
            bulk({"event": "x", "contentType": "text/plain"}),
            400,
            "ERR_PUBSUB_EVENTS_SER",
        ),
        (
            "/v1.0-alpha1/publish/bulk/mem/t",
            bulk({"entryId": "1", "event": {"a": 1}, "contentType": "text/plain"}),
            400,
            "ERR_PUBSUB_EVENTS_SER",
        ),
        (
            "/v1.0-alpha1/publish/bulk/mem/t",
            bulk({"entryId": "1", "event": "x", "contentType": ""}),
            400,
            "ERR_PUBSUB_EVENTS_SER",
        ),
        ("/v1.0-alpha1/publish/bulk/nope/t", bulk(), 404, "ERR_PUBSUB_NOT_FOUND"),
        (
            "/v1.0-alpha1/publish/bulk/scoped/denied",
            bulk({"entryId": "1", "event": "x", "contentType": "text/plain"}),
            403,
            "ERR_PUBSUB_FORBIDDEN",
        ),
        (
            "/v1.0-alpha1/publish/bulk/mem/t?metadata.rawPayload=maybe",
            bulk(),
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
    ],
)
async def test_bulk_publish_errors(
    api: Api, path: str, body: bytes, status: int, code: str
) -> None:
    got_status, ctype, got_body = await api.post(path, body, "application/json")
    assert got_status == status
    assert dapr_error(got_status, ctype, got_body)["errorCode"] == code


async def test_bulk_duplicate_message(api: Api) -> None:
    _, _, body = await api.post(
        "/v1.0-alpha1/publish/bulk/mem/t",
        bulk(
            {"entryId": "1", "event": "x", "contentType": "text/plain"},
            {"entryId": "1", "event": "y", "contentType": "text/plain"},
        ),
    )
    assert orjson.loads(body)["message"].endswith(
        "error: entryId is duplicated or not present for entry"
    )


async def test_bulk_raw_payload(api: Api) -> None:
    status, _, _ = await api.post(
        "/v1.0/publish/bulk/mem/rawbulk?metadata.rawPayload=true",
        bulk({"entryId": "1", "event": "plain", "contentType": "text/plain"}),
    )
    assert status == 204
    assert api.memory_values("rawbulk") == [b"plain"]


# -- metadata, health, token, unexpected errors -------------------------------------------------


async def test_metadata(api: Api) -> None:
    api.runtime.subs = [
        TopicSubscription(
            pubsubname="kafka",
            topic="orders",
            rules=(Route("event.x > 1", "/big"),),
            default_path="/orders",
            dead_letter_topic="dlq",
            type=SubscriptionType.DECLARATIVE,
            name="s1",
        ),
        TopicSubscription(pubsubname="mem", topic="audit", default_path="/audit"),
    ]
    assert (await api.call("PUT", "/v1.0/metadata/team", b"payments"))[0] == 204
    status, ctype, body = await api.call("GET", "/v1.0/metadata")
    assert status == 200 and ctype.startswith("application/json")
    meta = orjson.loads(body)
    assert meta["id"] == APP_ID and meta["runtimeVersion"]
    assert meta["enabledFeatures"] == [] and meta["actors"] == [] and meta["httpEndpoints"] == []
    assert {
        "name": "kafka",
        "type": "pubsub.kafka",
        "version": "v1",
        "capabilities": [
            "BULK_PUBLISH",
            "MESSAGE_HEADERS",
            "ORDERED",
            "PARTITION_KEY",
            "PARTITION_NUMBER",
        ],
    } in meta["components"]
    assert {
        "name": "mem",
        "type": "pubsub.in-memory",
        "version": "v1",
        "capabilities": ["MESSAGE_HEADERS", "ORDERED"],
    } in meta["components"]
    statuses = [s.pop("status") for s in meta["subscriptions"]]
    assert (
        statuses
        == [
            {
                "consumerGroup": None,
                "partitions": [],
                "lag": 0,
                "inFlight": 0,
                "retries": 0,
                "deadLettered": 0,
                "lastError": None,
            }
        ]
        * 2
    )  # no consumer runs yet
    assert meta["subscriptions"] == [
        {
            "pubsubname": "kafka",
            "topic": "orders",
            "metadata": {},
            "rules": [{"match": "event.x > 1", "path": "/big"}, {"path": "/orders"}],
            "deadLetterTopic": "dlq",
            "type": "DECLARATIVE",
        },
        {
            "pubsubname": "mem",
            "topic": "audit",
            "metadata": {},
            "rules": [{"path": "/audit"}],
            "deadLetterTopic": "",
            "type": "PROGRAMMATIC",
        },
    ]
    assert meta["extended"] == {"kafka.assignment.pubsub": "orders:0", "team": "payments"}
    assert meta["appConnectionProperties"]["port"] == 6000
    assert meta["appConnectionProperties"]["channelAddress"] == "127.0.0.1"


async def test_healthz(api: Api) -> None:
    assert (await api.call("GET", "/v1.0/healthz"))[0] == 204
    assert (await api.call("GET", f"/v1.0/healthz?appid={APP_ID}"))[0] == 204
    status, ctype, body = await api.call("GET", "/v1.0/healthz?appid=other")
    assert (status, dapr_error(status, ctype, body)["errorCode"]) == (
        500,
        "ERR_HEALTH_APPID_NOT_MATCH",
    )
    api.runtime.app_channel = False
    status, ctype, body = await api.call("GET", "/v1.0/healthz")
    error = dapr_error(status, ctype, body)
    assert (status, error["errorCode"]) == (500, "ERR_HEALTH_NOT_READY")
    assert error["message"].startswith("dapr is not ready: [")
    assert (await api.call("GET", "/v1.0/healthz/outbound"))[0] == 204  # before the app channel
    api.runtime.outbound = False
    status, ctype, body = await api.call("GET", "/v1.0/healthz/outbound")
    assert (status, dapr_error(status, ctype, body)) == (
        500,
        {
            "errorCode": "ERR_OUTBOUND_HEALTH_NOT_READY",
            "message": "dapr outbound is not ready: pubsub: not connected",
        },
    )


async def test_api_token() -> None:
    memory = MemoryBroker("mem")
    await memory.start()
    comps = {"mem": component("mem", "pubsub.in-memory")}
    async for api in start_api(comps, {"mem": memory}, memory, api_token="s3cret"):
        for method, path in [
            ("POST", "/v1.0/publish/mem/t"),
            ("GET", "/v1.0/metadata"),
            ("POST", "/v1.0-alpha1/publish/bulk/mem/t"),
        ]:
            status, ctype, body = await api.call(method, path)
            assert (status, body) == (401, b"invalid api token") and ctype.startswith("text/plain")
            status, _, _ = await api.call(method, path, headers={"dapr-api-token": "wrong"})
            assert status == 401
        assert (await api.call("GET", "/v1.0/healthz"))[0] == 204  # exempt
        assert (await api.call("GET", "/v1.0/healthz/outbound"))[0] == 204
        status, _, _ = await api.call(
            "POST", "/v1.0/publish/mem/t", b"x", headers={"dapr-api-token": "s3cret"}
        )
        assert status == 204
        assert api.memory_values("t") and len(api.memory_values("t")) == 1


async def test_unexpected_error_is_a_dapr_500_without_traceback(api: Api) -> None:
    api.runtime.fail = True
    status, ctype, body = await api.call("GET", "/v1.0/metadata")
    error = dapr_error(status, ctype, body)
    assert status == 500 and error["errorCode"] == "ERR_INTERNAL"
    assert "secret internal detail" not in body.decode()


# -- inputs that used to answer ERR_INTERNAL with a traceback in the log ------------------------


async def raw_request(api: Api, head: bytes, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """Send ``head`` (request line and headers, CRLF-separated, no blank line) and ``body`` as
    bytes on the wire: aiohttp's client refuses header bytes that are not UTF-8, a client may not.
    Returns (status, response head, response body)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    try:
        writer.write(
            head
            + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        answer = await reader.read()
    finally:
        writer.close()
    response_head, _, response_body = answer.partition(b"\r\n\r\n")
    return int(response_head.split(b" ", 2)[1]), response_head, response_body


HUGE_TTL = "99999999999999999999999"


@pytest.mark.parametrize("ttl", [HUGE_TTL, "9223372037", "inf", "99999999999999h", "1e400"])
async def test_ttl_go_cannot_hold_is_ignored_or_capped(api: Api, ttl: str) -> None:
    # Beyond 64 bits or a duration over ~292 years: Go's parsers refuse it and Dapr publishes
    # without TTL; a 64-bit integer over that is capped (Dapr caps the overflow).
    status, _, body = await api.post(f"/v1.0/publish/mem/bigttl?metadata.ttlInSeconds={ttl}", b"x")
    assert (status, body) == (204, b"")
    event = orjson.loads(api.memory_values("bigttl")[0])
    if ttl == "9223372037":
        delta = parse_time(event["expiration"]) - parse_time(event["time"])
        assert abs(delta.total_seconds() - 9_223_372_036) <= 1  # Go's longest duration
    else:
        assert "expiration" not in event


async def test_bulk_ttl_go_cannot_hold_is_ignored(api: Api) -> None:
    entry = {"entryId": "1", "event": "x", "contentType": "text/plain"}
    with_meta = {
        "entryId": "2",
        "event": "y",
        "contentType": "text/plain",
        "metadata": {"ttlInSeconds": HUGE_TTL},
    }
    path = f"/v1.0/publish/bulk/mem/bulkttl?metadata.ttlInSeconds={HUGE_TTL}"
    status, _, _ = await api.post(path, bulk(entry, with_meta), "application/json")
    assert status == 204
    assert all("expiration" not in orjson.loads(v) for v in api.memory_values("bulkttl"))


DEEP = 30_000  # far beyond the interpreter's recursion limit, within MAX_BODY


async def test_deeply_nested_cloudevent_is_cannot_create_cloudevent(api: Api) -> None:
    body = b"[" * DEEP + b"]" * DEEP
    status, ctype, got = await api.post(
        "/v1.0/publish/mem/deep", body, "application/cloudevents+json"
    )
    error = dapr_error(status, ctype, got)
    assert (status, error["errorCode"], error["message"]) == (
        400,
        "ERR_PUBSUB_CLOUD_EVENTS_SER",
        "cannot create cloudevent",
    )
    assert error_info(error)["reason"] == "DAPR_PUBSUB_CLOUD_EVENT_CREATION"
    body = b'{"id":"1","source":"s","data":' + b"[" * DEEP + b"]" * DEEP + b"}"
    status, _, _ = await api.post("/v1.0/publish/mem/deep", body, "application/cloudevents+json")
    assert status == 400


async def test_deeply_nested_bulk_body_is_unmarshal_error(api: Api) -> None:
    status, ctype, got = await api.post(
        "/v1.0/publish/bulk/mem/deep", b"[" * DEEP + b"]" * DEEP, "application/json"
    )
    error = dapr_error(status, ctype, got)
    assert (status, error["errorCode"]) == (400, "ERR_PUBSUB_EVENTS_SER")
    assert error_info(error)["reason"] == "DAPR_PUBSUB_UNMARSHAL_EVENTS"
    assert "nested too deeply" in error["message"]


async def test_nested_json_travels_as_json_or_as_a_string(api: Api) -> None:
    # 300 levels: more than orjson writes (254), fewer than it reads (1024): data stays JSON, in
    # a single publish, a user CloudEvent and a bulk entry alike.
    nested = b"[" * 300 + b"]" * 300
    assert (await api.post("/v1.0/publish/mem/nest", nested, "application/json"))[0] == 204
    ce = b'{"id":"1","source":"s","data":' + nested + b"}"
    assert (await api.post("/v1.0/publish/mem/nest", ce, "application/cloudevents+json"))[0] == 204
    entry = b'[{"entryId":"1","contentType":"application/json","event":' + nested + b"}]"
    assert (await api.post("/v1.0/publish/bulk/mem/nest", entry, "application/json"))[0] == 204
    for value in api.memory_values("nest"):
        assert orjson.loads(value)["data"] == orjson.loads(nested)
    # Deeper than the subscriber could read back: §4.1's fallback, the body as a string.
    deep = b"[" * DEEP + b"]" * DEEP
    assert (await api.post("/v1.0/publish/mem/deepdata", deep, "application/json"))[0] == 204
    assert orjson.loads(api.memory_values("deepdata")[0])["data"] == deep.decode()


async def test_lone_surrogate_escapes_become_replacement_characters(api: Api) -> None:
    # Valid JSON text that is no Unicode string; Go decodes it as U+FFFD, orjson refuses it.
    ce = b'{"id":"1","source":"s","data":"a\\ud800b"}'
    assert (await api.post("/v1.0/publish/mem/sur", ce, "application/cloudevents+json"))[0] == 204
    assert (await api.post("/v1.0/publish/mem/sur", b'{"k":"a\\ud800b"}', "application/json"))[
        0
    ] == 204
    entry = bulk(
        {"entryId": "x", "event": "e", "contentType": "text/plain", "metadata": {"h": "v"}}
    ).replace(b'"v"', b'"a\\ud800b"')
    assert (await api.post("/v1.0/publish/bulk/mem/sur", entry, "application/json"))[0] == 204
    first, second, _third = (orjson.loads(v) for v in api.memory_values("sur"))
    assert first["data"] == "a\ufffdb" and second["data"] == {"k": "a\ufffdb"}
    assert dict(api.memory._topics["sur"].log[2].headers)["h"] == "a\ufffdb".encode()


async def test_content_type_with_bytes_that_are_not_utf8(api: Api) -> None:
    status, _, body = await raw_request(
        api, b"POST /v1.0/publish/mem/ctype HTTP/1.1\r\nContent-Type: text/\xff\xfe", b"x"
    )
    assert (status, body) == (204, b"")
    event = orjson.loads(api.memory_values("ctype")[0])
    assert event["datacontenttype"] == "text/\ufffd\ufffd" and event["data"] == "x"


async def test_api_token_with_bytes_that_are_not_utf8() -> None:
    memory = MemoryBroker("mem")
    await memory.start()
    comps = {"mem": component("mem", "pubsub.in-memory")}
    async for api in start_api(comps, {"mem": memory}, memory, api_token="s3cr\u00e9t"):
        for token in (b"\xff", b"s3cr\xe9t", b"s3cr\xc3\xa9t\xff"):
            status, head, body = await raw_request(
                api, b"POST /v1.0/publish/mem/t HTTP/1.1\r\ndapr-api-token: " + token, b"x"
            )
            assert (status, body) == (401, b"invalid api token"), token
            assert b"text/plain" in head
        status, _, _ = await raw_request(
            api, b"POST /v1.0/publish/mem/t HTTP/1.1\r\ndapr-api-token: s3cr\xc3\xa9t", b"x"
        )
        assert status == 204
        assert len(api.memory_values("t")) == 1


# -- topic names Kafka cannot hold (aiokafka used to wait 30 s, then 500 UnknownTopic) ----------

# %0A: a decoded newline used to miss the route (aiohttp's bare 404; found by tests/faults fuzz)
BAD_KAFKA_TOPICS = [
    ("a%0Ab", "a\nb"),
    ("%0A", "\n"),
    ("a+b", "a b"),
    ("a%00b", "a\x00b"),
    ("a/b/c", "a/b/c"),
    ("%2e%2e/%2e%2e/etc", "../../etc"),
    ("or%ffders", "or\ufffdders"),
    ("t" * 250, "t" * 250),
    (".", "."),
    ("..", ".."),
]


@pytest.mark.parametrize(("raw", "topic"), BAD_KAFKA_TOPICS)
async def test_topic_kafka_cannot_hold_is_refused_at_once(api: Api, raw: str, topic: str) -> None:
    t0 = time.monotonic()
    status, ctype, body = await api.post(f"/v1.0/publish/kafka/{raw}", b"x")
    error = dapr_error(status, ctype, body)
    assert (status, error["errorCode"]) == (400, "ERR_PUBSUB_PUBLISH_MESSAGE")  # Dapr: 500
    assert error["message"].startswith(
        f"error when publishing to topic {topic} in pubsub kafka: topic "
    )
    assert "is not a valid Kafka topic name" in error["message"]
    assert error_info(error)["reason"] == "DAPR_PUBSUB_PUBLISH_MESSAGE"
    entries = bulk({"entryId": "1", "event": "x", "contentType": "text/plain"})
    status, _, body = await api.post(f"/v1.0/publish/bulk/kafka/{raw}", entries, "application/json")
    assert status == 400  # every failed entry is the caller's mistake (Dapr: 500)
    [failed] = orjson.loads(body)["failedEntries"]
    assert "is not a valid Kafka topic name" in failed["error"]
    assert time.monotonic() - t0 < 2
    # The in-memory component takes any name, as Dapr's does.
    assert (await api.post(f"/v1.0/publish/mem/{raw}", b"x"))[0] == 204
    assert len(api.memory_values(topic)) == 1


# -- metadata.partitionNumber (§1.2, §5.9) -------------------------------------------------------


async def test_partition_number_selects_the_partition(
    api: Api, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"api-partition-{unique}"
    for i in range(6):
        status, _, _ = await api.post(
            f"/v1.0/publish/kafka/{topic}?metadata.partitionNumber=2&metadata.partitionKey=k{i}",
            b"x",
        )
        assert status == 204
    records = await read_records(kafka_bootstrap, topic, 6)
    assert len(records) == 6 and {r.partition for r in records} == {2}
    assert all("partitionNumber" not in dict(r.headers) for r in records)  # not a header
    assert sorted(r.key for r in records) == [f"k{i}".encode() for i in range(6)]


async def test_bulk_partition_number_entry_and_request_level(
    api: Api, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"api-bulk-partition-{unique}"
    entries = bulk(
        {"entryId": "1", "event": "a", "contentType": "text/plain"},
        {
            "entryId": "2",
            "event": "b",
            "contentType": "text/plain",
            "metadata": {"partitionNumber": "3"},
        },
    )
    status, _, _ = await api.post(
        f"/v1.0/publish/bulk/kafka/{topic}?metadata.partitionNumber=1", entries, "application/json"
    )
    assert status == 204
    records = await read_records(kafka_bootstrap, topic, 2)
    assert sorted((orjson.loads(r.value)["data"], r.partition) for r in records) == [
        ("a", 1),
        ("b", 3),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "partitionNumber must be a non-negative integer: actual is 'abc'"),
        ("-1", "partitionNumber must be a non-negative integer: actual is '-1'"),
        ("1.5", "partitionNumber must be a non-negative integer: actual is '1.5'"),
        ("4", "partition number 4 is out of range"),  # Tansu creates topics with 4 partitions
        ("99999999999", "partition number 99999999999 is out of range"),
    ],
)
async def test_bad_partition_number_is_a_publish_error(
    api: Api, unique: str, value: str, message: str
) -> None:
    topic = f"api-bad-partition-{unique}"
    status, ctype, body = await api.post(
        f"/v1.0/publish/kafka/{topic}?metadata.partitionNumber={value}", b"x"
    )
    error = dapr_error(status, ctype, body)
    assert (status, error["errorCode"]) == (400, "ERR_PUBSUB_PUBLISH_MESSAGE")  # Dapr: 500
    assert error["message"].startswith(
        f"error when publishing to topic {topic} in pubsub kafka: {message}"
    )
    entries = bulk(
        {
            "entryId": "bad",
            "event": "a",
            "contentType": "text/plain",
            "metadata": {"partitionNumber": value},
        },
        {"entryId": "good", "event": "b", "contentType": "text/plain"},
    )
    status, _, body = await api.post(
        f"/v1.0/publish/bulk/kafka/{topic}", entries, "application/json"
    )
    answer = orjson.loads(body)
    assert status == 400 and answer["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"  # Dapr: 500
    assert [e["entryId"] for e in answer["failedEntries"]] == ["bad"]
    assert answer["failedEntries"][0]["error"].startswith(message)


# -- bulk entry metadata is validated like request metadata --------------------------------------


async def test_bulk_entry_raw_payload_must_be_a_boolean(api: Api) -> None:
    status, ctype, body = await api.post(
        "/v1.0/publish/bulk/mem/entrymeta",
        bulk(
            {"entryId": "1", "event": "x", "contentType": "text/plain"},
            {
                "entryId": "2",
                "event": "y",
                "contentType": "text/plain",
                "metadata": {"rawPayload": "maybe"},
            },
        ),
        "application/json",
    )
    error = dapr_error(status, ctype, body)
    assert (status, error["errorCode"]) == (400, "ERR_PUBSUB_REQUEST_METADATA")
    assert error_info(error)["reason"] == "DAPR_PUBSUB_METADATA_DESERIALIZATION"
    assert error["message"] == (
        "failed deserializing metadata. Error: rawPayload value must be a "
        "valid boolean: actual is 'maybe'"
    )
    assert "entrymeta" not in api.memory._topics  # nothing of the request was published


# -- unknown paths and methods answer in Dapr's JSON shape ---------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1.0/nothing", 404, "ERR_NOT_FOUND"),
        ("POST", "/v2/publish/mem/t", 404, "ERR_NOT_FOUND"),
        ("GET", "/v1.0/publish/mem/orders", 405, "ERR_METHOD_NOT_ALLOWED"),
        ("DELETE", "/v1.0/publish/mem/orders", 405, "ERR_METHOD_NOT_ALLOWED"),
    ],
)
async def test_unknown_route_or_method_is_a_dapr_json_error(
    api: Api, method: str, path: str, status: int, code: str
) -> None:
    """Regression: aiohttp's own text/plain ``404: Not Found`` / ``405: Method Not Allowed``."""
    async with api.session.request(method, api.url(path)) as r:
        got_status, ctype, body = r.status, r.headers.get("Content-Type", ""), await r.read()
        allow = r.headers.get("Allow")
    error = dapr_error(got_status, ctype, body)
    assert (got_status, error["errorCode"]) == (status, code)
    assert method in error["message"] and path in error["message"]
    if status == 405:
        assert allow is not None and {"POST", "PUT"} <= set(allow.replace(" ", "").split(","))
    assert "orders" not in api.memory._topics


# -- ttlInSeconds that is not a TTL: ignored as Dapr does (§1.2, §5.2, §9) -----------------------


@pytest.mark.parametrize("ttl", ["abc", "-5"])
async def test_invalid_ttl_is_ignored_and_travels_as_a_header_like_dapr(api: Api, ttl: str) -> None:
    """The newcomer's report: ``?metadata.ttlInSeconds=abc`` / ``=-5`` answer 204 without
    ``expiration``. That is Dapr's behaviour (components-contrib ``TryGetTTL`` ignores values it
    cannot read, and the Kafka component copies every metadata key to a header), pinned in the
    contract §9: a publisher relying on it is not refused. Single and bulk take one code path."""
    status, _, _ = await api.post(f"/v1.0/publish/mem/badttl?metadata.ttlInSeconds={ttl}", b"x")
    assert status == 204
    record = api.memory._topics["badttl"].log[0]
    assert "expiration" not in orjson.loads(record.value)
    assert ("ttlInSeconds", ttl.encode()) in record.headers
    status, _, _ = await api.post(
        "/v1.0/publish/bulk/mem/badttlbulk",
        bulk(
            {
                "entryId": "1",
                "event": "x",
                "contentType": "text/plain",
                "metadata": {"ttlInSeconds": ttl},
            }
        ),
        "application/json",
    )
    assert status == 204
    assert "expiration" not in orjson.loads(api.memory_values("badttlbulk")[0])
