"""Sidecar settings: the only reader of command-line flags and environment variables.

Flag names follow daprd (``--app-id``, ``--dapr-http-port``, ``--resources-path``...,
dapr-pubsub-contract.md §1.1) so an injected container reads like a Dapr one. Everything else in
the sidecar receives a :class:`SidecarSettings` explicitly.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SidecarSettings",
    "add_sidecar_arguments",
    "listen_addresses_arg",
    "seconds_arg",
    "settings_from_args",
]

MIB = 1024 * 1024
DEFAULT_GRPC_PORT = 50001
DEFAULT_PUBLIC_PORT = 3501
DEFAULT_LISTEN_ADDRESSES = "[::1],127.0.0.1"
"""daprd's default ``--dapr-listen-addresses``: the API answers on loopback only."""
MAX_BODY_SIZE_LIMIT = 2047 * MIB
"""Largest ``--max-body-size``: a gRPC message (the body plus its envelope) cannot reach 2 GiB."""


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """How one sidecar runs. Every duration is in seconds, every size in bytes."""

    app_id: str
    """The app-id: CloudEvent ``source`` and, by default, the Kafka consumer group."""

    app_port: int | None = None
    """Port of the app's HTTP server; ``None`` means no app channel, so no deliveries."""

    app_channel_address: str = "127.0.0.1"
    """Host of the app's HTTP server (``dapr.io/app-channel-address``)."""

    app_protocol: str = "http"
    """How the sidecar talks to the app (``--app-protocol``, ``dapr.io/app-protocol``): ``http``
    (``/dapr/subscribe`` and POSTs) or ``grpc`` (Dapr's ``AppCallback`` service)."""

    dapr_http_port: int = 3500
    """Port of the sidecar's HTTP API."""

    dapr_grpc_port: int | None = None
    """Port of the sidecar's Dapr gRPC API; ``None`` serves none. ``tidings sidecar`` serves it
    on 50001 (Dapr's default) unless ``--dapr-grpc-port`` says otherwise."""

    dapr_grpc_port_explicit: bool = False
    """Whether ``dapr_grpc_port`` was asked for: then a port in use stops the sidecar; Dapr's
    default port in use only logs an error (several bare sidecars on one host)."""

    dapr_listen_addresses: tuple[str, ...] = ("127.0.0.1",)
    """IP addresses the HTTP and gRPC APIs bind (``--dapr-listen-addresses``; daprd's default
    ``[::1],127.0.0.1``: loopback only, so only the pod's own containers reach the API). An
    address the host does not have (``::1`` without IPv6) is skipped with a warning."""

    dapr_public_port: int | None = None
    """Port of the public health server (``--dapr-public-port``, daprd's 3501): only
    ``/v1.0/healthz`` and ``/v1.0/healthz/outbound``, on every interface, for the kubelet's
    probes. ``None`` serves none."""

    dapr_public_port_explicit: bool = False
    """Whether ``dapr_public_port`` was asked for: then a port in use stops the sidecar; the
    default port in use only logs an error (several bare sidecars on one host)."""

    resources_paths: tuple[Path, ...] = ()
    """Folders (or files) of Component and Subscription YAML; watched for changes."""

    max_body_size: int = 4 * MIB
    """Largest accepted request body, bytes (Dapr's default 4 MiB); larger gets 413."""

    graceful_shutdown_seconds: float = 5.0
    """On SIGTERM: how long in-flight deliveries may take before they are abandoned."""

    api_token: str | None = None
    """``DAPR_API_TOKEN``: when set, every endpoint but healthz needs header ``dapr-api-token``."""

    app_api_token: str | None = None
    """``APP_API_TOKEN``: sent to the app as ``dapr-api-token`` on every delivery."""

    log_level: str = "info"
    log_as_json: bool = False

    resources_poll_interval_s: float = 1.0
    """How often the resources folders are checked for changes (hot reload)."""

    app_connect_timeout_s: float = 0.0
    """How long to wait for the app port before giving up; 0 waits forever (Dapr's default)."""

    delivery_timeout_s: float = 60.0
    """Longest one delivery POST to the app may take before it counts as failed (retried)."""

    namespace: str = field(default_factory=lambda: os.environ.get("NAMESPACE", ""))
    """Kubernetes namespace from the downward API, empty outside Kubernetes."""

    metrics_port: int | None = None
    """Port of the Prometheus ``/metrics`` endpoint (Dapr's 9090); ``None`` serves none."""


