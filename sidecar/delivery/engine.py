"""The delivery engine: one consumed record → the app → ack, retry, or dead-letter then ack.

This module is THE one place that maps what happened to a record (a :class:`Verdict`) to what
the sidecar does next (an :class:`Outcome`): :func:`decide` is a pure function, so the whole
policy reads as one table and is tested as one. :class:`Dispatcher` runs the steps of
dapr-pubsub-contract.md §4.4/§2 for one pubsub component and implements the broker ``Handler``
contract (``brokers/base.py``): ``await dispatcher.handle(record)`` returns only when the record
is finished (the app acknowledged it, or it went to the dead-letter topic, or it was dropped on
purpose), so the broker may then commit its offset.

Steps per attempt: read the value (``envelopes/reading.py``) → expiry (``expiration`` in the past)
→ route (``routing.py``, CEL rules compiled once in :meth:`Dispatcher.set_subscriptions`) → POST
to the app (``delivery/channel/http.py``) with ``Content-Type: application/cloudevents+json`` and
the record's metadata as HTTP headers, or ``OnTopicEvent`` with them as gRPC metadata
(``delivery/channel/grpc.py``, ``--app-protocol grpc``); the answer is classified by the channel
into the same statuses.

The policy (:func:`decide`), following Dapr HEAD (§2.2, §2.3, §5.3, §9):

============================  ====================================  ==========================
verdict                       with a ``deadLetterTopic``            without
============================  ====================================  ==========================
app answered SUCCESS          ack                                   ack
app answered DROP, or 404     dead-letter, ack                      ack (logged)
expired (``expiration``)      dead-letter, ack                      ack (logged)
no route matched              dead-letter, ack                      ack (logged)
not a CloudEvent (poison)     dead-letter, ack                      retry (see below)
CEL rule failed to evaluate   dead-letter, ack                      retry
app failed (RETRY, unknown    ``max_retries`` -1: dead-letter at    retry; after
status, other HTTP status,    once; else after ``max_retries``      ``max_retries`` (if not -1)
unreachable, timeout)         retries: dead-letter, ack             give up: ack, error log
subscription gone (reload)    ack (logged)                          ack (logged)
============================  ====================================  ==========================

Why a dead-letter topic short-circuits an unbounded policy: in Dapr the Kafka component's
``backOff*`` retry re-invokes the whole handler, and the handler sends a failed delivery to the
dead-letter topic on the first failure unless a Resiliency inbound policy retries it first
(docs pubsub-deadletter.md, §5.3). We have no Resiliency policy, so ``backOffMaxRetries: -1``
(the default) plus a ``deadLetterTopic`` behaves as in Dapr: the first failure goes to the
dead-letter topic. A bounded ``backOffMaxRetries`` acts like an inbound retry policy: that many
retries, then the dead-letter topic. Retries back off per ``retries.py``; every retry re-runs the
whole pipeline with the subscription as it is then (hot reload), as Dapr's component retry does.

The dead-letter record is the ORIGINAL record (value, key, headers), produced through the
publisher (scope-checked). If producing it fails, that publish is retried with backoff forever:
a record is never acked before its dead-letter copy is stored (faust's rule).

Cancellation (partition revoked, shutdown grace exhausted) propagates immediately out of a retry
sleep, a POST or a dead-letter publish; the record is then not finished and is not dead-lettered.

Every give-up, drop and poison path logs one line with ``app_id``, ``pubsubname``, ``topic``,
``partition``, ``offset`` and ``cloudevent_id`` (``runtime/logs.py`` field names).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_from_bytes, quote_plus

from multidict import CIMultiDict

from ..brokers.base import Record
from ..envelopes.reading import CloudEventError, ReadEvent, expired, read_event
from ..resources.kafka import RetryPolicy
from ..resources.models import TopicSubscription
from ..runtime.metrics import TopicDeliveries, record_ingress, topic_deliveries
from ..runtime.tracing import end_span, start_delivery
from .channel.types import AppResponse, AppStatus, Channel
from .retries import delay_s, may_retry
from .routing import Routes, RoutingError

__all__ = [
    "Action",
    "Dispatcher",
    "Outcome",
    "Verdict",
    "decide",
    "http_headers",
    "reserved_header",
]

log = logging.getLogger(__name__)

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"


class Verdict(enum.Enum):
    """What happened to one delivery attempt."""

    DELIVERED = "delivered"
    DROPPED = "dropped"  # app answered DROP, or 404
    FAILED = "failed"  # app answered RETRY/unknown status/other HTTP status, or was unreachable
    POISON = "poison"  # value is not a CloudEvent JSON object
    ROUTING_ERROR = "routing error"
    EXPIRED = "expired"
    UNMATCHED = "unmatched"
    NO_SUBSCRIPTION = "no subscription"


# Dapr's ingress metric ``process_status`` of an app answer (runtime/metrics.py).
_PROCESS_STATUS = {Verdict.DELIVERED: "success", Verdict.DROPPED: "drop", Verdict.FAILED: "retry"}
# The app's answer as a verdict: anything but SUCCESS and DROP (RETRY, no answer) is a failure.
_VERDICT_OF = {AppStatus.SUCCESS: Verdict.DELIVERED, AppStatus.DROP: Verdict.DROPPED}


class Action(enum.Enum):
    """What the engine does next."""

    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead-letter"  # produce the original record to the DLT, then ack
    GIVE_UP = "give up"  # bounded retries ran out and there is no DLT: ack, logged as an error


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision for one attempt. ``delay_s`` (seconds) is set for :attr:`Action.RETRY`."""

    action: Action
    delay_s: float = 0.0


