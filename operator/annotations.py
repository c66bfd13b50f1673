"""Pod annotations that ask for a sidecar, parsed once into a :class:`SidecarConfig`.

Keys and defaults follow Dapr's injector (dapr/dapr ``pkg/injector/annotations/annotations.go``;
docs.dapr.io/reference/arguments-annotations-overview/), plus the seed's ``dapr.io/id`` as a
deprecated alias of ``dapr.io/app-id`` (Dapr removed it in v1.0, dapr/dapr#2311).

Security-relevant keys: ``dapr.io/sidecar-listen-addresses`` (where the API binds, default
loopback ``[::1],127.0.0.1``), ``dapr.io/sidecar-public-port`` (health only, every interface,
default 3501), ``dapr.io/api-token-secret`` and ``dapr.io/app-token-secret`` (Secrets whose key
``token`` becomes ``DAPR_API_TOKEN`` / ``APP_API_TOKEN``). Values are range-checked: ports are
1-65535, the sidecar's ports differ from each other, from the app port and from every TCP
``containerPort`` of the pod's containers; quantities are not negative. Parsing is pure; every error
is an :class:`AnnotationError` naming the annotation, so the webhook can refuse the pod with a
message the user can act on. Neighbours: ``sidecar_patch.py`` turns a config into a pod patch,
``injection.py`` is the kopf handler around both.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType

__all__ = [
    "APP_ID",
    "APP_PORT",
    "ENABLED",
    "LEGACY_ID",
    "AnnotationError",
    "AppId",
    "SidecarConfig",
    "injection_requested",
    "parse_sidecar_config",
]

AppId = NewType("AppId", str)

PREFIX = "dapr.io/"
ENABLED = "dapr.io/enabled"
APP_ID = "dapr.io/app-id"
LEGACY_ID = "dapr.io/id"
APP_PORT = "dapr.io/app-port"
APP_PROTOCOL = "dapr.io/app-protocol"
LOG_LEVEL = "dapr.io/log-level"
LOG_AS_JSON = "dapr.io/log-as-json"
ENABLE_METRICS = "dapr.io/enable-metrics"
METRICS_PORT = "dapr.io/metrics-port"
SIDECAR_IMAGE = "dapr.io/sidecar-image"
CPU_REQUEST = "dapr.io/sidecar-cpu-request"
CPU_LIMIT = "dapr.io/sidecar-cpu-limit"
MEMORY_REQUEST = "dapr.io/sidecar-memory-request"
MEMORY_LIMIT = "dapr.io/sidecar-memory-limit"
LISTEN_ADDRESSES = "dapr.io/sidecar-listen-addresses"
PUBLIC_PORT = "dapr.io/sidecar-public-port"
API_TOKEN_SECRET = "dapr.io/api-token-secret"
APP_TOKEN_SECRET = "dapr.io/app-token-secret"
LIVENESS_PREFIX = "dapr.io/sidecar-liveness-probe-"
READINESS_PREFIX = "dapr.io/sidecar-readiness-probe-"

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")  # the sidecar's --log-level choices
APP_PROTOCOLS = ("http", "grpc")  # the sidecar's --app-protocol choices

# Kubernetes quantity syntax (k8s.io/apimachinery resource.Quantity) without a minus sign (a
# negative request or limit is never meant): a decimal number, optionally in exponent form, with
# a binary (Ki..Ei) or decimal (n u m k M G T P E) suffix.
_QUANTITY = re.compile(
    r"^[+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
# A Secret's name: a DNS-1123 subdomain (k8s.io/apimachinery validation.IsDNS1123Subdomain).
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# The app-id names a Secret (tidings-<app-id>), a label value and a Kafka consumer group, so it
# must be a DNS-1123 label: lowercase alphanumerics and '-', at most 63 characters.
_APP_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class AnnotationError(ValueError):
    """An annotation the injector cannot honour. ``key`` is the annotation's name."""

    def __init__(self, key: str, value: str, problem: str) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        super().__init__(f"annotation {key}={value!r}: {problem}")


@dataclass(frozen=True, slots=True)
class Probe:
    """Probe timings in seconds (and a failure count), as ``dapr.io/sidecar-*-probe-*`` set them."""

    delay_seconds: int
    timeout_seconds: int
    period_seconds: int
    threshold: int


