"""CloudEvents envelopes on publish: pure functions from a publish request to the record value.

Three paths (dapr-pubsub-contract.md §4.1-§4.3), chosen by :mod:`publishing`:

- :func:`wrap` builds Dapr's envelope around an arbitrary body (§4.1);
- :func:`wrap_user_cloudevent` completes a body that already is a CloudEvent (§4.2);
- raw publish (§4.3) needs no function: the body is the record value.

Exact numbers: an ``application/json`` body is validated and then spliced into the envelope as an
``orjson.Fragment``, so its bytes (big integers, long decimals) are never re-encoded. A user
CloudEvent is parsed with hooks that keep every float and every integer that does not fit in 64
bits as a fragment of its original text.

The envelope Dapr builds is valid by construction (every required attribute is a non-empty
string), so it is not re-validated per message; a user CloudEvent is checked with the CNCF SDK
(``cloudevents.core.v1.event.CloudEvent``) after defaults are applied. Neighbours:
``envelopes/reading.py`` parses these envelopes on the subscribing side.
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from cloudevents.core.v1.event import CloudEvent

from ..resources.durations import parse_duration_seconds

__all__ = [
    "CloudEventOverrides",
    "DEFAULT_EVENT_TYPE",
    "InvalidCloudEvent",
    "NotACloudEvent",
    "is_cloudevent_content_type",
    "loads_exact",
    "new_traceparent",
    "rfc3339",
    "ttl_seconds",
    "wrap",
    "wrap_user_cloudevent",
]

DEFAULT_EVENT_TYPE = "com.dapr.event.sent"
DEFAULT_CONTENT_TYPE = "text/plain"
USER_CE_DEFAULT_SOURCE = "Dapr"  # §4.2: not the app-id (§9)
SPECVERSION = "1.0"

_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_BARE_NUMBER = re.compile(r"[+-]?\d+")
_UNITLESS_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class NotACloudEvent(ValueError):
    """A ``application/cloudevents+json`` body that is not a JSON object (§1.2: 500)."""


class InvalidCloudEvent(ValueError):
    """A user CloudEvent whose required attributes are missing or invalid after Dapr's defaults,
    most importantly one without ``id``. Dapr accepts it (§9); we reject it, as the CloudEvents
    spec requires ``id``."""


@dataclass(frozen=True, slots=True)
class CloudEventOverrides:
    """``metadata.cloudevent.*`` values of one publish (keys matched case-insensitively by the
    caller). ``None`` or ``""`` means not given."""

    id: str | None = None
    source: str | None = None
    type: str | None = None
    subject: str | None = None
    traceid: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> CloudEventOverrides:
        """Pick ``cloudevent.<attr>`` keys out of request metadata, case-insensitively."""
        found: dict[str, str] = {}
        for key, value in metadata.items():
            if len(key) > 11 and key[:11].lower() == "cloudevent.":
                attr = key[11:].lower()
                if attr in _OVERRIDABLE and attr not in found:
                    found[attr] = value
        return cls(**found) if found else _NO_OVERRIDES


_OVERRIDABLE = frozenset(
    ("id", "source", "type", "subject", "traceid", "traceparent", "tracestate"))
_NO_OVERRIDES = CloudEventOverrides()


def is_cloudevent_content_type(content_type: str | None) -> bool:
    """Whether ``content_type`` is ``application/cloudevents+json`` (parameters allowed, §4.2)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/cloudevents+json"


def new_traceparent() -> str:
    """A fresh W3C traceparent ``00-<32 hex trace id>-<16 hex span id>-01`` (sampled).

    Ids need to be unique, not secret: ``random.getrandbits`` (reseeded after fork) is ~20x
    cheaper than ``os.urandom`` on the publish hot path.
    """
    return f"00-{_getrandbits(128) or 1:032x}-{_getrandbits(64) or 1:016x}-01"


_getrandbits = random.getrandbits


def rfc3339(moment: datetime) -> str:
    """``moment`` in UTC as RFC 3339 with second precision (Go's ``time.RFC3339``), e.g.
    ``2024-05-01T12:00:00Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_time_cache: list[Any] = [-1, ""]


def _now_rfc3339(epoch_s: float) -> str:
    # Formatting costs ~6 us; the text changes once a second, so it is cached per second.
    second = int(epoch_s)
    if _time_cache[0] != second:
        _time_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        _time_cache[0] = second
    return _time_cache[1]  # type: ignore[no-any-return]


def ttl_seconds(metadata: Mapping[str, str]) -> float | None:
    """The message TTL in seconds from ``ttlInSeconds`` (alias ``ttl``), or ``None`` for none.

    Follows Dapr (§1.2, §5.2, §9): the value is first read as a Go duration (``"30s"``,
    ``"1m30s"``; a bare ``"0"`` is a valid duration and means *expire at once*), else as an
    integer number of seconds. Non-positive integers, negative durations and anything else are
    silently ignored (no TTL, no error).
    """
    raw = metadata.get("ttlInSeconds") or metadata.get("ttl")
    if not raw:
        return None
    text = raw.strip()
    if _BARE_NUMBER.fullmatch(text):
        value = int(text)
        if value == 0 and text.lstrip("+-") == "0":
            return 0.0  # Go's ParseDuration accepts "0": expires immediately
        return float(value) if value > 0 else None
    if _UNITLESS_NUMBER.fullmatch(text):
        return None  # "1.5": neither a Go duration (no unit) nor an integer
    try:
        seconds = parse_duration_seconds(text)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _is_json_media_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def _valid_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
        return True
    except orjson.JSONDecodeError:
        pass
    # orjson refuses some valid JSON Go accepts (numbers beyond double range such as 1e400).
    try:
        json.loads(body, parse_constant=_reject_constant)
        return True
    except (ValueError, UnicodeDecodeError):
        return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _data_fields(body: bytes, content_type: str) -> tuple[str, Any]:
    """``("data", value)`` or ``("data_base64", text)`` for the body per §4.1."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        if _valid_json(body):
            return "data", orjson.Fragment(body)
        return "data", body.decode("utf-8", "replace")
    if media == "application/octet-stream":
        return "data_base64", base64.b64encode(body).decode("ascii")
    return "data", body.decode("utf-8", "replace")


