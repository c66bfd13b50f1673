"""The wire format of bulk subscribe deliveries over HTTP (dapr-pubsub-contract.md §2.4). Pure.

One bulk delivery is one POST per route path with ``Content-Type: application/json``::

    {"id": "<uuid>", "type": "com.dapr.event.sent.bulk", "topic": "orders",
     "pubsubname": "pubsub", "metadata": {},
     "entries": [{"entryId": "<id>", "event": {<CloudEvent>}, "metadata": {...},
                  "contentType": "application/cloudevents+json"}]}

``event`` is the event's exact delivery bytes (the broker's bytes for a CloudEvent, the
synthesised CloudEvent for ``rawPayload`` subscriptions, §4.4), embedded unchanged so numbers and
extra fields survive as in single delivery. An entry's ``metadata`` is what single delivery sends
as HTTP headers (Kafka headers, ``__key``, ``__offset``, ``__partition``, ``__topic``,
``__timestamp``, ``traceparent``, ``pubsubName``).

The app answers ``{"statuses": [{"entryId": "...", "status": "SUCCESS|RETRY|DROP"}]}``;
:func:`classify_bulk` turns that into one :class:`AppResponse` per entry, following Dapr's
``DeliverBulk``. The gRPC form (``OnBulkTopicEvent``) lives in ``grpc.py``; the engine
that batches, retries and dead-letters is ``delivery/bulk.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from ..jsonfields import json_field as _get
from .types import AppResponse, AppStatus, BulkEvent

__all__ = ["BULK_EVENT_TYPE", "bulk_request_body", "classify_bulk"]

log = logging.getLogger(__name__)

BULK_EVENT_TYPE = "com.dapr.event.sent.bulk"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"


def bulk_request_body(
    events: Sequence[BulkEvent], *, request_id: str, topic: str, pubsubname: str
) -> bytes:
    """The JSON body of one bulk POST (module docstring). Pure."""
    return orjson.dumps(
        {
            "id": request_id,
            "type": BULK_EVENT_TYPE,
            "topic": topic,
            "pubsubname": pubsubname,
            "metadata": {},
            "entries": [
                {
                    "entryId": e.entry_id,
                    "event": orjson.Fragment(e.read.body),
                    "metadata": dict(e.metadata),
                    "contentType": CLOUDEVENTS_CONTENT_TYPE,
                }
                for e in events
            ],
        }
    )


def _all(
    entry_ids: Sequence[str], status: AppStatus, http_status: int | None, reason: str
) -> list[AppResponse]:
    answer = AppResponse(status, http_status, reason)
    return [answer] * len(entry_ids)


def classify_bulk(http_status: int, body: bytes, entry_ids: Sequence[str]) -> list[AppResponse]:
    """The app's answer to a bulk POST as one :class:`AppResponse` per entry of ``entry_ids``,
    in that order (§2.4). Pure apart from a warning for an unknown ``entryId``.

    - 2xx: each entry's ``status`` in ``statuses``: ``SUCCESS`` acks, ``DROP`` drops (dead-letter
      topic if set); ``RETRY``, ``""``, any other string (case-sensitive) or no status for the
      entry retries it. A body that is not a JSON object with a ``statuses`` array retries all;
    - 404: every entry dropped; any other status: every entry retried.
    """
    if 200 <= http_status <= 299:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                return _all(
                    entry_ids, AppStatus.RETRY, http_status, "bulk response from app is not JSON"
                )
        statuses = _get(parsed, "statuses") if isinstance(parsed, dict) else None
        if statuses is not None and not isinstance(statuses, list):
            return _all(
                entry_ids,
                AppStatus.RETRY,
                http_status,
                "bulk response from app: statuses is not an array",
            )
        wanted = set(entry_ids)
        answered: dict[str, Any] = {}
        for item in statuses or ():
            entry_id = _get(item, "entryId") if isinstance(item, dict) else None
            if not isinstance(entry_id, str) or entry_id not in wanted:
                log.warning("bulk response from app names an unknown entryId %r; ignored", entry_id)
                continue
            answered[entry_id] = _get(item, "status")
        return [
            _entry_response(http_status, answered.get(entry_id), entry_id in answered)
            for entry_id in entry_ids
        ]
    if http_status == 404:
        return _all(
            entry_ids,
            AppStatus.DROP,
            http_status,
            "non-retriable error returned from app: status code 404",
        )
    return _all(
        entry_ids,
        AppStatus.RETRY,
        http_status,
        f"retriable error returned from app: status code {http_status}",
    )


def _entry_response(http_status: int, status: Any, answered: bool) -> AppResponse:
    if status == "SUCCESS":
        return AppResponse(AppStatus.SUCCESS, http_status, "SUCCESS")
    if status == "DROP":
        return AppResponse(AppStatus.DROP, http_status, "DROP status returned from app")
    if status == "RETRY":
        return AppResponse(AppStatus.RETRY, http_status, "RETRY status returned from app")
    if not answered:
        return AppResponse(AppStatus.RETRY, http_status, "app returned no status for the entry")
    return AppResponse(
        AppStatus.RETRY, http_status, f"unknown status returned from app: {status!r}"
    )
