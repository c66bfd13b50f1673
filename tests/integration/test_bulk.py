"""Bulk subscriptions end to end (dapr-pubsub-contract.md §2.4): a sidecar process, the session's
real broker, and a real app: ``bulk_app.py`` over HTTP, or a grpcio ``AppCallback`` server
implementing ``OnBulkTopicEvent`` (in this process, on its own threads). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections import Counter
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc

from tidings.sidecar.cli.localbroker import free_port

from .processes import (
    Proc,
    assignment,
    http_json,
    poll,
    produce,
    start_app_script,
    start_sidecar,
    write_component,
)

pytestmark = pytest.mark.timeout(180)

PARTITIONS = 4


@pytest.fixture
def resources(tmp_path: Path, kafka_bootstrap: str) -> Path:
    # Bounded retries: with the unbounded default a deadLetterTopic takes every first failure
    # (§5.3).
    return write_component(tmp_path / "resources", kafka_bootstrap, backOffMaxRetries="5")


def start_bulk_app(
    tmp: Path, *, topic: str, max_count: int, max_await_ms: int, dead_letter: str = ""
) -> Proc:
    port = free_port()
    return start_app_script(
        tmp,
        "bulk",
        "bulk_app.py",
        port=port,
        env={
            **os.environ,
            "APP_PORT": str(port),
            "TOPIC": topic,
            "MAX_COUNT": str(max_count),
            "MAX_AWAIT_MS": str(max_await_ms),
            "DEAD_LETTER": dead_letter,
        },
    )


def produce_events(bootstrap: str, topic: str, events: list[tuple[str, str]]) -> None:
    """CloudEvents ``(id, answer)`` straight to the broker, spread over the partitions."""
    produce(
        bootstrap,
        topic,
        [
            {
                "value": json.dumps(
                    {
                        "specversion": "1.0",
                        "id": i,
                        "source": "test",
                        "type": "t",
                        "datacontenttype": "application/json",
                        "data": {"answer": a},
                    }
                ).encode(),
                "partition": n % PARTITIONS,
            }
            for n, (i, a) in enumerate(events)
        ],
    )


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offsets per partition, read without joining it."""

    async def run() -> dict[int, int | None]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            return {
                p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)
            }
        finally:
            await consumer.stop()

    return asyncio.run(run())


def per_partition(events: list[tuple[str, str]]) -> dict[int, int]:
    """How many of ``events`` :func:`produce_events` wrote to each partition (the offsets to
    commit)."""
    counts = Counter(n % PARTITIONS for n in range(len(events)))
    return {p: counts[p] for p in range(PARTITIONS)}


def test_http_bulk_subscription_batches_retries_dead_letters_and_commits(
    tmp_path: Path, resources: Path, kafka_bootstrap: str, procs: list[Proc], unique: str
) -> None:
    topic, dlt, app_id = f"bulk-{unique}", f"bulk-{unique}-dead", f"bulk-{unique}"
    app = start_bulk_app(tmp_path, topic=topic, max_count=10, max_await_ms=300, dead_letter=dlt)
    procs.append(app)
    sidecar = start_sidecar(tmp_path, "bulk", app_id=app_id, resources=resources, app_port=app.port)
    procs.append(sidecar)
    poll("the sidecar to be assigned partitions", lambda: assignment(sidecar), 60)

    plan = ["SUCCESS"] * 4 + ["RETRY_ONCE", "DROP", "OMIT_ONCE"]
    events = [(f"{unique}-{n}", plan[n % len(plan)]) for n in range(140)]
    produce_events(kafka_bootstrap, topic, events)
    wanted = {i for i, a in events if a != "DROP"}
    dropped = {i for i, a in events if a == "DROP"}

    def finished() -> dict[str, Any] | None:
        _, got = http_json(f"http://127.0.0.1:{app.port}/received")
        succeeded = {i for i, answers in got["answers"].items() if "SUCCESS" in answers}
        return got if wanted <= succeeded and dropped <= set(got["dead"]) else None

    got = poll("every event answered SUCCESS or dead-lettered", finished, 90)
    sizes = [len(r) for r in got["requests"]]
    assert max(sizes) <= 10, sizes
    assert max(sizes) > 1, f"no request carried more than one event: {sizes}"
    answers: dict[str, list[str]] = got["answers"]
    for event_id, answer in events:
        if answer in ("RETRY_ONCE", "OMIT_ONCE"):
            # answered RETRY (or not at all) first, then delivered again and acknowledged
            assert answers[event_id][:2] == (
                ["RETRY", "SUCCESS"] if answer == "RETRY_ONCE" else ["", "SUCCESS"]
            ), (event_id, answers[event_id])
        elif answer == "DROP":
            assert answers[event_id] == ["DROP"]
    assert set(got["dead"]) == dropped  # DROP, and only DROP, reached the dead-letter topic
    # within a partition requests follow offset order: event n went to partition n % 4
    order = {i: n for n, (i, _) in enumerate(events)}
    for p in range(PARTITIONS):
        firsts = [
            i
            for r in got["requests"]
            for i in r
            if order[i] % PARTITIONS == p and answers[i][0] != "RETRY" and answers[i][0] != ""
        ]
        firsts = list(dict.fromkeys(firsts))
        assert firsts == sorted(firsts, key=order.__getitem__)

    sidecar.stop()  # commits what finished, which is everything
    assert committed(kafka_bootstrap, app_id, topic) == per_partition(events)
    assert "bulkSubscribe is not supported" not in sidecar.log()


