"""The operator's metrics on a real API server: a Deployment's pod goes through the webhook
(``injected``) and its config Secret is written (``created``). The operator runs in this
process (``conftest.operator``), so its counters are read from prometheus-client's registry."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tests.cluster.conftest import Kube, Operator, deployment, pod_list, poll, secret_files

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_admissions_and_config_secrets_are_counted(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    injected = value("tidings_operator_admission_requests_total", outcome="injected")
    latencies = value("tidings_operator_admission_latency_seconds_count", outcome="injected")
    created = value("tidings_operator_config_secrets_total", result="created")
    kube.apps.create_namespaced_deployment(
        namespace, deployment("metered", {"dapr.io/app-id": "metered"})
    )
    poll("the injected pod", lambda: pod_list(kube, namespace, "app=metered"))
    poll(
        "tidings-metered written",
        lambda: secret_files(kube, namespace, "tidings-metered") is not None,
    )
    poll(
        "the config Secret to be counted",
        lambda: value("tidings_operator_config_secrets_total", result="created") > created,
    )
    assert value("tidings_operator_admission_requests_total", outcome="injected") > injected
    assert value("tidings_operator_admission_latency_seconds_count", outcome="injected") > latencies