_ACK = Outcome(Action.ACK)
_DEAD_LETTER = Outcome(Action.DEAD_LETTER)
_GIVE_UP = Outcome(Action.GIVE_UP)


def _retry_or_give_up(retry: RetryPolicy, retries_done: int) -> Outcome:
    if may_retry(retry, retries_done):
        return Outcome(Action.RETRY, delay_s(retry, retries_done + 1))
    return _GIVE_UP


def decide(
    verdict: Verdict,
    *,
    dead_letter_topic: str | None,
    retry: RetryPolicy,
    retries_done: int,
) -> Outcome:
    """The policy table of this module's docstring. Pure.

    ``retries_done`` counts retries already made for this record (0 on the first attempt).
    """
    if verdict is Verdict.DELIVERED or verdict is Verdict.NO_SUBSCRIPTION:
        return _ACK
    if verdict in (Verdict.DROPPED, Verdict.EXPIRED, Verdict.UNMATCHED):
        return _DEAD_LETTER if dead_letter_topic else _ACK
    if verdict in (Verdict.POISON, Verdict.ROUTING_ERROR):
        return _DEAD_LETTER if dead_letter_topic else _retry_or_give_up(retry, retries_done)
    # Verdict.FAILED
    if dead_letter_topic:
        if retry.max_retries < 0 or not may_retry(retry, retries_done):
            return _DEAD_LETTER
        return Outcome(Action.RETRY, delay_s(retry, retries_done + 1))
    return _retry_or_give_up(retry, retries_done)


# --- HTTP headers from record metadata (§2.3, §5.9) -------------------------------------------

# Header names are HTTP tokens (RFC 9110 §5.6.2). Values may hold any byte but controls other
# than HTAB; aiohttp refuses the rest, which must never stall a partition (components-contrib#3507).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_SAFE = "!#$&'*+-.^_`|~"  # token characters quote() may keep ('%' is the escape itself)
_INVALID_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Framing, hop-by-hop (RFC 9110 §7.6.1) and credentials are the sidecar's, never a record's: a
# publisher must not be able to make an Authorization or dapr-api-token header (the app's
# APP_API_TOKEN, docs.dapr.io/operations/security/app-api-token/) arrive at the subscriber, nor
# change how the request to the app is framed or routed.
_RESERVED = frozenset(
    {
        "content-length",
        "content-type",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "authorization",
        "dapr-api-token",
    }
)
_RESERVED_PREFIX = "proxy-"  # Proxy-Authorization, Proxy-Authenticate, Proxy-Connection...


def reserved_header(name: str) -> bool:
    """Whether a record header called ``name`` (any case) is never delivered as an HTTP header
    or gRPC metadata: framing and hop-by-hop headers, ``Authorization``, ``Proxy-*`` and
    ``dapr-api-token``."""
    lower = name.lower()
    return lower in _RESERVED or lower.startswith(_RESERVED_PREFIX)


