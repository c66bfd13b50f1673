"""Metrics, trace propagation and span export with real processes (issue 9).

Sidecars are ``python -m tidings.sidecar`` processes on the session's Tansu broker; the app is
``observed_app.py`` (plain aiohttp). The only stand-in is the OpenTelemetry collector: an OTLP/HTTP
receiver in this test process that decodes what the sidecars export with OpenTelemetry's own
protobuf classes (no collector binary can be installed here).
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tidings.sidecar.cli.localbroker import free_port

from .processes import (
    Proc,
    http_json,
    poll,
    start_app_script,
    start_sidecar,
    write_component,
)

pytestmark = pytest.mark.timeout(180)

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"


@pytest.fixture
def resources(tmp_path: Path, kafka_bootstrap: str) -> Path:
    # Bounded retries: with a deadLetterTopic and -1 a failed delivery is dead-lettered at once.
    return write_component(tmp_path / "resources", kafka_bootstrap, backOffMaxRetries="3")


def start_app(tmp: Path, *, topic: str, dead_letter_topic: str = "") -> Proc:
    port = free_port()
    return start_app_script(
        tmp,
        "observed",
        "observed_app.py",
        port=port,
        env={
            **os.environ,
            "APP_PORT": str(port),
            "TOPIC": topic,
            "DEAD_LETTER_TOPIC": dead_letter_topic,
        },
    )


def received(app: Proc) -> list[dict[str, Any]]:
    return http_json(f"http://127.0.0.1:{app.port}/received")[1]  # type: ignore[no-any-return]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def samples(exposition: str, name: str, **labels: str) -> dict[str, float]:
    """``{label text: value}`` of every sample of ``name`` whose labels include ``labels``."""
    found: dict[str, float] = {}
    for match in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", exposition, re.M):
        text, value = match.groups()
        if all(f'{k}="{v}"' in text for k, v in labels.items()):
            found[text] = float(value)
    return found


def metadata_status(sidecar: Proc, topic: str) -> dict[str, Any] | None:
    _, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/metadata")
    for sub in body["subscriptions"]:
        if sub["topic"] == topic:
            return sub["status"]  # type: ignore[no-any-return]
    return None


def publish(sidecar: Proc, topic: str, data: Any, headers: dict[str, str] | None = None) -> None:
    status, body = http_json(
        f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/{topic}",
        method="POST",
        body=json.dumps(data).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    assert status == 204, (status, body)


def test_metrics_after_a_known_workload(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    """4 plain events, one the app retries once, one it drops to the dead-letter topic: the
    scraped counters are exact, and the lag of every partition returns to 0."""
    topic, dlt = f"orders-{unique}", f"dead-{unique}"
    app_id = f"sub-{unique}"
    app = start_app(tmp_path, topic=topic, dead_letter_topic=dlt)
    procs.append(app)
    sub_metrics, pub_metrics = free_port(), free_port()
    subscriber = start_sidecar(
        tmp_path,
        "sub",
        app_id=app_id,
        resources=resources,
        app_port=app.port,
        extra=["--enable-metrics", "--metrics-port", str(sub_metrics)],
    )
    publisher = start_sidecar(
        tmp_path,
        "pub",
        app_id=f"pub-{unique}",
        resources=resources,
        extra=["--enable-metrics", "--metrics-port", str(pub_metrics)],
    )
    procs += [subscriber, publisher]
    poll(
        "the subscriber to be assigned partitions",
        lambda: (metadata_status(subscriber, topic) or {}).get("partitions"),
        60,
    )

    for n in range(4):
        publish(publisher, topic, {"n": n})
    publish(publisher, topic, {"answer": "retry-once"})
    publish(publisher, topic, {"answer": "drop"})
    poll("7 deliveries (one retried)", lambda: len(received(app)) >= 7, 60)

    published = samples(
        scrape(pub_metrics),
        "dapr_component_pubsub_egress_count",
        app_id=f"pub-{unique}",
        component="pubsub",
        topic=topic,
    )
    assert list(published.values()) == [6.0] and 'success="true"' in next(iter(published))

    def settled() -> str | None:
        text = scrape(sub_metrics)
        lags = samples(text, "tidings_pubsub_consumer_lag", app_id=app_id, topic=topic)
        dead = samples(text, "tidings_pubsub_dead_lettered_total", app_id=app_id, topic=topic)
        return text if lags and sum(lags.values()) == 0 and sum(dead.values()) == 1 else None

    text = poll("the lag to return to 0 and the drop to be dead-lettered", settled, 60)
    ingress = {
        status: samples(
            text,
            "dapr_component_pubsub_ingress_count",
            app_id=app_id,
            component="pubsub",
            topic=topic,
            process_status=status,
        )
        for status in ("success", "retry", "drop")
    }
    assert {s: sum(v.values()) for s, v in ingress.items()} == {
        "success": 5.0,
        "retry": 1.0,
        "drop": 1.0,
    }
    assert (
        sum(samples(text, "tidings_pubsub_retries_total", app_id=app_id, topic=topic).values())
        == 1.0
    )
    assert (
        sum(
            samples(
                text, "tidings_pubsub_deliveries_in_flight", app_id=app_id, topic=topic
            ).values()
        )
        == 0.0
    )
    assert samples(text, "tidings_pubsub_rebalances_total", app_id=app_id, consumer_group=app_id)
    assert samples(
        text,
        "dapr_component_pubsub_ingress_latencies_count",
        app_id=app_id,
        process_status="success",
        topic=topic,
    )
    assert samples(
        text, "tidings_pubsub_commit_latency_seconds_count", app_id=app_id, success="true"
    )
    api = samples(
        scrape(pub_metrics),
        "dapr_http_server_request_count",
        app_id=f"pub-{unique}",
        method="POST",
        path="/v1.0/publish/{tail}",
    )
    assert list(api.values()) == [6.0]

    status = metadata_status(subscriber, topic)
    assert status is not None
    assert status["consumerGroup"] == app_id and status["inFlight"] == 0
    assert [p["partition"] for p in status["partitions"]] == [0, 1, 2, 3]
    assert status["lag"] == 0 and status["retries"] == 1 and status["deadLettered"] == 1
    assert status["lastError"] is not None


def test_trace_context_reaches_the_subscriber(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    """Without an exporter the caller's traceparent/tracestate pass through unchanged: into the
    CloudEvent and onto the delivery request's headers."""
    topic = f"traced-{unique}"
    app = start_app(tmp_path, topic=topic)
    procs.append(app)
    subscriber = start_sidecar(
        tmp_path, "sub", app_id=f"sub-{unique}", resources=resources, app_port=app.port
    )
    publisher = start_sidecar(tmp_path, "pub", app_id=f"pub-{unique}", resources=resources)
    procs += [subscriber, publisher]
    poll(
        "the subscriber to be assigned partitions",
        lambda: (metadata_status(subscriber, topic) or {}).get("partitions"),
        60,
    )

    publish(
        publisher,
        topic,
        {"n": 1},
        headers={"traceparent": CALLER_TRACEPARENT, "tracestate": "vendor=abc"},
    )
    [got] = poll("the delivery", lambda: received(app), 60)
    assert got["headers"] == {"traceparent": CALLER_TRACEPARENT, "tracestate": "vendor=abc"}
    assert got["event"] == {
        "traceparent": CALLER_TRACEPARENT,
        "traceid": CALLER_TRACEPARENT,
        "tracestate": "vendor=abc",
    }


