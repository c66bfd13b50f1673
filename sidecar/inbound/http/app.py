"""The sidecar's HTTP API: app factory, the one error middleware, API token and body limit.

Handlers (``publish.py``, ``metadata.py``, ``health.py``) raise
:class:`~tidings.sidecar.errors.DaprError`; the middleware here is the only place that turns an
error into a response (dapr-pubsub-contract.md §1.2 body shape), and the only place that answers
an unexpected exception: a logged 500 with a Dapr-style body, never a traceback.

API token (docs.dapr.io/operations/security/api-token/): when ``settings.api_token`` is set,
every request except the two health endpoints needs header ``dapr-api-token`` with that value;
otherwise 401 text/plain ``invalid api token``. :func:`create_public_app` is the public port's
application (``--dapr-public-port``): the health endpoints and nothing else.
Body limit: ``settings.max_body_size`` bytes (aiohttp's ``client_max_size``); a larger body gets
413 with a Dapr-style body (stricter than Dapr, which answers 500). A path no route serves is 404
``ERR_NOT_FOUND`` and a method a route does not take 405 ``ERR_METHOD_NOT_ALLOWED`` (with the
``Allow`` header), in the same Dapr-style JSON body (Dapr's router answers plain text here; the
contract does not pin it, and a client parsing Dapr errors should get one shape everywhere).

The server is started by the runner with ``AppRunner``/``TCPSite``; this module only builds the
application.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from ...errors import DaprError
from ...publishing.publisher import Publisher
from ...runtime.metrics import record_http
from ...runtime.settings import SidecarSettings
from . import health, metadata, publish
from .keys import EXTENDED_KEY, PUBLISHER_KEY, RUNTIME_KEY, SETTINGS_KEY, RuntimeView

__all__ = ["create_app", "create_public_app", "dapr_error_response"]

log = logging.getLogger(__name__)

TOKEN_HEADER = "dapr-api-token"
TOKEN_EXEMPT = frozenset({"/v1.0/healthz", "/v1.0/healthz/outbound"})
"""Paths served without the API token (daprd's "always allowed" health endpoints)."""


def dapr_error_response(error: DaprError) -> web.Response:
    """The JSON response for ``error`` (status, ``application/json`` Dapr body)."""
    return web.Response(
        status=error.status, body=orjson.dumps(error.body()), content_type="application/json"
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def _middlewares(
    settings: SidecarSettings, *, check_token: bool = True
) -> tuple[Middleware, Middleware]:
    token = (
        settings.api_token.encode("utf-8", "surrogateescape")
        if settings.api_token and check_token
        else None
    )

    app_id = settings.app_id

    @web.middleware
    async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # dapr_http_server_request_count / _latency (runtime/metrics.py); the route, not the URL, so
        # every topic shares one series.
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            record_http(
                app_id,
                request.method,
                resource.canonical if resource else "",
                status,
                time.perf_counter() - started,
            )

    @web.middleware
    async def dapr_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None and request.path not in TOKEN_EXEMPT:
            # Compared as the bytes sent: aiohttp keeps bytes that are not UTF-8 as surrogate
            # escapes, which "surrogateescape" turns back into those bytes.
            given = request.headers.get(TOKEN_HEADER, "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, token):
                return web.Response(status=401, text="invalid api token")
        try:
            return await handler(request)
        except DaprError as exc:
            return dapr_error_response(exc)
        except web.HTTPRequestEntityTooLarge as exc:
            return dapr_error_response(
                DaprError(
                    413,
                    "ERR_BODY_TOO_LARGE",
                    f"request body exceeds the maximum of {settings.max_body_size} bytes "
                    f"(--max-body-size): {exc.text}",
                )
            )
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            response = dapr_error_response(
                DaprError(
                    405,
                    "ERR_METHOD_NOT_ALLOWED",
                    f"method {request.method} is not allowed on {request.path} "
                    f"(allowed: {allowed})",
                )
            )
            response.headers["Allow"] = exc.headers.get("Allow", allowed)
            return response
        except web.HTTPNotFound:
            return dapr_error_response(
                DaprError(
                    404, "ERR_NOT_FOUND", f"no endpoint serves {request.method} {request.path}"
                )
            )
        except web.HTTPException:
            raise  # other routing answers (redirects...) stay aiohttp's
        except Exception as exc:
            log.exception(
                "unexpected error answering %s %s",
                request.method,
                request.path,
                extra={"app_id": settings.app_id},
            )
            return dapr_error_response(
                DaprError(500, "ERR_INTERNAL", f"internal error: {type(exc).__name__}")
            )

    return metrics_middleware, dapr_middleware


def create_app(
    settings: SidecarSettings, publisher: Publisher, runtime: RuntimeView
) -> web.Application:
    """Build the sidecar API application (routes of §1.2-§1.5)."""
    app = web.Application(
        middlewares=_middlewares(settings), client_max_size=settings.max_body_size
    )
    app[SETTINGS_KEY] = settings
    app[PUBLISHER_KEY] = publisher
    app[RUNTIME_KEY] = runtime
    app[EXTENDED_KEY] = {}
    publish.add_routes(app)
    metadata.add_routes(app)
    health.add_routes(app)
    return app


def create_public_app(settings: SidecarSettings, runtime: RuntimeView) -> web.Application:
    """The public port's application: ``GET /v1.0/healthz`` and ``/v1.0/healthz/outbound``
    only (no publish, no metadata), so it can listen on every interface for the kubelet's
    probes while the API stays on loopback. Every other path is 404 ``ERR_NOT_FOUND``. No
    request body is read (``client_max_size`` 1 KiB)."""
    app = web.Application(
        middlewares=_middlewares(settings, check_token=False), client_max_size=1024
    )
    app[SETTINGS_KEY] = settings
    app[RUNTIME_KEY] = runtime
    health.add_routes(app)
    return app
