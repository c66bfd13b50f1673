"""Structured logging for the sidecar and the CLI.

Log calls pass context as ``extra={...}`` with a fixed vocabulary: ``app_id``, ``pubsubname``,
``topic``, ``partition``, ``offset``, ``cloudevent_id``, ``attempt``. The text format appends them
as ``key=value``; ``--log-as-json`` prints one JSON object per line.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

FIELDS = ("app_id", "pubsubname", "topic", "partition", "offset", "cloudevent_id", "attempt",
          "path", "status")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}


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


def configure_logging(level: str = "info", *, as_json: bool = False) -> None:
    """Send logs to stderr at ``level`` (debug|info|warn|error), text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    # aiokafka logs every coordinator hiccup at INFO/ERROR; keep its noise at WARNING.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