_APP_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
APP_PROTOCOLS = ("http", "grpc")
"""The app protocols tidings speaks; daprd's https, grpcs and h2c are not served."""


def app_id_arg(text: str) -> str:
    """An app-id: letters, digits, ``-`` and ``_``, at most 63 characters, alphanumeric at both
    ends. It names the Kafka consumer group and, in Kubernetes, the config Secret
    ``tidings-<app-id>``, so it must be a DNS label apart from ``_``."""
    if not _APP_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid app-id {text!r}: use letters, digits, '-' and '_' (at most 63, starting "
            "and ending with a letter or digit)"
        )
    return text


def port_arg(text: str) -> int:
    """A TCP port, 1..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 1-65535")
    return port


def listen_addresses_arg(text: str) -> tuple[str, ...]:
    """``"[::1],127.0.0.1"`` → ``("::1", "127.0.0.1")``: comma-separated IP addresses, IPv6
    optionally in brackets (daprd's syntax), duplicates dropped. Raises
    ``argparse.ArgumentTypeError`` for an empty list or something that is not an IP address."""
    addresses: list[str] = []
    for part in text.split(","):
        item = part.strip()
        bare = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        try:
            address = str(ipaddress.ip_address(bare))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid listen address {item!r} in {text!r}: use IP addresses, e.g. "
                f"{DEFAULT_LISTEN_ADDRESSES}"
            ) from None
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


def size_arg(text: str) -> int:
    """A size in bytes, as :func:`parse_size` reads it, for argparse."""
    try:
        size = parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use bytes or a Ki/Mi/Gi suffix, e.g. 4Mi"
        ) from None
    except OverflowError:  # "infMi"
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: not a finite number") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    if size > MAX_BODY_SIZE_LIMIT:
        raise argparse.ArgumentTypeError(
            f"size {text!r} is over the largest body a gRPC message can carry (2047Mi)"
        )
    return size


def seconds_arg(*, positive: bool) -> Callable[[str], float]:
    """An argparse type for a duration in seconds: a finite number, ``> 0`` when ``positive``,
    else ``>= 0``. ``nan``, ``inf`` and negative numbers are refused (argparse exits 2)."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds")
        if value < 0 or (positive and value == 0):
            bound = "greater than 0" if positive else "0 or more"
            raise argparse.ArgumentTypeError(f"{text!r} seconds: must be {bound}")
        return value

    return seconds


