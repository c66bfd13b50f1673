"""``pubsub.kafka`` component metadata (dapr-pubsub-contract.md §3.3), parsed and checked once.

Keys match case-insensitively, as Dapr's mapstructure decoding does. Defaults follow Dapr's code,
with two pinned choices of ours (§9):

- delivery retries back off exponentially (``backOffPolicy: exponential``) where Dapr's default is
  a constant 5 s; both retry forever by default, so nothing is lost;
- ``clientID`` defaults to ``tidings-<app-id>`` rather than sarama's ``"sarama"``.

Security follows components-contrib ``common/component/kafka/auth.go`` and ``metadata.go``
(docs.dapr.io/reference/components-reference/supported-pubsub/setup-apache-kafka/): ``authType``
``none``, ``password`` (SASL ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512`` by
``saslMechanism``), ``mtls`` (client certificate), ``certificate`` (a ``caCert`` to verify the
brokers by) and ``oidc`` (SASL ``OAUTHBEARER`` with client-credentials tokens from
``oidcTokenEndpoint``); TLS is on for every ``authType`` but ``none`` unless ``disableTls:
"true"``, with the system trust store unless ``caCert`` is given. Where Dapr is weaker we are
stricter: ``authType: none`` with ``caCert``, ``clientCert`` or ``skipVerify`` connects with TLS
(Dapr ignores them and connects in plain text). Refused, naming the field: an
``oidcTokenEndpoint`` that is not ``https`` (the client secret travels there), TLS fields next to
``disableTls: "true"``, ``oidc_private_key_jwt`` and ``awsiam`` (not supported), and PEM text
that does not load (at load time, not at the first connection).

Used by the sidecar's Kafka broker and by the operator's validation, so a bad component is
reported the same way in both places.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from .metadata_values import MetadataValues
from .models import Component, ResourceError
from .tls import TlsMaterialError, client_context

COMPONENT_TYPE = "pubsub.kafka"

AUTH_TYPES = ("none", "password", "mtls", "certificate", "oidc")
UNSUPPORTED_AUTH_TYPES = {
    "oidc_private_key_jwt": "OIDC with a private-key JWT client assertion",
    "awsiam": "AWS IAM (MSK) authentication",
}
# Dapr's names (PLAINTEXT is Dapr's default and means SASL PLAIN) and the SASL names themselves.
SASL_MECHANISMS = {
    "PLAINTEXT": "PLAIN",
    "PLAIN": "PLAIN",
    "SHA-256": "SCRAM-SHA-256",
    "SHA-512": "SCRAM-SHA-512",
    "SCRAM-SHA-256": "SCRAM-SHA-256",
    "SCRAM-SHA-512": "SCRAM-SHA-512",
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delivery retry policy of one component.

    ``initial_interval_s`` and ``max_interval_s`` are seconds; ``max_retries`` counts retries after
    the first attempt, ``-1`` meaning forever (Dapr's ``backOffMaxRetries`` default).
    ``schedule_s``, when not empty, gives the wait before each retry explicitly (seconds; the
    last one repeats) and overrides ``policy``: JetStream's ``backOff`` list.
    """

    policy: str = "exponential"
    initial_interval_s: float = 0.5
    max_interval_s: float = 60.0
    multiplier: float = 1.5
    max_retries: int = -1
    schedule_s: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class KafkaMetadata:
    """Checked ``pubsub.kafka`` settings. Durations in seconds, sizes in bytes."""

    brokers: tuple[str, ...]
    auth_type: str
    consumer_group: str
    client_id: str
    initial_offset: str  # "newest" | "oldest"
    max_message_bytes: int  # producer max request size; 0 means aiokafka's 1 MiB default
    session_timeout_s: float
    heartbeat_interval_s: float
    sasl_username: str | None
    sasl_password: str | None
    sasl_mechanism: str  # aiokafka's name: PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    ca_cert: str | None
    client_cert: str | None
    client_key: str | None
    skip_verify: bool
    disable_tls: bool
    retry: RetryPolicy
    escape_headers: bool
    oidc_token_endpoint: str | None = None
    """``https`` URL of the OAuth 2.0 token endpoint (``authType: oidc``)."""
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_scopes: tuple[str, ...] = ("openid",)
    """``oidcScopes``, comma-separated; Dapr's default ``openid``."""
    oidc_extensions: tuple[tuple[str, str], ...] = ()
    """``oidcExtensions`` (a JSON object of strings): SASL OAUTHBEARER extensions."""

    @property
    def tls(self) -> bool:
        """Whether connections use TLS: for every ``authType`` but ``none`` unless
        ``disableTls`` (Dapr's ``updateTLSConfig``); for ``none`` only when ``caCert`` or
        ``clientCert`` or ``skipVerify`` is given (Dapr would ignore them and connect in plain
        text), so a local broker needs no ``disableTls``."""
        if self.disable_tls:
            return False
        if self.auth_type == "none":
            return bool(self.ca_cert or self.client_cert or self.skip_verify)
        return True


