"""Prometheus metrics of the operator, served on ``--metrics-port`` (9090, 0: none).

- ``tidings_operator_admission_requests_total`` / ``tidings_operator_admission_latency_seconds``
  by ``outcome``: ``injected`` (allowed with a patch), ``allowed`` (no change), ``refused``
  (e.g. a malformed annotation), ``malformed`` (not an AdmissionReview we can answer, HTTP 4xx)
  and ``error`` (the injector failed);
- ``tidings_operator_config_secrets_total`` by ``result``: what writing an app's rendered
  config Secret did (``created``, ``updated``, ``unchanged``, ``deleted``, ``absent``,
  ``too-large``, ``refused``, ``conflict``; ``handlers.Reconciler.sync_app``);
- ``tidings_operator_reconcile_errors_total`` by ``kind`` (``app``, ``component``,
  ``subscription``): reconciliations that failed and are retried with back-off.

Dapr's injector counts requests as ``dapr_injector_sidecar_injection/requests_total``
(dapr/dapr ``docs/development/dapr-metrics.md``), a name Prometheus cannot scrape as it is, so
these are tidings' own. The operator's event loop answers admissions; prometheus-client's
server runs on its own thread.
"""

from __future__ import annotations

import json

from prometheus_client import Counter, Histogram, start_http_server

__all__ = [
    "ADMISSION_LATENCY",
    "ADMISSION_REQUESTS",
    "CONFIG_SECRETS",
    "RECONCILE_ERRORS",
    "admission_outcome",
    "serve",
]

ADMISSION_REQUESTS = Counter(
    "tidings_operator_admission_requests",
    "Admission requests answered by the sidecar injector, by outcome",
    ["outcome"],
)
ADMISSION_LATENCY = Histogram(
    "tidings_operator_admission_latency_seconds",
    "Time to answer an admission request (s), by outcome",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CONFIG_SECRETS = Counter(
    "tidings_operator_config_secrets",
    "App config Secrets rendered and written, by result",
    ["result"],
)
RECONCILE_ERRORS = Counter(
    "tidings_operator_reconcile_errors",
    "Reconciliations that failed (retried with back-off), by kind",
    ["kind"],
)


def admission_outcome(status: int, body: bytes | None) -> str:
    """The ``outcome`` label of an admission answer: HTTP ``status`` and the JSON ``body`` of
    the AdmissionReview answered."""
    if status >= 500:
        return "error"
    if status != 200 or not body:
        return "malformed"
    try:
        response = json.loads(body).get("response") or {}
    except (ValueError, AttributeError):
        return "malformed"
    if not response.get("allowed"):
        code = (response.get("status") or {}).get("code")
        return "error" if isinstance(code, int) and code >= 500 else "refused"
    return "injected" if response.get("patch") else "allowed"


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``address:port`` from a daemon thread. Raises ``OSError`` when the
    port cannot be bound."""
    start_http_server(port, addr=address)
