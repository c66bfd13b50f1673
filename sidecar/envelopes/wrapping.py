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
from datetime import UTC, datetime
from typing import Any

import orjson
from cloudevents.core.v1.event import CloudEvent

from ..resources.durations import parse_duration_seconds

__all__ = [
    "DEFAULT_EVENT_TYPE",
    "MAX_TTL_S",
    "CloudEventOverrides",
    "InvalidCloudEvent",
    "NotACloudEvent",
    "dumps_exact",
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
# ASCII digits only: Python's \d and int() also take other scripts' digits, Go's parsers do not.
_BARE_NUMBER = re.compile(r"[+-]?[0-9]+")
_UNITLESS_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_GO_DURATION = re.compile(r"[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")

MAX_TTL_S = _INT64_MAX / 1e9
"""The longest TTL in seconds (about 292 years): Go's largest ``time.Duration``. Dapr caps an
integer ``ttlInSeconds`` beyond it at this value and refuses a longer duration string."""

# orjson reads at most 1024 levels of nesting and writes at most 254.
_ORJSON_MAX_READ_DEPTH = 1024

# A lone UTF-16 surrogate escape (``"\ud800"``) is valid JSON text but no Unicode string; Go's
# decoder turns it into U+FFFD, orjson refuses it. Escaped backslashes are matched first so that
# ``"\\ud800"`` (a backslash, then text) is left alone; valid pairs are kept.
_SURROGATE_ESCAPE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPES = re.compile(
    rb"(\\\\)"  # an escaped backslash: kept
    rb"|(\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"  # a valid pair: kept
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)  # a lone surrogate: replaced
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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
    ("id", "source", "type", "subject", "traceid", "traceparent", "tracestate")
)
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
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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

    Follows Dapr (§1.2, §5.2, §9; components-contrib ``metadata.TryGetTTL``): the value is first
    read as a Go duration (``"30s"``, ``"1m30s"``; a bare ``"0"`` is a valid duration and means
    *expire at once*), else as an integer number of seconds. Non-positive integers, negative
    durations and anything else are silently ignored (no TTL, no error), and so are values Go
    cannot hold: an integer beyond 64 bits and a duration over :data:`MAX_TTL_S`. A positive
    64-bit integer beyond :data:`MAX_TTL_S` is capped at it, as Dapr caps the overflow.
    """
    raw = metadata.get("ttlInSeconds") or metadata.get("ttl")
    if not raw:
        return None
    text = raw.strip()
    if _BARE_NUMBER.fullmatch(text):
        value = int(text)
        if value == 0 and text.lstrip("+-") == "0":
            return 0.0  # Go's ParseDuration accepts "0": expires immediately
        if value <= 0 or value > _INT64_MAX:
            return None  # Go's ParseInt(val, 10, 64) refuses it, or Dapr ignores it
        return min(float(value), MAX_TTL_S)
    if _UNITLESS_NUMBER.fullmatch(text) or not _GO_DURATION.fullmatch(text):
        return None  # "1.5", "inf", "nan", "1_000": neither a Go duration nor an integer
    try:
        seconds = parse_duration_seconds(text)
    except ValueError:
        return None
    if not 0 <= seconds <= MAX_TTL_S:  # also refuses NaN
        return None
    return seconds


def _is_json_media_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def _json_text(body: bytes) -> bytes | None:
    """``body`` as JSON text to splice into the envelope unchanged, or ``None`` when it is not
    JSON this sidecar can carry: not JSON at all, or nested so deeply that the envelope around it
    could not be read back (orjson reads at most 1024 levels; Go's limit is 10000)."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return _json_text_slow(body)
    if (
        len(body) >= 2 * _ORJSON_MAX_READ_DEPTH
        and body.count(b"[") + body.count(b"{") >= _ORJSON_MAX_READ_DEPTH
    ):
        # Possibly exactly at orjson's limit: the envelope adds one level.
        try:
            orjson.loads(b"[" + body + b"]")
        except orjson.JSONDecodeError:
            return None
    return body


def _json_text_slow(body: bytes) -> bytes | None:
    # orjson refuses some valid JSON Go accepts: numbers beyond double range such as 1e400, and
    # lone surrogate escapes (which Go decodes as U+FFFD, so they are replaced here likewise).
    text = replace_lone_surrogate_escapes(body)
    try:
        json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return text


def replace_lone_surrogate_escapes(text: bytes) -> bytes:
    """``text`` (JSON) with every lone UTF-16 surrogate escape such as ``\\ud800`` replaced by
    ``\\ufffd``, as Go's JSON decoder does; valid surrogate pairs and escaped backslashes are
    kept. Returns ``text`` itself when there is none (the common case costs one scan)."""
    if _SURROGATE_ESCAPE_HINT.search(text) is None:
        return text
    return _SURROGATE_ESCAPES.sub(_keep_or_replace, text)


def _keep_or_replace(match: re.Match[bytes]) -> bytes:
    if match.group(1) is not None or match.group(2) is not None:
        return match.group(0)
    return b"\\ufffd"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _data_fields(body: bytes, content_type: str) -> tuple[str, Any]:
    """``("data", value)`` or ``("data_base64", text)`` for the body per §4.1."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        text = _json_text(body)
        if text is not None:
            return "data", orjson.Fragment(text)
        return "data", body.decode("utf-8", "replace")
    if media == "application/octet-stream":
        return "data_base64", base64.b64encode(body).decode("ascii")
    return "data", body.decode("utf-8", "replace")


def _expiration(now_s: float, ttl_s: float | None) -> str | None:
    if ttl_s is None or not 0 <= ttl_s <= MAX_TTL_S:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now_s + ttl_s)))


def _epoch_s(now: datetime | None) -> float:
    return time.time() if now is None else now.timestamp()


def wrap(
    body: bytes,
    *,
    content_type: str | None,
    app_id: str,
    topic: str,
    pubsubname: str,
    overrides: CloudEventOverrides = _NO_OVERRIDES,
    ttl_s: float | None = None,
    now: datetime | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> bytes:
    """Dapr's envelope around ``body`` (§4.1), serialised as JSON bytes (the record value).

    ``content_type`` is the request's Content-Type (``None``/``""`` means ``text/plain``);
    ``ttl_s`` seconds from ``now`` (UTC, default the current time) set ``expiration``.
    ``traceparent``/``tracestate`` are the publish's W3C trace context (``runtime/tracing.py``),
    used unless ``overrides`` name one; without either a new trace starts. Never raises for any
    body: JSON that does not parse travels as a string.
    """
    now_s = _epoch_s(now)
    ctype = content_type or DEFAULT_CONTENT_TYPE
    traceparent = overrides.traceparent or overrides.traceid or traceparent or new_traceparent()
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
        "tracestate": overrides.tracestate or tracestate or "",
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
    if _INT64_MIN <= value <= _INT64_MAX and text != "-0":  # -0 would come back as 0
        return value
    return orjson.Fragment(text.encode())  # orjson cannot encode ints beyond 64 bits


def _exact_float(text: str) -> Any:
    return orjson.Fragment(text.encode())  # the original text: no binary rounding


def loads_exact(text: bytes | str) -> Any:
    """Parse JSON so that re-encoding with :func:`dumps_exact` gives every number back
    byte-exact: floats and integers beyond 64 bits become ``orjson.Fragment`` of their original
    text. Lone surrogate escapes become U+FFFD (as Go decodes them), so every string can be
    encoded again. ``NaN``/``Infinity`` are refused (not JSON). Raises ``ValueError`` (including
    ``UnicodeDecodeError``) for anything that is not JSON, and for JSON nested deeper than the
    interpreter's recursion limit (about 1000 levels)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    try:
        return json.loads(
            replace_lone_surrogate_escapes(text),
            parse_int=_exact_int,
            parse_float=_exact_float,
            parse_constant=_reject_constant,
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps_exact(value: Any) -> bytes:
    """``value`` as returned by :func:`loads_exact` (or built from such values) as JSON bytes,
    numbers byte-exact. Unlike ``orjson.dumps`` it also encodes values nested deeper than
    orjson's 254 levels, and replaces lone surrogates in strings with U+FFFD. Raises
    ``TypeError`` only for values JSON has no form for."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _dumps_iterative(value)


def _dumps_iterative(value: Any) -> bytes:
    # An explicit stack instead of recursion: nesting depth costs memory, not stack frames.
    out = bytearray()
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is bytes:  # punctuation pushed below; JSON values are never bytes
            out += item
        elif isinstance(item, dict):
            parts: list[Any] = [b"{"]
            for i, (key, member) in enumerate(item.items()):
                parts.append((b"," if i else b"") + _dumps_leaf(key) + b":")
                parts.append(member)
            parts.append(b"}")
            stack.extend(reversed(parts))
        elif isinstance(item, (list, tuple)):
            parts = [b"["]
            for i, member in enumerate(item):
                if i:
                    parts.append(b",")
                parts.append(member)
            parts.append(b"]")
            stack.extend(reversed(parts))
        else:
            out += _dumps_leaf(item)
    return bytes(out)


def _dumps_leaf(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        if isinstance(value, str):
            return orjson.dumps(_LONE_SURROGATE.sub("\ufffd", value))
        raise


def wrap_user_cloudevent(
    body: bytes,
    *,
    topic: str,
    pubsubname: str,
    ttl_s: float | None = None,
    now: datetime | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> bytes:
    """Complete a user CloudEvent (§4.2) and serialise it as JSON bytes.

    Every field is kept (extensions included); ``topic`` and ``pubsubname`` are overwritten;
    ``time``, ``source`` (``"Dapr"``), ``type``, ``specversion``, ``traceid``/``traceparent`` and
    ``tracestate`` are added when missing (the trace fields from ``traceparent``/``tracestate``,
    the publish's trace context, else a new trace); ``expiration`` is set when ``ttl_s`` is
    given.
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
        traceparent = traceparent or new_traceparent()
        event["traceid"] = traceparent
        event["traceparent"] = traceparent
        event.setdefault("tracestate", tracestate or "")
    event.setdefault("tracestate", "")
    event.setdefault("source", USER_CE_DEFAULT_SOURCE)
    event.setdefault("type", DEFAULT_EVENT_TYPE)
    event.setdefault("specversion", SPECVERSION)
    _check_required(event)
    expiration = _expiration(now_s, ttl_s)
    if expiration is not None:
        event["expiration"] = expiration
    return dumps_exact(event)


def _check_required(event: dict[str, Any]) -> None:
    required = {k: event[k] for k in ("id", "source", "type", "specversion") if k in event}
    errors = CloudEvent._validate_required_attributes(attributes=required)
    if errors:
        problems = "; ".join(f"{name}: {errs[0]}" for name, errs in sorted(errors.items()))
        raise InvalidCloudEvent(f"invalid cloudevent attributes ({problems})")
