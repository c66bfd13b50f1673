"""The types both app channels (``http.py``, ``grpc.py``), the bulk format (``bulk_format.py``)
and the delivery engines (``delivery/engine.py``, ``delivery/bulk.py``) share: what a delivery
attempt asks the engine to do (:class:`AppStatus`, :class:`AppResponse`), one entry of a bulk
delivery (:class:`BulkEvent`) and the app-channel interface (:class:`Channel`).

Imports neither channel, so the channels and the bulk format depend on it and not on each other.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ...envelopes.reading import ReadEvent
    from ...resources.models import TopicSubscription

__all__ = ["AppResponse", "AppStatus", "BulkEvent", "Channel"]


class AppStatus(str, enum.Enum):
    """What a delivery attempt asks the engine to do (Dapr's ``AppResponseStatus``)."""

    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"


@dataclass(frozen=True, slots=True)
class AppResponse:
    """The classified answer to one delivery.

    ``http_status`` is ``None`` when no HTTP answer arrived (connection refused, timeout);
    ``reason`` is a short human text for logs.
    """

    status: AppStatus
    http_status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class BulkEvent:
    """One entry of a bulk delivery: its ``entry_id`` (unique within the request), the read
    event, and its metadata (single delivery's headers, without ``Content-Type``)."""

    entry_id: str
    read: ReadEvent
    metadata: Mapping[str, str]


class Channel(Protocol):
    """What the runner and the delivery engine need of an app channel, whatever its protocol.

    ``cleans_paths``: whether route paths are normalised like Go's ``path.Clean`` before
    delivery (HTTP, dapr/dapr http_channel.go) or sent as the app listed them (gRPC, where the
    path only selects a handler inside ``OnTopicEvent``).
    """

    cleans_paths: bool

    async def wait_until_reachable(self, stop_event: asyncio.Event | None = None) -> bool: ...

    async def discover(self) -> list[TopicSubscription]: ...

    async def deliver(
        self, path: str, read: ReadEvent, headers: Mapping[str, str], *, topic: str, pubsubname: str
    ) -> AppResponse: ...

    async def deliver_bulk(
        self, path: str, events: Sequence[BulkEvent], *, topic: str, pubsubname: str
    ) -> list[AppResponse]: ...

    async def close(self) -> None: ...
