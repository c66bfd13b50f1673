"""``pubsub.kafka`` component metadata (dapr-pubsub-contract.md §3.3), parsed and checked once.

Keys match case-insensitively, as Dapr's mapstructure decoding does. Defaults follow Dapr's code,
with two pinned choices of ours (§9):

- delivery retries back off exponentially (``backOffPolicy: exponential``) where Dapr's default is
  a constant 5 s; both retry forever by default, so nothing is lost;
- ``clientID`` defaults to ``tidings-<app-id>`` rather than sarama's ``"sarama"``.

Used by the sidecar's Kafka broker and by the operator's validation, so a bad component is
reported the same way in both places.
"""

from __future__ import annotations

from dataclasses import dataclass

from .metadata_values import MetadataValues
from .models import Component, ResourceError

COMPONENT_TYPE = "pubsub.kafka"

AUTH_TYPES = ("none", "password", "mtls")
SASL_MECHANISMS = {
    "PLAINTEXT": "PLAIN",
    "PLAIN": "PLAIN",
    "SHA-256": "SCRAM-SHA-256",
    "SHA-512": "SCRAM-SHA-512",
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

    @property
    def tls(self) -> bool:
        """TLS is on unless ``disableTls``; with ``authType: none`` and no certs we stay plain.

        Dapr turns TLS on by default; a plaintext local broker needs ``disableTls: "true"``
        there. We keep plaintext when nothing TLS-related is configured and ``authType`` is
        ``none``, which is what every local broker needs.
        """
        if self.disable_tls:
            return False
        return self.auth_type == "mtls" or bool(self.ca_cert or self.client_cert)


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
            f"saslMechanism {mech_name!r} must be PLAINTEXT, SHA-256 or SHA-512",
            source=source,
            field=field("saslMechanism"),
        )
    if auth_type == "password" and not (get("saslUsername") and get("saslPassword")):
        missing = "saslUsername" if not get("saslUsername") else "saslPassword"
        raise ResourceError(
            f"authType password requires {missing}", source=source, field=field(missing)
        )

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
        skip_verify=meta.boolean("skipVerify"),
        disable_tls=meta.boolean("disableTls"),
        retry=retry,
        escape_headers=meta.boolean("escapeHeaders"),
    )


def kafka_metadata_of(component: Component, *, app_id: str, source: str = "") -> KafkaMetadata:
    """:func:`parse_kafka_metadata` over a loaded :class:`Component`."""
    return parse_kafka_metadata(
        component.metadata_values(), app_id=app_id, source=source or component.name
    )
