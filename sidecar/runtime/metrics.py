"""Prometheus metrics of the pub/sub runtime, with Dapr's metric names where Dapr has them.

Dapr's names and labels (dapr/dapr ``docs/development/dapr-metrics.md``, "Dapr Component
Metrics" and "HTTP monitoring metrics"), so dashboards written for Dapr read ours unchanged:

- ``dapr_component_pubsub_egress_count`` / ``dapr_component_pubsub_egress_latencies``: publishes,
  labels ``app_id``, ``component``, ``namespace``, ``success``, ``topic``;
- ``dapr_component_pubsub_ingress_count`` / ``dapr_component_pubsub_ingress_latencies``: app
  answers to deliveries, labels ``app_id``, ``component``, ``namespace``, ``process_status``
  (``success`` | ``retry`` | ``drop``), ``topic``;
- ``dapr_http_server_request_count`` (``app_id``, ``method``, ``path``) and
  ``dapr_http_server_latency`` (plus ``status``): the sidecar's HTTP API. ``path`` is the route
  (``/v1.0/publish/{tail}``), never the raw URL, so topics do not multiply the series.

Latencies are in milliseconds, as Dapr's. Dapr's counters carry no ``_total`` suffix (OpenCensus
exports them as they are named), so ours are exported under exactly those names (typed
``untyped``: prometheus-client names every ``counter`` ``*_total``).

tidings' own (``tidings_pubsub_*``):

- ``consumer_lag`` (``app_id``, ``component``, ``topic``, ``partition``): log end offset minus
  committed offset of each partition this member owns; the log end offset is the high watermark
  of the partition's last fetch (so it is current while records flow; a partition paused for
  back-pressure shows the lag of its last fetch);
- ``retries_total``, ``dead_lettered_total``, ``deliveries_in_flight`` per topic;
- ``rebalances_total`` per consumer group, ``commit_latency_seconds`` per commit request.

Cost on the hot paths: recording is a dict update of plain integers (well under a microsecond);
the Prometheus families are built only when ``/metrics`` is scraped (:class:`_Collector`), on
prometheus-client's server thread. That thread only copies dicts, which the GIL makes atomic.

The same state answers ``GET /v1.0/metadata`` and ``tidings status``
(:func:`subscription_status`).
"""

from __future__ import annotations

import bisect
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "ConsumerProgress",
    "TopicDeliveries",
    "consumer_group",
    "consumer_progress",
    "drop_consumer",
    "metrics_only",
    "record_egress",
    "record_http",
    "record_ingress",
    "serve",
    "subscription_status",
    "topic_deliveries",
]

# Buckets in ms: sub-millisecond broker acks up to multi-second app handlers.
_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

_namespace = ""


class _Buckets:
    """One histogram series: per-bucket (not cumulative) counts and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)  # the last one is +Inf
        self.total = 0.0


def _observe(
    series: dict[tuple[str, ...], _Buckets],
    key: tuple[str, ...],
    bounds: tuple[float, ...],
    value: float,
) -> None:
    b = series.get(key)
    if b is None:
        b = series[key] = _Buckets(len(bounds))
    b.counts[bisect.bisect_left(bounds, value)] += 1
    b.total += value


_egress: dict[tuple[str, ...], int] = {}
_egress_ms: dict[tuple[str, ...], _Buckets] = {}
_ingress: dict[tuple[str, ...], int] = {}
_ingress_ms: dict[tuple[str, ...], _Buckets] = {}
_http: dict[tuple[str, ...], int] = {}
_http_ms: dict[tuple[str, ...], _Buckets] = {}


def record_egress(
    app_id: str, component: str, topic: str, *, success: bool, elapsed_s: float
) -> None:
    """One publish: ``elapsed_s`` seconds from request to broker acknowledgement (or failure)."""
    key = (app_id, component, _namespace, "true" if success else "false", topic)
    _egress[key] = _egress.get(key, 0) + 1
    _observe(_egress_ms, key, _BUCKETS_MS, elapsed_s * 1000)


def record_ingress(
    app_id: str, component: str, topic: str, *, process_status: str, elapsed_s: float
) -> None:
    """One delivery attempt's outcome (``success`` | ``retry`` | ``drop``) and the app's time
    (seconds)."""
    key = (app_id, component, _namespace, process_status, topic)
    _ingress[key] = _ingress.get(key, 0) + 1
    _observe(_ingress_ms, key, _BUCKETS_MS, elapsed_s * 1000)


def record_http(app_id: str, method: str, path: str, status: int, elapsed_s: float) -> None:
    """One request answered by the sidecar's HTTP API; ``path`` is the route, not the URL."""
    key = (app_id, method, path)
    _http[key] = _http.get(key, 0) + 1
    _observe(_http_ms, (app_id, method, path, str(status)), _BUCKETS_MS, elapsed_s * 1000)


