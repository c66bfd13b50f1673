"""Prometheus metrics of the pub/sub runtime, with Dapr's metric names.

Dapr's sidecar exports ``dapr_component_pubsub_egress_count`` / ``..._egress_latencies`` for
publishes and ``dapr_component_pubsub_ingress_count`` / ``..._ingress_latencies`` for deliveries
(labels ``app_id``, ``component``, ``namespace``, ``topic`` and ``success`` / ``process_status``);
dashboards written for Dapr read ours unchanged. Latencies are in milliseconds, as Dapr's.

Served on ``--metrics-port`` (9090, ``--enable-metrics``) by :func:`serve`. Recording is a label
lookup and an increment (~2 us), done once per publish and once per delivery outcome.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

__all__ = ["record_egress", "record_ingress", "serve"]

# Buckets in ms: sub-millisecond broker acks up to multi-second app handlers.
_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

EGRESS_COUNT = Counter(
    "dapr_component_pubsub_egress_count", "Publishes to a pub/sub component, by outcome.",
    ["app_id", "component", "namespace", "topic", "success"])
EGRESS_LATENCY = Histogram(
    "dapr_component_pubsub_egress_latencies", "Publish latency until the broker acknowledged (ms).",
    ["app_id", "component", "namespace", "topic"], buckets=_BUCKETS_MS)
INGRESS_COUNT = Counter(
    "dapr_component_pubsub_ingress_count",
    "Records handled for delivery to the app, by outcome (success, retry, drop).",
    ["app_id", "component", "namespace", "topic", "process_status"])
INGRESS_LATENCY = Histogram(
    "dapr_component_pubsub_ingress_latencies", "Time the app took to answer a delivery (ms).",
    ["app_id", "component", "namespace", "topic", "process_status"], buckets=_BUCKETS_MS)

_namespace = ""


def serve(port: int, *, namespace: str = "", address: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``address:port`` from a daemon thread (prometheus-client's server)."""
    global _namespace
    _namespace = namespace
    start_http_server(port, addr=address)


def record_egress(app_id: str, component: str, topic: str, *, success: bool,
                  elapsed_s: float) -> None:
    """One publish: ``elapsed_s`` seconds from request to broker acknowledgement."""
    EGRESS_COUNT.labels(app_id, component, _namespace, topic, "true" if success else "false").inc()
    if success:
        EGRESS_LATENCY.labels(app_id, component, _namespace, topic).observe(elapsed_s * 1000)


def record_ingress(app_id: str, component: str, topic: str, *, process_status: str,
                   elapsed_s: float) -> None:
    """One delivery attempt's outcome (``success`` | ``retry`` | ``drop``) and the app's time."""
    INGRESS_COUNT.labels(app_id, component, _namespace, topic, process_status).inc()
    INGRESS_LATENCY.labels(app_id, component, _namespace, topic, process_status).observe(
        elapsed_s * 1000)
