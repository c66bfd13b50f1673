"""W3C trace context from publisher to subscriber, and OpenTelemetry spans when configured.

Propagation (always on; W3C Trace Context, ``traceparent``/``tracestate``):

- publish: the request's ``traceparent``/``tracestate`` headers become the CloudEvent's
  ``traceparent``, ``traceid`` (Dapr's legacy copy of ``traceparent``) and ``tracestate``, and
  the record's Kafka headers of the same names (``publishing/publisher.py``). ``metadata.cloudevent.
  traceparent`` and a user CloudEvent's own ``traceparent`` still win inside the event, as in
  Dapr; a request without a (valid) ``traceparent`` starts a new trace;
- delivery: the event's ``traceparent``/``tracestate`` (filled from the record's headers when the
  event has none, ``envelopes/reading.py``) become the delivery request's headers
  (``delivery.engine.http_headers``).

Spans (only with ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set,
and the ``otel`` extra installed): :func:`configure` builds an SDK tracer provider with a batching
OTLP/HTTP exporter (the standard ``OTEL_*`` variables apply; ``OTEL_SERVICE_NAME`` defaults to
the app-id). Then every publish gets a PRODUCER span ``publish <topic>``, child of the caller's
``traceparent``, and the event carries that span's context; every delivery attempt gets a
CONSUMER span ``process <topic>``, child of the event's context, and the app receives that span's
context, so a trace reads caller → publish → process → app. Attributes follow the OpenTelemetry
messaging semantic conventions: ``messaging.system``, ``messaging.destination.name``,
``messaging.operation.type``/``.name``, and on delivery ``messaging.kafka.consumer.group`` (and its
newer name ``messaging.consumer.group.name``), ``messaging.destination.partition.id``,
``messaging.kafka.offset``.

Without an endpoint nothing is imported from OpenTelemetry and each hook is one global read and
a ``None`` check.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from .metrics import consumer_group

__all__ = [
    "configure",
    "enabled",
    "end_span",
    "shutdown",
    "start_delivery",
    "start_publish",
    "valid_traceparent",
]

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# version-traceid-spanid-flags; version ff, an all-zero trace id or span id are invalid (W3C §3.2)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")

_tracer: Any = None  # an opentelemetry Tracer once configure() found an endpoint
_provider: Any = None
_propagator: Any = None


def valid_traceparent(value: str | None) -> bool:
    """Whether ``value`` is a W3C ``traceparent`` this runtime passes on (lower-case hex, not
    version ``ff``, neither id all zeros). Later versions may append fields (W3C §3.2.4)."""
    if not value:
        return False
    m = _TRACEPARENT.match(value)
    if m is None or (len(value) > 55 and value[55] != "-"):
        return False
    return m[1] != "ff" and m[2] != "0" * 32 and m[3] != "0" * 16


def enabled() -> bool:
    """Whether spans are exported (:func:`configure` found an endpoint)."""
    return _tracer is not None


def configure(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Export spans over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-only
    variant) is set; returns whether spans are exported. ``service_name`` is used unless
    ``OTEL_SERVICE_NAME`` is set. Without the ``otel`` extra installed it logs an error once and
    returns ``False`` (propagation still works). ``environ`` decides whether to export; the
    exporter itself reads the process environment. Call once per process, before serving."""
    global _tracer, _provider, _propagator
    env = os.environ if environ is None else environ
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if not endpoint:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        log.error(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
            "(pip install 'tidings[otel]'); exporting no spans: %s",
            exc,
        )
        return False
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    # The exporter reads OTEL_EXPORTER_OTLP_* itself (endpoint + /v1/traces, headers, timeout).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("tidings.sidecar")
    _propagator = TraceContextTextMapPropagator()
    log.info("exporting spans over OTLP/HTTP to %s", endpoint, extra={"app_id": service_name})
    return True


def shutdown(flush_timeout_s: float = 2.0) -> None:
    """Flush pending spans (for at most about ``flush_timeout_s`` seconds plus one export
    attempt) and stop the exporter (sidecar stop). Never raises."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        try:
            provider.force_flush(int(flush_timeout_s * 1000))
            provider.shutdown()
        except Exception:  # noqa: BLE001 - an unreachable collector must not fail the stop
            log.exception("flushing spans failed")


def _parent(traceparent: str | None, tracestate: str | None) -> Any:
    carrier = {}
    if traceparent:
        carrier[TRACEPARENT] = traceparent
        if tracestate:
            carrier[TRACESTATE] = tracestate
    return _propagator.extract(carrier)


def _context_of(span: Any) -> tuple[str, str | None]:
    from opentelemetry.trace import set_span_in_context

    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=set_span_in_context(span))
    return carrier[TRACEPARENT], carrier.get(TRACESTATE) or None


def start_publish(
    traceparent: str | None, tracestate: str | None, *, system: str, topic: str
) -> tuple[str | None, str | None, Any]:
    """The trace context a publish carries on: ``(traceparent, tracestate, span)``.

    Without spans: the caller's ``traceparent`` if valid (else ``None``: the envelope starts a
    trace) and its ``tracestate``, and no span. With spans: a started PRODUCER span, child of
    the caller's context, and that span's context; end it with :func:`end_span`.
    """
    if not valid_traceparent(traceparent):
        traceparent = tracestate = None
    if _tracer is None:
        return traceparent, tracestate or None, None
    from opentelemetry.trace import SpanKind

    span = _tracer.start_span(
        f"publish {topic}",
        context=_parent(traceparent, tracestate),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": system,
            "messaging.destination.name": topic,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
        },
    )
    return (*_context_of(span), span)


def start_delivery(
    headers: MutableMapping[str, str],
    *,
    app_id: str,
    pubsubname: str,
    topic: str,
    partition: int,
    offset: int,
) -> Any:
    """Without spans: ``None`` and ``headers`` untouched. With spans: a started CONSUMER span for
    one delivery attempt, child of the context in ``headers`` (the event's, from
    ``delivery.engine.http_headers``), whose context then replaces ``headers``' ``traceparent`` and
    ``tracestate``, so the app's spans are its children. End it with :func:`end_span`."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    traceparent, tracestate = headers.get(TRACEPARENT), headers.get(TRACESTATE)
    if not valid_traceparent(traceparent):
        traceparent = tracestate = None
    group = consumer_group(app_id, pubsubname)
    attributes: dict[str, Any] = {
        "messaging.system": "kafka" if group else "tidings",
        "messaging.destination.name": topic,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
    }
    if group:
        attributes["messaging.kafka.consumer.group"] = group
        attributes["messaging.consumer.group.name"] = group
    span = _tracer.start_span(
        f"process {topic}",
        context=_parent(traceparent, tracestate),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )
    traceparent, tracestate = _context_of(span)
    headers[TRACEPARENT] = traceparent
    if tracestate:
        headers[TRACESTATE] = tracestate
    else:
        headers.pop(TRACESTATE, None)
    return span


def end_span(
    span: Any, error: str | None = None, attributes: Mapping[str, Any] | None = None
) -> None:
    """End a span from :func:`start_publish`/:func:`start_delivery` (``None``: nothing to do);
    ``attributes`` are added first; ``error`` marks it failed with that description."""
    if span is None:
        return
    if attributes:
        span.set_attributes(attributes)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