# Dapr's defaults (§6.1): liveness 180/3/10/5, readiness 1/1/1/5... readiness every second is
# too chatty for a Python sidecar, so readiness is probed every 2 s with the same threshold.
DEFAULT_LIVENESS = Probe(delay_seconds=180, timeout_seconds=3, period_seconds=10, threshold=5)
DEFAULT_READINESS = Probe(delay_seconds=1, timeout_seconds=1, period_seconds=2, threshold=5)


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """What one pod's annotations ask of its sidecar.

    ``app_id_source`` names where the app-id came from (an annotation key, ``pod name``,
    ``generateName`` or ``owner``); ``warnings`` are for the AdmissionReview (deprecated keys,
    defaulted app-id). ``resources`` is a Kubernetes ``ResourceRequirements`` dict (quantities as
    given). ``sidecar_image`` is the annotation's image, honoured only if the operator allows it.
    """

    app_id: AppId
    app_id_source: str
    app_port: int | None = None
    app_protocol: str | None = None
    """``dapr.io/app-protocol`` (``http`` or ``grpc``); ``None`` when not set (the sidecar's
    default, http)."""
    log_level: str = "info"
    log_as_json: bool = False
    enable_metrics: bool = True
    metrics_port: int = 9090
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    liveness: Probe = DEFAULT_LIVENESS
    readiness: Probe = DEFAULT_READINESS
    sidecar_image: str | None = None
    listen_addresses: str = "[::1],127.0.0.1"
    """``--dapr-listen-addresses`` of the HTTP and gRPC APIs, normalised (IPv6 in brackets)."""
    public_port: int = 3501
    """``--dapr-public-port``: health endpoints on every interface, for the probes."""
    api_token_secret: str | None = None
    """Secret whose key ``token`` is the sidecar's ``DAPR_API_TOKEN`` (``None``: no token)."""
    app_token_secret: str | None = None
    """Secret whose key ``token`` is the ``APP_API_TOKEN`` sent to the app."""
    warnings: tuple[str, ...] = ()


def _bool(annotations: Mapping[str, str], key: str, default: bool) -> bool:
    raw = annotations.get(key)
    if raw is None:
        return default
    v = raw.strip().lower()
    if v == "true":
        return True
    if v == "false":
        return False
    raise AnnotationError(key, raw, 'must be "true" or "false"')


def injection_requested(annotations: Mapping[str, str]) -> bool:
    """Whether a pod with these annotations gets a sidecar.

    ``dapr.io/enabled: "false"`` opts out whatever else is set; ``"true"``, ``dapr.io/app-id`` or
    ``dapr.io/id`` opt in. Raises :class:`AnnotationError` for an ``enabled`` value that is
    neither (Dapr silently skips it; refusing tells the user their pod would run without one).
    """
    if ENABLED in annotations:
        return _bool(annotations, ENABLED, False)
    return APP_ID in annotations or LEGACY_ID in annotations


SIDECAR_HTTP_PORT = 3500
"""The injected sidecar's HTTP API port (``--dapr-http-port``)."""
SIDECAR_GRPC_PORT = 50001
"""The injected sidecar's Dapr gRPC API port (``--dapr-grpc-port``)."""
DEFAULT_PUBLIC_PORT = 3501
DEFAULT_METRICS_PORT = 9090
DEFAULT_LISTEN_ADDRESSES = "[::1],127.0.0.1"


def _listen_addresses(annotations: Mapping[str, str]) -> str:
    """``dapr.io/sidecar-listen-addresses``: comma-separated IP addresses (IPv6 with or
    without brackets), normalised to daprd's syntax; the default is loopback only."""
    raw = annotations.get(LISTEN_ADDRESSES)
    if raw is None:
        return DEFAULT_LISTEN_ADDRESSES
    out: list[str] = []
    for part in raw.split(","):
        item = part.strip()
        bare = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        try:
            address = ipaddress.ip_address(bare)
        except ValueError:
            raise AnnotationError(
                LISTEN_ADDRESSES,
                raw,
                f"{item!r} is not an IP address (e.g. {DEFAULT_LISTEN_ADDRESSES}, the default)",
            ) from None
        text = f"[{address}]" if address.version == 6 else str(address)
        if text not in out:
            out.append(text)
    return ",".join(out)


def _secret_name(annotations: Mapping[str, str], key: str) -> str | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    name = raw.strip()
    if not (len(name) <= 253 and _SECRET_NAME.match(name)):
        raise AnnotationError(
            key, raw, "must name a Secret in the pod's namespace (a DNS-1123 subdomain)"
        )
    return name