def test_a_batch_in_flight_when_the_sidecar_dies_is_delivered_again(
    tmp_path: Path, resources: Path, kafka_bootstrap: str, procs: list[Proc], unique: str
) -> None:
    """At-least-once: the app never answers the request holding ``HANG_ONCE``; the sidecar is
    killed (no shutdown, no commit); a new sidecar of the same app-id delivers that whole batch
    again and everything after it, and commits everything."""
    topic, app_id = f"bulk-kill-{unique}", f"bulk-kill-{unique}"
    app = start_bulk_app(tmp_path, topic=topic, max_count=5, max_await_ms=200)
    procs.append(app)
    first = start_sidecar(tmp_path, "bulk-1", app_id=app_id, resources=resources, app_port=app.port)
    procs.append(first)
    poll("the first sidecar to be assigned partitions", lambda: assignment(first), 60)
    events = [(f"{unique}-{n}", "HANG_ONCE" if n == 42 else "SUCCESS") for n in range(80)]
    produce_events(kafka_bootstrap, topic, events)

    def hung_batch() -> list[str] | None:
        _, got = http_json(f"http://127.0.0.1:{app.port}/received")
        return next((r for r in got["requests"] if events[42][0] in r), None)

    in_flight = poll("the request the app holds", hung_batch, 60)
    first.signal(signal.SIGKILL)
    first.process.wait(10)

    second = start_sidecar(
        tmp_path, "bulk-2", app_id=app_id, resources=resources, app_port=app.port
    )
    procs.append(second)

    def all_succeeded() -> dict[str, Any] | None:
        _, got = http_json(f"http://127.0.0.1:{app.port}/received")
        succeeded = {i for i, a in got["answers"].items() if "SUCCESS" in a}
        return got if {i for i, _ in events} <= succeeded else None

    got = poll("every event acknowledged", all_succeeded, 90)
    for event_id in in_flight:  # the unanswered batch came again, whole
        assert sum(event_id in r for r in got["requests"]) >= 2, event_id
    second.stop()
    assert committed(kafka_bootstrap, app_id, topic) == per_partition(events)


