"""``GET /v1.0/metadata`` and ``PUT /v1.0/metadata/{attributeName}`` (dapr-pubsub-contract.md §1.4).

The response has Dapr's shape: ``id``, ``runtimeVersion``, ``enabledFeatures``, ``actors``,
``components`` (``name``/``type``/``version``/``capabilities``: the broker's features, see
``brokers/base.py``), ``subscriptions`` (each with its
``type`` DECLARATIVE or PROGRAMMATIC, from ``TopicSubscription.to_metadata_json``; ours add
``status``: consumer group, assigned partitions with their lag, in-flight deliveries, retries,
dead-lettered records and the last error, from ``runtime.metrics.subscription_status``),
``extended`` (attributes set with PUT), ``httpEndpoints`` and ``appConnectionProperties``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from ...runtime.metrics import subscription_status
from ...runtime.settings import SidecarSettings
from .keys import EXTENDED_KEY, RUNTIME_KEY, SETTINGS_KEY, RuntimeView

__all__ = ["add_routes", "metadata_body"]

try:
    RUNTIME_VERSION = importlib.metadata.version("tidings")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
    RUNTIME_VERSION = "edge"


def metadata_body(
    runtime: RuntimeView, settings: SidecarSettings, extended: Mapping[str, str]
) -> dict[str, Any]:
    """The ``GET /v1.0/metadata`` JSON object (§1.4); ``extended`` holds the attributes set with
    ``PUT /v1.0/metadata/{name}`` (or gRPC ``SetMetadata``). The gRPC ``GetMetadata`` answers
    the same object (``inbound/grpc/metadata.py``)."""
    connection: dict[str, object] = {
        "protocol": settings.app_protocol,
        "channelAddress": settings.app_channel_address,
        "maxConcurrency": -1,
    }
    if settings.app_port:
        connection["port"] = settings.app_port
    return {
        "id": runtime.app_id,
        "runtimeVersion": RUNTIME_VERSION,
        "enabledFeatures": [],
        "actors": [],
        "components": [
            {
                "name": c.name,
                "type": c.type,
                "version": c.component.spec.version,
                "capabilities": runtime.capabilities(c.name),
            }
            for c in runtime.components()
        ],
        "subscriptions": [
            {
                **s.to_metadata_json(),
                "status": subscription_status(runtime.app_id, s.pubsubname, s.topic),
            }
            for s in runtime.subscriptions()
        ],
        "extended": {**runtime.extended(), **extended},
        "httpEndpoints": [],
        "appConnectionProperties": connection,
    }


async def get_metadata(request: web.Request) -> web.Response:
    body = metadata_body(
        request.app[RUNTIME_KEY], request.app[SETTINGS_KEY], request.app[EXTENDED_KEY]
    )
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def put_metadata(request: web.Request) -> web.Response:
    """Set an ``extended`` attribute to the raw request body (text)."""
    name = request.match_info["attribute"]
    request.app[EXTENDED_KEY][name] = (await request.read()).decode("utf-8", "replace")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1.0/metadata", get_metadata, allow_head=False)
    app.router.add_put("/v1.0/metadata/{attribute}", put_metadata)