def _expiration(now_s: float, ttl_s: float | None) -> str | None:
    if ttl_s is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now_s + ttl_s)))


def _epoch_s(now: datetime | None) -> float:
    return time.time() if now is None else now.timestamp()


def wrap(
    body: bytes, *, content_type: str | None, app_id: str, topic: str, pubsubname: str,
    overrides: CloudEventOverrides = _NO_OVERRIDES, ttl_s: float | None = None,
    now: datetime | None = None,
) -> bytes:
    """Dapr's envelope around ``body`` (§4.1), serialised as JSON bytes (the record value).

    ``content_type`` is the request's Content-Type (``None``/``""`` means ``text/plain``);
    ``ttl_s`` seconds from ``now`` (UTC, default the current time) set ``expiration``. Never
    raises for any body: JSON that does not parse travels as a string.
    """
    now_s = _epoch_s(now)
    ctype = content_type or DEFAULT_CONTENT_TYPE
    traceparent = overrides.traceparent or overrides.traceid or new_traceparent()
    event: dict[str, Any] = {
        "id": overrides.id or _uuid4(),
        "source": overrides.source or app_id or USER_CE_DEFAULT_SOURCE,
        "type": overrides.type or DEFAULT_EVENT_TYPE,
        "specversion": SPECVERSION,
        "datacontenttype": ctype,
        "topic": topic,
        "pubsubname": pubsubname,
        "time": _now_rfc3339(now_s),
        "traceid": traceparent,
        "traceparent": traceparent,
        "tracestate": overrides.tracestate or "",
    }
    if overrides.subject:
        event["subject"] = overrides.subject
    expiration = _expiration(now_s, ttl_s)
    if expiration is not None:
        event["expiration"] = expiration
    key, value = _data_fields(body, ctype)
    event[key] = value
    return orjson.dumps(event)


def _uuid4() -> str:
    # An RFC 4122 version-4 id (random bits, version and variant set) without uuid.uuid4()'s
    # os.urandom call, which dominates its cost.
    n = (_getrandbits(128) & _UUID_CLEAR) | _UUID_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def _exact_int(text: str) -> Any:
    value = int(text)
    if _INT64_MIN <= value <= _INT64_MAX:
        return value
    return orjson.Fragment(text.encode())  # orjson cannot encode ints beyond 64 bits


def _exact_float(text: str) -> Any:
    return orjson.Fragment(text.encode())  # the original text: no binary rounding


def loads_exact(text: bytes | str) -> Any:
    """Parse JSON so that re-encoding with ``orjson.dumps`` gives every number back byte-exact:
    floats and integers beyond 64 bits become ``orjson.Fragment`` of their original text.
    ``NaN``/``Infinity`` are refused (not JSON). Raises ``ValueError`` (including
    ``UnicodeDecodeError``) for anything that is not JSON."""
    return json.loads(text, parse_int=_exact_int, parse_float=_exact_float,
                      parse_constant=_reject_constant)


def wrap_user_cloudevent(
    body: bytes, *, topic: str, pubsubname: str, ttl_s: float | None = None,
    now: datetime | None = None,
) -> bytes:
    """Complete a user CloudEvent (§4.2) and serialise it as JSON bytes.

    Every field is kept (extensions included); ``topic`` and ``pubsubname`` are overwritten;
    ``time``, ``source`` (``"Dapr"``), ``type``, ``specversion``, ``traceid``/``traceparent`` and
    ``tracestate`` are added when missing; ``expiration`` is set when ``ttl_s`` is given.
    ``cloudevent.*`` overrides do not apply on this path.

    Raises :class:`NotACloudEvent` when ``body`` is not a JSON object, and
    :class:`InvalidCloudEvent` when the result lacks a valid ``id`` or another required attribute
    fails the CNCF SDK's check (stricter than Dapr, which neither generates nor requires ``id``).
    """
    try:
        event = loads_exact(body)
    except ValueError as exc:
        raise NotACloudEvent(f"the body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise NotACloudEvent(f"the body is a JSON {type(event).__name__}, not an object")
    now_s = _epoch_s(now)
    event["topic"] = topic
    event["pubsubname"] = pubsubname
    event.setdefault("time", _now_rfc3339(now_s))
    if "traceid" not in event:
        traceparent = new_traceparent()
        event["traceid"] = traceparent
        event["traceparent"] = traceparent
    event.setdefault("tracestate", "")
    event.setdefault("source", USER_CE_DEFAULT_SOURCE)
    event.setdefault("type", DEFAULT_EVENT_TYPE)
    event.setdefault("specversion", SPECVERSION)
    _check_required(event)
    expiration = _expiration(now_s, ttl_s)
    if expiration is not None:
        event["expiration"] = expiration
    try:
        return orjson.dumps(event)
    except TypeError as exc:  # pragma: no cover - json.loads yields only encodable types
        raise NotACloudEvent(str(exc)) from None


def _check_required(event: dict[str, Any]) -> None:
    required = {k: event[k] for k in ("id", "source", "type", "specversion") if k in event}
    errors = CloudEvent._validate_required_attributes(attributes=required)
    if errors:
        problems = "; ".join(f"{name}: {errs[0]}" for name, errs in sorted(errors.items()))
        raise InvalidCloudEvent(f"invalid cloudevent attributes ({problems})")
