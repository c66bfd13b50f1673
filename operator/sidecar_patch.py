"""Pure, idempotent pod mutation: (pod, sidecar config) → the pod with its ``daprd`` sidecar.

Follows what Dapr's injector adds (dapr-pubsub-contract.md §6.3), reduced to what tidings runs:
one ``daprd`` container (the name is kept for Dapr tooling) running ``tidings sidecar`` with the
app's config Secret ``tidings-<app-id>`` mounted read-only as its resources folder (written by
``appconfig.py``), ``DAPR_HTTP_PORT``/``DAPR_GRPC_PORT`` (and ``APP_PROTOCOL`` when
``dapr.io/app-protocol`` is set) for app containers that lack them, and
the ``dapr.io/sidecar-injected`` / ``dapr.io/app-id`` labels the operator watches.

Secure by default (docs.dapr.io/operations/security/): the HTTP and gRPC APIs listen on
``dapr.io/sidecar-listen-addresses`` (loopback unless the pod says otherwise); the kubelet's
probes go to the public port (``dapr.io/sidecar-public-port``, 3501), which serves nothing but
the health endpoints; ``dapr.io/api-token-secret`` / ``dapr.io/app-token-secret`` become
``DAPR_API_TOKEN`` / ``APP_API_TOKEN`` from the Secret's key ``token`` (a ``secretKeyRef``: the
token never appears in the pod spec, and a missing Secret keeps the container from starting
rather than running it unprotected); the container runs non-root with a read-only root, no
capabilities, no privilege escalation and the runtime's default seccomp profile.

Idempotent by construction: an existing ``daprd`` container (only in a pod this webhook already
injected: ``injection.py`` refuses any other) is replaced by the freshly built one, keeping only
the fields the API server defaults (``terminationMessagePath``, ``successThreshold``,
``resources``), so re-invocation (``reinvocationPolicy: IfNeeded``) yields the same pod and an
empty JSON patch, and nothing a pod author wrote into a ``daprd`` of their own (``privileged``,
``runAsUser: 0``, added capabilities, ``envFrom``, lifecycle hooks) survives. No I/O;
``injection.py`` wraps it in the admission webhook.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from .annotations import SIDECAR_GRPC_PORT, SIDECAR_HTTP_PORT, SidecarConfig

__all__ = [
    "CONFIG_VOLUME",
    "DAPR_HTTP_PORT",
    "RESOURCES_PATH",
    "SIDECAR_CONTAINER",
    "config_secret_name",
    "json_patch",
    "patch_pod",
    "sidecar_container",
]

SIDECAR_CONTAINER = "daprd"
CONFIG_VOLUME = "tidings-resources"
RESOURCES_PATH = "/etc/tidings/resources"
DAPR_HTTP_PORT = SIDECAR_HTTP_PORT
DAPR_GRPC_PORT = SIDECAR_GRPC_PORT  # Dapr's --dapr-grpc-port
TOKEN_KEY = "token"
"""The key of a token Secret that holds the token (Dapr's, docs.dapr.io/.../api-token/)."""
INJECTED_LABEL = "dapr.io/sidecar-injected"
APP_ID_LABEL = "dapr.io/app-id"
HEALTHZ_PATH = "/v1.0/healthz"

Pod = dict[str, Any]


def config_secret_name(app_id: str) -> str:
    """Name of the Secret that holds ``app_id``'s resources folder."""
    return f"tidings-{app_id}"


def sidecar_args(config: SidecarConfig) -> list[str]:
    """``tidings sidecar`` arguments for ``config`` (daprd's flag names)."""
    args = ["--app-id", config.app_id]
    if config.app_port is not None:
        args += ["--app-port", str(config.app_port)]
    if config.app_protocol is not None:
        args += ["--app-protocol", config.app_protocol]
    # The API on the listen addresses (loopback by default), the probes on the public port.
    args += [
        "--dapr-http-port",
        str(DAPR_HTTP_PORT),
        "--dapr-grpc-port",
        str(DAPR_GRPC_PORT),
        "--dapr-listen-addresses",
        config.listen_addresses,
        "--dapr-public-port",
        str(config.public_port),
        "--resources-path",
        RESOURCES_PATH,
        "--log-level",
        config.log_level,
    ]
    if config.log_as_json:
        args.append("--log-as-json")
    if config.enable_metrics:
        args += ["--enable-metrics", "--metrics-port", str(config.metrics_port)]
    return args


def sidecar_container(
    config: SidecarConfig, *, image: str, pull_policy: str, otlp_endpoint: str | None = None
) -> dict[str, Any]:
    """The ``daprd`` container for ``config`` running ``image``; with ``otlp_endpoint`` the
    sidecar exports spans there (``OTEL_EXPORTER_OTLP_ENDPOINT``, the sidecar's
    ``runtime/tracing.py``)."""
    ports: list[dict[str, Any]] = [
        {"name": "dapr-http", "containerPort": DAPR_HTTP_PORT, "protocol": "TCP"},
        {"name": "dapr-grpc", "containerPort": DAPR_GRPC_PORT, "protocol": "TCP"},
        {"name": "dapr-public", "containerPort": config.public_port, "protocol": "TCP"},
    ]
    if config.enable_metrics:
        ports.append(
            {"name": "dapr-metrics", "containerPort": config.metrics_port, "protocol": "TCP"}
        )
    container: dict[str, Any] = {
        "name": SIDECAR_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["tidings", "sidecar"],
        "args": sidecar_args(config),
        "ports": ports,
        "env": [
            {
                "name": "NAMESPACE",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
            },
            {
                "name": "POD_NAME",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
            },
        ],
        "readinessProbe": {
            "httpGet": {"path": HEALTHZ_PATH, "port": config.public_port, "scheme": "HTTP"},
            "initialDelaySeconds": config.readiness.delay_seconds,
            "timeoutSeconds": config.readiness.timeout_seconds,
            "periodSeconds": config.readiness.period_seconds,
            "failureThreshold": config.readiness.threshold,
        },
        # A TCP probe like Dapr at HEAD: healthz also reflects the broker, and a broker outage
        # must not make the kubelet restart every sidecar.
        "livenessProbe": {
            "tcpSocket": {"port": config.public_port},
            "initialDelaySeconds": config.liveness.delay_seconds,
            "timeoutSeconds": config.liveness.timeout_seconds,
            "periodSeconds": config.liveness.period_seconds,
            "failureThreshold": config.liveness.threshold,
        },
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": RESOURCES_PATH, "readOnly": True}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    for name, secret in (
        ("DAPR_API_TOKEN", config.api_token_secret),
        ("APP_API_TOKEN", config.app_token_secret),
    ):
        if secret:
            container["env"].append(
                {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": TOKEN_KEY}}}
            )
    if otlp_endpoint:
        container["env"].append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": otlp_endpoint})
    if config.resources:
        container["resources"] = copy.deepcopy(config.resources)
    return container


def config_volume(app_id: str) -> dict[str, Any]:
    """The volume of the app's config Secret.

    Not ``optional``: the kubelet waits for the operator to write the Secret instead of starting
    the sidecar with an empty resources folder.
    """
    return {
        "name": CONFIG_VOLUME,
        "secret": {"secretName": config_secret_name(app_id), "defaultMode": 0o444},
    }


# What the API server fills into a container or probe we build (k8s.io/kubernetes
# pkg/apis/core/v1/defaults.go), kept on re-invocation so that it yields no patch. Nothing else
# of an existing object survives.
_DEFAULTED = frozenset({"terminationMessagePath", "successThreshold", "resources"})


def _rebuild(existing: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """``ours``, plus from ``existing`` only the keys the API server defaults (at any depth
    of nested objects) and keys set to ``null`` (absent, as API clients spell it); lists are
    ours."""
    out = {k: v for k, v in existing.items() if (k in _DEFAULTED or v is None) and k not in ours}
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(existing.get(key), dict):
            out[key] = _rebuild(existing[key], value)
        else:
            out[key] = value
    return out


def _upsert(items: list[dict[str, Any]], item: dict[str, Any]) -> None:
    for i, existing in enumerate(items):
        if existing.get("name") == item["name"]:
            items[i] = _rebuild(existing, item)
            return
    items.append(item)


def patch_pod(
    pod: Pod,
    config: SidecarConfig,
    *,
    image: str,
    pull_policy: str = "IfNotPresent",
    otlp_endpoint: str | None = None,
) -> Pod:
    """A copy of ``pod`` with the sidecar injected; ``pod`` is not modified.

    ``patch_pod(patch_pod(p, c, ...), c, ...) == patch_pod(p, c, ...)``.
    """
    out = copy.deepcopy(pod)
    meta = out.setdefault("metadata", {})
    labels = meta.get("labels") or {}
    labels[INJECTED_LABEL] = "true"
    labels[APP_ID_LABEL] = config.app_id
    meta["labels"] = labels

    spec = out.setdefault("spec", {})
    containers: list[dict[str, Any]] = spec.setdefault("containers", [])
    for container in containers:
        if container.get("name") == SIDECAR_CONTAINER:
            continue
        env: list[dict[str, Any]] = container.get("env") or []
        if not any(e.get("name") == "DAPR_HTTP_PORT" for e in env):
            env.append({"name": "DAPR_HTTP_PORT", "value": str(DAPR_HTTP_PORT)})
        if not any(e.get("name") == "DAPR_GRPC_PORT" for e in env):
            env.append({"name": "DAPR_GRPC_PORT", "value": str(DAPR_GRPC_PORT)})
        # Dapr hands the app its protocol when the annotation is set (sidecar_patcher.go).
        if config.app_protocol is not None and not any(
            e.get("name") == "APP_PROTOCOL" for e in env
        ):
            env.append({"name": "APP_PROTOCOL", "value": config.app_protocol})
        container["env"] = env
    _upsert(
        containers,
        sidecar_container(
            config, image=image, pull_policy=pull_policy, otlp_endpoint=otlp_endpoint
        ),
    )
    volumes: list[dict[str, Any]] = spec.get("volumes") or []
    _upsert(volumes, config_volume(config.app_id))
    spec["volumes"] = volumes
    return out


def json_patch(
    pod: Pod, config: SidecarConfig, *, image: str, pull_policy: str = "IfNotPresent"
) -> list[dict[str, Any]]:
    """RFC 6902 operations turning ``pod`` into :func:`patch_pod`'s result (``[]`` if none)."""
    return list(
        jsonpatch.make_patch(
            pod, patch_pod(pod, config, image=image, pull_policy=pull_policy)
        ).patch
    )
