"""The delivery suite on every broker: real sidecar processes, real app processes
(``recorder_app.py``), and each real server behind the same pubsub name ``pubsub``: Kafka
(the session's Tansu), Redis (127.0.0.1:6379) and NATS JetStream (127.0.0.1:4222). Apps and the
HTTP API do not change with the broker; nothing is mocked.

Each case runs on all three: publish → delivery of a CloudEvent across app-ids, RETRY then
success, DROP to the ``deadLetterTopic``, ``rawPayload``, a CEL routing rule choosing the path,
an expired TTL not delivered, two app-ids fanning out while two replicas of one share. What only
one broker has (SIGKILL hand-over through a rebalance, pending-entry reclaim or AckWait
redelivery) stays in ``test_processes.py``, ``test_redis_processes.py`` and
``test_jetstream_processes.py``. Topics, groups and app-ids are unique per test; Redis streams
and JetStream streams are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from tidings.sidecar.brokers.base import FEATURES
from tidings.sidecar.cli.localbroker import free_port

from ..sidecar.records import Stored, stored_jetstream, stored_kafka, stored_redis
from .processes import (
    Proc,
    assignment,
    http_json,
    jetstream_consumers,
    poll,
    produce_jetstream,
    produce_kafka,
    produce_redis,
    publish,
    received,
    redis_streams,
    start_app,
    start_sidecar,
    write_component,
    write_jetstream_component,
    write_redis_component,
)


@dataclass
class Bus:
    """One real broker as component ``pubsub`` in ``resources``. ``topic(name)`` is this test's
    topic for ``name`` (JetStream: a subject of the test stream); ``consuming(sidecar)`` says
    whether a sidecar reads its topics now; ``read(topic, n)`` reads up to ``n`` messages of a
    topic straight from the broker; ``produce(topic, ids)`` stores CloudEvents with those ids
    straight on it; ``sharing(replicas)`` says whether every replica of one app-id holds a share
    of its topic (Kafka: partitions split between them); ``capabilities`` what
    ``/v1.0/metadata`` lists for it; ``total_order``: a lone consumer sees a topic in publish
    order (Kafka: only per partition; Redis with concurrency 10: no order)."""

    kind: str
    resources: Path
    topic: Callable[[str], str]
    consuming: Callable[[Proc], bool]
    read: Callable[[str, int], list[Stored]]
    produce: Callable[[str, list[str]], None]
    sharing: Callable[[list[Proc]], bool]
    capabilities: list[str]
    total_order: bool


def kafka_bus(request: pytest.FixtureRequest, folder: Path, unique: str) -> Iterator[Bus]:
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    yield Bus(
        "kafka",
        write_component(folder, bootstrap),
        lambda name: f"{name}-{unique}",
        lambda sidecar: bool(assignment(sidecar)),
        lambda topic, n: asyncio.run(stored_kafka(bootstrap, topic, n)),
        partial(produce_kafka, bootstrap),
        split_partitions,
        ["BULK_PUBLISH", "MESSAGE_HEADERS", "ORDERED", "PARTITION_KEY", "PARTITION_NUMBER"],
        total_order=False,
    )


def split_partitions(replicas: list[Proc]) -> bool:
    """The topic's 4 partitions (Tansu's default) are split between the replicas, none twice."""
    owned = [assignment(r) for r in replicas]
    return all(owned) and sum(map(len, owned)) == len(set().union(*owned)) == 4


def redis_bus(request: pytest.FixtureRequest, folder: Path, unique: str) -> Iterator[Bus]:
    address = request.getfixturevalue("redis_host")
    created: list[str] = []

    def topic(name: str) -> str:
        created.append(f"{name}-{unique}")
        return created[-1]

    try:
        yield Bus(
            "redis",
            write_redis_component(folder, address),
            topic,
            lambda sidecar: bool(redis_streams(sidecar)),
            lambda stream, n: asyncio.run(stored_redis(address, stream, n, wait_s=30)),
            partial(produce_redis, address),
            lambda replicas: all(redis_streams(r) for r in replicas),
            ["BULK_PUBLISH", "MESSAGE_HEADERS"],
            total_order=False,
        )  # concurrency 10
    finally:
        if created:
            host, _, port = address.rpartition(":")
            with redis.Redis(host=host, port=int(port)) as client:
                client.delete(*created)


def jetstream_bus(request: pytest.FixtureRequest, folder: Path, unique: str) -> Iterator[Bus]:
    url = request.getfixturevalue("nats_url")
    stream, prefix = request.getfixturevalue("jetstream_stream")
    yield Bus(
        "jetstream",
        write_jetstream_component(folder, url, stream),
        lambda name: f"{prefix}.{name}",
        lambda sidecar: bool(jetstream_consumers(sidecar)),
        lambda subject, n: asyncio.run(stored_jetstream(url, stream, subject, n, wait_s=30)),
        partial(produce_jetstream, url),
        lambda replicas: all(jetstream_consumers(r) for r in replicas),
        ["MESSAGE_HEADERS", "ORDERED"],
        total_order=True,
    )


BUSES = {"kafka": kafka_bus, "redis": redis_bus, "jetstream": jetstream_bus}


@pytest.fixture(params=list(BUSES))
def bus(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Bus]:
    yield from BUSES[request.param](request, tmp_path / "resources", unique)


def subscription(
    bus: Bus,
    topic: str,
    *,
    routes: str = "    default: /events\n",
    dead_letter_topic: str | None = None,
    **metadata: str,
) -> None:
    """A declarative ``Subscription`` of ``topic`` in the bus's resources folder."""
    text = (
        f"apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: sub\n"
        f"spec:\n  pubsubname: pubsub\n  topic: {topic}\n  routes:\n{routes}"
    )
    if dead_letter_topic:
        text += f"  deadLetterTopic: {dead_letter_topic}\n"
    if metadata:
        text += "  metadata:\n" + "".join(
            f"    {k}: {json.dumps(v)}\n" for k, v in metadata.items()
        )
    (bus.resources / "subscription.yaml").write_text(text)


