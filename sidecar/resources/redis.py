"""``pubsub.redis`` component metadata (Dapr's Redis Streams component), parsed and checked once.

Names and defaults follow Dapr's component (components-contrib ``pubsub/redis/metadata.yaml``):
``redisHost`` (required, ``host[:port]``; ``redisPort`` or 6379 when it has no port),
``redisPassword``, ``redisUsername``, ``redisDB`` (0), ``enableTLS`` (false), ``consumerID`` (the
consumer group; default the app-id, as Kafka's group is), ``queueDepth`` (100), ``concurrency``
(10), ``processingTimeout`` (15s; 0 never reclaims), ``redeliverInterval`` (60s; 0 never
reclaims), ``maxLenApprox`` (unset: streams are not trimmed by length), ``streamTTL`` (unset:
not trimmed by age), ``dialTimeout`` (5s). Durations take Go syntax or bare milliseconds. Keys
match case-insensitively, as for Kafka. Delivery retries read the same ``backOff*`` keys as
every component (:func:`~.kafka.parse_retry_policy`).

Dapr options this component does not implement are refused when they would change behaviour
(``redisType: cluster``, ``failover: true``, ``clientCert``/``clientKey``, ``useEntraID``) and
listed in :attr:`RedisMetadata.ignored` when they only tune Dapr's Go client (pool sizes,
client-side retries), so the broker can say so at start-up instead of ignoring them silently.

Used by the sidecar's Redis broker and by the operator's validation.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kafka import RetryPolicy, parse_retry_policy
from .metadata_values import MetadataValues
from .models import Component, ResourceError

__all__ = ["COMPONENT_TYPE", "RedisMetadata", "parse_redis_metadata", "redis_metadata_of"]

COMPONENT_TYPE = "pubsub.redis"

# Dapr options that only tune go-redis (pools, client-side retries, timeouts we do not split).
_CLIENT_TUNING = (
    "redisMaxRetries",
    "redisMinRetryInterval",
    "redisMaxRetryInterval",
    "readTimeout",
    "writeTimeout",
    "poolSize",
    "poolTimeout",
    "idleTimeout",
    "idleCheckFrequency",
    "maxConnAge",
    "minIdleConns",
    "maxRetries",
    "maxRetryBackoff",
)


@dataclass(frozen=True, slots=True)
class RedisMetadata:
    """Checked ``pubsub.redis`` settings. Durations in seconds.

    ``consumer_group`` is the Redis consumer group of every stream (``consumerID``, else the
    app-id). ``max_len_approx`` (entries) and ``stream_ttl_s`` are ``None`` when streams are not
    trimmed that way. ``ignored`` names the Dapr options that were set but have no effect here.
    """

    host: str
    port: int
    username: str | None
    password: str | None
    db: int
    enable_tls: bool
    consumer_group: str
    queue_depth: int
    concurrency: int
    processing_timeout_s: float
    redeliver_interval_s: float
    max_len_approx: int | None
    stream_ttl_s: float | None
    dial_timeout_s: float
    retry: RetryPolicy
    ignored: tuple[str, ...] = ()

    @property
    def reclaims(self) -> bool:
        """Whether pending entries of failed consumers are reclaimed (both intervals > 0)."""
        return self.processing_timeout_s > 0 and self.redeliver_interval_s > 0


def parse_redis_metadata(values: dict[str, str], *, app_id: str, source: str = "") -> RedisMetadata:
    """Check ``spec.metadata`` of a ``pubsub.redis`` component for ``app_id``.

    ``values`` maps metadata names (any case) to rendered strings, secrets already resolved.
    Raises :class:`ResourceError` naming ``spec.metadata.<name>`` for a missing ``redisHost``, a
    value that does not parse, or an option this component cannot honour (``redisType:
    cluster``, ``failover: true``).
    """
    meta = MetadataValues(values, source=source)
    get, field = meta.get, meta.field

    def seconds(name: str, default: str) -> float:
        value = meta.seconds(name, default)
        if value < 0:
            raise meta.error(name, f"{name} must not be negative")
        return value

    def integer(name: str, default: int | None, minimum: int) -> int | None:
        value = meta.integer(name, default)
        if value is not None and value < minimum:
            raise meta.error(name, f"{name} must be at least {minimum}")
        return value

    host_port = get("redisHost")
    if not host_port:
        raise ResourceError(
            "redis error: missing 'redisHost' attribute", source=source, field=field("redisHost")
        )
    host, sep, port_text = host_port.strip().rpartition(":")
    if not sep or host.endswith(":"):  # no port (or a bare IPv6 address): redisPort or 6379
        host, port_text = host_port.strip(), get("redisPort") or "6379"
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ResourceError(
            f"redisHost {host_port!r} must be host:port", source=source, field=field("redisHost")
        )
    if (get("redisType") or "node").lower() != "node":
        raise ResourceError(
            "redisType cluster is not supported by pubsub.redis here (use node)",
            source=source,
            field=field("redisType"),
        )
    if meta.boolean("failover"):
        raise ResourceError(
            "failover (Redis Sentinel) is not supported by pubsub.redis here",
            source=source,
            field=field("failover"),
        )
    for name in ("clientCert", "clientKey"):
        if get(name):
            raise ResourceError(
                f"{name} (TLS client certificates) is not supported by pubsub.redis here",
                source=source,
                field=field(name),
            )
    if meta.boolean("useEntraID"):
        raise ResourceError(
            "useEntraID is not supported by pubsub.redis here",
            source=source,
            field=field("useEntraID"),
        )
    queue_depth = integer("queueDepth", 100, 1)
    concurrency = integer("concurrency", 10, 1)
    db = integer("redisDB", 0, 0)
    max_len = integer("maxLenApprox", None, 1)
    stream_ttl_s = seconds("streamTTL", "0") or None
    if max_len is not None and stream_ttl_s is not None:
        raise ResourceError(
            "set maxLenApprox or streamTTL, not both (XADD trims one way)",
            source=source,
            field=field("streamTTL"),
        )
    assert queue_depth is not None and concurrency is not None and db is not None
    ignored = tuple(name for name in _CLIENT_TUNING if get(name) is not None)
    return RedisMetadata(
        host=host.strip("[]"),
        port=int(port_text),
        username=get("redisUsername"),
        password=get("redisPassword"),
        db=db,
        enable_tls=meta.boolean("enableTLS"),
        consumer_group=get("consumerID") or app_id,
        queue_depth=queue_depth,
        concurrency=concurrency,
        processing_timeout_s=seconds("processingTimeout", "15s"),
        redeliver_interval_s=seconds("redeliverInterval", "60s"),
        max_len_approx=max_len,
        stream_ttl_s=stream_ttl_s,
        dial_timeout_s=seconds("dialTimeout", "5s"),
        retry=parse_retry_policy(values, source=source),
        ignored=ignored,
    )


def redis_metadata_of(component: Component, *, app_id: str, source: str = "") -> RedisMetadata:
    """:func:`parse_redis_metadata` over a loaded :class:`Component`."""
    return parse_redis_metadata(
        component.metadata_values(), app_id=app_id, source=source or component.name
    )