def parse_retry_policy(values: dict[str, str], *, source: str = "") -> RetryPolicy:
    """The delivery retry policy from ``backOffPolicy`` (``exponential``, default, or
    ``constant``), ``backOffDuration`` (constant, default 5s), ``backOffInitialInterval``
    (500ms), ``backOffMaxInterval`` (60s), ``backOffMultiplier`` (1.5) and
    ``backOffMaxRetries`` (-1: forever); keys in any case (dapr-pubsub-contract.md §3.3).

    Shared by every component type, so retries read the same whatever the broker. Raises
    :class:`ResourceError` naming ``spec.metadata.<name>`` for a value that does not parse.
    """
    meta = MetadataValues(values, source=source)
    policy = (meta.get("backOffPolicy") or "exponential").lower()
    if policy not in ("exponential", "constant"):
        raise meta.error(
            "backOffPolicy", f"backOffPolicy {policy!r} must be exponential or constant"
        )
    if policy == "constant":
        interval = meta.seconds("backOffDuration", "5s")
        return RetryPolicy(
            "constant", interval, interval, 1.0, meta.integer("backOffMaxRetries", -1)
        )
    try:
        multiplier = float(meta.get("backOffMultiplier") or "1.5")
    except ValueError:
        raise meta.error("backOffMultiplier", "backOffMultiplier must be a number") from None
    return RetryPolicy(
        "exponential",
        meta.seconds("backOffInitialInterval", "500ms"),
        meta.seconds("backOffMaxInterval", "60s"),
        multiplier,
        meta.integer("backOffMaxRetries", -1),
    )


def parse_kafka_metadata(values: dict[str, str], *, app_id: str, source: str = "") -> KafkaMetadata:
    """Check ``spec.metadata`` of a ``pubsub.kafka`` component for ``app_id``.

    ``values`` maps metadata names (any case) to rendered strings, secrets already resolved.
    Raises :class:`ResourceError` naming ``spec.metadata.<name>`` for a missing required field
    (``brokers``, ``authType``) or a value the runtime would refuse.
    """
    meta = MetadataValues(values, source=source)
    get, field = meta.get, meta.field

    brokers = get("brokers")
    if not brokers:
        raise ResourceError(
            "kafka error: missing 'brokers' attribute", source=source, field=field("brokers")
        )
    auth_type = (get("authType") or "").lower()
    if not auth_type:
        raise ResourceError(
            "kafka error: missing 'authType' attribute", source=source, field=field("authType")
        )
    if auth_type in UNSUPPORTED_AUTH_TYPES:
        raise ResourceError(
            f"authType {auth_type!r} ({UNSUPPORTED_AUTH_TYPES[auth_type]}) is not supported "
            f"by tidings; use one of {', '.join(AUTH_TYPES)}",
            source=source,
            field=field("authType"),
        )
    if auth_type not in AUTH_TYPES:
        raise ResourceError(
            f"authType {auth_type!r} is not supported (one of {', '.join(AUTH_TYPES)})",
            source=source,
            field=field("authType"),
        )
    initial_offset = (get("initialOffset", "newest") or "newest").lower()
    if initial_offset not in ("newest", "oldest"):
        raise ResourceError(
            f"initialOffset {initial_offset!r} must be newest or oldest",
            source=source,
            field=field("initialOffset"),
        )
    mech_name = (get("saslMechanism", "PLAINTEXT") or "PLAINTEXT").upper()
    if mech_name not in SASL_MECHANISMS:
        raise ResourceError(
            f"saslMechanism {mech_name!r} must be PLAINTEXT (SASL PLAIN), SHA-256 or SHA-512 "
            "(SCRAM-SHA-256 and SCRAM-SHA-512 also read)",
            source=source,
            field=field("saslMechanism"),
        )
    if auth_type == "password" and not (get("saslUsername") and get("saslPassword")):
        missing = "saslUsername" if not get("saslUsername") else "saslPassword"
        raise ResourceError(
            f"authType password requires {missing}", source=source, field=field(missing)
        )
    security = _check_tls(meta, auth_type)
    oidc = _check_oidc(meta) if auth_type == "oidc" else {}

    retry = parse_retry_policy(values, source=source)

    session_timeout_s = meta.seconds("sessionTimeout", "10s")
    heartbeat_interval_s = meta.seconds("heartbeatInterval", "3s")
    if heartbeat_interval_s >= session_timeout_s:
        raise ResourceError(
            "heartbeatInterval must be shorter than sessionTimeout",
            source=source,
            field=field("heartbeatInterval"),
        )

    consumer_group = get("consumerGroup") or get("consumerID") or app_id
    return KafkaMetadata(
        brokers=tuple(b.strip() for b in brokers.split(",") if b.strip()),
        auth_type=auth_type,
        consumer_group=consumer_group,
        client_id=get("clientID") or get("clientId") or f"tidings-{app_id}",
        initial_offset=initial_offset,
        max_message_bytes=meta.integer("maxMessageBytes", 0),
        session_timeout_s=session_timeout_s,
        heartbeat_interval_s=heartbeat_interval_s,
        sasl_username=get("saslUsername"),
        sasl_password=get("saslPassword"),
        sasl_mechanism=SASL_MECHANISMS[mech_name],
        ca_cert=get("caCert"),
        client_cert=get("clientCert"),
        client_key=get("clientKey"),
        skip_verify=security["skip_verify"],
        disable_tls=security["disable_tls"],
        retry=retry,
        escape_headers=meta.boolean("escapeHeaders"),
        **oidc,  # type: ignore[arg-type]
    )


