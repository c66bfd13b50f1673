"""Structured logging for the sidecar and the CLI.

Log calls pass context as ``extra={...}`` with a fixed vocabulary: ``app_id``, ``pubsubname``,
``topic``, ``partition``, ``offset``, ``cloudevent_id``, ``attempt``, ``outcome`` (what the
delivery engine does next: ``ack``, ``retry``, ``dead-letter``, ``give up``). The text
format appends them as ``key=value``; ``--log-as-json`` prints one JSON object per line.

Libraries that log the same line in a tight loop are held back by :class:`RepeatFilter`:
aiokafka during a broker outage (``Unable connect to node with id``, ``Failed fetch messages``,
each every ``retry_backoff_ms``), and ``aiohttp.server``, which logs a traceback at ERROR for
every malformed HTTP request a client sends.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

__all__ = ["JsonFormatter", "RepeatFilter", "TextFormatter", "configure_logging"]

FIELDS = (
    "app_id",
    "pubsubname",
    "topic",
    "partition",
    "offset",
    "cloudevent_id",
    "attempt",
    "outcome",
    "path",
    "status",
)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value...``."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if hasattr(record, k))
        return f"{base} {extras}" if extras else base


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``msg`` and
    the context fields present on the record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


REPEATING_LOGGERS = ("aiokafka", "aiohttp.server")
"""Logger hierarchies :func:`configure_logging` applies :class:`RepeatFilter` to."""


@dataclass(slots=True)
class _Kind:
    since: float  # clock seconds when the last record of this kind went through
    held_back: int = 0


class RepeatFilter(logging.Filter):
    """Lets the first record of a kind through and holds back the repeats for ``window_s``
    seconds; the first repeat after that goes through with a note saying how many were held
    back (``... (held back 287 more like this in the last 30 s)``), and a new window starts.

    A *kind* is the logger name plus the unformatted message template (``record.msg``), so
    ``Unable connect to node with id %s`` is one kind whatever the node. Only records of the
    ``loggers`` hierarchies (a name or a dotted child of it) at WARNING or above are touched;
    everything else passes. ``clock`` returns seconds (``time.monotonic`` by default; tests
    inject their own). At most ``max_kinds`` kinds are remembered (the oldest are forgotten).
    Repeats held back when the flood ends are not reported. Thread-safe.
    """

    def __init__(
        self,
        loggers: Iterable[str] = REPEATING_LOGGERS,
        *,
        window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 1024,
    ) -> None:
        super().__init__()
        self._names = tuple(loggers)
        self._prefixes = tuple(f"{name}." for name in self._names)
        self.window_s = window_s
        self._clock = clock
        self._max_kinds = max_kinds
        self._kinds: dict[tuple[str, str], _Kind] = {}
        self._lock = threading.Lock()

    def _applies(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and (
            record.name in self._names or record.name.startswith(self._prefixes)
        )

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._applies(record):
            return True
        key = (record.name, record.msg if isinstance(record.msg, str) else str(record.msg))
        now = self._clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is not None and now - kind.since < self.window_s:
                kind.held_back += 1
                return False
            held_back, since = (kind.held_back, kind.since) if kind is not None else (0, now)
            self._kinds.pop(key, None)  # re-inserted last: the dict stays oldest-first
            self._kinds[key] = _Kind(now)
            if len(self._kinds) > self._max_kinds:
                del self._kinds[next(iter(self._kinds))]
        if held_back:
            record.msg = (
                f"{record.getMessage()} (held back {held_back} more like this in the "
                f"last {now - since:.0f} s)"
            )
            record.args = None
        return True


def configure_logging(level: str = "info", *, as_json: bool = False) -> None:
    """Send logs to stderr at ``level`` (debug|info|warn|error), text or JSON lines, with
    repeats from aiokafka and ``aiohttp.server`` held back (:class:`RepeatFilter`, 30 s)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    # aiokafka logs every coordinator hiccup at INFO/ERROR; keep its noise at WARNING.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