def app_container_ports(pod: Mapping[str, Any], *, skip: str = "daprd") -> dict[int, str]:
    """TCP ``containerPort`` → container name for every container of ``pod`` but ``skip`` (the
    sidecar itself, in an already injected pod)."""
    ports: dict[int, str] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        if not isinstance(container, Mapping) or container.get("name") == skip:
            continue
        for port in container.get("ports") or []:
            if not isinstance(port, Mapping):
                continue
            number = port.get("containerPort")
            if isinstance(number, int) and (port.get("protocol") or "TCP") == "TCP":
                ports.setdefault(number, str(container.get("name") or "?"))
    return ports


def _port(annotations: Mapping[str, str], key: str) -> int | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):  # isdigit alone takes "²", which int() refuses
        raise AnnotationError(key, raw, "must be a port number (1-65535)")
    port = int(text)
    if not 0 < port < 65536:
        raise AnnotationError(key, raw, "must be a port number (1-65535)")
    return port


def _count(annotations: Mapping[str, str], key: str, default: int, minimum: int) -> int:
    raw = annotations.get(key)
    if raw is None:
        return default
    text = raw.strip()
    # Kubernetes probe fields are int32: larger values made the API server fail the request.
    if not (text.isascii() and text.isdigit()) or not minimum <= int(text) <= 2**31 - 1:
        raise AnnotationError(key, raw, f"must be a whole number from {minimum} to {2**31 - 1}")
    return int(text)


def _quantity(annotations: Mapping[str, str], key: str) -> str | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    text = raw.strip()
    if not _QUANTITY.match(text):
        raise AnnotationError(key, raw, "is not a Kubernetes quantity (e.g. 100m, 0.5, 128Mi)")
    return text


def _probe(annotations: Mapping[str, str], prefix: str, default: Probe) -> Probe:
    return Probe(
        delay_seconds=_count(annotations, prefix + "delay-seconds", default.delay_seconds, 0),
        timeout_seconds=_count(annotations, prefix + "timeout-seconds", default.timeout_seconds, 1),
        period_seconds=_count(annotations, prefix + "period-seconds", default.period_seconds, 1),
        threshold=_count(annotations, prefix + "threshold", default.threshold, 1),
    )


