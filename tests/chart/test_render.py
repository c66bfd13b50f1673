"""charts/tidings rendered by the real helm: lint, Kubernetes schemas, values schema, and the
objects a user gets (webhook policy and exclusions, TLS, operator settings, security)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.chart.tools import CHART, find, render, venv_tool
from tidings.operator.settings import parse_settings

VALUE_SETS = {
    "defaults": [],
    "kafka-component": [
        "--set",
        r"kafka.brokers=kafka-0.kafka:9092\,kafka-1.kafka:9092",
        "--set",
        "kafka.namespaces={shop,billing}",
    ],
    "cert-manager": ["--set", "webhook.tls.certManager.enabled=true"],
    "existing-secret": [
        "--set",
        "webhook.tls.existingSecret=my-tls",
        "--set",
        "webhook.tls.caBundle=Q0E=",
    ],
    "ignore-scoped": [
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        "replicaCount=1",
        "--set",
        "watchNamespaces={shop}",
        "--set",
        "webhook.namespaceSelector.matchLabels.tidings=enabled",
    ],
}


@pytest.mark.parametrize("args", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict_is_clean(helm: str, args: list[str]) -> None:
    run = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[WARNING]" not in run.stdout and "[ERROR]" not in run.stdout, run.stdout


@pytest.mark.parametrize("kube_version", ["1.25.0", "1.37.0"])
@pytest.mark.parametrize("args", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_builtin_objects_pass_kubernetes_validate_strict(
    helm: str, tmp_path: Path, args: list[str], kube_version: str
) -> None:
    objects = render(helm, *args)
    builtin = [
        o for o in objects if not o["apiVersion"].startswith(("dapr.io/", "cert-manager.io/"))
    ]
    assert {o["kind"] for o in builtin} >= {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "MutatingWebhookConfiguration",
    }
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text("---\n".join(json.dumps(o) + "\n" for o in builtin))
    run = subprocess.run(
        [
            venv_tool("kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            kube_version,
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(" passed for resource ") == len(builtin), run.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "webhook.failurPolicy=Ignore"],
            "Additional property failurPolicy is not allowed",
        ),
        (["--set", "sidecar.imag.tag=1"], "Additional property imag is not allowed"),
        # accepted once through the operator's image definition, and silently without effect
        (
            ["--set", "sidecar.image.pullPolicy=Always"],
            "Additional property pullPolicy is not allowed",
        ),
        (
            ["--set", "webhook.failurePolicy=Never"],
            'must be one of the following: "Fail", "Ignore"',
        ),
        (["--set", "kafka.brokers=kafka"], "kafka.brokers: Does not match pattern"),
        (["--set", "sidecar.resources.limits.memory=lots"], "sidecar.resources.limits.memory"),
        (["--set", "replicaCount=0"], "replicaCount"),
        (["--set", "sidecar.apiTokenSecret=Bad_Name"], "sidecar.apiTokenSecret"),
    ],
)
def test_a_values_typo_fails_with_the_schema_message(
    helm: str, args: list[str], message: str
) -> None:
    run = subprocess.run(
        [helm, "template", "t", str(CHART), *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert "values don't meet the specifications of the schema" in run.stderr, run.stderr
    assert message in run.stderr, run.stderr


def test_existing_secret_needs_its_ca_bundle(helm: str) -> None:
    run = subprocess.run(
        [helm, "template", "t", str(CHART), "--set", "webhook.tls.existingSecret=my-tls"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "webhook.tls.caBundle" in run.stderr, run.stderr


def hook(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (webhook,) = find(objects, "MutatingWebhookConfiguration")["webhooks"]
    return webhook


def test_webhook_fails_closed_by_default_and_excludes_the_operator(helm: str) -> None:
    objects = render(helm, namespace="ops")
    webhook = hook(objects)
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["clientConfig"]["service"] == {
        "name": "tidings-operator-webhook",
        "namespace": "ops",
        "path": "/inject-sidecar",
        "port": 443,
    }
    (ns_rule,) = webhook["namespaceSelector"]["matchExpressions"]
    assert ns_rule == {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["ops", "kube-system"],
    }
    # the operator's own pods are excluded by label: they must match the objectSelector's NotIn
    (obj_rule,) = webhook["objectSelector"]["matchExpressions"]
    pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert obj_rule["operator"] == "NotIn" and pod_labels[obj_rule["key"]] in obj_rule["values"]
    service = find(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"


def test_webhook_policy_and_selectors_are_configurable(helm: str) -> None:
    webhook = hook(
        render(
            helm,
            *VALUE_SETS["ignore-scoped"],
            "--set",
            "webhook.objectSelector.matchLabels.team=a",
            "--set",
            "webhook.excludeNamespaces={kube-system,monitoring}",
        )
    )
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["namespaceSelector"]["matchLabels"] == {"tidings": "enabled"}
    assert webhook["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "tidings-system",
        "kube-system",
        "monitoring",
    ]
    assert webhook["objectSelector"]["matchLabels"] == {"team": "a"}


def openssl(*args: str, stdin: bytes | None = None) -> str:
    return subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, check=True, timeout=30
    ).stdout.decode()


def test_generated_tls_is_one_ca_for_secret_bundle_and_checksum(helm: str, tmp_path: Path) -> None:
    """genCA is random on each call: the Secret, the caBundle and the pods' checksum must come
    from the same one, and the serving certificate must name the Service the API server calls."""
    objects = render(helm)
    secret = find(objects, "Secret")
    data = secret["data"]
    assert hook(objects)["clientConfig"]["caBundle"] == data["ca.crt"]
    annotations = find(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    tls_json = json.dumps(
        {"ca": data["ca.crt"], "cert": data["tls.crt"], "key": data["tls.key"]},
        separators=(",", ":"),
        sort_keys=True,
    )
    assert annotations["checksum/webhook-tls"] == hashlib.sha256(tls_json.encode()).hexdigest()
    volume = find(objects, "Deployment")["spec"]["template"]["spec"]["volumes"][0]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]

    (tmp_path / "ca.crt").write_bytes(base64.b64decode(data["ca.crt"]))
    (tmp_path / "tls.crt").write_bytes(base64.b64decode(data["tls.crt"]))
    assert "OK" in openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt"))
    sans = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", str(tmp_path / "tls.crt"))
    assert "DNS:tidings-operator-webhook.tidings-system.svc" in sans


def test_cert_manager_issues_the_certificate_and_injects_the_bundle(helm: str) -> None:
    objects = render(helm, *VALUE_SETS["cert-manager"])
    assert not [o for o in objects if o["kind"] == "Secret"]
    mwc = find(objects, "MutatingWebhookConfiguration")
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]
    cert = find(objects, "Certificate", "tidings-operator-webhook")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "tidings-system/tidings-operator-webhook"
    )
    assert cert["spec"]["secretName"] == "tidings-operator-webhook-tls"
    assert "tidings-operator-webhook.tidings-system.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"name": "tidings-operator-ca", "kind": "Issuer"}
    own = render(
        helm,
        *VALUE_SETS["cert-manager"],
        "--set",
        "webhook.tls.certManager.issuerRef.name=corp",
        "--set",
        "webhook.tls.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert not [o for o in own if o["kind"] == "Issuer"]
    assert find(own, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp",
        "kind": "ClusterIssuer",
    }


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:  # the downward API, as the kubelet would fill it in
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": "op-0", "metadata.namespace": "ops"}[field]
    return env


def test_the_operator_accepts_the_settings_the_chart_passes(helm: str) -> None:
    deployment = find(
        render(
            helm,
            "--set",
            "sidecar.image.tag=9.9",
            "--set",
            "sidecar.logLevel=debug",
            "--set",
            "sidecar.resources.limits.cpu=1",
            "--set",
            "watchNamespaces={shop,billing}",
            "--set",
            "webhook.port=8443",
            namespace="ops",
        ),
        "Deployment",
    )
    settings = parse_settings([], environ=container_env(deployment))
    assert settings.injector.sidecar_image == "ghcr.io/tidings/tidings-sidecar:9.9"
    assert settings.injector.sidecar_log_level == "debug"
    assert settings.injector.sidecar_resources == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "256Mi"},
    }
    assert settings.injector.allow_sidecar_image_annotation is False
    assert settings.injector.default_api_token_secret is None
    token = parse_settings(
        [],
        environ=container_env(
            find(render(helm, "--set", "sidecar.apiTokenSecret=dapr-api-token"), "Deployment")
        ),
    )
    assert token.injector.default_api_token_secret == "dapr-api-token"
    assert settings.webhook.port == 8443
    assert settings.webhook.cert_file == "/etc/tidings/webhook-tls/tls.crt"
    assert settings.namespaces == ("shop", "billing")
    assert (
        settings.leader_election.lease_name,
        settings.leader_election.lease_namespace,
        settings.leader_election.identity,
    ) == ("tidings-operator", "ops", "op-0")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-tls")
    assert settings.webhook.cert_file.startswith(mount["mountPath"] + "/")
    assert container["ports"][0]["containerPort"] == 8443


def test_operator_pods_run_locked_down(helm: str) -> None:
    spec = find(render(helm), "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    with_tolerations = find(
        render(
            helm, "--set", "tolerations[0].key=dedicated", "--set", "tolerations[0].operator=Exists"
        ),
        "Deployment",
    )
    assert with_tolerations["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "dedicated", "operator": "Exists"}
    ]


def test_default_kafka_component_per_namespace(helm: str) -> None:
    assert not [o for o in render(helm) if o["kind"] == "Component"]
    components = [
        o
        for o in render(
            helm,
            *VALUE_SETS["kafka-component"],
            "--set",
            "kafka.metadata[0].name=initialOffset",
            "--set",
            "kafka.metadata[0].value=oldest",
        )
        if o["kind"] == "Component"
    ]
    assert [c["metadata"]["namespace"] for c in components] == ["shop", "billing"]
    for c in components:
        assert c["metadata"]["name"] == "pubsub" and c["spec"]["type"] == "pubsub.kafka"
        assert c["spec"]["metadata"] == [
            {"name": "brokers", "value": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
            {"name": "authType", "value": "none"},
            {"name": "initialOffset", "value": "oldest"},
        ]


def test_injected_pod_passes_kubernetes_validate_strict(helm: str, tmp_path: Path) -> None:
    """What the injector makes of a pod, with the chart's defaults for the sidecar, is a valid
    Pod for current Kubernetes versions (the cluster tests run it on 1.20 only)."""
    from tidings.operator.injection import decide

    deployment = find(render(helm), "Deployment")
    settings = parse_settings([], environ=container_env(deployment)).injector
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "orders-1",
            "namespace": "shop",
            "annotations": {
                "dapr.io/app-id": "orders",
                "dapr.io/app-port": "8080",
                "dapr.io/api-token-secret": "orders-api-token",
                "dapr.io/app-token-secret": "orders-app-token",
            },
        },
        "spec": {"containers": [{"name": "app", "image": "registry.example/orders:1"}]},
    }
    patched, _ = decide(pod, settings)
    assert patched is not None
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps(patched))
    run = subprocess.run(
        [
            venv_tool("kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            "1.37.0",
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and " passed for resource " in run.stdout, run.stdout + run.stderr
