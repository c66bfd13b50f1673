"""The ``dapr.proto.runtime.v1.Dapr`` service on grpcio's asyncio server.

Pub/sub rpcs (dapr-pubsub-contract.md §1.2, §1.3, §1.4, §1.6):

- ``PublishEvent``: ``Publisher.publish``, the code path of ``POST /v1.0/publish`` (same
  validation, envelope, scoping, broker acknowledgement); an error ends the call with the gRPC
  code and ``google.rpc.ErrorInfo`` details of ``errors.py``;
- ``BulkPublishEvent`` and ``BulkPublishEventAlpha1``: ``Publisher.publish_bulk``, the code path of
  the HTTP bulk endpoints; entries the broker did not store come back in ``failedEntries`` with
  status OK (as in Dapr), request errors as a gRPC error;
- ``GetMetadata``/``SetMetadata``: the HTTP metadata endpoints' data;
- ``SubscribeTopicEventsAlpha1``: ``streaming.py``.

Every other rpc of the service (state, actors, workflows...) answers UNIMPLEMENTED naming the
rpc. With ``DAPR_API_TOKEN`` set, every call needs metadata ``dapr-api-token`` with that value
(UNAUTHENTICATED otherwise, Dapr's messages). The largest ``PublishEvent`` data (and the largest
sum of ``BulkPublishEvent`` events) is ``--max-body-size``: beyond it the answer is
RESOURCE_EXHAUSTED with Dapr's ErrorInfo (``DAPR_PUBSUB_PUBLISH_MESSAGE``), the HTTP API's 413.
grpcio's own receive limit (:func:`receive_limit`) is twice that plus :data:`ENVELOPE_ALLOWANCE`
so that such a request reaches that check; only a request beyond it gets grpcio's bare
RESOURCE_EXHAUSTED (grpcio reads a message whole before a handler sees it, so an unbounded limit
would let one call hold any amount of memory). Events sent to a stream have no limit of their
own (the broker's record size bounds them).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import grpc
from dapr.proto.runtime.v1 import dapr_pb2, dapr_pb2_grpc, metadata_pb2, pubsub_pb2
from google.protobuf import empty_pb2

from ...errors import DaprError
from ...publishing.publisher import BulkEntry, Publisher, body_too_large
from ...runtime.settings import SidecarSettings
from ..http.keys import RuntimeView
from ..http.metadata import metadata_body
from .errors import grpc_status
from .metadata import metadata_response
from .streaming import StreamingSubscriptions

__all__ = ["DaprServicer", "receive_limit", "start_grpc_server"]

log = logging.getLogger(__name__)

SERVICE = dapr_pb2.DESCRIPTOR.services_by_name["Dapr"]
TOKEN_METADATA = "dapr-api-token"
# Bytes a publish request may hold beyond its data: pubsub and topic names, content types,
# metadata, bulk entry ids and protobuf framing (HTTP carries those in a URL aiohttp caps at 8 KiB).
ENVELOPE_ALLOWANCE = 64 * 1024
_GRPC_MAX_MESSAGE = 2**31 - 1  # grpcio's limits are C ints


def receive_limit(max_body_size: int) -> int:
    """grpcio's ``max_receive_message_length`` (bytes) for ``--max-body-size``: a request up to
    twice the body limit, plus its envelope, is read and answered by tidings' own check with
    Dapr's ErrorInfo (e.g. a 5 MB event against the default 4 MiB)."""
    return min(2 * max_body_size + ENVELOPE_ALLOWANCE, _GRPC_MAX_MESSAGE)


IMPLEMENTED = frozenset(
    (
        "PublishEvent",
        "BulkPublishEvent",
        "BulkPublishEventAlpha1",
        "GetMetadata",
        "SetMetadata",
        "SubscribeTopicEventsAlpha1",
    )
)