def subscriber(
    tmp_path: Path,
    bus: Bus,
    procs: list[Proc],
    app_id: str,
    *,
    topics: list[str] = (),
    answer: str = "SUCCESS",  # type: ignore[assignment]
    extra: list[str] | None = None,
) -> tuple[Proc, Proc]:
    """An app and its sidecar, returned once the sidecar reads its topics."""
    app = start_app(tmp_path, app_id, topics=list(topics), answer=answer)
    procs.append(app)
    sidecar = start_sidecar(
        tmp_path, app_id, app_id=app_id, resources=bus.resources, app_port=app.port, extra=extra
    )
    procs.append(sidecar)
    poll(f"{app_id} to consume", lambda: bus.consuming(sidecar), 30)
    return app, sidecar


def post(
    sidecar: Proc, topic: str, body: bytes, query: str = "", content_type: str = "application/json"
) -> None:
    status, answer = http_json(
        f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/{topic}{query}",
        method="POST",
        body=body,
        headers={"Content-Type": content_type},
    )
    assert status == 204, (status, answer)


def delivered(app: Proc, event_id: str) -> dict[str, Any]:
    """The body (decoded JSON), headers and path the app got for ``event_id``."""
    status, found = http_json(f"http://127.0.0.1:{app.port}/event?id={event_id}")
    assert status == 200, (event_id, found)
    return {**found, "body": json.loads(found["body"])}


def test_cloudevent_reaches_the_app_of_another_app_id(
    tmp_path: Path, bus: Bus, procs: list[Proc], unique: str
) -> None:
    topic = bus.topic("orders")
    metrics_port = free_port()
    app, sidecar = subscriber(
        tmp_path,
        bus,
        procs,
        f"sub-{unique}",
        topics=[topic],
        extra=["--enable-metrics", "--metrics-port", str(metrics_port)],
    )
    publisher = start_sidecar(tmp_path, "pub", app_id=f"pub-{unique}", resources=bus.resources)
    procs.append(publisher)

    for n in range(5):
        publish(publisher, topic, {"n": n, "big": 12345678901234567890123})
    got = poll("5 deliveries", lambda: len(received(app)["finished"]) >= 5 and received(app), 30)
    assert len(set(got["finished"])) == 5
    event = delivered(app, got["finished"][0])["body"]
    assert (event["specversion"], event["source"], event["topic"], event["pubsubname"]) == (
        "1.0",
        f"pub-{unique}",
        topic,
        "pubsub",
    )
    assert event["data"]["big"] == 12345678901234567890123
    assert "12345678901234567890123" not in sidecar.log()  # payloads are not logged

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        exposition = r.read().decode()
    assert (
        f'dapr_component_pubsub_ingress_count{{app_id="sub-{unique}",component="pubsub",'
        f'namespace="",process_status="success",topic="{topic}"}} 5.0'
    ) in exposition
    _, meta = http_json(f"http://127.0.0.1:{publisher.port}/v1.0/metadata")
    assert {
        "name": "pubsub",
        "type": f"pubsub.{bus.kind}",
        "version": "v1",
        "capabilities": bus.capabilities,
    } in meta["components"]
    lacks = [f for f in FEATURES if f not in bus.capabilities]
    assert f"not supported: {', '.join(lacks) or '-'}" in publisher.log()


