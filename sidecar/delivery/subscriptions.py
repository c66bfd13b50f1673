"""Programmatic subscriptions, and the one merged set of subscriptions the sidecar delivers.

Programmatic subscriptions are what the app answers to ``GET /dapr/subscribe``
(dapr-pubsub-contract.md §2.1). :func:`parse_programmatic` turns that JSON into
:class:`TopicSubscription` (``type=PROGRAMMATIC``), skipping bad entries with an error log: one
bad entry never costs the app its other subscriptions. Rule order is ``routes.rules`` as listed,
then ``routes.default`` if set, else ``route``. As with Go's JSON decoding in Dapr, keys match
case-insensitively when there is no exact match (``pubsubName`` works like ``pubsubname``).

:func:`effective_subscriptions` merges them with the declarative ones (``resources/loading.py``):

- one subscription per ``(pubsubname, topic)``. **Programmatic wins on a clash**: like Dapr
  (dapr/dapr ``getSubscriptions``), the declarative one is skipped with the warning
  ``two identical subscriptions found (sources: declarative, app endpoint)``. Two of the same
  kind for one topic: the last listed wins (Dapr's route map keeps the last), with a warning;
- a subscription naming a pubsub that is not configured is left out (warning);
- a subscription the component's topic scoping forbids (§5.1,
  ``publishing.scoping.subscribe_allowed``) is refused:
  ``subscription to topic '<t>' on pubsub '<p>' is not allowed``;
- on a Kafka component, a subscription whose topic or ``deadLetterTopic`` Kafka cannot hold
  (``resources/kafka_topics.py``: ``a/b``, ``a b``, over 249 characters...) is left out with an
  error naming the topic; subscribing aiokafka to it would only fail forever;
- on a JetStream component, likewise a topic that is no NATS subject filter or a
  ``deadLetterTopic`` that is no subject one can publish to (``resources/jetstream.py``);
- a subscription with no route at all is dropped (``topic X has an empty routes``), and one whose
  CEL rule does not compile is dropped with the compile error (Dapr fails the whole discovery
  call; we keep the app's other subscriptions).

Neighbours: ``delivery/channel/http.py`` fetches the JSON, ``routing.py`` compiles rules,
``engine.py`` receives the result per pubsub, ``runtime/runner.py`` calls both functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..publishing.scoping import subscribe_allowed
from ..resources.jetstream import filter_subject_problem, subject_problem
from ..resources.kafka_topics import invalid_topic_message, kafka_topic_problem
from ..resources.loading import LoadedComponent
from ..resources.models import (
    BulkOptions,
    ResourceError,
    Route,
    SubscriptionType,
    TopicSubscription,
)
from .jsonfields import json_field as _get
from .routing import Routes

__all__ = ["effective_subscriptions", "parse_programmatic"]

log = logging.getLogger(__name__)

SOURCE = "/dapr/subscribe"


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = _get(obj, key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ResourceError(
            f"{key} must be a string, got {type(value).__name__}",
            source=SOURCE,
            field=f"{where}.{key}",
        )
    return value


def _parse_one(item: Any, where: str) -> TopicSubscription:
    if not isinstance(item, Mapping):
        raise ResourceError("a subscription must be a JSON object", source=SOURCE, field=where)
    pubsubname = _optional_str(item, "pubsubname", where)
    topic = _optional_str(item, "topic", where)
    if not pubsubname:
        raise ResourceError("pubsubname is required", source=SOURCE, field=f"{where}.pubsubname")
    if not topic:
        raise ResourceError("topic is required", source=SOURCE, field=f"{where}.topic")
    route = _optional_str(item, "route", where)
    rules: list[Route] = []
    default = ""
    routes = _get(item, "routes")
    if routes is not None:
        if not isinstance(routes, Mapping):
            raise ResourceError(
                "routes must be an object with rules and default",
                source=SOURCE,
                field=f"{where}.routes",
            )
        default = _optional_str(routes, "default", f"{where}.routes")
        raw_rules = _get(routes, "rules")
        if raw_rules is not None and not isinstance(raw_rules, list):
            raise ResourceError(
                "routes.rules must be an array", source=SOURCE, field=f"{where}.routes.rules"
            )
        for i, rule in enumerate(raw_rules or ()):
            rule_where = f"{where}.routes.rules[{i}]"
            if not isinstance(rule, Mapping):
                raise ResourceError(
                    "a rule must be an object with match and path", source=SOURCE, field=rule_where
                )
            rules.append(
                Route(
                    match=_optional_str(rule, "match", rule_where),
                    path=_optional_str(rule, "path", rule_where),
                )
            )
    metadata_raw = _get(item, "metadata")
    metadata: dict[str, str] = {}
    if metadata_raw is not None:
        if not isinstance(metadata_raw, Mapping) or not all(
            isinstance(v, str) for v in metadata_raw.values()
        ):
            raise ResourceError(
                "metadata must be an object of strings", source=SOURCE, field=f"{where}.metadata"
            )
        metadata = {str(k): v for k, v in metadata_raw.items()}
    dead_letter_topic = _optional_str(item, "deadLetterTopic", where)
    bulk = _bulk_options(_get(item, "bulkSubscribe"), f"{where}.bulkSubscribe")
    return TopicSubscription(
        pubsubname=pubsubname,
        topic=topic,
        rules=tuple(rules),
        # routes.default wins over the v1 route (§2.1).
        default_path=default or route or None,
        metadata=metadata,
        dead_letter_topic=dead_letter_topic or None,
        type=SubscriptionType.PROGRAMMATIC,
        bulk=bulk,
    )


def _bulk_options(bulk: Any, where: str) -> BulkOptions | None:
    """``bulkSubscribe`` (§2.1, §2.4): options when ``enabled`` is true, else ``None``."""
    if bulk is None:
        return None
    if not isinstance(bulk, Mapping):
        raise ResourceError(
            "bulkSubscribe must be an object with enabled, maxMessagesCount and maxAwaitDurationMs",
            source=SOURCE,
            field=where,
        )
    enabled = _get(bulk, "enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ResourceError(
            "enabled must be true or false", source=SOURCE, field=f"{where}.enabled"
        )
    counts: list[int | None] = []
    for key in ("maxMessagesCount", "maxAwaitDurationMs"):
        value = _get(bulk, key)
        # JSON numbers decode to int or float; Go's int32 field refuses fractions
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ResourceError(f"{key} must be an integer", source=SOURCE, field=f"{where}.{key}")
        counts.append(value)
    if not enabled:
        return None
    return BulkOptions.of(counts[0], counts[1])


def parse_programmatic(items: Iterable[Any]) -> list[TopicSubscription]:
    """The app's ``/dapr/subscribe`` answer (a list of JSON objects) as subscriptions.

    Entries that do not fit the §2.1 shape (missing ``pubsubname``/``topic``, wrong types) are
    logged with the offending field and skipped. Never raises.
    """
    subscriptions: list[TopicSubscription] = []
    for index, item in enumerate(items):
        try:
            subscriptions.append(_parse_one(item, f"[{index}]"))
        except ResourceError as exc:
            log.error("invalid subscription from the app, skipped: %s", exc)
    return subscriptions


def _describe(sub: TopicSubscription) -> str:
    return sub.name or f"{sub.type.value.lower()} {sub.pubsubname}/{sub.topic}"


def _unfit_kafka_topic(sub: TopicSubscription) -> str | None:
    for field, name in (("topic", sub.topic), ("deadLetterTopic", sub.dead_letter_topic)):
        if name:
            problem = kafka_topic_problem(name)
            if problem is not None:
                return f"{field}: {invalid_topic_message(name, problem)}"
    return None


def _unfit_subject(sub: TopicSubscription) -> str | None:
    problem = filter_subject_problem(sub.topic)
    if problem is not None:
        return f"topic {sub.topic!r} is not a NATS subject: {problem}"
    if sub.dead_letter_topic:
        problem = subject_problem(sub.dead_letter_topic)
        if problem is not None:
            return (
                f"deadLetterTopic {sub.dead_letter_topic!r} is not a NATS subject one can "
                f"publish to: {problem}"
            )
    return None


def effective_subscriptions(
    *,
    declarative: Iterable[TopicSubscription],
    programmatic: Iterable[TopicSubscription],
    components: Mapping[str, LoadedComponent],
    app_id: str,
) -> list[TopicSubscription]:
    """The subscriptions to deliver: at most one per ``(pubsubname, topic)``, programmatic
    first, then declarative, in discovery order. See the module docstring for the rules.
    Never raises; everything left out is logged with the reason.
    """
    chosen: dict[tuple[str, str], TopicSubscription] = {}
    for sub in programmatic:
        key = (sub.pubsubname, sub.topic)
        if key in chosen:
            log.warning(
                "the app returned two subscriptions for pubsub %s topic %s; the last one is used",
                sub.pubsubname,
                sub.topic,
                extra={"app_id": app_id, "pubsubname": sub.pubsubname, "topic": sub.topic},
            )
        chosen[key] = sub
    from_app = set(chosen)
    for sub in declarative:
        key = (sub.pubsubname, sub.topic)
        extra = {"app_id": app_id, "pubsubname": sub.pubsubname, "topic": sub.topic}
        if key in from_app:
            log.warning(
                "two identical subscriptions found (sources: declarative, app endpoint). "
                "pubsubname: %s, topic: %s; the app's subscription is used and %s is "
                "ignored",
                sub.pubsubname,
                sub.topic,
                _describe(sub),
                extra=extra,
            )
            continue
        if key in chosen:
            log.warning(
                "two declarative subscriptions for pubsub %s topic %s; %s is used",
                sub.pubsubname,
                sub.topic,
                _describe(sub),
                extra=extra,
            )
        chosen[key] = sub

    effective: list[TopicSubscription] = []
    for (pubsubname, topic), sub in chosen.items():
        extra = {"app_id": app_id, "pubsubname": pubsubname, "topic": topic}
        component = components.get(pubsubname)
        if component is None:
            log.warning(
                "subscription %s names pubsub %r, which is not configured; ignored",
                _describe(sub),
                pubsubname,
                extra=extra,
            )
            continue
        if not subscribe_allowed(component.metadata, app_id, topic):
            log.warning(
                "subscription to topic '%s' on pubsub '%s' is not allowed",
                topic,
                pubsubname,
                extra=extra,
            )
            continue
        if component.kafka is not None:
            unfit = _unfit_kafka_topic(sub)
            if unfit is not None:
                log.error("subscription %s is ignored: %s", _describe(sub), unfit, extra=extra)
                continue
        if component.jetstream is not None:
            unfit = _unfit_subject(sub)
            if unfit is not None:
                log.error("subscription %s is ignored: %s", _describe(sub), unfit, extra=extra)
                continue
        try:
            routes = Routes.compile(sub)
        except ResourceError as exc:
            log.error("subscription %s is ignored: %s", _describe(sub), exc, extra=extra)
            continue
        if not routes:
            log.warning(
                "topic %s has an empty routes. removing from subscriptions list", topic, extra=extra
            )
            continue
        effective.append(sub)
    return effective