def add_sidecar_arguments(parser: argparse.ArgumentParser, *, app_id_required: bool = True) -> None:
    """Add daprd-compatible sidecar flags to ``parser``."""
    parser.add_argument("--app-id", required=app_id_required, type=app_id_arg, help="the app-id")
    parser.add_argument("--app-port", type=port_arg, default=None, help="port the app listens on")
    parser.add_argument("--app-channel-address", default="127.0.0.1")
    parser.add_argument(
        "--app-protocol",
        default="http",
        choices=APP_PROTOCOLS,
        help="protocol of the app channel: http, or grpc for Dapr's AppCallback "
        "service (default http)",
    )
    parser.add_argument("--dapr-http-port", type=port_arg, default=3500)
    parser.add_argument(
        "--dapr-grpc-port",
        type=port_arg,
        default=None,
        help=f"port of the Dapr gRPC API (default {DEFAULT_GRPC_PORT})",
    )
    parser.add_argument(
        "--dapr-listen-addresses",
        type=listen_addresses_arg,
        default=listen_addresses_arg(DEFAULT_LISTEN_ADDRESSES),
        help="comma-separated IP addresses the HTTP and gRPC APIs bind, IPv6 in brackets "
        f"(default {DEFAULT_LISTEN_ADDRESSES}: loopback only); an address this host does "
        "not have is skipped with a warning",
    )
    parser.add_argument(
        "--dapr-public-port",
        type=port_arg,
        default=None,
        help=f"port serving only /v1.0/healthz and /v1.0/healthz/outbound on every interface, "
        f"for probes (default {DEFAULT_PUBLIC_PORT})",
    )
    parser.add_argument(
        "--resources-path",
        action="append",
        default=[],
        help="folder of Component/Subscription YAML (repeatable)",
    )
    parser.add_argument(
        "--components-path",
        action="append",
        default=[],
        help="deprecated daprd alias of --resources-path",
    )
    parser.add_argument(
        "--max-body-size",
        type=size_arg,
        default=4 * MIB,
        help="largest request body: bytes, or with Ki/Mi/Gi suffix (default 4Mi)",
    )
    parser.add_argument(
        "--dapr-graceful-shutdown-seconds",
        "--graceful-shutdown-seconds",
        dest="graceful_shutdown_seconds",
        type=seconds_arg(positive=False),
        default=5.0,
    )
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument("--log-as-json", action="store_true")
    parser.add_argument("--delivery-timeout-seconds", type=seconds_arg(positive=True), default=60.0)
    parser.add_argument(
        "--enable-metrics", action="store_true", help="serve Prometheus metrics on --metrics-port"
    )
    parser.add_argument("--metrics-port", type=port_arg, default=9090)


def parse_size(text: str) -> int:
    """``"4Mi"``/``"4MB"``/``"4194304"`` to bytes. Raises ``ValueError``."""
    s = text.strip()
    units = {
        "ki": 1024,
        "mi": MIB,
        "gi": 1024 * MIB,
        "kb": 1000,
        "mb": 1000**2,
        "gb": 1000**3,
        "k": 1000,
        "m": 1000**2,
        "g": 1000**3,
    }
    for suffix in sorted(units, key=len, reverse=True):
        if s.lower().endswith(suffix):
            return int(float(s[: -len(suffix)]) * units[suffix])
    return int(s)


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> SidecarSettings:
    """Build settings from parsed flags plus ``DAPR_API_TOKEN``/``APP_API_TOKEN``/``NAMESPACE``."""
    env = os.environ if environ is None else environ
    paths: Sequence[str] = [*args.resources_path, *args.components_path]
    return SidecarSettings(
        app_id=args.app_id,
        app_port=args.app_port,
        app_channel_address=args.app_channel_address,
        app_protocol=getattr(args, "app_protocol", "http"),
        dapr_http_port=args.dapr_http_port,
        dapr_grpc_port=args.dapr_grpc_port or DEFAULT_GRPC_PORT,
        dapr_grpc_port_explicit=args.dapr_grpc_port is not None,
        dapr_listen_addresses=args.dapr_listen_addresses,
        dapr_public_port=getattr(args, "dapr_public_port", None) or DEFAULT_PUBLIC_PORT,
        dapr_public_port_explicit=getattr(args, "dapr_public_port", None) is not None,
        resources_paths=tuple(Path(p) for p in paths),
        max_body_size=args.max_body_size,
        graceful_shutdown_seconds=args.graceful_shutdown_seconds,
        api_token=env.get("DAPR_API_TOKEN") or None,
        app_api_token=env.get("APP_API_TOKEN") or None,
        log_level=args.log_level,
        log_as_json=args.log_as_json,
        delivery_timeout_s=args.delivery_timeout_seconds,
        namespace=env.get("NAMESPACE", ""),
        metrics_port=args.metrics_port if args.enable_metrics else None,
    )