class _OtlpReceiver(ThreadingHTTPServer):
    """The collector stand-in: ``POST /v1/traces`` (OTLP/HTTP protobuf) → :attr:`spans`."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class _OtlpHandler(BaseHTTPRequestHandler):
    server: _OtlpReceiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {}
                        for a in span.attributes:
                            value = a.value
                            attributes[a.key] = (
                                value.string_value
                                if value.HasField("string_value")
                                else value.int_value
                            )
                        self.server.spans.append(
                            {
                                "service": service,
                                "name": span.name,
                                "kind": span.kind,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_id": span.parent_span_id.hex(),
                                "attributes": attributes,
                            }
                        )
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def test_spans_are_exported_with_parent_child_links(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set: caller → publish (PRODUCER, publisher sidecar) →
    process (CONSUMER, subscriber sidecar) → the app's request, one trace."""
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is part of the test extra")
    receiver = _OtlpReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        topic = f"spans-{unique}"
        app = start_app(tmp_path, topic=topic)
        procs.append(app)
        sub_id, pub_id = f"sub-{unique}", f"pub-{unique}"
        subscriber = start_sidecar(
            tmp_path, "sub", app_id=sub_id, resources=resources, app_port=app.port, env=env
        )
        publisher = start_sidecar(tmp_path, "pub", app_id=pub_id, resources=resources, env=env)
        procs += [subscriber, publisher]
        poll(
            "the subscriber to be assigned partitions",
            lambda: (metadata_status(subscriber, topic) or {}).get("partitions"),
            60,
        )

        publish(publisher, topic, {"n": 1}, headers={"traceparent": CALLER_TRACEPARENT})
        [got] = poll("the delivery", lambda: received(app), 60)

        def both() -> list[dict[str, Any]] | None:
            with receiver.lock:
                spans = [s for s in receiver.spans if s["trace_id"] == CALLER_TRACE_ID]
            return spans if len(spans) >= 2 else None

        spans = poll("a publish and a process span", both, 60)
        [publish_span] = [s for s in spans if s["name"] == f"publish {topic}"]
        [process_span] = [s for s in spans if s["name"] == f"process {topic}"]
        assert publish_span["service"] == pub_id and process_span["service"] == sub_id
        assert publish_span["kind"] == 4 and process_span["kind"] == 5  # PRODUCER, CONSUMER
        assert publish_span["parent_id"] == CALLER_SPAN_ID
        assert process_span["parent_id"] == publish_span["span_id"]
        assert publish_span["attributes"]["messaging.system"] == "kafka"
        assert publish_span["attributes"]["messaging.destination.name"] == topic
        attributes = process_span["attributes"]
        assert attributes["messaging.system"] == "kafka"
        assert attributes["messaging.destination.name"] == topic
        assert attributes["messaging.kafka.consumer.group"] == sub_id
        assert attributes["messaging.destination.partition.id"] in {"0", "1", "2", "3"}
        assert isinstance(attributes["messaging.kafka.offset"], int)
        # the event carries the publish span's context; the app's request the process span's
        assert got["event"]["traceparent"] == (f"00-{CALLER_TRACE_ID}-{publish_span['span_id']}-01")
        assert got["headers"]["traceparent"] == (
            f"00-{CALLER_TRACE_ID}-{process_span['span_id']}-01"
        )
    finally:
        receiver.shutdown()
        receiver.server_close()