@functools.lru_cache(maxsize=1024)
def _header_name(name: str) -> str | None:
    """``name`` as a valid HTTP header name: itself, percent-escaped, or ``None`` (skip)."""
    if _TOKEN.fullmatch(name):
        return None if reserved_header(name) else name
    if not name:
        log.warning("record header with an empty name is not delivered")
        return None
    escaped = quote(name, safe=_TOKEN_SAFE)
    log.warning(
        "record header name %r is not a valid HTTP header name; delivered as %r", name, escaped
    )
    return None if reserved_header(escaped) else escaped


def _header_value(raw: bytes | None, escape_all: bool) -> str:
    if raw is None:
        return ""
    if escape_all:
        return quote_plus(raw, safe="")  # Go's url.QueryEscape, as Kafka escapeHeaders does
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return quote_from_bytes(raw, safe="")
    if _INVALID_VALUE.search(text):
        return quote_from_bytes(raw, safe="")
    return text


def _text_value(text: str, escape_all: bool) -> str:
    if escape_all:
        return quote_plus(text, safe="")
    if _INVALID_VALUE.search(text):
        return quote(text, safe="")
    return text


def http_headers(
    record: Record,
    event: Mapping[str, Any],
    *,
    pubsubname: str,
    escape_all: bool = False,
) -> CIMultiDict[str]:
    """The HTTP headers of one delivery (§2.3, §5.9). Pure.

    In increasing precedence: the record's Kafka headers (the last of a repeated name wins, as
    in Dapr's metadata map); ``__key`` (when the record has a key), ``__offset``,
    ``__partition``, ``__topic``, ``__timestamp`` (milliseconds) from the record itself;
    ``traceparent``/``tracestate`` from the event; ``pubsubName``; ``Content-Type:
    application/cloudevents+json``. Framing and hop-by-hop headers, ``Authorization``,
    ``Proxy-*`` and ``dapr-api-token`` from records are dropped (:func:`reserved_header`). A
    value that is not valid UTF-8 or holds control bytes is percent-encoded; with
    ``escape_all`` (the Kafka component's ``escapeHeaders``) every value is URL-query-escaped.
    """
    headers: CIMultiDict[str] = CIMultiDict()
    for name, raw in record.headers:
        valid = _header_name(name)
        if valid is not None:
            headers[valid] = _header_value(raw, escape_all)
    if record.key is not None:
        headers["__key"] = _header_value(record.key, escape_all)
    headers["__offset"] = str(record.offset)
    headers["__partition"] = str(record.partition)
    headers["__topic"] = _text_value(record.topic, False)
    headers["__timestamp"] = str(record.timestamp_ms)
    for name in ("traceparent", "tracestate"):
        value = event.get(name)
        if isinstance(value, str) and value:
            headers[name] = _text_value(value, False)
    headers["pubsubName"] = pubsubname
    headers["Content-Type"] = CLOUDEVENTS_CONTENT_TYPE
    return headers


# --- the dispatcher ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    subscription: TopicSubscription
    routes: Routes
    raw_payload: bool
    dead_letter_topic: str | None


@dataclass(frozen=True, slots=True)
class _Attempt:
    verdict: Verdict
    reason: str = ""
    cloudevent_id: str = ""
    path: str = ""
    http_status: int | None = None
    dead_letter_topic: str | None = None


_NO_SUBSCRIPTION = _Attempt(Verdict.NO_SUBSCRIPTION, "no subscription for this topic any more")

DeadLetter = Callable[[str, Record], Awaitable[None]]


