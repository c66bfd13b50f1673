"""What the HTTP API's route modules share with the app factory (``app.py``): the keys of the
values ``create_app`` stores on the application, and :class:`RuntimeView`, what the API reads from
the running sidecar (the gRPC API reads the same view, ``inbound/grpc/server.py``).

A module of its own so that ``app.py`` imports the route modules (``publish.py``,
``metadata.py``, ``health.py``) and none of them imports ``app.py``.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ...publishing.publisher import Publisher
from ...resources.loading import LoadedComponent
from ...resources.models import TopicSubscription
from ...runtime.settings import SidecarSettings

__all__ = ["EXTENDED_KEY", "PUBLISHER_KEY", "RUNTIME_KEY", "SETTINGS_KEY", "RuntimeView"]


class RuntimeView(Protocol):
    """What the API reads from the running sidecar (implemented by the runner)."""

    app_id: str

    def components(self) -> list[LoadedComponent]:
        """The loaded pub/sub components."""

    def subscriptions(self) -> list[TopicSubscription]:
        """Every active subscription, declarative and programmatic."""

    def capabilities(self, pubsubname: str) -> list[str]:
        """The features of the component's broker (``brokers/base.py`` ``FEATURES``), sorted;
        empty while it is not started."""

    def outbound_ready(self) -> bool:
        """Components initialised and the API up (§1.5 ``/healthz/outbound``)."""

    def outbound_problems(self) -> dict[str, str]:
        """Component name → why it is not ready (its last connection error, e.g. a refused
        TLS certificate), for the components :meth:`outbound_ready` waits for."""

    def app_channel_ready(self) -> bool:
        """The app is reachable, or there is no app port (§1.5 ``/healthz``)."""

    def extended(self) -> dict[str, str]:
        """Runtime attributes for ``extended`` in ``GET /v1.0/metadata``, e.g.
        ``kafka.assignment.<pubsub>``: the partitions this member owns, ``topic:partition,...``."""


SETTINGS_KEY = web.AppKey("settings", SidecarSettings)
PUBLISHER_KEY = web.AppKey("publisher", Publisher)
RUNTIME_KEY = web.AppKey("runtime", RuntimeView)
EXTENDED_KEY = web.AppKey("extended_metadata", dict)