def test_retry_then_success_is_redelivered(
    tmp_path: Path, bus: Bus, procs: list[Proc], unique: str
) -> None:
    """The app answers RETRY twice: the same event comes again (not the next one in its place)
    until the app answers SUCCESS, and is then finished exactly once."""
    topic = bus.topic("retried")
    app, sidecar = subscriber(tmp_path, bus, procs, f"retry-{unique}", topics=[topic])
    event_id = f"ev-{unique}"
    http_json(
        f"http://127.0.0.1:{app.port}/mode",
        method="POST",
        body=json.dumps({"retry": [event_id]}).encode(),
    )
    post(sidecar, topic, b'{"n": 1}', f"?metadata.cloudevent.id={event_id}")

    def attempts() -> list[dict[str, Any]]:
        _, body = http_json(f"http://127.0.0.1:{app.port}/attempts")
        return [a for a in body if a["id"] == event_id]

    poll("two RETRY answers", lambda: sum(a["answer"] == "RETRY" for a in attempts()) >= 2, 30)
    http_json(f"http://127.0.0.1:{app.port}/mode", method="POST", body=b"{}")
    poll("the event to succeed", lambda: event_id in received(app)["finished"], 30)
    answers = [a["answer"] for a in attempts()]
    assert answers[-1] == "SUCCESS" and set(answers[:-1]) == {"RETRY"}, answers
    assert received(app)["finished"] == [event_id]


def test_dropped_event_goes_to_the_dead_letter_topic_unchanged(
    tmp_path: Path, bus: Bus, procs: list[Proc], unique: str
) -> None:
    """The app answers DROP; the original message (value, key, metadata) is stored on the
    subscription's ``deadLetterTopic`` of the same broker, and only then acknowledged."""
    topic, dlt = bus.topic("orders"), bus.topic("poison")
    subscription(bus, topic, dead_letter_topic=dlt)
    app, sidecar = subscriber(tmp_path, bus, procs, f"dlt-{unique}", answer="DROP")
    post(sidecar, topic, b'{"n": 5}', "?metadata.partitionKey=k1&metadata.team=payments")

    [dead] = bus.read(dlt, 1)
    assert dead.key == b"k1" and dead.headers["team"] == b"payments"
    assert dead.headers["traceparent"].startswith(b"00-")  # the publish's trace context, kept
    assert json.loads(dead.value)["data"] == {"n": 5}
    assert len(received(app)["finished"]) == 1


def test_raw_payload_subscription_gets_the_bytes_in_a_cloudevent(
    tmp_path: Path, bus: Bus, procs: list[Proc], unique: str
) -> None:
    """Published with ``rawPayload`` (no envelope on the broker), subscribed with ``rawPayload``:
    the app gets a CloudEvent around exactly the published bytes."""
    topic = bus.topic("raw")
    subscription(bus, topic, rawPayload="true")
    app, sidecar = subscriber(tmp_path, bus, procs, f"raw-{unique}")
    payload = b"\x00\x01 not json \xff"
    post(sidecar, topic, payload, "?metadata.rawPayload=true", "application/octet-stream")
    [stored] = bus.read(topic, 1)
    assert stored.value == payload
    [event_id] = poll("the delivery", lambda: received(app)["finished"], 30)
    event = delivered(app, event_id)["body"]
    assert base64.b64decode(event["data_base64"]) == payload
    assert event["datacontenttype"] == "application/octet-stream" and event["topic"] == topic


