"""The sidecar's gRPC client to the app (``--app-protocol grpc``): Dapr's ``AppCallback`` service.

The second implementation of ``types.Channel``; the delivery engine (``delivery/engine.py``) is
the same for both. Behaviour follows Dapr's gRPC app channel (dapr-pubsub-contract.md §2.5 with the
semantics of §2.1-§2.3; dapr/dapr ``pkg/runtime/subscription/postman/grpc``):

- reachability: the same TCP poll of the app port as HTTP (``http.wait_for_port``);
- discovery: ``ListTopicSubscriptions``, retried with backoff while the app does not answer
  (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``), like ``GET /dapr/subscribe``. ``UNIMPLEMENTED`` means
  no subscriptions; any other error is logged and means none. Each ``TopicSubscription`` maps to
  the runtime's model by :func:`subscriptions_from_response`;
- delivery: ``OnTopicEvent(TopicEventRequest)`` built from the read event by
  ``envelopes.topic_event.topic_event_request`` (shared with streaming subscriptions; JSON
  numbers in ``data`` byte-exact); the record's metadata (the HTTP channel's headers: Kafka
  headers, ``__key``, ``__offset``, ``__partition``, ``__topic``, ``__timestamp``,
  ``pubsubname``, ``traceparent``) travels as gRPC metadata (:func:`grpc_metadata`), as Dapr's
  ``WithCustomGRPCMetadata`` does. The answer is classified by :func:`classify_status` /
  :func:`classify_rpc_error` into the same :class:`AppStatus` values as HTTP answers.

Route paths are sent as the app listed them (no ``path.Clean``): SDKs look the handler up by the
exact ``path`` string. Bulk subscriptions (§2.4) are delivered with ``OnBulkTopicEvent``
(:meth:`GrpcAppChannel.deliver_bulk`), each entry's metadata in the entry rather than in gRPC
metadata; the batching is ``delivery/bulk.py``'s.

The generated stubs come from the PyPI package ``dapr`` (``dapr.proto.runtime.v1``); nothing is
vendored. The client is grpcio's asyncio API, one channel per sidecar, opened on first use inside
the running loop.

Neighbours: ``types.py`` (the interface), ``http.py`` (the HTTP channel), ``delivery/engine.py``
(the only caller of :meth:`GrpcAppChannel.deliver`), ``runtime/runner.py`` (lifetime).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from google.protobuf import empty_pb2

from ...envelopes.reading import ReadEvent
from ...envelopes.topic_event import EnvelopeDataError, topic_event_request
from ...resources.models import BulkOptions, Route, SubscriptionType, TopicSubscription
from ...runtime.settings import SidecarSettings
from .http import wait_for_port
from .types import AppResponse, AppStatus, BulkEvent

__all__ = [
    "GrpcAppChannel",
    "bulk_request_entry",
    "classify_bulk_response",
    "classify_rpc_error",
    "classify_status",
    "grpc_metadata",
    "subscriptions_from_response",
]

log = logging.getLogger(__name__)

_SUCCESS = appcallback_pb2.TopicEventResponse.SUCCESS
_RETRY = appcallback_pb2.TopicEventResponse.RETRY
_DROP = appcallback_pb2.TopicEventResponse.DROP

# Same discovery pacing as the HTTP channel: a hung ListTopicSubscriptions is retried and logged.
_DISCOVERY_TIMEOUT_S = 5.0
_DISCOVERY_INITIAL_S = 0.1
_DISCOVERY_MAX_S = 5.0
# The app has not started serving yet (or restarts): retry discovery, as for HTTP transport errors.
_DISCOVERY_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def bulk_request_entry(
    event: BulkEvent,
    *,
    topic: str,
    pubsubname: str,
    path: str,
) -> appcallback_pb2.TopicEventBulkRequestEntry:
    """One ``TopicEventBulkRequestEntry`` (§2.4 over gRPC): ``entry_id``, the CloudEvent as a
    ``TopicEventCERequest`` (fields as :func:`topic_event_request`), ``content_type``
    ``application/cloudevents+json`` and the entry's metadata. Raises
    :class:`EnvelopeDataError` (``envelopes/topic_event.py``)."""
    single = topic_event_request(event.read, topic=topic, pubsubname=pubsubname, path=path)
    cloud_event = appcallback_pb2.TopicEventCERequest(
        id=single.id,
        source=single.source,
        type=single.type,
        spec_version=single.spec_version,
        data_content_type=single.data_content_type,
        data=single.data,
    )
    if single.HasField("extensions"):
        cloud_event.extensions.CopyFrom(single.extensions)
    return appcallback_pb2.TopicEventBulkRequestEntry(
        entry_id=event.entry_id,
        cloud_event=cloud_event,
        content_type="application/cloudevents+json",
        metadata=dict(event.metadata),
    )


def classify_bulk_response(
    response: appcallback_pb2.TopicEventBulkResponse, entry_ids: Sequence[str]
) -> list[AppResponse]:
    """``TopicEventBulkResponse.statuses`` as one :class:`AppResponse` per entry of
    ``entry_ids``, in order. Statuses as :func:`classify_status`; an entry the app did not
    answer is retried, an unknown ``entry_id`` ignored with a warning (Dapr's rules). Pure
    apart from the warning."""
    wanted = set(entry_ids)
    answered: dict[str, int] = {}
    for item in response.statuses:
        if item.entry_id not in wanted:
            log.warning(
                "bulk response from app names an unknown entry_id %r; ignored", item.entry_id
            )
            continue
        answered[item.entry_id] = item.status
    missing = AppResponse(AppStatus.RETRY, None, "app returned no status for the entry")
    return [classify_status(answered[e]) if e in answered else missing for e in entry_ids]


# --- metadata ------------------------------------------------------------------------------------

_KEY = re.compile(r"[0-9a-z_.\-]+")
# Framing and credentials belong to the channel, never to a record (grpcio refuses some outright).
_RESERVED_KEYS = frozenset(
    {
        "content-type",
        "te",
        "user-agent",
        "host",
        "connection",
        "dapr-api-token",
        "content-length",
        "transfer-encoding",
    }
)
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_SAFE_VALUE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


@functools.lru_cache(maxsize=1024)
def _metadata_key(name: str) -> str | None:
    """``name`` as a gRPC metadata key (lower case, ``[0-9a-z_.-]``), or ``None`` to skip it."""
    key = name.lower()
    if key in _RESERVED_KEYS or key.startswith("grpc-") or not _KEY.fullmatch(key):
        if key not in _RESERVED_KEYS:
            log.warning("record metadata %r is not a valid gRPC metadata key; not delivered", name)
        return None
    return key


def grpc_metadata(
    headers: Mapping[str, str], token: str | None = None
) -> tuple[tuple[str, str | bytes], ...]:
    """The delivery's gRPC metadata from the HTTP channel's headers
    (``delivery.engine.http_headers``).

    Keys are lower-cased (as grpc-go does with Dapr's metadata map); a key gRPC cannot carry
    (``:`` or a space in it, ``grpc-*``) is skipped with a warning, and ``Content-Type`` is the
    channel's own. A value outside printable ASCII is percent-encoded (UTF-8); a ``-bin`` key
    carries its value's UTF-8 bytes. ``token`` (``APP_API_TOKEN``) is sent as
    ``dapr-api-token``. Pure apart from the warning.
    """
    pairs: list[tuple[str, str | bytes]] = []
    for name, value in headers.items():
        key = _metadata_key(name)
        if key is None:
            continue
        if key.endswith("-bin"):
            pairs.append((key, value.encode("utf-8", "surrogatepass")))
        elif _PRINTABLE.fullmatch(value):
            pairs.append((key, value))
        else:
            pairs.append((key, quote(value.encode("utf-8", "surrogatepass"), safe=_SAFE_VALUE)))
    if token:
        pairs.append(("dapr-api-token", token))
    return tuple(pairs)


# --- the answer ----------------------------------------------------------------------------------


def classify_status(status: int) -> AppResponse:
    """``TopicEventResponse.status`` as an :class:`AppResponse` (§2.3 for gRPC). Pure.

    SUCCESS (also an unset status, proto3's 0) acks; RETRY retries; DROP is acked and goes to the
    dead-letter topic if one is set; an unknown enum value is retried ("unknown status").
    """
    if status == _SUCCESS:
        return AppResponse(AppStatus.SUCCESS, None, "SUCCESS")
    if status == _RETRY:
        return AppResponse(AppStatus.RETRY, None, "RETRY status returned from app")
    if status == _DROP:
        return AppResponse(AppStatus.DROP, None, "DROP status returned from app")
    return AppResponse(AppStatus.RETRY, None, f"unknown status returned from app: {status}")


def classify_rpc_error(
    code: grpc.StatusCode, details: str | None, timeout_s: float | None = None
) -> AppResponse:
    """A failed ``OnTopicEvent`` call as an :class:`AppResponse`. Pure.

    ``UNIMPLEMENTED`` (the app has no handler for this topic or path) is DROP, as in Dapr; every
    other code (the app raised, is unreachable, timed out) is RETRY.
    """
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return AppResponse(
            AppStatus.DROP, None, f"non-retriable error returned from app: UNIMPLEMENTED: {details}"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout_s:
        return AppResponse(AppStatus.RETRY, None, f"app did not answer within {timeout_s}s")
    return AppResponse(AppStatus.RETRY, None, f"error returned from app: {code.name}: {details}")


# --- discovery -----------------------------------------------------------------------------------


def _one_subscription(sub: appcallback_pb2.TopicSubscription) -> TopicSubscription:
    rules = tuple(Route(match=r.match, path=r.path) for r in sub.routes.rules)
    default = sub.routes.default
    if not rules and not default:
        # Dapr gives a gRPC subscription without routes one always-matching rule with the empty
        # path (dapr/dapr pubsub ``toRoutes``); SDKs map path "" to the topic's handler.
        rules = (Route(match="", path=""),)
    return TopicSubscription(
        pubsubname=sub.pubsub_name,
        topic=sub.topic,
        rules=rules,
        default_path=default or None,
        metadata=dict(sub.metadata),
        dead_letter_topic=sub.dead_letter_topic or None,
        type=SubscriptionType.PROGRAMMATIC,
        bulk=(
            BulkOptions.of(
                sub.bulk_subscribe.max_messages_count, sub.bulk_subscribe.max_await_duration_ms
            )
            if sub.HasField("bulk_subscribe") and sub.bulk_subscribe.enabled
            else None
        ),
    )


def subscriptions_from_response(
    subscriptions: Iterable[appcallback_pb2.TopicSubscription],
    *,
    app_id: str = "",
) -> list[TopicSubscription]:
    """The app's ``ListTopicSubscriptionsResponse.subscriptions`` as runtime subscriptions.

    Rule order is ``routes.rules`` as listed, then ``routes.default``; with neither, one rule
    with the empty path. ``dead_letter_topic``, ``metadata`` (``rawPayload``...) and an enabled
    ``bulk_subscribe`` carry over. An entry without ``pubsub_name`` or ``topic`` is logged and
    skipped. Never raises.
    """
    result: list[TopicSubscription] = []
    for index, sub in enumerate(subscriptions):
        extra = {"app_id": app_id, "pubsubname": sub.pubsub_name, "topic": sub.topic}
        if not sub.pubsub_name or not sub.topic:
            missing = "pubsub_name" if not sub.pubsub_name else "topic"
            log.error(
                "invalid subscription from the app, skipped: subscriptions[%d].%s is required",
                index,
                missing,
                extra=extra,
            )
            continue
        result.append(_one_subscription(sub))
    return result


# --- the channel ---------------------------------------------------------------------------------


class GrpcAppChannel:
    """gRPC client to the app's ``AppCallback`` service at
    ``settings.app_channel_address:settings.app_port``.

    Create it anywhere; the gRPC channel is opened on first use inside the running loop. Call
    :meth:`close` once at shutdown. Raises ``ValueError`` if ``settings.app_port`` is ``None``.
    """

    cleans_paths = False

    def __init__(self, settings: SidecarSettings) -> None:
        if settings.app_port is None:
            raise ValueError("an app channel needs settings.app_port")
        self.settings = settings
        self.host = settings.app_channel_address
        self.port = settings.app_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.target = f"{host}:{self.port}"
        self._channel: grpc.aio.Channel | None = None
        self._stub: appcallback_pb2_grpc.AppCallbackStub | None = None
        self._timeout_s = settings.delivery_timeout_s or None
        self._token = settings.app_api_token
        self._token_metadata = (("dapr-api-token", self._token),) if self._token else ()
        self._bulk_alpha = False  # the app answered OnBulkTopicEventAlpha1, not OnBulkTopicEvent
        self._bulk_alpha_stub: appcallback_pb2_grpc.AppCallbackAlphaStub | None = None
        self._extra = {"app_id": settings.app_id}

    def _client(self) -> appcallback_pb2_grpc.AppCallbackStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.target,
                options=[
                    # Sends stay unlimited (grpcio's default): an event as large as a publish may
                    # be, plus its envelope, must reach the app, whose server sets its own limit.
                    ("grpc.max_receive_message_length", self.settings.max_body_size),
                    # The app is next door: after it restarts, reconnect within a second instead of
                    # gRPC's default backoff of up to 120 s, during which every call would fail.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            self._stub = appcallback_pb2_grpc.AppCallbackStub(self._channel)
        return self._stub

    async def close(self) -> None:
        """Close the gRPC channel. Never raises."""
        if self._channel is not None:
            try:
                await self._channel.close()
            except Exception:  # closing must not fail a shutdown
                log.debug("error closing the gRPC app channel", exc_info=True, extra=self._extra)
            self._channel = None
            self._stub = None
            self._bulk_alpha_stub = None

    async def wait_until_reachable(self, stop_event: asyncio.Event | None = None) -> bool:
        """Wait until the app port accepts a TCP connection; see ``http.wait_for_port``."""
        return await wait_for_port(self.host, self.port, self.settings, stop_event)

    async def discover(self) -> list[TopicSubscription]:
        """``ListTopicSubscriptions``: the app's programmatic subscriptions.

        Retries ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` with backoff (capped at 5 s) until the
        app answers; cancel the task to give up. ``UNIMPLEMENTED``: no subscriptions (debug log).
        Any other error: error log and no subscriptions. Never raises (except
        ``CancelledError``).
        """
        delay = _DISCOVERY_INITIAL_S
        while True:
            try:
                response = await self._client().ListTopicSubscriptions(
                    empty_pb2.Empty(), timeout=_DISCOVERY_TIMEOUT_S, metadata=self._token_metadata
                )
                break
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.debug(
                        "the app does not implement ListTopicSubscriptions: no "
                        "programmatic subscriptions",
                        extra=self._extra,
                    )
                    return []
                if code not in _DISCOVERY_RETRY_CODES:
                    log.error(
                        "error getting topics from app: ListTopicSubscriptions failed: %s: %s",
                        code.name,
                        exc.details(),
                        extra=self._extra,
                    )
                    return []
                log.warning(
                    "app did not answer ListTopicSubscriptions, retrying in %.2fs: %s: %s",
                    delay,
                    code.name,
                    exc.details(),
                    extra=self._extra,
                )
            await asyncio.sleep(delay)  # backoff between discovery attempts
            delay = min(delay * 2, _DISCOVERY_MAX_S)
        return subscriptions_from_response(response.subscriptions, app_id=self.settings.app_id)

    async def deliver(
        self, path: str, read: ReadEvent, headers: Mapping[str, str], *, topic: str, pubsubname: str
    ) -> AppResponse:
        """``OnTopicEvent`` for one read event, classified (see the module docstring).

        ``headers`` are the HTTP channel's delivery headers; they travel as gRPC metadata. An
        event whose data cannot be carried, a gRPC error or a timeout of
        ``settings.delivery_timeout_s`` is RETRY (``UNIMPLEMENTED``: DROP). Raises only
        ``CancelledError``.
        """
        try:
            request = topic_event_request(read, topic=topic, pubsubname=pubsubname, path=path)
        except EnvelopeDataError as exc:
            return AppResponse(AppStatus.RETRY, None, str(exc))
        metadata = grpc_metadata(headers, self._token)
        try:
            response = await self._client().OnTopicEvent(
                request, metadata=metadata, timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return classify_rpc_error(exc.code(), exc.details(), self._timeout_s)
        return classify_status(response.status)

    async def deliver_bulk(
        self, path: str, events: Sequence[BulkEvent], *, topic: str, pubsubname: str
    ) -> list[AppResponse]:
        """``OnBulkTopicEvent`` for ``events`` (§2.4), one answer per event, in order.

        Dapr itself calls the older ``AppCallbackAlpha.OnBulkTopicEventAlpha1`` (same messages);
        an app that answers ``UNIMPLEMENTED`` to one is asked with the other, and the one that
        worked is asked first from then on. If both are unimplemented every event is dropped (as
        for ``OnTopicEvent``). An event whose data cannot be carried is retried alone; any other
        gRPC error or a timeout retries all. Raises only ``CancelledError``.
        """
        answers: list[AppResponse | None] = [None] * len(events)
        request = appcallback_pb2.TopicEventBulkRequest(
            id=str(uuid.uuid4()),
            topic=topic,
            pubsub_name=pubsubname,
            path=path,
            type="com.dapr.event.sent.bulk",
        )
        sent: list[int] = []
        for i, event in enumerate(events):
            try:
                request.entries.append(
                    bulk_request_entry(event, topic=topic, pubsubname=pubsubname, path=path)
                )
                sent.append(i)
            except EnvelopeDataError as exc:
                answers[i] = AppResponse(AppStatus.RETRY, None, str(exc))
        if sent:
            try:
                response = await self._on_bulk_topic_event(request)
            except grpc.aio.AioRpcError as exc:
                failed = classify_rpc_error(exc.code(), exc.details(), self._timeout_s)
                for i in sent:
                    answers[i] = failed
            else:
                classified = classify_bulk_response(response, [events[i].entry_id for i in sent])
                for i, answer in zip(sent, classified):
                    answers[i] = answer
        return [a for a in answers if a is not None]

    async def _on_bulk_topic_event(
        self,
        request: appcallback_pb2.TopicEventBulkRequest,
    ) -> appcallback_pb2.TopicEventBulkResponse:
        stub = self._client()
        if self._bulk_alpha_stub is None:
            self._bulk_alpha_stub = appcallback_pb2_grpc.AppCallbackAlphaStub(self._channel)
        calls = [stub.OnBulkTopicEvent, self._bulk_alpha_stub.OnBulkTopicEventAlpha1]
        if self._bulk_alpha:
            calls.reverse()
        try:
            return await calls[0](request, metadata=self._token_metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
        response = await calls[1](request, metadata=self._token_metadata, timeout=self._timeout_s)
        self._bulk_alpha = not self._bulk_alpha
        return response
