"""Publish routes (dapr-pubsub-contract.md §1.2, §1.3): decode the HTTP request, call the Publisher.

- ``POST|PUT /v1.0/publish/{pubsubname}/{topic...}``: the topic is everything after the pubsub
  name, slashes included. aiohttp decodes and normalises paths, so both parts are cut from the
  *raw* path and unescaped here like Go's ``url.QueryUnescape`` (``+`` is a space, ``%2F`` a
  slash); an invalid escape answers 400 text/plain, as Dapr's router does.
- ``POST|PUT /v1.0-alpha1/publish/bulk/{pubsubname}/{topic}`` (also ``/v1.0/publish/bulk/...``).

Query ``metadata.<key>=<value>``: the prefix is stripped and the first value of a key kept.
Headers ``traceparent``/``tracestate`` (W3C) are the publish's trace context
(``runtime/tracing.py``). Header values are text: aiohttp keeps bytes that are not UTF-8 as
surrogate escapes, which are replaced by U+FFFD here (``header_text``), so ``datacontenttype`` is
the Content-Type as sent with only its invalid bytes replaced. Everything else (validation,
envelopes, scoping, the broker) is ``publishing/publisher.py``'s job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from ...envelopes.wrapping import loads_exact
from ...errors import DaprError
from ...publishing.publisher import BulkEntry, body_too_large
from .keys import PUBLISHER_KEY, SETTINGS_KEY

__all__ = [
    "QueryUnescapeError",
    "add_routes",
    "header_text",
    "metadata_from_query",
    "query_unescape",
]

PUBLISH_PREFIX = "/v1.0/publish/"
BULK_PREFIXES = ("/v1.0-alpha1/publish/bulk/", "/v1.0/publish/bulk/")
METADATA_PREFIX = "metadata."

_HEX = frozenset(b"0123456789abcdefABCDEF")


class QueryUnescapeError(ValueError):
    """An invalid ``%`` escape; ``str()`` is Go's ``invalid URL escape "%zz"``."""


def query_unescape(text: str) -> str:
    """Go's ``url.QueryUnescape``: ``%XX`` to the byte, ``+`` to a space, bytes read as UTF-8
    (invalid sequences replaced). Raises :class:`QueryUnescapeError` for ``%`` not followed by
    two hex digits."""
    if "%" not in text and "+" not in text:
        return text
    raw = text.encode()
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # %
            if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                bad = raw[i : i + 3].decode("utf-8", "replace")
                raise QueryUnescapeError(f'invalid URL escape "{bad}"')
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(0x20 if c == 0x2B else c)
        i += 1
    return out.decode("utf-8", "replace")


def header_text(value: str | None) -> str | None:
    """A header value as aiohttp gives it (bytes that are not UTF-8 kept as surrogate escapes)
    with every invalid byte replaced by U+FFFD, so it can be encoded again (JSON, headers)."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def metadata_from_query(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``metadata.<key>`` query parameters with the prefix stripped, first value of a key kept."""
    metadata: dict[str, str] = {}
    for key, value in items:
        if key.startswith(METADATA_PREFIX):
            name = key[len(METADATA_PREFIX) :]
            if name not in metadata:
                metadata[name] = value
    return metadata


def _target(request: web.Request, prefix: str) -> tuple[str, str] | web.Response:
    """``(pubsubname, topic)`` cut from the raw path, or the 400 answer for a bad escape."""
    raw = request.raw_path.split("?", 1)[0]
    pubsub_raw, _, topic_raw = raw[len(prefix) :].partition("/")
    name = "pubsubname"
    try:
        pubsubname = query_unescape(pubsub_raw)
        name = "*"
        topic = query_unescape(topic_raw)
    except QueryUnescapeError as exc:
        return web.Response(
            status=400, text=(f'failed to unescape request parameter "{name}". Error: {exc}\n')
        )
    return pubsubname, topic