# --- deliveries and consumer groups ------------------------------------------------------------


@dataclass(eq=False, slots=True)
class TopicDeliveries:
    """Delivery state of one subscribed topic of one component, updated by
    ``delivery/engine.py``."""

    in_flight: int = 0
    retries: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    last_error_time: float | None = None  # epoch seconds

    def failed(self, reason: str) -> None:
        """Note a failed attempt (what ``GET /v1.0/metadata`` shows as ``lastError``)."""
        self.last_error = reason
        self.last_error_time = time.time()


@dataclass(eq=False, slots=True)
class ConsumerProgress:
    """Progress of one consumer group member (one component of one app-id), updated by the
    Kafka consumer (``brokers/kafka/consuming.py``). Offsets are Kafka's *next* offsets.

    ``partitions`` maps ``(topic, partition)`` of the current assignment to ``[log end offset,
    committed offset]``; either is ``None`` until known (no fetch yet, nothing committed and no
    record fetched). ``assigned`` is the current assignment.
    """

    group: str
    assigned: frozenset[tuple[str, int]] = frozenset()
    partitions: dict[tuple[str, int], list[int | None]] = field(default_factory=dict)
    rebalances: int = 0
    commit_s: dict[tuple[str, ...], _Buckets] = field(default_factory=dict)

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """A new assignment (after a rebalance): forget partitions no longer owned."""
        self.assigned = frozenset(partitions)
        self.rebalances += 1
        for key in [k for k in self.partitions if k not in self.assigned]:
            del self.partitions[key]

    def revoke(self) -> None:
        """Everything was revoked (the start of a rebalance). What is known about the partitions
        stays until the next :meth:`assign`: a new owner reads from the committed offsets."""
        self.assigned = frozenset()

    def fetched(self, topic: str, partition: int, first_offset: int, log_end: int | None) -> None:
        """A batch of one partition arrived; ``first_offset`` is its first record's offset,
        which is the committed offset when nothing was committed yet in this assignment."""
        p = self.partitions.get((topic, partition))
        if p is None:
            self.partitions[(topic, partition)] = [log_end, first_offset]
        elif log_end is not None:
            p[0] = log_end

    def committed(self, topic: str, partition: int, offset: int) -> None:
        """``offset`` (the next record to read) was committed."""
        p = self.partitions.get((topic, partition))
        if p is None:
            self.partitions[(topic, partition)] = [None, offset]
        else:
            p[1] = offset
            if p[0] is not None and p[0] < offset:
                p[0] = offset

    def commit_took(self, elapsed_s: float, *, success: bool) -> None:
        """One commit request ended after ``elapsed_s`` seconds."""
        _observe(self.commit_s, ("true" if success else "false",), _BUCKETS_S, elapsed_s)

    def lag(self, topic: str, partition: int) -> int | None:
        """Log end offset minus committed offset, or ``None`` while either is unknown."""
        p = self.partitions.get((topic, partition))
        if p is None or p[0] is None or p[1] is None:
            return None
        return max(0, p[0] - p[1])


