"""Go-style durations as Dapr metadata writes them (``"10s"``, ``"500ms"``, ``"1m30s"``).

A bare number is read as milliseconds, as Dapr's Kafka component does for its interval fields
(dapr-pubsub-contract.md §3.3, ``consumeRetryInterval``).
"""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration_seconds(text: str) -> float:
    """Parse ``text`` into seconds (float).

    Accepts Go's ``time.ParseDuration`` syntax with an optional leading sign, ``"0"``, and a bare
    number of milliseconds. Raises ``ValueError`` naming the text for anything else.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    try:
        return float(s) / 1000.0
    except ValueError:
        pass
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    pos, total = 0, 0.0
    for m in _PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f"invalid duration {text!r} (use Go syntax such as '10s' or '500ms')")
    return sign * total