class Dispatcher:
    """Delivers the records of one pubsub component to the app; the broker's ``Handler``.

    ``dead_letter(topic, record)`` must produce the original record to ``topic`` and return only
    once it is stored, raising otherwise (``Publisher.dead_letter``). ``retry`` is the
    component's policy (seconds). ``escape_headers`` mirrors the Kafka component's
    ``escapeHeaders`` (URL-escape every header value).
    """

    def __init__(
        self,
        *,
        app_id: str,
        pubsubname: str,
        channel: Channel,
        retry: RetryPolicy,
        dead_letter: DeadLetter,
        escape_headers: bool = False,
    ) -> None:
        self.app_id = app_id
        self.pubsubname = pubsubname
        self._channel = channel
        self._retry = retry
        self._dead_letter = dead_letter
        self._escape_headers = escape_headers
        self._targets: dict[str, _Target] = {}

    def set_subscriptions(self, subscriptions: Mapping[str, TopicSubscription]) -> None:
        """Replace the subscriptions, keyed by topic (hot reload; in-flight retries pick up the
        new set on their next attempt). Rules are compiled here, once.

        Raises :class:`ResourceError` for a rule that does not compile; the previous set then
        stays in effect. ``subscriptions.effective_subscriptions`` never yields such a rule.
        """
        targets = {
            topic: _Target(
                sub,
                Routes.compile(sub, clean_paths=self._channel.cleans_paths),
                sub.raw_payload,
                sub.dead_letter_topic,
            )
            for topic, sub in subscriptions.items()
        }
        self._targets = targets

    def _extra(self, record: Record, attempt: _Attempt, retries_done: int) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "pubsubname": self.pubsubname,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "cloudevent_id": attempt.cloudevent_id,
            "attempt": retries_done + 1,
            "path": attempt.path,
            "status": attempt.http_status,
        }

    async def handle(self, record: Record) -> None:
        """Deliver ``record`` until it is finished (see the module docstring).

        Returns once acked or dead-lettered. Raises only ``CancelledError`` (the record is then
        not finished and must not be committed).
        """
        state = topic_deliveries(self.app_id, self.pubsubname, record.topic)
        state.in_flight += 1
        try:
            await self._handle(record, state)
        finally:
            state.in_flight -= 1

    async def _handle(self, record: Record, state: TopicDeliveries) -> None:
        retries_done = 0
        while True:
            try:
                attempt = await self._attempt(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill the partition worker: retry it
                log.exception(
                    "unexpected error delivering a record",
                    extra=self._extra(record, _Attempt(Verdict.FAILED), retries_done),
                )
                attempt = _Attempt(Verdict.FAILED, f"unexpected error: {exc!r}")
            outcome = self._conclude(record, attempt, state, retries_done)
            if outcome.action is Action.RETRY:
                state.retries += 1
                await asyncio.sleep(outcome.delay_s)  # backoff; cancellation stops it at once
                retries_done += 1
                continue
            if outcome.action is Action.DEAD_LETTER:
                assert attempt.dead_letter_topic is not None
                await self._dead_letter_until_stored(
                    attempt.dead_letter_topic, record, attempt, retries_done
                )
                state.dead_lettered += 1
            return

    def _conclude(
        self, record: Record, attempt: _Attempt, state: TopicDeliveries, retries_done: int
    ) -> Outcome:
        """What follows ``attempt`` of ``record`` (:func:`decide`), logged, and a failure
        counted in the topic's ``state``."""
        outcome = decide(
            attempt.verdict,
            dead_letter_topic=attempt.dead_letter_topic,
            retry=self._retry,
            retries_done=retries_done,
        )
        self._report(record, attempt, outcome, retries_done)
        if attempt.verdict is not Verdict.DELIVERED:
            state.failed(
                f"{attempt.verdict.value}: {attempt.reason}"
                if attempt.reason
                else attempt.verdict.value
            )
        return outcome

    def _checked(self, record: Record, target: _Target) -> tuple[ReadEvent, str] | _Attempt:
        """The checks before ``record`` may go to the app: it reads as an event (§4.4), has not
        expired and matches a route (§2.4: per event in a bulk delivery too). Returns the event
        and its route's path, or the attempt that ends here."""
        dlt = target.dead_letter_topic
        try:
            read = read_event(
                record.value,
                topic=record.topic,
                pubsubname=self.pubsubname,
                raw_payload=target.raw_payload,
                headers=record.headers,
            )
        except CloudEventError as exc:
            return _Attempt(Verdict.POISON, str(exc), dead_letter_topic=dlt)
        event = read.event
        ce_id = read.cloudevent_id
        if expired(event, time.time()):
            return _Attempt(
                Verdict.EXPIRED,
                f"expired at {event.get('expiration')}",
                ce_id,
                dead_letter_topic=dlt,
            )
        try:
            path = target.routes.select(event)
        except RoutingError as exc:
            return _Attempt(Verdict.ROUTING_ERROR, str(exc), ce_id, dead_letter_topic=dlt)
        if path is None:
            return _Attempt(
                Verdict.UNMATCHED,
                "no route matched and there is no default",
                ce_id,
                dead_letter_topic=dlt,
            )
        return read, path

    def _answered(self, topic: str, span: Any, response: AppResponse, elapsed_s: float) -> Verdict:
        """The verdict of the app's ``response`` to one event of ``topic``; ends its ``span``
        and counts it in the ingress metrics."""
        verdict = _VERDICT_OF.get(response.status, Verdict.FAILED)
        end_span(
            span,
            None if verdict is Verdict.DELIVERED else response.reason,
            {"tidings.process_status": _PROCESS_STATUS[verdict]},
        )
        record_ingress(
            self.app_id,
            self.pubsubname,
            topic,
            process_status=_PROCESS_STATUS[verdict],
            elapsed_s=elapsed_s,
        )
        return verdict

    async def _attempt(self, record: Record) -> _Attempt:
        target = self._targets.get(record.topic)
        if target is None:
            return _NO_SUBSCRIPTION
        checked = self._checked(record, target)
        if isinstance(checked, _Attempt):
            return checked
        read, path = checked
        headers = http_headers(
            record, read.event, pubsubname=self.pubsubname, escape_all=self._escape_headers
        )
        span = start_delivery(
            headers,
            app_id=self.app_id,
            pubsubname=self.pubsubname,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        started = time.perf_counter()
        response = await self._channel.deliver(
            path, read, headers, topic=record.topic, pubsubname=self.pubsubname
        )
        verdict = self._answered(record.topic, span, response, time.perf_counter() - started)
        return _Attempt(
            verdict,
            response.reason,
            read.cloudevent_id,
            path,
            response.http_status,
            target.dead_letter_topic,
        )

    def _report(
        self, record: Record, attempt: _Attempt, outcome: Outcome, retries_done: int
    ) -> None:
        """The one log line per attempt that did not simply succeed."""
        verdict, action = attempt.verdict, outcome.action
        if verdict is Verdict.DELIVERED:
            if retries_done:
                log.info(
                    "delivered after %d retries",
                    retries_done,
                    extra={**self._extra(record, attempt, retries_done), "outcome": action.value},
                )
            return
        extra = self._extra(record, attempt, retries_done)
        extra["outcome"] = action.value
        then = {
            Action.ACK: "acked",
            Action.RETRY: f"retrying in {outcome.delay_s:.3g}s",
            Action.DEAD_LETTER: f"sending it to dead-letter topic {attempt.dead_letter_topic}",
            Action.GIVE_UP: (
                f"too many failed attempts ({retries_done + 1}); giving up and "
                "acking, no deadLetterTopic is set"
            ),
        }[action]
        if verdict is Verdict.EXPIRED:
            log.warning(
                "dropping expired pub/sub event %s (%s); %s",
                attempt.cloudevent_id,
                attempt.reason,
                then,
                extra=extra,
            )
        elif verdict is Verdict.UNMATCHED:
            log.info("no matching route for event %s; %s", attempt.cloudevent_id, then, extra=extra)
        elif verdict is Verdict.NO_SUBSCRIPTION:
            log.warning(
                "record of topic %s has no subscription any more (hot reload); %s",
                record.topic,
                then,
                extra=extra,
            )
        elif verdict is Verdict.DROPPED:
            level = logging.ERROR if attempt.http_status == 404 else logging.WARNING
            log.log(
                level,
                "%s for event %s; %s",
                attempt.reason,
                attempt.cloudevent_id,
                then,
                extra=extra,
            )
        elif action is Action.GIVE_UP:
            log.error("%s: %s", then, attempt.reason, extra=extra)
        elif verdict in (Verdict.POISON, Verdict.ROUTING_ERROR):
            log.error("%s; %s", attempt.reason, then, extra=extra)
        else:
            log.warning(
                "delivery of event %s failed: %s; %s",
                attempt.cloudevent_id,
                attempt.reason,
                then,
                extra=extra,
            )

    async def _dead_letter_until_stored(
        self,
        topic: str,
        record: Record,
        attempt: _Attempt,
        retries_done: int,
    ) -> None:
        failures = 0
        while True:
            try:
                await self._dead_letter(topic, record)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # BrokerError, DaprError (forbidden), anything: never ack
                failures += 1
                wait_s = delay_s(self._retry, failures)
                log.error(
                    "could not produce to dead-letter topic %s, retrying in %.3gs "
                    "(the record stays unacknowledged): %s",
                    topic,
                    wait_s,
                    exc,
                    extra=self._extra(record, attempt, retries_done),
                )
                await asyncio.sleep(wait_s)  # backoff; cancellation stops it at once
