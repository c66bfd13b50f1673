"""The operator's settings: grouped dataclasses, read once from flags and environment.

This is the only module that reads the environment (``TIDINGS_*`` variables, used by the Helm
chart); everything else receives an :class:`OperatorSettings` explicitly. Neighbours: ``main.py``
parses the command line into these, ``injection.py`` and ``handlers.py`` consume them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "InjectorSettings",
    "LeaderElectionSettings",
    "OperatorSettings",
    "SettingsError",
    "WebhookSettings",
    "add_operator_arguments",
    "settings_from_args",
]

DEFAULT_SIDECAR_IMAGE = "ghcr.io/tidings/tidings-sidecar:0.1.0"


class SettingsError(ValueError):
    """A flag or environment variable has a value the operator cannot use; names the setting."""


@dataclass(frozen=True, slots=True)
class InjectorSettings:
    """What the mutating webhook injects."""

    sidecar_image: str = DEFAULT_SIDECAR_IMAGE
    """Image of the ``daprd`` container. Default: the release's sidecar image."""
    sidecar_image_pull_policy: str = "IfNotPresent"
    """``imagePullPolicy`` of the ``daprd`` container."""
    allow_sidecar_image_annotation: bool = False
    """Honour ``dapr.io/sidecar-image`` on pods. Off by default: a pod author must not choose
    what runs with the sidecar's configuration (which holds resolved broker credentials)."""
    sidecar_log_level: str = "info"
    """``--log-level`` of a sidecar whose pod has no ``dapr.io/log-level`` annotation."""
    sidecar_resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Default ``resources`` of the ``daprd`` container (Kubernetes ``ResourceRequirements``:
    ``requests``/``limits`` → ``cpu``/``memory`` quantities); the pod's
    ``dapr.io/sidecar-{cpu,memory}-{request,limit}`` annotations override them one by one."""
    sidecar_otlp_endpoint: str | None = None
    """OTLP/HTTP endpoint every injected sidecar exports spans to (its
    ``OTEL_EXPORTER_OTLP_ENDPOINT``); ``None``: no span export, trace context still flows."""
    default_api_token_secret: str | None = None
    """Secret (in each app's namespace, key ``token``) that is the ``DAPR_API_TOKEN`` of every
    sidecar whose pod has no ``dapr.io/api-token-secret``; ``None``: only pods that ask for a
    token get one."""


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """The HTTPS admission server (kopf ``WebhookServer``)."""

    addr: str = "0.0.0.0"
    """Listen address. Default all interfaces (the chart's Service targets it)."""
    port: int = 9443
    """Listen port. Default 9443."""
    host: str | None = None
    """Host name reported in kopf's client config; only informative, the chart's
    MutatingWebhookConfiguration names the Service."""
    cert_file: str | None = None
    """PEM serving certificate. Required: kopf's self-signed builder is not used."""
    key_file: str | None = None
    """PEM private key of ``cert_file``."""
    ca_file: str | None = None
    """PEM CA bundle that signed ``cert_file`` (for kopf's client config); optional."""


@dataclass(frozen=True, slots=True)
class LeaderElectionSettings:
    """Lease-based leader election (``leadership.py``), so of several replicas only one writes.

    ``standalone=True`` skips it (one replica, tests): this process is always the leader.
    Durations in seconds.
    """

    standalone: bool = False
    lease_name: str = "tidings-operator"
    lease_namespace: str = "default"
    """The operator's own namespace (the chart passes it with the downward API)."""
    identity: str = ""
    """This replica's name in the Lease; default the pod name (``$POD_NAME``) or host name."""
    lease_duration_s: float = 15.0
    renew_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """Everything the operator is configured with."""

    injector: InjectorSettings = field(default_factory=InjectorSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    leader_election: LeaderElectionSettings = field(default_factory=LeaderElectionSettings)
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty means cluster-wide."""
    kubeconfig: str | None = None
    """Path of a kubeconfig; ``None`` means in-cluster config, else ``$KUBECONFIG``."""
    resync_interval_s: float = 60.0
    """Seconds between full re-renders of every app's config (a safety net for missed events)."""
    log_level: str = "info"
    log_format: str = "json"
    """``json`` (one object a line) or ``text``."""
    metrics_port: int = 9090
    """Port of the Prometheus ``/metrics`` endpoint (``operator/metrics.py``); 0 serves none."""


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


_QUANTITY = re.compile(
    r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)


def _resources(raw: str) -> dict[str, dict[str, str]]:
    """``--sidecar-resources`` JSON → a ResourceRequirements dict. Raises :class:`SettingsError`."""
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"--sidecar-resources is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not set(doc) <= {"requests", "limits"}:
        raise SettingsError(
            f"--sidecar-resources must be an object with 'requests' and/or 'limits', got {raw!r}"
        )
    out: dict[str, dict[str, str]] = {}
    for section, quantities in doc.items():
        if quantities is None:
            continue
        if not isinstance(quantities, dict):
            raise SettingsError(
                f"--sidecar-resources {section} must be an object, got {quantities!r}"
            )
        for name, value in quantities.items():
            text = str(value).strip()
            if not _QUANTITY.match(text):
                raise SettingsError(
                    f"--sidecar-resources {section}.{name}={value!r} is not a "
                    "Kubernetes quantity (e.g. 100m, 0.5, 128Mi)"
                )
            out.setdefault(section, {})[str(name)] = text
    return out


def add_operator_arguments(
    parser: argparse.ArgumentParser, *, environ: Mapping[str, str] | None = None
) -> None:
    """Add the operator's flags; each defaults to its ``TIDINGS_*`` environment variable."""
    env = os.environ if environ is None else environ
    a = parser.add_argument
    a("--sidecar-image", default=env.get("TIDINGS_SIDECAR_IMAGE", DEFAULT_SIDECAR_IMAGE))
    a(
        "--sidecar-image-pull-policy",
        default=env.get("TIDINGS_SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent"),
        choices=("Always", "IfNotPresent", "Never"),
    )
    a(
        "--allow-sidecar-image-annotation",
        action=argparse.BooleanOptionalAction,
        default=_env_bool(env, "TIDINGS_ALLOW_SIDECAR_IMAGE_ANNOTATION", False),
    )
    a(
        "--sidecar-log-level",
        default=env.get("TIDINGS_SIDECAR_LOG_LEVEL", "info"),
        choices=("debug", "info", "warn", "error"),
        help="sidecar log level unless a pod sets dapr.io/log-level",
    )
    a(
        "--sidecar-resources",
        default=env.get("TIDINGS_SIDECAR_RESOURCES", ""),
        help='default daprd resources as JSON, e.g. {"requests": {"cpu": "100m"}}; '
        "dapr.io/sidecar-* annotations override",
    )
    a(
        "--sidecar-otlp-endpoint",
        default=env.get("TIDINGS_SIDECAR_OTLP_ENDPOINT") or None,
        help="OTLP/HTTP endpoint injected sidecars export spans to (e.g. http://otel:4318)",
    )
    a(
        "--sidecar-api-token-secret",
        default=env.get("TIDINGS_SIDECAR_API_TOKEN_SECRET") or None,
        help="Secret (key 'token', in each app namespace) that protects the API of every "
        "sidecar whose pod has no dapr.io/api-token-secret annotation",
    )
    a("--webhook-addr", default=env.get("TIDINGS_WEBHOOK_ADDR", "0.0.0.0"))
    a("--webhook-port", type=int, default=int(env.get("TIDINGS_WEBHOOK_PORT", "9443")))
    a("--webhook-host", default=env.get("TIDINGS_WEBHOOK_HOST") or None)
    a("--webhook-cert-file", default=env.get("TIDINGS_WEBHOOK_CERT_FILE") or None)
    a("--webhook-key-file", default=env.get("TIDINGS_WEBHOOK_KEY_FILE") or None)
    a("--webhook-ca-file", default=env.get("TIDINGS_WEBHOOK_CA_FILE") or None)
    a(
        "--namespace",
        dest="namespaces",
        action="append",
        default=[n for n in env.get("TIDINGS_NAMESPACES", "").split(",") if n.strip()],
        help="namespace to serve (repeatable); none means cluster-wide",
    )
    a(
        "--standalone",
        action=argparse.BooleanOptionalAction,
        default=_env_bool(env, "TIDINGS_STANDALONE", False),
        help="no leader election (single replica or tests)",
    )
    a("--lease-name", default=env.get("TIDINGS_LEASE_NAME", "tidings-operator"))
    a("--lease-namespace", default=env.get("POD_NAMESPACE", "default"))
    a("--identity", default=env.get("POD_NAME") or socket.gethostname())
    # Seconds are read as text and checked in settings_from_args, so a bad flag or environment
    # value is a SettingsError naming it (nan, inf, "abc"), never a traceback at parser set-up.
    a("--lease-duration-seconds", default=env.get("TIDINGS_LEASE_DURATION_SECONDS", "15"))
    a(
        "--lease-renew-interval-seconds",
        default=env.get("TIDINGS_LEASE_RENEW_INTERVAL_SECONDS", "5"),
    )
    a("--kubeconfig", default=env.get("KUBECONFIG") or None)
    a("--resync-interval-seconds", default=env.get("TIDINGS_RESYNC_INTERVAL_SECONDS", "60"))
    a(
        "--log-level",
        default=env.get("TIDINGS_LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
    )
    a("--log-format", default=env.get("TIDINGS_LOG_FORMAT", "json"), choices=("json", "text"))
    a(
        "--metrics-port",
        type=int,
        default=int(env.get("TIDINGS_METRICS_PORT", "9090")),
        help="port of the Prometheus /metrics endpoint; 0 serves none",
    )


_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _secret_name(flag: str, text: str | None) -> str | None:
    """``text`` as a Secret name (a DNS-1123 subdomain), ``None`` when empty; else
    :class:`SettingsError`."""
    if text is None or not text.strip():
        return None
    name = text.strip()
    if len(name) > 253 or not _SECRET_NAME.match(name):
        raise SettingsError(f"{flag} {text!r} is not a Secret name (a DNS-1123 subdomain)")
    return name


def _seconds(flag: str, text: str) -> float:
    """``text`` as a finite number of seconds greater than 0; else :class:`SettingsError`."""
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{flag} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{flag} {text!r}: must be a finite number of seconds greater than 0")
    return value


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    """Build :class:`OperatorSettings` from parsed flags. Raises :class:`SettingsError`."""
    if (args.webhook_cert_file is None) != (args.webhook_key_file is None):
        raise SettingsError("--webhook-cert-file and --webhook-key-file go together")
    if not 0 < args.webhook_port < 65536:
        raise SettingsError(f"--webhook-port {args.webhook_port} is not a TCP port")
    lease_duration_s = _seconds("--lease-duration-seconds", args.lease_duration_seconds)
    renew_interval_s = _seconds("--lease-renew-interval-seconds", args.lease_renew_interval_seconds)
    resync_interval_s = _seconds("--resync-interval-seconds", args.resync_interval_seconds)
    if not renew_interval_s < lease_duration_s:
        raise SettingsError(
            "--lease-renew-interval-seconds must be positive and shorter than "
            "--lease-duration-seconds"
        )
    if not 0 <= args.metrics_port < 65536:
        raise SettingsError(f"--metrics-port {args.metrics_port} is not a TCP port (0: none)")
    return OperatorSettings(
        injector=InjectorSettings(
            sidecar_image=args.sidecar_image,
            sidecar_image_pull_policy=args.sidecar_image_pull_policy,
            allow_sidecar_image_annotation=args.allow_sidecar_image_annotation,
            sidecar_log_level=args.sidecar_log_level,
            sidecar_resources=_resources(args.sidecar_resources),
            sidecar_otlp_endpoint=args.sidecar_otlp_endpoint,
            default_api_token_secret=_secret_name(
                "--sidecar-api-token-secret", args.sidecar_api_token_secret
            ),
        ),
        webhook=WebhookSettings(
            addr=args.webhook_addr,
            port=args.webhook_port,
            host=args.webhook_host,
            cert_file=args.webhook_cert_file,
            key_file=args.webhook_key_file,
            ca_file=args.webhook_ca_file,
        ),
        leader_election=LeaderElectionSettings(
            standalone=args.standalone,
            lease_name=args.lease_name,
            lease_namespace=args.lease_namespace,
            identity=args.identity,
            lease_duration_s=lease_duration_s,
            renew_interval_s=renew_interval_s,
        ),
        namespaces=tuple(dict.fromkeys(n.strip() for n in args.namespaces if n.strip())),
        kubeconfig=args.kubeconfig,
        resync_interval_s=resync_interval_s,
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_port=args.metrics_port,
    )


def parse_settings(
    argv: Sequence[str], *, environ: Mapping[str, str] | None = None
) -> OperatorSettings:
    """Flags (falling back to the environment) → :class:`OperatorSettings`."""
    parser = argparse.ArgumentParser(prog="tidings operator")
    add_operator_arguments(parser, environ=environ)
    return settings_from_args(parser.parse_args(list(argv)))
