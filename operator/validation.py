"""Validate Components and Subscriptions as the sidecar would, and say so in ``status.conditions``.

Pure: a resource body (and the Secrets it references) in, a :class:`Verdict` out, and the
``Ready`` condition built from it. The checks are the sidecar's own (``tidings.sidecar.resources``:
``parse_resource`` and ``check_component``), so the operator reports exactly what a sidecar would
refuse. Neighbours: ``handlers.py`` writes the condition and the Event, ``appconfig.py`` resolves
secret references and normalises Subscriptions.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tidings.sidecar.resources import Component, ResourceError, TopicSubscription, parse_resource

from .appconfig import (
    SecretData,
    check_for_sidecar,
    check_subscription,
    is_jetstream,
    is_kafka,
    normalise_subscription,
    resolve_secret_refs,
    subscription_file,
)

__all__ = ["Verdict", "ready_condition", "validate_component", "validate_subscription"]

# Stands in for the app-id when a Component is checked on its own: only the Kafka consumer
# group default depends on it, and that cannot make a component invalid.
_ANY_APP = "validation"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of validating one resource. ``reason`` is CamelCase, as Kubernetes wants."""

    ok: bool
    reason: str
    message: str


def _source(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}".lstrip("/")


def validate_component(body: Mapping[str, Any], secrets: SecretData) -> Verdict:
    """Check a Component: schema, type/version, secret references, type-specific metadata."""
    source = _source(body)
    try:
        component = parse_resource(dict(body), source=source)
        if not isinstance(component, Component):
            raise ResourceError("not a dapr.io/v1alpha1 Component", source=source)
    except ResourceError as exc:
        return Verdict(False, "InvalidSpec", str(exc))
    try:
        doc = resolve_secret_refs(component, secrets, source=source)
    except ResourceError as exc:
        return Verdict(False, "SecretNotResolved", str(exc))
    try:
        plain = parse_resource(doc, source=source)
        assert isinstance(plain, Component)
        check_for_sidecar(plain, app_id=_ANY_APP, source=source)
    except ResourceError as exc:
        return Verdict(False, "InvalidSpec", str(exc))
    return Verdict(True, "Valid", f"{component.spec.type}/{component.spec.version} is valid")


def _subscription(body: Mapping[str, Any]) -> TopicSubscription:
    source = _source(body)
    sub = parse_resource(normalise_subscription(body), source=source)
    if sub is None or isinstance(sub, Component):
        raise ResourceError("not a dapr.io Subscription", source=source)
    return sub.to_topic_subscription()


def _apps(scopes: Iterable[str]) -> frozenset[str] | None:
    """An app set; ``None`` means every app (empty ``scopes``, §3.2)."""
    return frozenset(scopes) or None


def _shared_apps(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """Apps both scopes reach (``None``: every app); an empty set when none."""
    if a is None:
        return b
    return a if b is None else a & b


def validate_subscription(
    body: Mapping[str, Any],
    *,
    components: Iterable[Mapping[str, Any]] | None = None,
    subscriptions: Iterable[Mapping[str, Any]] | None = None,
) -> Verdict:
    """Check a Subscription (either served version) as the sidecar will use it.

    Alone: the sidecar's model, its CEL rules and at least one route. With ``components`` (the
    namespace's Component bodies): its pubsub must exist (``PubsubNotFound``) and, for a Kafka
    component, its topic and ``deadLetterTopic`` must be Kafka topic names. With
    ``subscriptions`` (the namespace's Subscription bodies, itself included or not): of two
    valid ones for the same (pubsubname, topic) reaching the same app, the sidecar keeps the
    one whose file comes last (``tidings.sidecar.delivery.subscriptions.effective_subscriptions``,
    files read in name order); the other gets ``Conflict``.
    """
    source = _source(body)
    try:
        ts = _subscription(body)
    except ResourceError as exc:
        return Verdict(False, "InvalidSpec", str(exc))
    kafka = jetstream = False
    if components is not None:
        pubsub = next(
            (c for c in components if (c.get("metadata") or {}).get("name") == ts.pubsubname), None
        )
        if pubsub is None:
            return Verdict(
                False,
                "PubsubNotFound",
                f"subscription {source}: no Component {ts.pubsubname!r} in the "
                f"namespace; the sidecar ignores it until there is one",
            )
        kafka, jetstream = is_kafka(pubsub), is_jetstream(pubsub)
    try:
        check_subscription(ts, kafka=kafka, source=source, jetstream=jetstream)
    except ResourceError as exc:
        return Verdict(False, "InvalidSpec", str(exc))
    if subscriptions is not None:
        conflict = _conflict(body, ts, subscriptions, kafka=kafka, jetstream=jetstream)
        if conflict is not None:
            return Verdict(False, "Conflict", conflict)
    return Verdict(True, "Valid", f"subscribes {ts.pubsubname}/{ts.topic}")


def _conflict(
    body: Mapping[str, Any],
    ts: TopicSubscription,
    subscriptions: Iterable[Mapping[str, Any]],
    *,
    kafka: bool,
    jetstream: bool = False,
) -> str | None:
    name = (body.get("metadata") or {}).get("name", "")
    mine = _apps(body.get("scopes") or [])
    for other in sorted(
        subscriptions,
        key=lambda b: subscription_file(str((b.get("metadata") or {}).get("name"))),
        reverse=True,
    ):
        other_name = str((other.get("metadata") or {}).get("name"))
        if subscription_file(other_name) <= subscription_file(name):
            break  # only a later file wins over this one
        try:
            theirs = _subscription(other)
            check_subscription(theirs, kafka=kafka, source=_source(other), jetstream=jetstream)
        except ResourceError:
            continue  # left out of every config: it displaces nothing
        if (theirs.pubsubname, theirs.topic) != (ts.pubsubname, ts.topic):
            continue
        shared = _shared_apps(mine, _apps(other.get("scopes") or []))
        if shared is not None and not shared:
            continue
        apps = "every app" if shared is None else "apps " + ", ".join(sorted(shared))
        return (
            f"Subscription {other_name!r} is for the same pubsub {ts.pubsubname!r} and topic "
            f"{ts.topic!r}; for {apps} the sidecar uses {other_name!r} (the last by name) "
            f"and ignores this one"
        )
    return None


def ready_condition(
    verdict: Verdict,
    *,
    generation: int | None,
    previous: Mapping[str, Any] | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The ``Ready`` condition for ``verdict``.

    ``lastTransitionTime`` moves only when ``status`` flips (Kubernetes API conventions), so
    re-validating an unchanged resource produces an identical condition and no write.
    """
    status = "True" if verdict.ok else "False"
    if previous and previous.get("status") == status and previous.get("lastTransitionTime"):
        when = previous["lastTransitionTime"]
    else:
        moment = now or datetime.datetime.now(datetime.UTC)
        when = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    condition: dict[str, Any] = {
        "type": "Ready",
        "status": status,
        "reason": verdict.reason,
        "message": verdict.message,
        "lastTransitionTime": when,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition
