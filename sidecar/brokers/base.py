"""The one small interface every pub/sub broker implements (Kafka, in-memory).

A broker does three things for the runtime:

- ``publish``: produce one record and return only once the broker acknowledged it;
- ``subscribe``: run the app-id's consumer group over a set of topics and call a handler for every
  record, strictly in order within a partition, partitions in parallel;
- ``close``: stop fetching, let in-flight handlers finish within a grace period, commit, leave.

The handler contract is what makes delivery at-least-once: ``await handler(record)`` returns
only when the record is *finished* (delivered and acknowledged by the app, or dead-lettered). Only
then may the broker commit its offset. If the handler is cancelled (partition revoked, shutdown
grace exhausted) the record is not finished and must be delivered again by whoever next owns the
partition. Neighbours: ``delivery/engine.py`` provides the handler; ``brokers/kafka/``,
``brokers/redis.py`` and ``brokers/memory.py`` implement this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

__all__ = [
    "BULK_PUBLISH",
    "FEATURES",
    "MESSAGE_HEADERS",
    "ORDERED",
    "PARTITION_KEY",
    "PARTITION_NUMBER",
    "BatchHandler",
    "BatchPolicy",
    "Broker",
    "BrokerError",
    "Handler",
    "Header",
    "PublishRecord",
    "Record",
]

Header = tuple[str, bytes | None]

# What a broker can do of what the sidecar offers: ``Broker.features``, logged at start-up and
# listed in ``GET /v1.0/metadata`` ``components[].capabilities``. A broker without a feature
# refuses the request that needs it (a publish error) or says at start-up what it does instead.
BULK_PUBLISH = "BULK_PUBLISH"  # publish_many is batched on the wire (Dapr's capability name)
MESSAGE_HEADERS = "MESSAGE_HEADERS"  # publish metadata travels with the message (HTTP headers)
PARTITION_KEY = "PARTITION_KEY"  # partitionKey picks the partition: one key, one order
PARTITION_NUMBER = "PARTITION_NUMBER"  # partitionNumber picks the partition
ORDERED = "ORDERED"  # in order per partition (Kafka) or stream (Redis with concurrency 1)
FEATURES = (BULK_PUBLISH, MESSAGE_HEADERS, PARTITION_KEY, PARTITION_NUMBER, ORDERED)


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record. ``timestamp_ms`` is milliseconds since the epoch (Kafka's unit)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[Header, ...] = ()
    timestamp_ms: int = 0


Handler = Callable[[Record], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How a broker may batch one topic's records for a :class:`BatchHandler` (bulk subscribe,
    dapr-pubsub-contract.md §2.4): up to ``max_records`` records of one partition, waiting at
    most ``max_await_s`` seconds after the first for the batch to fill. ``None``: the broker's
    own default (Kafka: 80 records, 10 s, as Dapr's Kafka component)."""

    max_records: int | None = None
    max_await_s: float | None = None


class BatchHandler(Protocol):
    """A :data:`Handler` that can also take several records of one partition at once.

    ``batch_policy(topic)`` says whether (and how) records of ``topic`` may be batched; ``None``
    means one at a time. ``await handle_batch(records)`` (consecutive records of one partition,
    in offset order) returns only when every one of them is finished, with the same
    cancellation rule as a single record. Brokers that do not batch call it as a plain
    :data:`Handler`, which stays correct.
    """

    def __call__(self, record: Record) -> Awaitable[None]: ...

    def batch_policy(self, topic: str) -> BatchPolicy | None: ...

    def handle_batch(self, records: Sequence[Record]) -> Awaitable[None]: ...


class PublishRecord(NamedTuple):
    """One record to produce. ``partition`` ``None`` lets the broker choose (Kafka: by ``key``);
    an ``int`` (>= 0) names the partition explicitly (Dapr's ``partitionNumber``, §5.9)."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    partition: int | None = None


class BrokerError(Exception):
    """The broker refused or could not take a request. ``retriable`` says whether trying the
    same request again later may succeed (Kafka's error flag); the message is for humans only.
    ``refused`` says the request itself can never be stored as it is (``"request"``: a topic name
    or partition the broker cannot hold; ``"size"``: a record over the size limit), so it is the
    caller's mistake, not an outage; ``None`` otherwise."""

    def __init__(
        self, message: str, *, retriable: bool = False, refused: str | None = None
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.refused = refused


class Broker(Protocol):
    """A started pub/sub component. Implementations: ``KafkaBroker``, ``RedisBroker``,
    ``MemoryBroker``."""

    name: str
    features: frozenset[str]
    """Which of :data:`FEATURES` this broker provides."""

    async def start(self) -> None:
        """Connect the producer side. Raises :class:`BrokerError` if the broker is unreachable."""

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        """Produce one record; return after the broker acknowledged it (Kafka ``acks=all``).
        ``partition`` as in :class:`PublishRecord`.

        Raises :class:`BrokerError` when the record was not stored (or may not have been),
        including at once, not retriable, for a topic name or partition the broker cannot hold.
        """

    async def publish_many(self, records: Sequence[PublishRecord]) -> list[BrokerError | None]:
        """Produce ``records`` together; one outcome per record, in order: ``None`` when
        acknowledged, else the error. Never raises for a single record."""

    async def subscribe(self, topics: Collection[str], handler: Handler) -> None:
        """Make the consumer group consume exactly ``topics`` (empty: stop consuming).

        May be called again with a new set (hot reload); for Kafka that is a rebalance. Returns
        once the change is in effect, not when the first record arrives.
        """

    async def close(self, *, grace_s: float) -> None:
        """Stop fetching, wait up to ``grace_s`` seconds for in-flight handlers, commit what
        finished, leave the group and stop the producer. Never raises."""

    def ready(self) -> bool:
        """Whether the producer side is connected (outbound health, §1.5)."""