def default_app_id(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """The app-id a pod gets without an annotation, and where it came from.

    Dapr uses the pod name (§6.1). Pods made by controllers have no name at admission, only
    ``generateName`` (``orders-5d8f7c9b4-``); we drop the trailing ``-`` and, for a ReplicaSet's
    pod, the ``-<pod-template-hash>`` so the app-id is the Deployment's name (``orders``) and
    stays the same across rollouts.
    """
    meta = pod.get("metadata") or {}
    name = meta.get("name")
    if name:
        return str(name), "pod name"
    generate = str(meta.get("generateName") or "")
    if not generate:
        return None
    base = generate.rstrip("-")
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    if template_hash and base.endswith("-" + template_hash):
        return base[: -len(template_hash) - 1], "owner name"
    return base, "generateName"


def _check_ports(
    pod: Mapping[str, Any],
    annotations: Mapping[str, str],
    *,
    app_port: int | None,
    ports: list[tuple[str, int]],
) -> None:
    """Every port the sidecar listens on is its own in the pod's network namespace: the fixed
    HTTP and gRPC API ports, then ``ports`` (annotation key, port) in order, must differ from
    each other, from ``app_port`` and from the app containers' TCP ``containerPort``s. Raises
    :class:`AnnotationError` naming the annotation to change."""
    fixed = {
        SIDECAR_HTTP_PORT: "the sidecar's HTTP API",
        SIDECAR_GRPC_PORT: "the sidecar's gRPC API",
    }
    if app_port in fixed:
        raise AnnotationError(APP_PORT, str(app_port), f"is the port of {fixed[app_port]}")
    taken: dict[int, str] = dict(fixed)
    if app_port is not None:
        taken[app_port] = f"the app's port ({APP_PORT})"
    for number, container in app_container_ports(pod).items():
        taken.setdefault(number, f"a containerPort of container {container!r}")
    for key, port in ports:
        if port in taken:
            shown = annotations.get(key, f"{port} (the default)")
            raise AnnotationError(
                key, shown, f"port {port} is already used by {taken[port]}; choose another"
            )
        taken[port] = f"the sidecar's {key.removeprefix(PREFIX)}"


def parse_sidecar_config(pod: Mapping[str, Any]) -> SidecarConfig:
    """Parse a pod's annotations (the pod as in an AdmissionReview) into a :class:`SidecarConfig`.

    App-id precedence: ``dapr.io/app-id`` > ``dapr.io/id`` (deprecated, warned) > pod/owner name
    (warned, as Dapr does). Raises :class:`AnnotationError` naming the first bad annotation.
    """
    meta = pod.get("metadata") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    warnings: list[str] = []
    if APP_ID in annotations:
        raw_id, source = annotations[APP_ID], APP_ID
        if LEGACY_ID in annotations and annotations[LEGACY_ID] != raw_id:
            warnings.append(f"{LEGACY_ID} is deprecated and ignored: {APP_ID} is set")
    elif LEGACY_ID in annotations:
        raw_id, source = annotations[LEGACY_ID], LEGACY_ID
        warnings.append(f"{LEGACY_ID} is deprecated (removed in Dapr 1.0); use {APP_ID}")
    else:
        found = default_app_id(pod)
        if found is None:
            raise AnnotationError(APP_ID, "", "is not set and the pod has no name to default to")
        raw_id, source = found
        warnings.append(f"{APP_ID} is not set; using the {source} {raw_id!r} as the app-id")
    app_id = raw_id.strip()
    if not _APP_ID.match(app_id):
        key = source if source.startswith(PREFIX) else APP_ID
        raise AnnotationError(
            key,
            raw_id,
            "an app-id must be a DNS-1123 label: lowercase "
            "letters, digits and '-', at most 63 characters",
        )

    log_level = annotations.get(LOG_LEVEL, "info").strip().lower()
    if log_level not in LOG_LEVELS:
        raise AnnotationError(
            LOG_LEVEL, annotations[LOG_LEVEL], f"must be one of {', '.join(LOG_LEVELS)}"
        )
    if log_level == "warning":
        log_level = "warn"

    resources: dict[str, dict[str, str]] = {}
    for key, section, resource in (
        (CPU_REQUEST, "requests", "cpu"),
        (MEMORY_REQUEST, "requests", "memory"),
        (CPU_LIMIT, "limits", "cpu"),
        (MEMORY_LIMIT, "limits", "memory"),
    ):
        q = _quantity(annotations, key)
        if q is not None:
            resources.setdefault(section, {})[resource] = q

    image = annotations.get(SIDECAR_IMAGE)
    if image is not None and not image.strip():
        raise AnnotationError(SIDECAR_IMAGE, image, "must not be empty")

    app_port = _port(annotations, APP_PORT)
    app_protocol = None
    if APP_PROTOCOL in annotations:
        app_protocol = annotations[APP_PROTOCOL].strip().lower()
        if app_protocol not in APP_PROTOCOLS:
            raise AnnotationError(
                APP_PROTOCOL,
                annotations[APP_PROTOCOL],
                "tidings speaks http or grpc to the app (not https, grpcs or h2c)",
            )
    enable_metrics = _bool(annotations, ENABLE_METRICS, True)
    metrics_port = _port(annotations, METRICS_PORT) or DEFAULT_METRICS_PORT
    public_port = _port(annotations, PUBLIC_PORT) or DEFAULT_PUBLIC_PORT
    _check_ports(
        pod,
        annotations,
        app_port=app_port,
        ports=[(PUBLIC_PORT, public_port), *([(METRICS_PORT, metrics_port)] * enable_metrics)],
    )

    return SidecarConfig(
        app_id=AppId(app_id),
        app_id_source=source,
        app_port=app_port,
        app_protocol=app_protocol,
        log_level=log_level,
        log_as_json=_bool(annotations, LOG_AS_JSON, False),
        enable_metrics=enable_metrics,
        metrics_port=metrics_port,
        resources=resources,
        liveness=_probe(annotations, LIVENESS_PREFIX, DEFAULT_LIVENESS),
        readiness=_probe(annotations, READINESS_PREFIX, DEFAULT_READINESS),
        sidecar_image=image.strip() if image is not None else None,
        listen_addresses=_listen_addresses(annotations),
        public_port=public_port,
        api_token_secret=_secret_name(annotations, API_TOKEN_SECRET),
        app_token_secret=_secret_name(annotations, APP_TOKEN_SECRET),
        warnings=tuple(warnings),
    )
