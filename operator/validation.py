"""Validate Components and Subscriptions as the sidecar would, and say so in ``status.conditions``.

Pure: a resource body (and the Secrets it references) in, a :class:`Verdict` out, and the
``Ready`` condition built from it. The checks are the sidecar's own (``tidings.sidecar.resources``:
``parse_resource`` and ``check_component``), so the operator reports exactly what a sidecar would
refuse. Neighbours: ``handlers.py`` writes the condition and the Event, ``appconfig.py`` resolves
secret references and normalises Subscriptions.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidings.sidecar.resources import Component, ResourceError, parse_resource
from tidings.sidecar.resources.rules import compile_rules

from .appconfig import SecretData, check_for_sidecar, normalise_subscription, resolve_secret_refs

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


def validate_subscription(body: Mapping[str, Any]) -> Verdict:
    """Check a Subscription (either served version) against the sidecar's model."""
    source = _source(body)
    try:
        sub = parse_resource(normalise_subscription(body), source=source)
        if sub is None or isinstance(sub, Component):
            raise ResourceError("not a dapr.io Subscription", source=source)
    except ResourceError as exc:
        return Verdict(False, "InvalidSpec", str(exc))
    ts = sub.to_topic_subscription()
    try:
        compile_rules(ts)  # the same CEL check the sidecar's router applies
    except ResourceError as exc:
        return Verdict(False, "InvalidSpec", str(exc))
    return Verdict(True, "Valid", f"subscribes {ts.pubsubname}/{ts.topic}")


def ready_condition(verdict: Verdict, *, generation: int | None,
                    previous: Mapping[str, Any] | None = None,
                    now: datetime.datetime | None = None) -> dict[str, Any]:
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
    condition: dict[str, Any] = {"type": "Ready", "status": status, "reason": verdict.reason,
                                 "message": verdict.message, "lastTransitionTime": when}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition
