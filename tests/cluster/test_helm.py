"""The chart against the real API server: ``kubectl apply --dry-run=server`` of what it renders,
and the install path of the README: ``helm install`` → the operator runs (as a local process,
from the rendered Deployment, see kubelet.py) → an annotated Deployment's pods are injected
through the chart's own MutatingWebhookConfiguration, Service and TLS → ``helm upgrade`` keeps
the certificate → ``helm uninstall`` leaves nothing behind but the CRDs."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.tools import CHART, tools_dir
from tests.cluster.conftest import (
    WEBHOOK_CONFIG_NAME,
    Kube,
    deployment,
    free_port,
    pod_list,
    poll,
    secret_files,
)
from tests.cluster.kubelet import LocalKubelet

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

SIDECAR_REPO, SIDECAR_TAG = "example.invalid/tidings-sidecar", "helm-test"


@pytest.fixture(scope="module")
def tools() -> Path:
    return tools_dir()


def run(
    argv: list[str],
    kube: Kube,
    *,
    stdin: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "KUBECONFIG": str(kube.kubeconfig),
            "PATH": "/usr/bin:/bin",
            "HOME": str(kube.workdir),
        },
    )
    if check:
        assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done


def helm(
    tools: Path, kube: Kube, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run([str(tools / "helm"), *args], kube, check=check)


def kubectl(
    tools: Path,
    kube: Kube,
    *args: str,
    stdin: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    # kubectl 1.32 against the 1.20 test server: only a version-skew warning on `version`
    return run([str(tools / "kubectl"), *args], kube, stdin=stdin, check=check)


def test_rendered_chart_passes_server_side_dry_run(
    tools: Path, kube: Kube, crds: list[dict[str, Any]], namespace: str
) -> None:
    """Every object the chart renders (defaults, and with a Kafka Component) is accepted by the
    API server's validation and admission, without being stored."""
    for extra in (
        [],
        ["--set", "kafka.brokers=kafka:9092", "--set", f"kafka.namespaces={{{namespace}}}"],
    ):
        rendered = helm(
            tools, kube, "template", "dry", str(CHART), "--namespace", namespace, *extra
        ).stdout
        kinds = sorted({d["kind"] for d in yaml.safe_load_all(rendered) if d})
        out = kubectl(tools, kube, "apply", "--dry-run=server", "-f", "-", stdin=rendered)
        assert out.stdout.count("(server dry run)") == len(
            [d for d in yaml.safe_load_all(rendered) if d]
        ), out.stdout
        assert "MutatingWebhookConfiguration" in kinds
    # nothing was stored
    assert not kube.apps.list_namespaced_deployment(namespace).items
    bad = helm(tools, kube, "template", "dry", str(CHART), "--namespace", namespace).stdout
    bad = bad.replace("failurePolicy: Fail", "failurePolicy: Sometimes")
    refused = kubectl(tools, kube, "apply", "--dry-run=server", "-f", "-", stdin=bad, check=False)
    assert refused.returncode != 0 and "failurePolicy" in refused.stderr, refused.stderr


@pytest.fixture
def only_the_charts_injector(kube: Kube) -> Iterator[None]:
    """Another test's injector (the session ``operator`` fixture's webhook, if registered) would
    also inject our pods; take it away for this test and put it back afterwards."""
    from kubernetes import client
    from kubernetes.client import ApiException

    admission = client.AdmissionregistrationV1Api(kube.api)
    try:
        saved = admission.read_mutating_webhook_configuration(WEBHOOK_CONFIG_NAME)
    except ApiException as exc:
        if exc.status != 404:
            raise
        saved = None
    if saved is not None:
        admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIG_NAME)
    try:
        yield
    finally:
        if saved is not None:
            body = kube.api.sanitize_for_serialization(saved)
            body["metadata"] = {
                "name": WEBHOOK_CONFIG_NAME,
                "labels": body["metadata"].get("labels"),
            }
            admission.create_mutating_webhook_configuration(body)