@dataclass(eq=False, slots=True)
class PolledConsumer:
    """State of a consumer without Kafka partitions, as its broker last polled it: a Redis
    consumer group (``brokers/redis.py``) or a JetStream durable consumer
    (``brokers/jetstream.py``).

    ``group`` is the consumer group or durable consumer name. ``topics`` maps a subscribed topic
    to its status entries, shaped like a Kafka partition's in :func:`subscription_status`:
    ``{partition, logEndOffset, committedOffset, lag, pending}`` where ``partition`` names what
    is read (the Redis stream, the JetStream stream), ``lag`` counts messages the group has not
    acknowledged yet (``None`` while unknown) and ``pending`` those delivered but not
    acknowledged.
    """

    group: str
    topics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # topic -> its own consumer name

    def name_group(self, topic: str, group: str) -> None:
        """``topic`` is read by a consumer of its own (JetStream: one durable per topic)."""
        self.groups[topic] = group

    def group_of(self, topic: str) -> str:
        return self.groups.get(topic, self.group)

    def polled(
        self,
        topic: str,
        source: str,
        *,
        lag: int | None,
        pending: int | None,
        log_end: int | None = None,
        committed: int | None = None,
    ) -> None:
        """The broker polled ``topic``, read from ``source`` (stream name); counts are
        messages."""
        self.topics[topic] = [
            {
                "partition": source,
                "logEndOffset": log_end,
                "committedOffset": committed,
                "lag": lag,
                "pending": pending,
            }
        ]

    def forget(self, topics: Iterable[str]) -> None:
        """Drop the status of topics no longer consumed."""
        keep = set(topics)
        for topic in [t for t in self.topics if t not in keep]:
            del self.topics[topic]
        for topic in [t for t in self.groups if t not in keep]:
            del self.groups[topic]


_deliveries: dict[tuple[str, str, str], TopicDeliveries] = {}
_consumers: dict[tuple[str, str], ConsumerProgress] = {}
_polled: dict[tuple[str, str], PolledConsumer] = {}


def topic_deliveries(app_id: str, component: str, topic: str) -> TopicDeliveries:
    """The (shared, created on first use) delivery state of ``topic`` of ``component``."""
    key = (app_id, component, topic)
    state = _deliveries.get(key)
    if state is None:
        state = _deliveries[key] = TopicDeliveries()
    return state


def consumer_progress(app_id: str, component: str, group: str) -> ConsumerProgress:
    """A fresh progress record for the consumer group member of ``component``; replaces the
    one of a previous consumer of the same component (hot reload)."""
    progress = _consumers[(app_id, component)] = ConsumerProgress(group)
    return progress


def polled_consumer(app_id: str, component: str, group: str) -> PolledConsumer:
    """A fresh polled state for the Redis or JetStream consumer of ``component``; replaces the
    one of a previous consumer of the same component (hot reload)."""
    consumer = _polled[(app_id, component)] = PolledConsumer(group)
    return consumer


def drop_consumer(app_id: str, component: str, progress: ConsumerProgress | PolledConsumer) -> None:
    """The consumer of ``component`` stopped; its lag series disappear."""
    if _consumers.get((app_id, component)) is progress:
        del _consumers[(app_id, component)]
    if _polled.get((app_id, component)) is progress:
        del _polled[(app_id, component)]


def consumer_group(app_id: str, component: str) -> str | None:
    """The consumer group of ``component``'s running consumer, or ``None`` (none running)."""
    progress = _consumers.get((app_id, component))
    return progress.group if progress is not None else None


