"""Streaming subscriptions: ``SubscribeTopicEventsAlpha1`` (dapr-pubsub-contract.md §1.6).

An app with no app port opens a bidirectional stream, sends ``initial_request{pubsub_name, topic,
metadata, dead_letter_topic}``, gets ``initial_response{}``, then receives one
``event_message`` (a ``TopicEventRequest``) per record and answers
``event_processed{id, status: SUCCESS|RETRY|DROP}``.

Delivery is the one delivery engine: every (pubsub, topic) with a stream gets a
:class:`~tidings.sidecar.delivery.engine.Dispatcher` whose app channel is a :class:`StreamChannel`,
so expiry, dead-letter topics, retries with backoff and the at-least-once commit rule are those of
HTTP deliveries (``delivery.engine.decide``). The answers map like the HTTP ``status`` field:
SUCCESS acks, RETRY retries, DROP acks (to the dead-letter topic if one is set); an unknown status
retries.

At-least-once across streams: an event sent on a stream that ends before answering it is *not*
acknowledged. Its delivery waits for the next stream of the same (pubsub, topic) and is sent
again there (the SDKs reconnect after a transient error). When no stream comes back within
``linger_s`` seconds, the runner unsubscribes the topic: the consumer group revokes the
partitions, the waiting delivery is cancelled, its offset stays uncommitted, and whoever
subscribes next receives it again from the broker. A :class:`StreamChannel` therefore outlives
its streams: the registry keeps it until the runner has unsubscribed its topic (:meth:`prune`).

One stream per (pubsub, topic) per sidecar at a time (Dapr's docs), and not on a topic that a
declarative or programmatic subscription of the app already holds: a second one is refused with
ALREADY_EXISTS. The subscriptions are listed by ``GetMetadata`` / ``GET /v1.0/metadata`` as
``STREAMING``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2, pubsub_pb2

from ...delivery.channel.types import AppResponse, AppStatus
from ...delivery.engine import Dispatcher
from ...envelopes.reading import ReadEvent
from ...envelopes.topic_event import EnvelopeDataError, topic_event_request
from ...publishing.scoping import subscribe_allowed
from ...resources.kafka_topics import invalid_topic_message, kafka_topic_problem
from ...resources.loading import LoadedComponent
from ...resources.models import SubscriptionType, TopicSubscription

__all__ = ["StreamChannel", "StreamingSubscriptions"]

log = logging.getLogger(__name__)

_STATUS = {
    appcallback_pb2.TopicEventResponse.SUCCESS: AppStatus.SUCCESS,
    appcallback_pb2.TopicEventResponse.RETRY: AppStatus.RETRY,
    appcallback_pb2.TopicEventResponse.DROP: AppStatus.DROP,
}

_INITIAL_RESPONSE = pubsub_pb2.SubscribeTopicEventsResponseAlpha1(
    initial_response=pubsub_pb2.SubscribeTopicEventsResponseInitialAlpha1()
)


class StreamClosed(Exception):
    """The stream ended before the app answered."""


class _Stream:
    """One open ``SubscribeTopicEventsAlpha1`` call: events out, answers in, matched by id.

    Answers are matched to events by event id, oldest first, so two in-flight records with the
    same CloudEvent id (a publisher's retry) each get one answer.
    """

    def __init__(self) -> None:
        self.outgoing: asyncio.Queue[pubsub_pb2.SubscribeTopicEventsResponseAlpha1] = (
            asyncio.Queue()
        )
        self._pending: dict[str, deque[asyncio.Future[int]]] = {}
        self.closed = False
        # Set by the sidecar to end the call: (gRPC code, message).
        self.ended: asyncio.Future[tuple[grpc.StatusCode, str]] = (
            asyncio.get_running_loop().create_future()
        )

    async def deliver(self, request: appcallback_pb2.TopicEventRequest) -> int:
        """Send ``request`` and return the app's status number. Raises :class:`StreamClosed`."""
        if self.closed:
            raise StreamClosed()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiting = self._pending.setdefault(request.id, deque())
        waiting.append(future)
        self.outgoing.put_nowait(
            pubsub_pb2.SubscribeTopicEventsResponseAlpha1(event_message=request)
        )
        try:
            return await future
        finally:
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._pending.pop(request.id, None)

    def answer(self, event_id: str, status: int) -> bool:
        """Resolve the oldest delivery of ``event_id``; ``False`` when none is waiting."""
        for future in self._pending.get(event_id, ()):
            if not future.done():
                future.set_result(status)
                return True
        return False

    def close(self) -> None:
        self.closed = True
        for waiting in self._pending.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(StreamClosed())


class StreamChannel:
    """The app channel of one streamed (pubsub, topic): what ``Dispatcher`` posts events to.

    Has what ``Dispatcher`` needs of a ``delivery.channel.types.Channel``: ``cleans_paths`` and
    :meth:`deliver`. It outlives single streams: a delivery whose stream ended unanswered waits
    for the next stream of this (pubsub, topic) and is sent again there; cancellation (the
    runner unsubscribed the topic) ends the wait, the record stays unacked.
    """

    cleans_paths = True  # the one route is "/" (as in Dapr), the same cleaned or not

    def __init__(self, pubsubname: str, topic: str) -> None:
        self.pubsubname = pubsubname
        self.topic = topic
        self._stream: _Stream | None = None
        self._attached = asyncio.Event()

    @property
    def attached(self) -> bool:
        return self._stream is not None

    @property
    def stream(self) -> _Stream | None:
        return self._stream

    def attach(self, stream: _Stream) -> None:
        self._stream = stream
        self._attached.set()

    def detach(self, stream: _Stream) -> None:
        if self._stream is stream:
            self._stream = None
            self._attached.clear()

    async def deliver(
        self, path: str, read: ReadEvent, headers: Mapping[str, str], *, topic: str, pubsubname: str
    ) -> AppResponse:
        """Send the read event to the app over its stream as an ``event_message`` and return
        its answer classified like an HTTP one (the
        :class:`~tidings.sidecar.delivery.channel.types.Channel` call).

        The message is built as for the gRPC app channel
        (``envelopes.topic_event.topic_event_request``: Dapr's content-type rules, JSON numbers
        byte-exact); ``path`` is the subscription's (``/``, as in Dapr). ``headers`` are not
        sent: the stream has no per-event metadata. An event whose data cannot be carried is
        RETRY. Raises only ``CancelledError``.
        """
        try:
            request = topic_event_request(read, topic=topic, pubsubname=pubsubname, path=path)
        except EnvelopeDataError as exc:
            return AppResponse(AppStatus.RETRY, None, f"cannot build the event message: {exc}")
        while True:
            while self._stream is None:
                await self._attached.wait()
            try:
                status = await self._stream.deliver(request)
            except StreamClosed:
                log.info(
                    "stream ended before the app answered event %s; it is sent again on "
                    "the next stream",
                    request.id,
                    extra={
                        "pubsubname": self.pubsubname,
                        "topic": self.topic,
                        "cloudevent_id": request.id,
                    },
                )
                continue
            app_status = _STATUS.get(status)
            if app_status is None:
                return AppResponse(AppStatus.RETRY, None, f"unknown status {status} from the app")
            return AppResponse(app_status, None, f"app answered {app_status.value} over the stream")


@dataclass(eq=False)
class _Slot:
    subscription: TopicSubscription
    channel: StreamChannel
    dispatcher: Dispatcher
    lingering: bool = False  # no stream, but still consumed while the app may reconnect


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StreamingSubscriptions:
    """The streams of one sidecar, by (pubsub, topic); the runner reads and applies them.

    ``make_dispatcher(pubsubname, channel)`` builds the delivery engine of a new slot with the
    component's retry policy and dead-letter publisher; ``on_change()`` is awaited after a
    stream opened or ended and must re-apply the sidecar's subscriptions (it calls
    :meth:`subscriptions` and then :meth:`prune`); ``others()`` gives the declarative and
    programmatic subscriptions in effect. ``linger_s`` (seconds): how long a topic whose stream
    ended stays consumed, waiting for the app to reconnect, before it is unsubscribed.
    """

    def __init__(
        self,
        *,
        app_id: str,
        components: Mapping[str, LoadedComponent],
        make_dispatcher: Callable[[str, StreamChannel], Dispatcher],
        on_change: Callable[[], Awaitable[None]],
        others: Callable[[], list[TopicSubscription]],
        linger_s: float = 5.0,
    ) -> None:
        self.app_id = app_id
        self.linger_s = linger_s
        self._components = components
        self._make_dispatcher = make_dispatcher
        self._on_change = on_change
        self._others = others
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._background: set[asyncio.Task[None]] = set()

    # --- what the runner reads ------------------------------------------------------------------
    def subscriptions(self) -> list[TopicSubscription]:
        """The subscriptions with an open stream (``type`` STREAMING), for metadata."""
        return [s.subscription for s in self._slots.values() if s.channel.attached]

    def consumed(self) -> list[TopicSubscription]:
        """The subscriptions to consume: open streams, and ended ones still lingering."""
        return [s.subscription for s in self._slots.values() if s.channel.attached or s.lingering]

    def dispatcher(self, pubsubname: str, topic: str) -> Dispatcher | None:
        """The delivery engine for records of ``topic`` of ``pubsubname``, while streamed (or
        while its deliveries wait for the next stream)."""
        slot = self._slots.get((pubsubname, topic))
        return slot.dispatcher if slot is not None else None

    def end_streams_of_removed(self, pubsubnames: Collection[str]) -> None:
        """End the streams whose pubsub is not in ``pubsubnames`` any more (hot reload removed
        the component) with FAILED_PRECONDITION."""
        for (pubsubname, _topic), slot in self._slots.items():
            stream = slot.channel.stream
            if pubsubname not in pubsubnames and stream is not None and not stream.ended.done():
                stream.ended.set_result(
                    (grpc.StatusCode.FAILED_PRECONDITION, f"pubsub {pubsubname} was removed")
                )

    def prune(self, subscribed: set[tuple[str, str]]) -> None:
        """Forget slots without a stream whose topic is no longer ``subscribed`` (the broker
        cancelled their deliveries)."""
        for key in [
            k
            for k, s in self._slots.items()
            if not s.channel.attached and not s.lingering and k not in subscribed
        ]:
            del self._slots[key]

    # --- the rpc ------------------------------------------------------------------------------
    def _check(
        self,
        initial: pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1,
    ) -> TopicSubscription:
        pubsubname, topic = initial.pubsub_name, initial.topic
        if not pubsubname:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "pubsubName is required")
        if not topic:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "topic is required")
        component = self._components.get(pubsubname)
        if component is None:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"pubsub {pubsubname} is not found")
        if not subscribe_allowed(component.metadata, self.app_id, topic):
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"subscription to topic '{topic}' on pubsub '{pubsubname}' is not allowed",
            )
        dead_letter = initial.dead_letter_topic if initial.HasField("dead_letter_topic") else ""
        if component.kafka is not None:
            for name in (topic, dead_letter):
                problem = kafka_topic_problem(name) if name else None
                if problem is not None:
                    raise _Refused(
                        grpc.StatusCode.INVALID_ARGUMENT, invalid_topic_message(name, problem)
                    )
        slot = self._slots.get((pubsubname, topic))
        if slot is not None and slot.channel.attached:
            raise _Refused(
                grpc.StatusCode.ALREADY_EXISTS,
                f'already subscribed to pubsub "{pubsubname}" topic "{topic}" by another stream',
            )
        for other in self._others():
            if (other.pubsubname, other.topic) == (pubsubname, topic):
                raise _Refused(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"topic {topic} of pubsub {pubsubname} already has a "
                    f"{other.type.value.lower()} subscription",
                )
        return TopicSubscription(
            pubsubname=pubsubname,
            topic=topic,
            default_path="/",
            metadata=dict(initial.metadata),
            dead_letter_topic=dead_letter or None,
            type=SubscriptionType.STREAMING,
        )

    def _attach(self, sub: TopicSubscription, stream: _Stream) -> StreamChannel:
        key = (sub.pubsubname, sub.topic)
        slot = self._slots.get(key)
        if slot is None:
            channel = StreamChannel(sub.pubsubname, sub.topic)
            slot = _Slot(sub, channel, self._make_dispatcher(sub.pubsubname, channel))
            self._slots[key] = slot
        slot.subscription = sub
        slot.lingering = False
        slot.dispatcher.set_subscriptions({sub.topic: sub})
        slot.channel.attach(stream)
        return slot

    async def _linger(self, slot: _Slot) -> None:
        """After a stream ended: keep consuming for ``linger_s``, then let the runner unsubscribe
        unless a new stream took the slot."""
        if not slot.channel.attached:
            await asyncio.sleep(self.linger_s)  # the reconnect window, not an event
        if not slot.channel.attached:
            slot.lingering = False
            await self._changed(
                {
                    "app_id": self.app_id,
                    "pubsubname": slot.channel.pubsubname,
                    "topic": slot.channel.topic,
                }
            )

    async def _changed(self, extra: dict[str, str]) -> None:
        try:
            await self._on_change()
        except Exception:  # the stream goes on; the next change applies the set again
            log.exception("applying the streaming subscriptions failed", extra=extra)

    async def serve(
        self,
        requests: AsyncIterator[pubsub_pb2.SubscribeTopicEventsRequestAlpha1],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Run one ``SubscribeTopicEventsAlpha1`` call until the app or the sidecar ends it.
        Protocol errors end the call with INVALID_ARGUMENT (Dapr's messages, §1.6)."""
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            first = None
        kind = first.WhichOneof("subscribe_topic_events_request_type") if first else None
        if kind != "initial_request":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "initial request is required")
            return
        try:
            sub = self._check(first.initial_request)
        except _Refused as exc:
            await context.abort(exc.code, exc.message)
            return
        extra = {"app_id": self.app_id, "pubsubname": sub.pubsubname, "topic": sub.topic}
        stream = _Stream()
        slot = self._attach(sub, stream)
        log.info("streaming subscription opened", extra=extra)
        reader = asyncio.create_task(self._read_answers(requests, stream, extra))
        try:
            await context.write(_INITIAL_RESPONSE)
            await self._changed(extra)
            while True:
                getter = asyncio.ensure_future(stream.outgoing.get())
                done, _ = await asyncio.wait(
                    {getter, reader, stream.ended}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    break
                await context.write(getter.result())
            if stream.ended.done():
                await context.abort(*stream.ended.result())
            protocol_error = reader.result()
            if protocol_error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, protocol_error)
        finally:
            stream.close()
            slot.channel.detach(stream)
            slot.lingering = not slot.channel.attached
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            log.info("streaming subscription closed", extra=extra)
            # In the background: this call may already be cancelled.
            task = asyncio.get_running_loop().create_task(self._linger(slot))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @staticmethod
    async def _read_answers(
        requests: AsyncIterator[pubsub_pb2.SubscribeTopicEventsRequestAlpha1],
        stream: _Stream,
        extra: dict[str, str],
    ) -> str:
        """Feed ``event_processed`` answers to ``stream`` until the app half-closes; returns a
        protocol error message, or ``""`` for a clean end."""
        async for request in requests:
            kind = request.WhichOneof("subscribe_topic_events_request_type")
            if kind == "initial_request":
                return "duplicate initial request received"
            if kind != "event_processed":
                continue
            processed = request.event_processed
            if not stream.answer(processed.id, processed.status.status):
                log.warning(
                    "answer for event %s that is not waiting for one (answered twice, "
                    "or after a retry timed out); ignored",
                    processed.id,
                    extra={**extra, "cloudevent_id": processed.id},
                )
        return ""
