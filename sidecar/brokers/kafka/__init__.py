"""``pubsub.kafka``: the :class:`~tidings.sidecar.brokers.base.Broker` for Kafka-protocol brokers.

Composes the producer (``producing.py``) and the app-id's consumer group (``consuming.py``) of one
component; both take their connection settings from ``clients.py``. Shutdown order follows
aiokafka-pitfalls.md 17: the consumer group first (handlers may still dead-letter through the
producer while they finish), the producer last.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ...resources.loading import LoadedComponent
from ..base import (
    BULK_PUBLISH,
    MESSAGE_HEADERS,
    ORDERED,
    PARTITION_KEY,
    PARTITION_NUMBER,
    BrokerError,
    Handler,
    PublishRecord,
)
from .consuming import ConsumerGroup
from .producing import KafkaProducer

__all__ = ["KafkaBroker"]


class KafkaBroker:
    """The Kafka component ``component`` as used by the sidecar of ``app_id``.

    The consumer group is ``component.kafka.consumer_group`` (``consumerGroup`` or ``consumerID``,
    else the app-id; dapr-pubsub-contract.md §5.5): one group per component per app-id covering
    every subscribed topic (§5.9). ``max_body_size`` (bytes) is the largest publish body the
    API accepts; without ``maxMessageBytes`` the producer takes any record built from such a
    body (``producing.py``). Raises ``ValueError`` for a component that is not Kafka.
    """

    features = frozenset({BULK_PUBLISH, MESSAGE_HEADERS, PARTITION_KEY, PARTITION_NUMBER, ORDERED})

    def __init__(
        self,
        component: LoadedComponent,
        *,
        app_id: str,
        producer_stop_timeout_s: float = 5.0,
        max_body_size: int | None = None,
    ) -> None:
        if component.kafka is None:
            raise ValueError(f"component {component.name} is not pubsub.kafka")
        self.name = component.name
        self.app_id = app_id
        self.meta = component.kafka
        self._producer = KafkaProducer(self.meta, pubsubname=self.name, max_body_size=max_body_size)
        self._group: ConsumerGroup | None = None
        self._producer_stop_timeout_s = producer_stop_timeout_s

    async def start(self) -> None:
        """Connect the producer. Raises :class:`BrokerError` (retriable) if the broker is down."""
        await self._producer.start()

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        """Produce one record (to ``partition`` if given); returns after ``acks=all``. Raises
        :class:`BrokerError`, at once and not retriable for a topic name Kafka cannot hold
        (``topics.py``) or a partition the topic does not have."""
        await self._producer.publish(topic, value, key=key, headers=headers, partition=partition)

    async def publish_many(self, records: Sequence[PublishRecord]) -> list[BrokerError | None]:
        """Produce ``records``; one outcome per record, in order."""
        return await self._producer.publish_many(records)

    async def subscribe(self, topics: Collection[str], handler: Handler) -> None:
        """Consume exactly ``topics`` with ``handler`` (empty: stop consuming). A later call with a
        new set re-subscribes the group (a rebalance, §5.8/§5.9)."""
        if self._group is None:
            if not topics:
                return
            self._group = ConsumerGroup(
                self.meta, handler, app_id=self.app_id, pubsubname=self.name
            )
        else:
            self._group.handler = handler
        await self._group.set_topics(topics)

    async def close(self, *, grace_s: float) -> None:
        """Stop the consumer group (in-flight handlers get ``grace_s`` seconds, finished offsets
        are committed, the member leaves), then the producer. Never raises."""
        group, self._group = self._group, None
        if group is not None:
            await group.stop(grace_s)
        await self._producer.stop(self._producer_stop_timeout_s)

    def ready(self) -> bool:
        """Whether the producer is connected and the brokers answer (outbound health, §1.5;
        ``producing.py``)."""
        return self._producer.ready()

    def assignment(self) -> list[str]:
        """The partitions this member of the consumer group owns now, as ``topic:partition``
        (empty while joining, rebalancing or not consuming)."""
        if self._group is None:
            return []
        return sorted(f"{tp.topic}:{tp.partition}" for tp in self._group.assignment())
