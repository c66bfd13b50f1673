"""The Helm chart (charts/tidings) agrees with the code: one CRD source, the webhook settings the
injector module builds, RBAC for exactly what the operator calls. Checked as text here; the
rendered chart is checked with helm in tests/chart and installed for real in tests/cluster."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tidings.operator.injection import WEBHOOK_ID, webhook_configuration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tidings"


def test_chart_crds_are_byte_identical_to_crds_folder() -> None:
    source = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert source == copies == ["components.dapr.io.yaml", "subscriptions.dapr.io.yaml"]
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/tidings/crds/{name} drifted: cp crds/{name} charts/tidings/crds/"
        )


def test_crds_use_no_cel_and_are_structural() -> None:
    for path in (REPO / "crds").glob("*.yaml"):
        text = path.read_text()
        assert "x-kubernetes-validations" not in text
        doc = yaml.safe_load(text)
        assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
        for version in doc["spec"]["versions"]:
            assert version["subresources"] == {"status": {}}
            assert version["additionalPrinterColumns"]
            props = version["schema"]["openAPIV3Schema"]["properties"]
            assert "scopes" in props and "scopes" not in props["spec"]["properties"]


def test_webhook_template_mirrors_webhook_configuration() -> None:
    text = (CHART / "templates" / "webhook.yaml").read_text()
    hook = webhook_configuration(name="x", client_config={})["webhooks"][0]
    assert f"path: /{WEBHOOK_ID}" in text
    assert f"name: {hook['name']}" in text
    for key in ("reinvocationPolicy", "sideEffects", "matchPolicy"):
        assert f"{key}: {hook[key]}" in text
    assert 'operations: ["CREATE"]' in text and 'resources: ["pods"]' in text
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # Fail: a pod that asks for a sidecar never runs without one (issue 4)
    assert values["webhook"]["failurePolicy"] == "Fail"
    assert values["sidecar"]["allowImageAnnotation"] is False


def test_rbac_lists_what_the_operator_calls() -> None:
    text = (CHART / "templates" / "rbac.yaml").read_text()
    rules = re.findall(r"resources: \[(.*?)\]\n\s+verbs: \[(.*?)\]", text)
    granted = {
        (r.strip(' "'), v.strip(' "'))
        for res, verbs in rules
        for r in res.split(",")
        for v in verbs.split(",")
    }
    used = {
        ("pods", "list"),
        ("pods", "watch"),
        ("secrets", "get"),
        ("secrets", "list"),
        ("secrets", "watch"),
        ("secrets", "create"),
        ("secrets", "update"),
        ("secrets", "delete"),
        ("events", "create"),
        ("components", "list"),
        ("components", "watch"),
        ("subscriptions", "list"),
        ("subscriptions", "watch"),
        ("components/status", "patch"),
        ("subscriptions/status", "patch"),
        ("leases", "get"),
        ("leases", "create"),
        ("leases", "update"),
    }
    assert granted == used