async def _body(request: web.Request, pubsubname: str, topic: str) -> bytes:
    limit = request.app[SETTINGS_KEY].max_body_size
    length = request.content_length
    if length is None or length <= limit:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            pass
    # Stricter than Dapr (which answers 500): a body over --max-body-size is 413 (issue 2).
    raise body_too_large(pubsubname, topic, limit)


async def publish(request: web.Request) -> web.Response:
    target = _target(request, PUBLISH_PREFIX)
    if isinstance(target, web.Response):
        return target
    pubsubname, topic = target
    body = await _body(request, pubsubname, topic)
    headers = request.headers
    await request.app[PUBLISHER_KEY].publish(
        pubsubname,
        topic,
        body,
        content_type=header_text(headers.get("Content-Type")),
        metadata=metadata_from_query(request.query.items()),
        traceparent=headers.get("traceparent"),
        tracestate=header_text(headers.get("tracestate")),
    )
    return web.Response(status=204)


def _bulk_entries(body: bytes) -> list[BulkEntry]:
    """The request's entries. Raises ``ValueError`` for a body that is not an array of entry
    objects (as Go's unmarshalling into the entry struct would), including one nested too deeply
    to parse (``loads_exact``)."""
    parsed: Any = loads_exact(body)
    if not isinstance(parsed, list):
        raise ValueError("the body must be a JSON array of entries")
    entries = []
    for i, item in enumerate(parsed):
        if not isinstance(item, dict):
            raise ValueError(f"entry {i} is not a JSON object")
        entry_id = item.get("entryId", "")
        content_type = item.get("contentType", "")
        metadata = item.get("metadata")
        if not isinstance(entry_id, str) or not isinstance(content_type, str):
            raise ValueError(f"entry {i}: entryId and contentType must be strings")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise ValueError(f"entry {i}: metadata must be an object of strings")
        entries.append(
            BulkEntry(
                entry_id=entry_id,
                event=item.get("event"),
                content_type=content_type,
                metadata=metadata,
            )
        )
    return entries


async def publish_bulk(request: web.Request) -> web.Response:
    prefix = next(p for p in BULK_PREFIXES if request.raw_path.startswith(p))
    target = _target(request, prefix)
    if isinstance(target, web.Response):
        return target
    pubsubname, topic = target
    publisher = request.app[PUBLISHER_KEY]
    metadata = metadata_from_query(request.query.items())
    publisher.validate_target(pubsubname, topic, metadata)
    body = await _body(request, pubsubname, topic)
    try:
        entries = _bulk_entries(body)
    except ValueError as exc:
        raise DaprError(
            400,
            "ERR_PUBSUB_EVENTS_SER",
            f"error when unmarshaling the request for topic {topic} pubsub {pubsubname}: {exc}",
            reason="DAPR_PUBSUB_UNMARSHAL_EVENTS",
            metadata=dict(metadata),
            resource=pubsubname,
        ) from None
    failures = await publisher.publish_bulk(
        pubsubname,
        topic,
        entries,
        metadata,
        traceparent=request.headers.get("traceparent"),
        tracestate=header_text(request.headers.get("tracestate")),
    )
    if not failures:
        return web.Response(status=204)
    answer = {
        "failedEntries": [{"entryId": f.entry_id, "error": f.error} for f in failures],
        "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
    }
    # Stricter than Dapr (always 500): when every failed entry is the caller's mistake (a topic or
    # partition the broker can never take, a record too large) nothing is down: 400.
    status = 400 if all(f.refused for f in failures) else 500
    return web.Response(status=status, body=orjson.dumps(answer), content_type="application/json")


def add_routes(app: web.Application) -> None:
    # Bulk routes first: "/v1.0/publish/bulk/..." must not be read as a publish to pubsub "bulk".
    # [\s\S]: the decoded path may hold a newline (%0A), which "." would not match (a bare 404).
    for prefix in BULK_PREFIXES:
        for method in ("POST", "PUT"):
            app.router.add_route(method, prefix + r"{tail:[\s\S]*}", publish_bulk)
    for method in ("POST", "PUT"):
        app.router.add_route(method, PUBLISH_PREFIX + r"{tail:[\s\S]*}", publish)