def subscription_status(app_id: str, component: str, topic: str) -> dict[str, Any]:
    """What ``GET /v1.0/metadata`` shows per subscription (JSON-ready): ``consumerGroup``
    (``None`` when the component has no consumer group, e.g. in-memory), ``partitions`` (the
    assigned ones of ``topic``, each ``{partition, logEndOffset, committedOffset, lag}``; for
    Redis and JetStream one entry naming the stream, see :class:`PolledConsumer`),
    ``lag`` (sum of the known lags), ``inFlight``, ``retries``, ``deadLettered`` and
    ``lastError`` (``{message, time}`` RFC 3339 UTC, or ``None``)."""
    progress = _consumers.get((app_id, component))
    polled = _polled.get((app_id, component))
    partitions: list[dict[str, Any]] = []
    total = 0
    group = progress.group if progress is not None else None
    if progress is None and polled is not None:
        group = polled.group_of(topic)
        partitions = [dict(entry) for entry in polled.topics.get(topic, ())]
        total = sum(entry["lag"] or 0 for entry in partitions)
    if progress is not None:
        for t, p in sorted(progress.assigned):
            if t != topic:
                continue
            end, committed = progress.partitions.get((t, p), (None, None))
            lag = progress.lag(t, p)
            total += lag or 0
            partitions.append(
                {"partition": p, "logEndOffset": end, "committedOffset": committed, "lag": lag}
            )
    deliveries = _deliveries.get((app_id, component, topic)) or TopicDeliveries()
    error = None
    if deliveries.last_error is not None and deliveries.last_error_time is not None:
        error = {
            "message": deliveries.last_error,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deliveries.last_error_time)),
        }
    return {
        "consumerGroup": group,
        "partitions": partitions,
        "lag": total,
        "inFlight": deliveries.in_flight,
        "retries": deliveries.retries,
        "deadLettered": deliveries.dead_lettered,
        "lastError": error,
    }


# --- exposition --------------------------------------------------------------------------------


def _counter(
    name: str, doc: str, labels: tuple[str, ...], values: dict[tuple[str, ...], int]
) -> Metric:
    """A counter family exported as ``<name>_total`` (prometheus-client's rule)."""
    metric = Metric(name, doc, "counter")
    for key, value in list(values.items()):
        metric.add_sample(f"{name}_total", dict(zip(labels, key)), value)
    return metric


def _dapr_count(
    name: str, doc: str, labels: tuple[str, ...], values: dict[tuple[str, ...], int]
) -> Metric:
    """One of Dapr's ``*_count`` counters under exactly its name. prometheus-client would add
    ``_total`` to a counter, so the family is typed ``untyped``; PromQL treats it alike."""
    metric = Metric(name, doc, "unknown")
    for key, value in list(values.items()):
        metric.add_sample(name, dict(zip(labels, key)), value)
    return metric


def _histogram(
    name: str,
    doc: str,
    labels: tuple[str, ...],
    bounds: tuple[float, ...],
    series: dict[tuple[str, ...], _Buckets],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, b in list(series.items()):
        counts = list(b.counts)
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*map(str, bounds), "+Inf"), counts):
            running += n
            buckets.append((bound, running))
        family.add_metric(list(key), buckets, b.total)
    return family


_DAPR_PUBSUB = ("app_id", "component", "namespace")


