"""``GET /v1.0/healthz`` and ``/v1.0/healthz/outbound`` (dapr-pubsub-contract.md §1.5).

- ``/healthz``: 204 once components are ready, the API is up and the app channel is ready; else
  500 ``ERR_HEALTH_NOT_READY`` naming the unhealthy targets. ``?appid=X`` that is not our app-id:
  500 ``ERR_HEALTH_APPID_NOT_MATCH``.
- ``/healthz/outbound``: 204 once components are ready and the API is up (before the app is
  reachable; SDKs' ``waitForSidecar``); else 500 ``ERR_OUTBOUND_HEALTH_NOT_READY``, the message
  naming each component that is not ready and its last connection error.

Both are exempt from the API token (``app.py``).
"""

from __future__ import annotations

from aiohttp import web

from ...errors import DaprError
from .keys import RUNTIME_KEY

__all__ = ["add_routes"]


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    unhealthy = []
    if not runtime.outbound_ready():
        unhealthy.append("outbound")
    if not runtime.app_channel_ready():
        unhealthy.append("app")
    if unhealthy:
        raise DaprError(500, "ERR_HEALTH_NOT_READY", f"dapr is not ready: [{' '.join(unhealthy)}]")
    appid = request.query.get("appid")
    if appid and appid != runtime.app_id:
        raise DaprError(500, "ERR_HEALTH_APPID_NOT_MATCH", "dapr app-id does not match")
    return web.Response(status=204)


async def healthz_outbound(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    if not runtime.outbound_ready():
        # Dapr's message, then which component and why (e.g. "certificate verify failed").
        problems = sorted(runtime.outbound_problems().items())
        detail = ": " + "; ".join(f"{n}: {why}" for n, why in problems) if problems else ""
        raise DaprError(500, "ERR_OUTBOUND_HEALTH_NOT_READY", f"dapr outbound is not ready{detail}")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1.0/healthz", healthz, allow_head=False)
    app.router.add_get("/v1.0/healthz/outbound", healthz_outbound, allow_head=False)