def _unimplemented(name: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
    message = (
        f"{name} is not implemented by tidings: this sidecar serves Dapr's pub/sub API "
        "only (PublishEvent, BulkPublishEvent, SubscribeTopicEventsAlpha1, GetMetadata)"
    )

    async def unimplemented(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return unimplemented


class DaprServicer(dapr_pb2_grpc.DaprServicer):
    """The pub/sub part of the Dapr runtime service. ``extended`` is the HTTP API's attribute
    dict of ``PUT /v1.0/metadata``, shared so both APIs show the same ``extended``."""

    def __init__(
        self,
        *,
        settings: SidecarSettings,
        publisher: Publisher,
        runtime: RuntimeView,
        extended: MutableMapping[str, str],
        streams: StreamingSubscriptions,
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._runtime = runtime
        self._extended = extended
        self._streams = streams
        for method in SERVICE.methods:
            if method.name not in IMPLEMENTED:
                setattr(self, method.name, _unimplemented(method.name))

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Exception, rpc: str) -> None:
        if isinstance(exc, DaprError):
            await context.abort_with_status(grpc_status(exc))
        log.error(
            "unexpected error answering %s",
            rpc,
            exc_info=exc,
            extra={"app_id": self._settings.app_id},
        )
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    async def PublishEvent(
        self, request: pubsub_pb2.PublishEventRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        try:
            if len(request.data) > self._settings.max_body_size:
                raise body_too_large(
                    request.pubsub_name, request.topic, self._settings.max_body_size
                )
            await self._publisher.publish(
                request.pubsub_name,
                request.topic,
                request.data,
                content_type=request.data_content_type or None,
                metadata=dict(request.metadata),
            )
        except Exception as exc:
            await self._abort(context, exc, "PublishEvent")
        return empty_pb2.Empty()

    async def BulkPublishEvent(
        self, request: pubsub_pb2.BulkPublishRequest, context: grpc.aio.ServicerContext
    ) -> pubsub_pb2.BulkPublishResponse:
        entries = [
            BulkEntry(
                entry_id=e.entry_id,
                event=e.event,
                content_type=e.content_type,
                metadata=dict(e.metadata) if e.metadata else None,
            )
            for e in request.entries
        ]
        try:
            if sum(len(e.event) for e in request.entries) > self._settings.max_body_size:
                raise body_too_large(
                    request.pubsub_name, request.topic, self._settings.max_body_size
                )
            failures = await self._publisher.publish_bulk(
                request.pubsub_name, request.topic, entries, dict(request.metadata)
            )
        except Exception as exc:
            await self._abort(context, exc, "BulkPublishEvent")
            raise  # not reached: abort raises
        return pubsub_pb2.BulkPublishResponse(
            failedEntries=[
                pubsub_pb2.BulkPublishResponseFailedEntry(entry_id=f.entry_id, error=f.error)
                for f in failures
            ]
        )

    async def BulkPublishEventAlpha1(
        self,
        request: pubsub_pb2.BulkPublishRequest,
        context: grpc.aio.ServicerContext,
    ) -> pubsub_pb2.BulkPublishResponse:
        return await self.BulkPublishEvent(request, context)

    async def GetMetadata(
        self, request: metadata_pb2.GetMetadataRequest, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.GetMetadataResponse:
        return metadata_response(metadata_body(self._runtime, self._settings, self._extended))

    async def SetMetadata(
        self, request: metadata_pb2.SetMetadataRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        self._extended[request.key] = request.value
        return empty_pb2.Empty()

    async def SubscribeTopicEventsAlpha1(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        await self._streams.serve(request_iterator, context)


def _denying(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that ends every call with UNAUTHENTICATED ``message``."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _ApiTokenInterceptor(grpc.aio.ServerInterceptor):
    """``dapr-api-token`` metadata must equal ``DAPR_API_TOKEN`` (§1.1), compared in constant
    time; Dapr's messages for a missing and a wrong token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self, continuation: Any, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        given = None
        for key, value in details.invocation_metadata or ():  # type: ignore[attr-defined]
            if key == TOKEN_METADATA:
                given = value.encode() if isinstance(value, str) else value
                break
        handler = await continuation(details)
        if given is not None and hmac.compare_digest(given, self._token):
            return handler
        if handler is None:
            return handler
        message = (
            "missing api token in request metadata"
            if given is None
            else "authentication error: api token mismatch"
        )
        return _denying(handler, message)


async def start_grpc_server(
    settings: SidecarSettings,
    servicer: DaprServicer,
    port: int,
    *,
    addresses: Sequence[str] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Serve ``servicer`` on each of ``addresses`` (default ``settings.dapr_listen_addresses``)
    at ``port`` (0: a free port, the same on every address); returns the started server and
    the bound port. Raises ``OSError`` when an address cannot be bound (``SO_REUSEPORT`` is off,
    so a port in use is an error, never shared)."""
    interceptors = [_ApiTokenInterceptor(settings.api_token)] if settings.api_token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", receive_limit(settings.max_body_size)),
        ],
    )
    dapr_pb2_grpc.add_DaprServicer_to_server(servicer, server)
    bound = port
    for address in addresses if addresses is not None else settings.dapr_listen_addresses:
        target = f"[{address}]:{bound}" if ":" in address else f"{address}:{bound}"
        try:
            got = server.add_insecure_port(target)
        except RuntimeError:
            got = 0
        if not got:
            # grpcio releases the addresses bound so far only by a started server's stop.
            await server.start()
            await server.stop(None)
            raise OSError(f"cannot bind the gRPC API to {target}")
        bound = got
    await server.start()
    return server, bound
