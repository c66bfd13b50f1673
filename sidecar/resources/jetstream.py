"""``pubsub.jetstream`` metadata (Dapr's NATS JetStream component), parsed and checked once.

Metadata names are Dapr's (components-contrib ``pubsub/jetstream/metadata.go``), matched
case-insensitively. What each one does here:

- ``natsURL`` (required, comma-separated for several servers), ``name`` (connection name,
  default ``tidings-<app-id>``), ``token``, ``jwt`` + ``seedKey`` (decentralised auth, both or
  neither), ``tls_client_cert`` + ``tls_client_key`` (file paths, both or neither), ``domain``,
  ``apiPrefix``;
- ``streamName``: the stream every topic (NATS subject) lives in; publishes carry it as the
  expected stream, so a subject outside it is refused. Without it the stream of each subscribed
  subject is looked up. The stream itself is not created: as with Dapr, it must exist;
- ``durableName`` (default ``consumerID``, else the app-id): one durable **pull** consumer per
  subscribed topic, named :func:`consumer_name` (``<durableName>__<topic>``). Replicas of one
  app-id pull from the same consumer and so share the messages; app-ids have their own and
  each get every message;
- ``queueGroupName``: accepted; with pull consumers the durable already spreads messages over the
  replicas, so it is not used (said at start-up);
- ``deliverPolicy`` ``all`` (default) | ``new`` | ``last`` | ``sequence`` (with ``startSequence``)
  | ``time`` (with ``startTime``, Unix seconds); only applies when the consumer is created;
- ``ackWait`` (default 30s): how long the server waits before redelivering a message whose
  sidecar stopped answering. While a delivery (with its retries) runs, the sidecar sends
  in-progress acks every ``ackWait / 3``, so a slow or retrying delivery is never redelivered
  behind its back; only a dead or stalled sidecar's messages are;
- ``maxDeliver`` (N > 0): at most N attempts of one delivery by the engine, then the
  dead-letter topic, else give up (as ``backOffMaxRetries: N-1``). The server-side consumer keeps
  ``MaxDeliver`` unlimited so a message whose sidecar died is always redelivered, never dropped;
- ``backOff`` (``"50ms, 1s, 10s"``): the wait before each engine retry, the last repeating. Else
  Dapr's ``backOffPolicy``/``backOffDuration``/``backOffInitialInterval``/``backOffMaxInterval``/
  ``backOffMultiplier``/``backOffMaxRetries`` as for Kafka (default exponential 0.5 s to 60 s,
  forever); ``backOffMaxRetries`` wins over ``maxDeliver``;
- ``maxAckPending``: the consumer's limit of unacknowledged messages over all replicas (server
  default 1000); ``concurrencyMode`` ``single`` (default: one message at a time per topic per
  replica, in stream order) | ``parallel`` (up to ``maxAckPending``, default 100, per topic);
- ``replicas``, ``memoryStorage``: the consumer's; ``ackPolicy`` must be ``explicit`` (the only
  policy that keeps at-least-once); ``flowControl``, ``heartbeat``, ``rateLimit`` are push-consumer
  settings, accepted and reported at start-up as not used.

Used by the sidecar's JetStream broker and by the operator's validation.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass, replace

from .durations import parse_duration_seconds
from .kafka import RetryPolicy, parse_retry_policy
from .metadata_values import MetadataValues
from .models import ResourceError

__all__ = [
    "COMPONENT_TYPE",
    "JetStreamMetadata",
    "consumer_name",
    "filter_subject_problem",
    "parse_jetstream_metadata",
    "subject_problem",
]

COMPONENT_TYPE = "pubsub.jetstream"

DELIVER_POLICIES = ("all", "new", "last", "sequence", "time")
CONCURRENCY_MODES = ("single", "parallel")
DEFAULT_PARALLEL_IN_FLIGHT = 100
PUSH_ONLY_FIELDS = ("flowControl", "heartbeat", "rateLimit")

# NATS subject tokens: no whitespace, no empty token; publishing never to a wildcard.
_SUBJECT_TOKEN = re.compile(r"[^\s.*>]+")
_CONSUMER_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class JetStreamMetadata:
    """Checked ``pubsub.jetstream`` settings. Durations in seconds."""

    servers: tuple[str, ...]
    connection_name: str
    token: str | None
    jwt: str | None
    seed_key: str | None
    tls_client_cert: str | None
    tls_client_key: str | None
    domain: str | None
    api_prefix: str | None
    stream_name: str | None
    durable_name: str
    queue_group_name: str | None
    deliver_policy: str  # one of DELIVER_POLICIES
    start_sequence: int | None
    start_time: datetime.datetime | None
    ack_wait_s: float
    max_ack_pending: int | None
    max_in_flight: int  # per topic per replica: 1 in single mode
    replicas: int | None
    memory_storage: bool
    retry: RetryPolicy
    unused: tuple[str, ...]  # metadata names given but not used, said at start-up

    @property
    def in_progress_interval_s(self) -> float:
        """How often an unfinished delivery tells the server it is still being worked on."""
        return max(self.ack_wait_s / 3.0, 0.05)


def subject_problem(subject: str) -> str | None:
    """Why ``subject`` cannot be published to as a NATS subject, or ``None`` when it can.

    Subjects are ``.``-separated tokens without whitespace; ``*`` and ``>`` are wildcards, which a
    publish cannot name.
    """
    if not subject:
        return "it is empty"
    for token in subject.split("."):
        if not token:
            return "it has an empty token ('.' at the start, the end, or twice)"
        if not _SUBJECT_TOKEN.fullmatch(token):
            return "it contains whitespace or a wildcard ('*', '>')"
    return None


def filter_subject_problem(subject: str) -> str | None:
    """Why ``subject`` cannot be subscribed to (a consumer's filter subject), or ``None``.

    As :func:`subject_problem`, except that ``*`` may stand for one whole token and ``>`` for the
    last one (a subscription to ``orders.*`` gets ``orders.eu`` and ``orders.us``).
    """
    if not subject:
        return "it is empty"
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if token == "*" or (token == ">" and i == len(tokens) - 1):
            continue
        if not token:
            return "it has an empty token ('.' at the start, the end, or twice)"
        if not _SUBJECT_TOKEN.fullmatch(token):
            return (
                "it contains whitespace, or a wildcard that is not a whole token ('*') or "
                "the last one ('>')"
            )
    return None


def consumer_name(durable: str, topic: str) -> str:
    """The durable consumer of ``durable`` (``durableName``) for subject ``topic``.

    ``<durable>__<topic>`` when the topic is made of ``[A-Za-z0-9_-]``; otherwise unsafe
    characters (``.`` among them: consumer names cannot hold it) become ``_`` and a short hash of
    the topic keeps ``a.b`` and ``a_b`` apart. Deterministic: every replica computes the same name.
    """
    if _CONSUMER_SAFE.fullmatch(topic) and len(durable) + len(topic) + 2 <= _MAX_NAME:
        return f"{durable}__{topic}"
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", topic)
    digest = hashlib.sha256(topic.encode()).hexdigest()[:8]
    return f"{durable}__{safe}"[: _MAX_NAME - 9] + f"_{digest}"


def parse_jetstream_metadata(
    values: dict[str, str], *, app_id: str, source: str = ""
) -> JetStreamMetadata:
    """Check ``spec.metadata`` of a ``pubsub.jetstream`` component for ``app_id``.

    ``values`` maps metadata names (any case) to rendered strings, secrets already resolved.
    Raises :class:`ResourceError` naming ``spec.metadata.<name>`` for a missing ``natsURL``, a
    half-given credential pair, or a value the runtime would refuse.
    """
    meta = MetadataValues(values, source=source, strip=True)
    get, field = meta.get, meta.field

    def integer(name: str, *, minimum: int) -> int | None:
        value = meta.integer(name, None)
        if value is not None and value < minimum:
            raise meta.error(name, f"{value} is below the minimum {minimum}")
        return value

    url = get("natsURL")
    if not url:
        raise ResourceError(
            "jetstream error: missing 'natsURL' attribute", source=source, field=field("natsURL")
        )
    servers = tuple(s.strip() for s in url.split(",") if s.strip())
    for first, second in (
        ("jwt", "seedKey"),
        ("seedKey", "jwt"),
        ("tls_client_cert", "tls_client_key"),
        ("tls_client_key", "tls_client_cert"),
    ):
        if get(first) and not get(second):
            raise ResourceError(f"{first} requires {second}", source=source, field=field(second))

    stream = get("streamName")
    if stream is not None and not _CONSUMER_SAFE.fullmatch(stream):
        raise ResourceError(
            f"streamName {stream!r} may hold only letters, digits, '_' and '-'",
            source=source,
            field=field("streamName"),
        )
    durable = get("durableName") or get("consumerID") or app_id
    if not _CONSUMER_SAFE.fullmatch(durable) or len(durable) > 100:
        raise ResourceError(
            f"durableName {durable!r} may hold only letters, digits, '_' and '-' (at most 100)",
            source=source,
            field=field("durableName"),
        )

    start_sequence = integer("startSequence", minimum=1)
    start_time_raw = integer("startTime", minimum=0)
    start_time = (
        datetime.datetime.fromtimestamp(start_time_raw, datetime.UTC)
        if start_time_raw is not None
        else None
    )
    default_policy = "sequence" if start_sequence else "time" if start_time else "all"
    deliver_policy = (get("deliverPolicy", default_policy) or default_policy).lower()
    if deliver_policy not in DELIVER_POLICIES:
        raise ResourceError(
            f"deliverPolicy {deliver_policy!r} is not one of {', '.join(DELIVER_POLICIES)}",
            source=source,
            field=field("deliverPolicy"),
        )
    if deliver_policy == "sequence" and start_sequence is None:
        raise ResourceError(
            "deliverPolicy sequence requires startSequence",
            source=source,
            field=field("startSequence"),
        )
    if deliver_policy == "time" and start_time is None:
        raise ResourceError(
            "deliverPolicy time requires startTime (Unix seconds)",
            source=source,
            field=field("startTime"),
        )
    if deliver_policy != "sequence":
        start_sequence = None
    if deliver_policy != "time":
        start_time = None

    ack_policy = (get("ackPolicy", "explicit") or "explicit").lower()
    if ack_policy != "explicit":
        raise ResourceError(
            f"ackPolicy {ack_policy!r} is not supported: only explicit acks keep "
            "delivery at-least-once",
            source=source,
            field=field("ackPolicy"),
        )
    ack_wait_s = meta.seconds("ackWait", "30s")
    if ack_wait_s <= 0:
        raise ResourceError("ackWait must be positive", source=source, field=field("ackWait"))
    max_ack_pending = integer("maxAckPending", minimum=1)
    mode = (get("concurrencyMode", "single") or "single").lower()
    if mode not in CONCURRENCY_MODES:
        raise ResourceError(
            f"concurrencyMode {mode!r} is not one of single, parallel",
            source=source,
            field=field("concurrencyMode"),
        )
    max_in_flight = 1 if mode == "single" else (max_ack_pending or DEFAULT_PARALLEL_IN_FLIGHT)

    retry = _retry_policy(values, meta)
    unused = tuple(name for name in PUSH_ONLY_FIELDS if get(name) is not None)
    if get("queueGroupName"):
        unused += ("queueGroupName",)
    return JetStreamMetadata(
        servers=servers,
        connection_name=get("name") or f"tidings-{app_id}",
        token=get("token"),
        jwt=get("jwt"),
        seed_key=get("seedKey"),
        tls_client_cert=get("tls_client_cert"),
        tls_client_key=get("tls_client_key"),
        domain=get("domain"),
        api_prefix=get("apiPrefix"),
        stream_name=stream,
        durable_name=durable,
        queue_group_name=get("queueGroupName"),
        deliver_policy=deliver_policy,
        start_sequence=start_sequence,
        start_time=start_time,
        ack_wait_s=ack_wait_s,
        max_ack_pending=max_ack_pending,
        max_in_flight=max_in_flight,
        replicas=integer("replicas", minimum=1),
        memory_storage=meta.boolean("memoryStorage"),
        retry=retry,
        unused=unused,
    )


def _retry_policy(values: dict[str, str], meta: MetadataValues) -> RetryPolicy:
    """The engine's retry policy: Dapr's ``backOff*`` fields (shared with every component), then
    ``maxDeliver`` as the attempt limit unless ``backOffMaxRetries`` is given, and ``backOff``
    as an explicit schedule. ``meta`` reads the same ``values``, stripped."""
    retry = parse_retry_policy(values, source=meta.source)
    if not meta.get("backOffMaxRetries"):
        max_deliver = meta.integer("maxDeliver", -1)
        retry = replace(retry, max_retries=max_deliver - 1 if max_deliver > 0 else -1)
    schedule = meta.get("backOff")
    if schedule:
        try:
            delays = tuple(
                parse_duration_seconds(part) for part in schedule.split(",") if part.strip()
            )
        except ValueError as exc:
            raise meta.error("backOff", str(exc)) from None
        if not delays or any(d < 0 for d in delays):
            raise meta.error(
                "backOff", "backOff must list non-negative durations, e.g. '50ms, 1s, 10s'"
            )
        retry = replace(
            retry,
            policy="schedule",
            initial_interval_s=delays[0],
            max_interval_s=max(delays),
            schedule_s=delays,
        )
    return retry
