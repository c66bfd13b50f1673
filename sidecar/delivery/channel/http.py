"""The sidecar's HTTP client to the app: reachability, subscription discovery, event delivery.

The app-channel interface the runner and the delivery engine use (``Channel``, with the
answer types, in ``types.py``) and ``open_app_channel``, which picks this HTTP channel or the
gRPC one (``grpc.py``) by ``--app-protocol``, are the package's (``__init__.py``).

One :class:`aiohttp.ClientSession` per sidecar, so connections to the app are pooled and reused
across deliveries. Behaviour follows Dapr's HTTP app channel (dapr-pubsub-contract.md §2.1, §2.3):

- :meth:`AppChannel.wait_until_reachable` polls a TCP connect to the app port with backoff;
  deliveries and discovery start only after it returns (dapr/dapr#7938);
- :meth:`AppChannel.get_subscriptions` calls ``GET /dapr/subscribe`` with ``dapr-app-id``; transport
  errors are retried with backoff until the app answers; 404 or an empty body means no
  subscriptions; any other status or a body that is not a JSON array is logged and means none;
- :meth:`AppChannel.post_event` POSTs one event and classifies the answer into
  :class:`AppStatus` by the §2.3 table; it never raises for an app-side failure;
- :meth:`AppChannel.deliver_bulk` POSTs one bulk request (§2.4) and classifies the answer per
  entry (``bulk_format.py``).

If ``APP_API_TOKEN`` is set, every request carries it as ``dapr-api-token``, so the app can tell
its sidecar from other callers (docs.dapr.io/operations/security/app-api-token/); a record's own
``dapr-api-token`` or ``Authorization`` metadata never replaces it (``delivery/engine.py``).
Redirects are not followed: a 3xx answer is "another status" and is retried.

Neighbours: ``delivery/engine.py`` (the only caller of ``post_event``),
``delivery/subscriptions.py`` (parses what ``get_subscriptions`` returns), ``runtime/runner.py``
(owns the channel's lifetime).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from yarl import URL

from ...runtime.settings import SidecarSettings
from ..jsonfields import json_field
from ..subscriptions import parse_programmatic
from .bulk_format import bulk_request_body, classify_bulk
from .types import AppResponse, AppStatus, BulkEvent

if TYPE_CHECKING:
    from ...envelopes.reading import ReadEvent
    from ...resources.models import TopicSubscription

__all__ = ["AppChannel", "classify", "wait_for_port"]

log = logging.getLogger(__name__)

# Backoff for polling the app port and retrying discovery: start fast (apps usually come up
# within a second of the sidecar), cap low so a late app is noticed quickly.
_POLL_INITIAL_S = 0.02
_POLL_MAX_S = 1.0
# One discovery request may take this long; a hung /dapr/subscribe is then retried and logged
# instead of holding the first answer back for the whole delivery timeout.
_DISCOVERY_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
_DISCOVERY_MAX_S = 5.0
_URL_CACHE_MAX = 1024
_BULK_HEADERS = {"Content-Type": "application/json"}  # §2.4


def _first_json_value(body: bytes) -> Any:
    """Decode the first JSON value of ``body`` like Go's ``json.Decoder.Decode``.

    Returns ``...`` (Ellipsis) for an empty body and raises ``ValueError`` for one that is not JSON.
    """
    if not body:
        # The most common answer to a delivery; orjson would raise (~1 us) before the slow path.
        return ...
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    text = body.decode("utf-8", "replace").lstrip()
    if not text:
        return ...
    # Trailing data after the first value is ignored by Go's Decoder; raw_decode does the same.
    value, _ = json.JSONDecoder().raw_decode(text)
    return value


def classify(http_status: int, body: bytes) -> AppResponse:
    """Classify an app's HTTP answer to a delivery by the §2.3 table. Pure.

    - 2xx with an empty body, a body that is not valid JSON or not a JSON object, ``{}``, a
      non-string ``status``, ``"status": "SUCCESS"`` or ``""``: SUCCESS;
    - 2xx ``"status": "RETRY"``: RETRY; ``"DROP"``: DROP; any other string (statuses are
      case-sensitive, so ``"success"`` too): RETRY ("unknown status");
    - 404: DROP (Dapr logs it as an error and acks; the dead-letter topic gets it if set);
    - any other status: RETRY.
    """
    if 200 <= http_status <= 299:
        try:
            parsed = _first_json_value(body)
        except ValueError:
            return AppResponse(AppStatus.SUCCESS, http_status, "body is not JSON")
        if not isinstance(parsed, dict):
            return AppResponse(AppStatus.SUCCESS, http_status, "no status")
        # Go's encoding/json: {"Status": "RETRY"} is a RETRY in Dapr too.
        status = json_field(parsed, "status")
        if not isinstance(status, str) or status in ("", "SUCCESS"):
            return AppResponse(AppStatus.SUCCESS, http_status, "SUCCESS")
        if status == "RETRY":
            return AppResponse(AppStatus.RETRY, http_status, "RETRY status returned from app")
        if status == "DROP":
            return AppResponse(AppStatus.DROP, http_status, "DROP status returned from app")
        return AppResponse(
            AppStatus.RETRY, http_status, f"unknown status returned from app: {status!r}"
        )
    if http_status == 404:
        return AppResponse(
            AppStatus.DROP, http_status, "non-retriable error returned from app: status code 404"
        )
    return AppResponse(
        AppStatus.RETRY,
        http_status,
        f"retriable error returned from app: status code {http_status}",
    )


async def _port_accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=_POLL_MAX_S)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def wait_for_port(
    host: str, port: int, settings: SidecarSettings, stop_event: asyncio.Event | None = None
) -> bool:
    """Wait until ``host:port`` accepts a TCP connection; ``True`` once it does.

    Dapr waits for the app port the same way whatever the app protocol (dapr/dapr#7938). Polls
    with exponential backoff (20 ms doubling to 1 s), waking early if ``stop_event`` is set.
    Returns ``False`` if ``stop_event`` is set first, or after
    ``settings.app_connect_timeout_s`` seconds when that is positive (0 waits forever).
    """
    extra = {"app_id": settings.app_id}
    delay = _POLL_INITIAL_S
    limit = settings.app_connect_timeout_s
    deadline = time.monotonic() + limit if limit > 0 else None
    announced = False
    while True:
        if stop_event is not None and stop_event.is_set():
            return False
        if await _port_accepts(host, port):
            log.info("app is reachable on %s:%s", host, port, extra=extra)
            return True
        if deadline is not None and time.monotonic() >= deadline:
            log.error("app did not open port %s within %.1fs", port, limit, extra=extra)
            return False
        if not announced and delay >= _POLL_MAX_S / 4:
            log.info("waiting for the app on %s:%s", host, port, extra=extra)
            announced = True
        if stop_event is None:
            await asyncio.sleep(delay)  # backoff between connection attempts
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop_event.wait(), delay)
        delay = min(delay * 2, _POLL_MAX_S)


class AppChannel:
    """HTTP client to the app at ``settings.app_channel_address:settings.app_port``.

    Create it anywhere; the session is opened on first use inside the running loop. Call
    :meth:`close` once at shutdown. Raises ``ValueError`` if ``settings.app_port`` is ``None``.
    """

    cleans_paths = True

    def __init__(self, settings: SidecarSettings) -> None:
        if settings.app_port is None:
            raise ValueError("an app channel needs settings.app_port")
        self.settings = settings
        self.host = settings.app_channel_address
        self.port = settings.app_port
        self.base_url = URL.build(scheme="http", host=self.host, port=self.port)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self._timeout = aiohttp.ClientTimeout(total=settings.delivery_timeout_s or None)
        self._extra = {"app_id": settings.app_id}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {}
            if self.settings.app_api_token:
                headers["dapr-api-token"] = self.settings.app_api_token
            self._session = aiohttp.ClientSession(
                headers=headers,
                # Concurrency is bounded by the partitions being delivered, not by the pool.
                connector=aiohttp.TCPConnector(limit=0),
                timeout=self._timeout,
            )
        return self._session

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            if not path.startswith("/"):
                path = "/" + path
            url = URL(str(self.base_url) + path)
            if len(self._urls) < _URL_CACHE_MAX:
                self._urls[path] = url
        return url

    async def close(self) -> None:
        """Close the session and its pooled connections. Never raises."""
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None

    async def wait_until_reachable(self, stop_event: asyncio.Event | None = None) -> bool:
        """Wait until the app port accepts a TCP connection; see :func:`wait_for_port`."""
        return await wait_for_port(self.host, self.port, self.settings, stop_event)

    async def get_subscriptions(self) -> list[dict[str, Any]]:
        """``GET /dapr/subscribe``: the app's programmatic subscriptions as raw JSON objects.

        Retries transport errors with backoff (capped at 5 s) until the app answers; cancel the
        task to give up. 404 or an empty body: ``[]``. Another status, a body that is not JSON,
        or JSON that is not an array: error log and ``[]``. Array elements that are not objects
        are logged and left out. Never raises (except ``CancelledError``).
        """
        url = self._url("/dapr/subscribe")
        headers = {"dapr-app-id": self.settings.app_id, "Content-Type": "application/json"}
        delay = _POLL_INITIAL_S * 5
        while True:
            try:
                async with self._client().get(
                    url, headers=headers, allow_redirects=False, timeout=_DISCOVERY_TIMEOUT
                ) as resp:
                    status, body = resp.status, await resp.read()
                break
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning(
                    "app did not answer GET /dapr/subscribe, retrying in %.2fs: %s",
                    delay,
                    str(exc) or type(exc).__name__,
                    extra=self._extra,
                )
            await asyncio.sleep(delay)  # backoff between discovery attempts
            delay = min(delay * 2, _DISCOVERY_MAX_S)
        if status == 404:
            log.debug("user app did not subscribe to any topic (404)", extra=self._extra)
            return []
        if 200 <= status <= 299 and not body.strip():
            return []
        if status != 200:
            log.error(
                "app returned http status code %s from subscription endpoint",
                status,
                extra=self._extra,
            )
            return []
        try:
            parsed = _first_json_value(body)
        except ValueError as exc:
            log.error("error getting topics from app: body is not JSON: %s", exc, extra=self._extra)
            return []
        if parsed is None:
            return []
        if not isinstance(parsed, list):
            log.error(
                "error getting topics from app: expected a JSON array, got %s",
                type(parsed).__name__,
                extra=self._extra,
            )
            return []
        items: list[dict[str, Any]] = []
        for index, item in enumerate(parsed):
            if isinstance(item, dict):
                items.append(item)
            else:
                log.error(
                    "subscription %d from the app is not a JSON object, skipped: %r",
                    index,
                    item,
                    extra=self._extra,
                )
        return items

    async def discover(self) -> list[TopicSubscription]:
        """The app's programmatic subscriptions: :meth:`get_subscriptions` parsed by
        ``delivery.subscriptions.parse_programmatic`` (bad entries logged and skipped). Never raises
        (except ``CancelledError``)."""
        return parse_programmatic(await self.get_subscriptions())

    async def deliver(
        self, path: str, read: ReadEvent, headers: Mapping[str, str], *, topic: str, pubsubname: str
    ) -> AppResponse:
        """Deliver one read event: :meth:`post_event` of its body (the :class:`Channel` call)."""
        return await self.post_event(path, read.body, headers)

    async def deliver_bulk(
        self, path: str, events: Sequence[BulkEvent], *, topic: str, pubsubname: str
    ) -> list[AppResponse]:
        """One bulk POST of ``events`` to ``path`` (dapr-pubsub-contract.md §2.4,
        ``bulk_format.py``): one answer per event, in order. A transport error or a timeout
        retries every event. Raises only ``CancelledError``."""
        body = bulk_request_body(
            events, request_id=str(uuid.uuid4()), topic=topic, pubsubname=pubsubname
        )
        answer = await self.post_event(path, body, _BULK_HEADERS, raw_answer=True)
        if isinstance(answer, AppResponse):  # no HTTP answer
            return [answer] * len(events)
        status, raw = answer
        return classify_bulk(status, raw, [e.entry_id for e in events])

    async def post_event(
        self, path: str, body: bytes, headers: Mapping[str, str], *, raw_answer: bool = False
    ) -> Any:
        """POST ``body`` to ``path`` (already cleaned, leading ``/``) with ``headers``.

        Returns the classified answer (see :func:`classify`); a transport error or a timeout of
        ``settings.delivery_timeout_s`` is RETRY with ``http_status`` ``None``. With
        ``raw_answer`` an HTTP answer is returned as ``(status, body)`` instead (bulk
        delivery classifies it per entry). Raises only ``CancelledError``.
        """
        try:
            async with self._client().post(
                self._url(path), data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                answer = await resp.read()
        except TimeoutError:
            return AppResponse(
                AppStatus.RETRY,
                None,
                f"app did not answer within {self.settings.delivery_timeout_s}s",
            )
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return AppResponse(
                AppStatus.RETRY, None, f"error delivering to the app: {type(exc).__name__}: {exc}"
            )
        if raw_answer:
            return status, answer
        return classify(status, answer)