def test_routing_rule_chooses_the_path(
    tmp_path: Path, bus: Bus, procs: list[Proc], unique: str
) -> None:
    """CEL rules in order, the first match wins; an event no rule matches goes to the
    dead-letter topic (Dapr HEAD), the others to their rule's path."""
    topic, dlt = bus.topic("routed"), bus.topic("unrouted")
    subscription(
        bus,
        topic,
        dead_letter_topic=dlt,
        routes=(
            "    rules:\n"
            '    - match: event.type == "widget" && int(event.data.n) > 1\n'
            "      path: /events/big\n"
            '    - match: event.type == "widget"\n'
            "      path: /events/small\n"
        ),
    )
    app, sidecar = subscriber(tmp_path, bus, procs, f"route-{unique}")
    for name, kind, n in (("big", "widget", 5), ("small", "widget", 1), ("other", "gadget", 5)):
        post(
            sidecar,
            topic,
            json.dumps({"n": n}).encode(),
            f"?metadata.cloudevent.id={name}-{unique}&metadata.cloudevent.type={kind}",
        )

    [dead] = bus.read(dlt, 1)
    assert json.loads(dead.value)["id"] == f"other-{unique}"
    poll("two deliveries", lambda: len(received(app)["finished"]) >= 2, 30)
    assert sorted(received(app)["finished"]) == [f"big-{unique}", f"small-{unique}"]
    assert delivered(app, f"big-{unique}")["path"] == "/events/big"
    assert delivered(app, f"small-{unique}")["path"] == "/events/small"


def test_expired_event_is_not_delivered(
    tmp_path: Path, bus: Bus, procs: list[Proc], unique: str
) -> None:
    """An event whose ``ttlInSeconds`` passed before a subscriber read it never reaches the
    app; it goes to the dead-letter topic. A later event without TTL is delivered."""
    topic, dlt = bus.topic("ttl"), bus.topic("expired")
    publisher = start_sidecar(tmp_path, "pub", app_id=f"pub-{unique}", resources=bus.resources)
    procs.append(publisher)
    post(
        publisher,
        topic,
        b'{"n": 1}',
        f"?metadata.ttlInSeconds=1&metadata.cloudevent.id=old-{unique}",
    )
    expires = time.time() + 1
    [stored] = bus.read(topic, 1)
    assert json.loads(stored.value)["expiration"]
    # the subscriber starts only once the event has expired: time passing is the event here
    poll("the TTL to pass", lambda: time.time() > expires + 0.5, 10)

    subscription(bus, topic, dead_letter_topic=dlt)
    app, _ = subscriber(tmp_path, bus, procs, f"ttl-{unique}")
    post(publisher, topic, b'{"n": 2}', f"?metadata.cloudevent.id=new-{unique}")
    [dead] = bus.read(dlt, 1)
    assert json.loads(dead.value)["id"] == f"old-{unique}"
    poll("the event without TTL", lambda: f"new-{unique}" in received(app)["finished"], 30)
    assert received(app)["started"] == [f"new-{unique}"]


def test_app_ids_each_get_all_and_replicas_share(
    tmp_path: Path, bus: Bus, procs: list[Proc], unique: str
) -> None:
    """Two app-ids fan out: each gets every event. Two replicas of one app-id share: each event
    reaches one of them, and both get some."""
    topic = bus.topic("fan")
    apps = [
        start_app(tmp_path, name, topics=[topic], delay_s=0.002)
        for name in ("orders-1", "orders-2", "audit")
    ]
    procs += apps
    sidecars = [
        start_sidecar(
            tmp_path,
            app.name,
            app_id=f"{app.name[:6]}-{unique}",
            resources=bus.resources,
            app_port=app.port,
        )
        for app in apps
    ]
    procs += sidecars
    poll("both orders replicas to hold a share", lambda: bus.sharing(sidecars[:2]), 60)
    poll("audit to consume", lambda: bus.consuming(sidecars[2]), 60)

    ids = [f"{unique}-{n:03d}" for n in range(200)]
    for chunk in range(0, len(ids), 20):  # in bursts, so both replicas are reading
        bus.produce(topic, ids[chunk : chunk + 20])
    poll(
        "orders to receive 200",
        lambda: sum(len(set(received(a)["finished"])) for a in apps[:2]) >= 200,
        60,
    )
    poll("audit to receive 200", lambda: len(set(received(apps[2])["finished"])) >= 200, 60)
    o1, o2 = (set(received(a)["finished"]) for a in apps[:2])
    assert o1 and o2, "both replicas of one app-id get a share"
    assert not (o1 & o2), "no event is delivered to both replicas of one app-id"
    assert o1 | o2 == set(ids)
    audit = received(apps[2])["finished"]
    assert set(audit) == set(ids)
    if bus.total_order:
        assert audit == ids, "one replica alone sees the topic in publish order"