class _Collector(Collector):
    """Builds every family from the plain-integer state at scrape time."""

    def collect(self) -> Iterator[Metric]:
        egress = (*_DAPR_PUBSUB, "success", "topic")
        ingress = (*_DAPR_PUBSUB, "process_status", "topic")
        yield _dapr_count(
            "dapr_component_pubsub_egress_count",
            "The number of outgoing messages published to the pub/sub component",
            egress,
            _egress,
        )
        yield _histogram(
            "dapr_component_pubsub_egress_latencies",
            "The latency of the response from the pub/sub component (ms)",
            egress,
            _BUCKETS_MS,
            _egress_ms,
        )
        yield _dapr_count(
            "dapr_component_pubsub_ingress_count",
            "The number of incoming messages arriving from the pub/sub component",
            ingress,
            _ingress,
        )
        yield _histogram(
            "dapr_component_pubsub_ingress_latencies",
            "The consuming app event processing latency (ms)",
            ingress,
            _BUCKETS_MS,
            _ingress_ms,
        )
        yield _dapr_count(
            "dapr_http_server_request_count",
            "Number of HTTP requests started in server",
            ("app_id", "method", "path"),
            _http,
        )
        yield _histogram(
            "dapr_http_server_latency",
            "HTTP request end to end latency in server (ms)",
            ("app_id", "method", "path", "status"),
            _BUCKETS_MS,
            _http_ms,
        )
        yield from self._deliveries()
        yield from self._consumers()

    @staticmethod
    def _deliveries() -> Iterator[Metric]:
        labels = ("app_id", "component", "topic")
        retries: dict[tuple[str, ...], int] = {}
        dead: dict[tuple[str, ...], int] = {}
        in_flight = GaugeMetricFamily(
            "tidings_pubsub_deliveries_in_flight",
            "Deliveries to the app not finished yet",
            labels=labels,
        )
        for key, state in list(_deliveries.items()):
            retries[key] = state.retries
            dead[key] = state.dead_lettered
            in_flight.add_metric(list(key), state.in_flight)
        yield _counter(
            "tidings_pubsub_retries", "Delivery attempts that will be retried", labels, retries
        )
        yield _counter(
            "tidings_pubsub_dead_lettered",
            "Records stored to their dead-letter topic",
            labels,
            dead,
        )
        yield in_flight

    @staticmethod
    def _consumers() -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "tidings_pubsub_consumer_lag",
            "Records of a partition not committed yet: log end offset minus committed offset",
            labels=("app_id", "component", "topic", "partition"),
        )
        rebalances: dict[tuple[str, ...], int] = {}
        commit: dict[tuple[str, ...], _Buckets] = {}
        for (app_id, component), progress in list(_consumers.items()):
            rebalances[(app_id, component, progress.group)] = progress.rebalances
            for (success,), b in list(progress.commit_s.items()):
                commit[(app_id, component, success)] = b
            for topic, partition in sorted(progress.assigned):
                value = progress.lag(topic, partition)
                if value is not None:
                    lag.add_metric([app_id, component, topic, str(partition)], value)
        for (app_id, component), polled in list(_polled.items()):
            for topic, entries in list(polled.topics.items()):
                for entry in entries:
                    if entry["lag"] is not None:
                        lag.add_metric([app_id, component, topic, entry["partition"]], entry["lag"])
        yield lag
        yield _counter(
            "tidings_pubsub_rebalances",
            "Partition assignments this consumer group member received",
            ("app_id", "component", "consumer_group"),
            rebalances,
        )
        yield _histogram(
            "tidings_pubsub_commit_latency_seconds",
            "Time until the broker confirmed an offset commit request (s)",
            ("app_id", "component", "success"),
            _BUCKETS_S,
            commit,
        )


REGISTRY.register(_Collector())


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """No access log (a scrape every few seconds would fill the sidecar's log)."""


def metrics_only(app: Callable[..., Any]) -> Callable[..., Any]:
    """The WSGI ``app`` (prometheus-client's) behind a path check: ``/metrics`` only, 404
    text/plain for any other path. The metrics port listens on every interface so Prometheus can
    scrape it; nothing else of the sidecar may answer there (prometheus-client itself serves
    the metrics on every path)."""

    def only_metrics(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: only /metrics is served on this port\n"]
        return app(environ, start_response)

    return only_metrics


METRICS_PATH = "/metrics"


def serve(port: int, *, namespace: str = "", address: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` (only that path) on ``address:port`` from a daemon thread;
    ``namespace`` (Kubernetes) fills Dapr's ``namespace`` label. Raises ``OSError`` when the
    port cannot be bound."""
    global _namespace
    _namespace = namespace
    server = make_server(
        address,
        port,
        metrics_only(make_wsgi_app(REGISTRY)),
        _ThreadingWSGIServer,
        handler_class=_SilentHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