def injected_pods(kube: Kube, namespace: str, app: str) -> list[Any] | None:
    pods = pod_list(kube, namespace, f"app={app}")
    if pods and all(any(c.name == "daprd" for c in p.spec.containers) for p in pods):
        return pods
    return None


def custom_ready(kube: Kube, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    obj = kube.custom.get_namespaced_custom_object("dapr.io", "v1alpha1", namespace, plural, name)
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Ready" and c["status"] == "True"), None)


def leftovers(kube: Kube, release: str, release_ns: str, app_ns: str) -> list[str]:
    """What of the release (or the operator it ran) is still in the cluster."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(kube.api)
    admission = client.AdmissionregistrationV1Api(kube.api)
    coordination = client.CoordinationV1Api(kube.api)
    found: list[str] = []
    found += [
        f"deployment/{d.metadata.name}"
        for d in kube.apps.list_namespaced_deployment(release_ns).items
    ]
    found += [
        f"replicaset/{r.metadata.name}"
        for r in kube.apps.list_namespaced_replica_set(release_ns).items
    ]
    found += [f"pod/{p.metadata.name}" for p in kube.core.list_namespaced_pod(release_ns).items]
    found += [
        f"service/{s.metadata.name}" for s in kube.core.list_namespaced_service(release_ns).items
    ]
    found += [
        f"serviceaccount/{s.metadata.name}"
        for s in kube.core.list_namespaced_service_account(release_ns).items
        if s.metadata.name != "default"
    ]
    found += [
        f"secret/{s.metadata.name}"
        for s in kube.core.list_namespaced_secret(release_ns).items
        if (s.metadata.annotations or {}).get("kubernetes.io/service-account.name") != "default"
    ]
    found += [
        f"configmap/{c.metadata.name}"
        for c in kube.core.list_namespaced_config_map(release_ns).items
        if c.metadata.name != "kube-root-ca.crt"
    ]
    found += [
        f"lease/{x.metadata.name}" for x in coordination.list_namespaced_lease(release_ns).items
    ]
    found += [f"role/{r.metadata.name}" for r in rbac.list_namespaced_role(release_ns).items]
    found += [
        f"rolebinding/{r.metadata.name}"
        for r in rbac.list_namespaced_role_binding(release_ns).items
    ]
    found += [
        f"clusterrole/{r.metadata.name}"
        for r in rbac.list_cluster_role().items
        if r.metadata.name.startswith(release)
    ]
    found += [
        f"clusterrolebinding/{r.metadata.name}"
        for r in rbac.list_cluster_role_binding().items
        if r.metadata.name.startswith(release)
    ]
    found += [
        f"mutatingwebhookconfiguration/{m.metadata.name}"
        for m in admission.list_mutating_webhook_configuration().items
        if m.metadata.name.startswith(release)
    ]
    components = kube.custom.list_namespaced_custom_object(
        "dapr.io", "v1alpha1", app_ns, "components"
    )["items"]
    found += [f"component/{c['metadata']['name']}" for c in components]
    found += [
        f"secret/{s.metadata.name} in {app_ns}"
        for s in kube.core.list_namespaced_secret(app_ns).items
        if s.metadata.name.startswith("tidings-")
    ]
    return found


def test_helm_install_injects_upgrade_keeps_tls_uninstall_cleans_up(
    tools: Path,
    kube: Kube,
    crds: list[dict[str, Any]],
    namespace: str,
    only_the_charts_injector: None,
) -> None:
    if kube.cluster is None:
        pytest.skip(
            "runs the operator pod as a local process: needs the local test API "
            "server (tests/cluster/apiserver.py), not an external $KUBECONFIG cluster"
        )
    release = f"h{uuid.uuid4().hex[:6]}"
    release_ns = f"{release}-system"
    app_ns = namespace
    webhook_port = free_port()
    kubelet = LocalKubelet(kube, kube.workdir / f"kubelet-{release}")
    kubelet.workdir.mkdir()
    kubelet.register_node()
    try:
        # -- install, as the README says -------------------------------------------------
        installed = helm(
            tools,
            kube,
            "install",
            release,
            str(CHART),
            "--namespace",
            release_ns,
            "--create-namespace",
            "--set",
            "kafka.brokers=my-kafka-bootstrap.kafka:9092",
            "--set",
            f"kafka.namespaces={{{app_ns}}}",
            "--set",
            "replicaCount=1",
            "--set",
            f"webhook.port={webhook_port}",
            "--set",
            f"sidecar.image.repository={SIDECAR_REPO}",
            "--set",
            f"sidecar.image.tag={SIDECAR_TAG}",
            "--set",
            "logFormat=text",
        )
        assert "STATUS: deployed" in installed.stdout
        assert "Next steps" in installed.stdout and "dapr.io/app-id" in installed.stdout
        fullname = f"{release}-operator"
        mwc_name = f"{fullname}-sidecar-injector"

        # The operator's own pod is created although the injector does not run yet and
        # failurePolicy is Fail: its namespace and its pods are excluded.
        (operator_pod,) = poll(
            "the operator pod from the chart's Deployment",
            lambda: pod_list(kube, release_ns, f"app.kubernetes.io/instance={release}"),
        )
        assert operator_pod.spec.security_context.run_as_non_root is True
        running = kubelet.run(operator_pod)

        def available() -> bool:
            d = kube.apps.read_namespaced_deployment(fullname, release_ns)
            return (d.status.available_replicas or 0) == 1

        poll("the operator Deployment to be available", available, timeout_s=60)
        poll(
            "the webhook Service's Endpoints at the operator pod",
            lambda: any(
                a.ip == kubelet.ip
                for s in (
                    kube.core.read_namespaced_endpoints(f"{fullname}-webhook", release_ns).subsets
                    or []
                )
                for a in s.addresses or []
            ),
        )

        # the operator, with the chart's RBAC only, validates the chart's Component ...
        assert poll(
            "the chart's Component validated (status Ready=True)",
            lambda: custom_ready(kube, app_ns, "components", "pubsub"),
            timeout_s=90,
            interval_s=0.5,
        )
        # ... holds the chart's Lease, which keeps its Helm labels
        lease = kube.raw(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{release_ns}/leases/{fullname}"
        )[2]
        assert lease["spec"].get("holderIdentity") == operator_pod.metadata.name, lease
        assert lease["metadata"]["labels"]["app.kubernetes.io/instance"] == release

        # -- the user's part: a Subscription and an annotated Deployment -----------------
        subscription = {
            "apiVersion": "dapr.io/v2alpha1",
            "kind": "Subscription",
            "metadata": {"name": "orders", "namespace": app_ns},
            "spec": {"pubsubname": "pubsub", "topic": "orders", "routes": {"default": "/orders"}},
        }
        app = deployment(
            "orders", {"dapr.io/app-id": "orders", "dapr.io/app-port": "8080"}, replicas=2
        )
        app["metadata"]["namespace"] = app_ns
        kubectl(tools, kube, "apply", "-f", "-", stdin=yaml.safe_dump_all([subscription, app]))
        pods = poll(
            "2 pods of the annotated Deployment, injected through the chart's webhook",
            lambda: (p := injected_pods(kube, app_ns, "orders")) and len(p) == 2 and p,
            timeout_s=90,
            interval_s=0.5,
        )
        for pod in pods:
            assert pod.metadata.owner_references[0].kind == "ReplicaSet"
            (daprd,) = [c for c in pod.spec.containers if c.name == "daprd"]
            assert daprd.image == f"{SIDECAR_REPO}:{SIDECAR_TAG}"
            assert daprd.command == ["tidings", "sidecar"]
            assert daprd.resources.requests == {"cpu": "50m", "memory": "64Mi"}
            assert daprd.resources.limits == {"memory": "256Mi"}
        files = poll(
            "the app's config Secret with the chart's Component and the Subscription",
            lambda: (f := secret_files(kube, app_ns, "tidings-orders")) and len(f) == 2 and f,
            timeout_s=90,
            interval_s=0.5,
        )
        component = yaml.safe_load(files["component-pubsub.yaml"])
        assert {"name": "brokers", "value": "my-kafka-bootstrap.kafka:9092"} in (
            component["spec"]["metadata"]
        )

        # -- upgrade: the same certificate, no restart -----------------------------------
        def tls_state() -> tuple[str, str, str]:
            mwc = kube.raw(
                "GET",
                f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{mwc_name}",
            )[2]
            secret = kube.core.read_namespaced_secret(f"{fullname}-webhook-tls", release_ns)
            template = kube.apps.read_namespaced_deployment(fullname, release_ns).spec.template
            return (
                mwc["webhooks"][0]["clientConfig"]["caBundle"],
                secret.data["tls.crt"],
                template.metadata.annotations["checksum/webhook-tls"],
            )

        before = tls_state()
        assert (
            before[0]
            == kube.core.read_namespaced_secret(f"{fullname}-webhook-tls", release_ns).data[
                "ca.crt"
            ]
        )
        upgraded = helm(
            tools, kube, "upgrade", release, str(CHART), "--namespace", release_ns, "--reuse-values"
        )
        assert "REVISION: 2" in upgraded.stdout
        assert tls_state() == before, "the upgrade replaced the webhook certificate"
        replica_sets = kube.apps.list_namespaced_replica_set(release_ns).items
        assert len(replica_sets) == 1, "the upgrade restarted the operator"

        # -- the app goes away: the operator removes its config Secret -------------------
        kubectl(tools, kube, "delete", "deployment", "orders", "-n", app_ns, "--wait=false")
        poll(
            "the config Secret of the gone app removed",
            lambda: secret_files(kube, app_ns, "tidings-orders") is None,
            timeout_s=120,
            interval_s=0.5,
        )

        # -- failurePolicy Fail: no pod slips through without a sidecar ------------------
        kubelet.kill(running)
        refused = kubectl(
            tools,
            kube,
            "run",
            "lonely",
            "-n",
            app_ns,
            "--image=example.invalid/app:1",
            "--annotations=dapr.io/app-id=lonely",
            check=False,
        )
        assert refused.returncode != 0, refused.stdout
        assert "sidecar-injector.tidings.dapr.io" in refused.stderr, refused.stderr
        assert not pod_list(kube, app_ns)
        # ... while the operator's own pods still start
        kube.apps.patch_namespaced_deployment_scale(fullname, release_ns, {"spec": {"replicas": 2}})
        poll(
            "operator pods created with the injector down",
            lambda: len(pod_list(kube, release_ns, f"app.kubernetes.io/instance={release}")) >= 2,
        )

        # -- uninstall: nothing left but the CRDs ----------------------------------------
        uninstalled = helm(tools, kube, "uninstall", release, "--namespace", release_ns)
        assert "uninstalled" in uninstalled.stdout

        def clean() -> list[str] | bool:
            kubelet.reap()
            left = leftovers(kube, release, release_ns, app_ns)
            if left:
                # a pod bound to a node waits for its kubelet's confirmation: ours is reaped
                # above; one left unbound (the scale-up's) would be deleted at once anyway
                for pod in kube.core.list_namespaced_pod(release_ns).items:
                    if pod.metadata.deletion_timestamp is not None and not pod.spec.node_name:
                        kube.core.delete_namespaced_pod(
                            pod.metadata.name, release_ns, grace_period_seconds=0
                        )
                raise AssertionError(left)
            return True

        poll("helm uninstall to leave nothing behind", clean, timeout_s=120, interval_s=0.5)
        assert (
            helm(tools, kube, "list", "--all", "--namespace", release_ns).stdout.count(release) == 0
        )
        from kubernetes import client

        ext = client.ApiextensionsV1Api(kube.api)
        for crd in ("components.dapr.io", "subscriptions.dapr.io"):
            assert ext.read_custom_resource_definition(crd)  # Helm never deletes CRDs
    finally:
        for running_pod in kubelet.pods.values():
            print(
                f"--- {running_pod.namespace}/{running_pod.name} log tail:\n"
                f"{running_pod.log_tail()}"
            )
        kubelet.stop()
        helm(tools, kube, "uninstall", release, "--namespace", release_ns, check=False)
        with contextlib.suppress(Exception):
            kube.core.delete_namespace(release_ns)