def _check_tls(meta: MetadataValues, auth_type: str) -> dict[str, bool]:
    """The TLS fields' checks: ``clientCert`` and ``clientKey`` together, ``mtls`` needs both
    and TLS, ``certificate`` needs ``caCert``; PEM text must load. Returns the two booleans."""
    get = meta.get
    disable_tls = meta.boolean("disableTls")
    skip_verify = meta.boolean("skipVerify")
    for have, lacks in (("clientCert", "clientKey"), ("clientKey", "clientCert")):
        if get(have) and not get(lacks):
            raise meta.error(lacks, f"{have} is set but {lacks} is not: give both or neither")
    if auth_type == "mtls":
        for name in ("clientCert", "clientKey"):
            if not get(name):
                raise meta.error(name, f"authType mtls requires {name} (PEM)")
        if disable_tls:
            # components-contrib auth.go updateMTLSAuthInfo refuses the same.
            raise meta.error("disableTls", "authType mtls cannot be used with disableTls: true")
    if auth_type == "certificate" and not get("caCert"):
        raise meta.error("caCert", "authType certificate requires caCert (PEM)")
    if disable_tls and (get("caCert") or get("clientCert") or skip_verify):
        set_ = [n for n in ("caCert", "clientCert", "skipVerify") if get(n)]
        raise meta.error(
            "disableTls",
            f"disableTls is true but {', '.join(set_)} is set: TLS settings would be ignored",
        )
    try:
        client_context(
            ca_pem=get("caCert"),
            cert_pem=get("clientCert"),
            key_pem=get("clientKey"),
            skip_verify=skip_verify,
        )
    except TlsMaterialError as exc:
        raise meta.error(exc.field, str(exc)) from None
    return {"disable_tls": disable_tls, "skip_verify": skip_verify}


def _check_oidc(meta: MetadataValues) -> dict[str, object]:
    """``authType: oidc``: the token endpoint (``https``), client id and secret (Dapr's
    required three), ``oidcScopes`` (default ``openid``) and ``oidcExtensions`` (JSON)."""
    get = meta.get
    for name in ("oidcTokenEndpoint", "oidcClientID", "oidcClientSecret"):
        if not get(name):
            raise meta.error(name, f"authType oidc requires {name}")
    endpoint = get("oidcTokenEndpoint") or ""
    parts = urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname:
        raise meta.error(
            "oidcTokenEndpoint",
            f"oidcTokenEndpoint {endpoint!r} must be an https:// URL: the client secret is "
            "sent there",
        )
    scopes = tuple(s.strip() for s in (get("oidcScopes") or "openid").split(",") if s.strip())
    extensions: dict[str, str] = {}
    raw = get("oidcExtensions")
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
        ):
            raise meta.error(
                "oidcExtensions", 'oidcExtensions must be a JSON object of strings: {"k": "v"}'
            )
        for key, value in parsed.items():
            # RFC 7628 §3.1: key = 1*(ALPHA), value = *(VCHAR / SP / HTAB / CR / LF)
            if not key.isascii() or not key.isalpha() or key == "auth" or "\x01" in value:
                raise meta.error("oidcExtensions", f"oidcExtensions key {key!r} is not allowed")
        extensions = parsed
    return {
        "oidc_token_endpoint": endpoint,
        "oidc_client_id": get("oidcClientID"),
        "oidc_client_secret": get("oidcClientSecret"),
        "oidc_scopes": scopes or ("openid",),
        "oidc_extensions": tuple(sorted(extensions.items())),
    }


def kafka_metadata_of(component: Component, *, app_id: str, source: str = "") -> KafkaMetadata:
    """:func:`parse_kafka_metadata` over a loaded :class:`Component`."""
    return parse_kafka_metadata(
        component.metadata_values(), app_id=app_id, source=source or component.name
    )
