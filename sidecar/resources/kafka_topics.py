"""Kafka topic names: the one check of what a Kafka cluster can hold.

Kafka (``org.apache.kafka.common.internals.Topic.validate``) allows 1 to 249 characters from
``[a-zA-Z0-9._-]``, and neither ``.`` nor ``..``. aiokafka does not check: a send to any other
name waits for metadata that never comes (``request_timeout_ms``), logs an error every
``retry_backoff_ms`` and keeps the name in its metadata for good. So the producer
(``brokers/kafka/producing.py``) checks every topic before aiokafka sees it,
``delivery/subscriptions.py`` leaves out subscriptions (and dead-letter topics) a Kafka component
cannot hold, and the operator reports them in the Subscription's status. Dapr's in-memory component
takes any name, so this applies to Kafka components only.
"""

from __future__ import annotations

import re

import orjson

__all__ = ["MAX_TOPIC_LENGTH", "invalid_topic_message", "kafka_topic_problem"]

MAX_TOPIC_LENGTH = 249
"""Kafka's limit, in characters (all of them ASCII)."""

_LEGAL = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_LEGAL_CHAR = re.compile(r"[a-zA-Z0-9._-]")
_SHOWN_CHARS = 80


def kafka_topic_problem(name: str) -> str | None:
    """Why Kafka cannot hold a topic called ``name``, or ``None`` when it can."""
    if _LEGAL.fullmatch(name):
        if name == "." or name == "..":
            return "'.' and '..' are not allowed"
        return None
    if not name:
        return "it is empty"
    if len(name) > MAX_TOPIC_LENGTH and all(_LEGAL_CHAR.fullmatch(c) for c in name):
        return f"it has {len(name)} characters, at most {MAX_TOPIC_LENGTH} are allowed"
    bad = next(c for c in name if not _LEGAL_CHAR.fullmatch(c))
    return f"it contains {bad!r}; only ASCII letters, digits, '.', '_' and '-' are allowed" + (
        f" (and at most {MAX_TOPIC_LENGTH} characters, it has {len(name)})"
        if len(name) > MAX_TOPIC_LENGTH
        else ""
    )


def invalid_topic_message(name: str, problem: str) -> str:
    """``topic "<name>" is not a valid Kafka topic name: <problem>``, the name JSON-quoted (control
    characters visible) and shortened to its first 80 characters."""
    shown = name if len(name) <= _SHOWN_CHARS else name[:_SHOWN_CHARS] + "..."
    return f"topic {orjson.dumps(shown).decode()} is not a valid Kafka topic name: {problem}"