class BulkCallback(appcallback_pb2_grpc.AppCallbackServicer):
    """A real gRPC app: one bulk subscription; answers each entry as its data says (JSON
    ``{"answer": ...}``: ``SUCCESS``, ``DROP``, ``RETRY_ONCE``, ``OMIT_ONCE``)."""

    def __init__(self, topic: str, dead_letter: str) -> None:
        self.topic, self.dead_letter = topic, dead_letter
        self.lock = threading.Lock()
        self.requests: list[appcallback_pb2.TopicEventBulkRequest] = []
        self.answers: dict[str, list[str]] = {}
        self.dead: list[str] = []
        self.seen: Counter[str] = Counter()

    def ListTopicSubscriptions(self, request: Any, context: Any) -> Any:
        return appcallback_pb2.ListTopicSubscriptionsResponse(
            subscriptions=[
                appcallback_pb2.TopicSubscription(
                    pubsub_name="pubsub",
                    topic=self.topic,
                    dead_letter_topic=self.dead_letter,
                    routes=appcallback_pb2.TopicRoutes(default="bulk"),
                    bulk_subscribe=appcallback_pb2.BulkSubscribeConfig(
                        enabled=True, max_messages_count=8, max_await_duration_ms=300
                    ),
                ),
                appcallback_pb2.TopicSubscription(pubsub_name="pubsub", topic=self.dead_letter),
            ]
        )

    def OnTopicEvent(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.dead.append(request.id)
        return appcallback_pb2.TopicEventResponse()

    def OnBulkTopicEvent(self, request: Any, context: Any) -> Any:
        Status = appcallback_pb2.TopicEventResponse
        statuses = []
        with self.lock:
            self.requests.append(request)
            for entry in request.entries:
                event = entry.cloud_event
                self.seen[event.id] += 1
                wanted = json.loads(event.data).get("answer", "SUCCESS")
                first = self.seen[event.id] == 1
                if wanted == "OMIT_ONCE" and first:
                    self.answers.setdefault(event.id, []).append("")
                    continue
                if wanted.endswith("_ONCE"):
                    wanted = "RETRY" if first else "SUCCESS"
                self.answers.setdefault(event.id, []).append(wanted)
                statuses.append(
                    appcallback_pb2.TopicEventBulkResponseEntry(
                        entry_id=entry.entry_id, status=getattr(Status, wanted)
                    )
                )
        return appcallback_pb2.TopicEventBulkResponse(statuses=statuses)


def test_grpc_app_receives_bulk_through_on_bulk_topic_event(
    tmp_path: Path, resources: Path, kafka_bootstrap: str, procs: list[Proc], unique: str
) -> None:
    topic, dlt, app_id = f"gbulk-{unique}", f"gbulk-{unique}-dead", f"gbulk-{unique}"
    callback = BulkCallback(topic, dlt)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(callback, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        sidecar = start_sidecar(
            tmp_path,
            "gbulk",
            app_id=app_id,
            resources=resources,
            app_port=port,
            extra=["--app-protocol", "grpc"],
        )
        procs.append(sidecar)
        poll("the sidecar to be assigned partitions", lambda: assignment(sidecar), 60)

        plan = ["SUCCESS"] * 3 + ["RETRY_ONCE", "DROP", "OMIT_ONCE"]
        events = [(f"{unique}-{n}", plan[n % len(plan)]) for n in range(60)]
        produce_events(kafka_bootstrap, topic, events)
        wanted = {i for i, a in events if a != "DROP"}
        dropped = {i for i, a in events if a == "DROP"}

        def finished() -> bool:
            with callback.lock:
                succeeded = {i for i, a in callback.answers.items() if "SUCCESS" in a}
                return wanted <= succeeded and dropped <= set(callback.dead)

        poll("every event answered SUCCESS or dead-lettered", finished, 90)
        with callback.lock:
            requests = list(callback.requests)
            answers = dict(callback.answers)
            dead = set(callback.dead)
        sizes = [len(r.entries) for r in requests]
        assert max(sizes) <= 8 and max(sizes) > 1, sizes
        first = requests[0]
        assert (first.topic, first.pubsub_name, first.path, first.type) == (
            topic,
            "pubsub",
            "bulk",
            "com.dapr.event.sent.bulk",
        )
        entry = first.entries[0]
        assert entry.content_type == "application/cloudevents+json"
        assert entry.cloud_event.type == "t" and entry.cloud_event.source == "test"
        assert entry.metadata["__topic"] == topic and "__offset" in entry.metadata
        for event_id, answer in events:
            if answer == "RETRY_ONCE":
                assert answers[event_id][:2] == ["RETRY", "SUCCESS"]
            elif answer == "OMIT_ONCE":
                assert answers[event_id][:2] == ["", "SUCCESS"]
        assert dead == dropped
        sidecar.stop()
        assert committed(kafka_bootstrap, app_id, topic) == per_partition(events)
    finally:
        server.stop(None)
