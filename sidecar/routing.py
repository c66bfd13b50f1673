"""Route selection for one subscription: CEL rules compiled once, then the default path.

Follows dapr-pubsub-contract.md §2.1-§2.3 (dapr/dapr ``CreateRoutingRule``, ``findMatchingRoute``):

- rules are tried in their listed order; the first whose ``match`` evaluates to ``true`` wins;
- a ``match`` that is empty (after trimming whitespace) always matches;
- then the subscription's default path (``routes.default``, else v1 ``route``), if any;
- no match and no default: :meth:`Routes.select` returns ``None`` (the message is not delivered);
- evaluating a rule can fail (a missing field is a ``KeyError`` in the CEL library, a type
  mismatch a ``TypeError``, a non-boolean result): :class:`RoutingError`, which the delivery engine
  treats like a failed delivery (dead-letter topic if set, else retry, §2.2).

The CEL environment has one variable, ``event``: the parsed CloudEvent map. JSON numbers arrive
as Python ``int``/``float``; the CEL library compares ints with doubles, so both
``event.data.amount > 10000.0`` and ``int(event.data.x) > 5`` work as Dapr users write them.

Paths are normalised like Go's ``path.Clean`` behind a ``/`` (dapr/dapr http_channel.go): the
leading ``/`` is optional, a trailing ``/`` is removed and ``.``/``..`` are resolved.

Compilation happens in :meth:`Routes.compile`, once per subscription when subscriptions are set,
never per message. Neighbours: ``subscriptions.py`` validates with it, ``delivery.py`` selects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

from .resources.models import ResourceError, TopicSubscription

__all__ = ["CompiledRule", "Routes", "RoutingError", "clean_path"]


class RoutingError(Exception):
    """Evaluating a rule's ``match`` failed for this event (not a compile error)."""


def clean_path(path: str) -> str:
    """``"/" + path`` normalised like Go's ``path.Clean``: ``"orders/"`` → ``"/orders"``,
    ``"a/../b"`` → ``"/b"``, ``"//x//y"`` → ``"/x/y"``, ``""`` → ``"/"``.

    A query string (``?``) is kept verbatim after the cleaned path.
    """
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
        query = "?" + query
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts) + query


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule: ``program`` is ``None`` for an always-matching rule; ``path`` is cleaned."""

    match: str
    path: str
    program: Any  # cel.Program | None; the CEL bindings ship no type stubs


@dataclass(frozen=True, slots=True)
class Routes:
    """The compiled rules of one subscription, default path last (as an always-matching rule)."""

    rules: tuple[CompiledRule, ...]

    @classmethod
    def compile(cls, subscription: TopicSubscription) -> Routes:
        """Compile every ``match`` of ``subscription`` once.

        Raises :class:`ResourceError` naming the subscription and the rule for a CEL expression
        that does not compile (Dapr fails the subscription, §2.1).
        """
        compiled: list[CompiledRule] = []
        for index, rule in enumerate(subscription.rules):
            expression = rule.match.strip()
            program = None
            if expression:
                try:
                    program = cel.compile(expression)
                except Exception as exc:  # the bindings raise ValueError; be robust to others
                    name = subscription.name or f"{subscription.pubsubname}/{subscription.topic}"
                    raise ResourceError(
                        f"rule {index} match {expression!r} is not a valid CEL expression: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                        source=f"subscription {name}",
                        field=f"routes.rules[{index}].match",
                    ) from None
            compiled.append(CompiledRule(rule.match, clean_path(rule.path), program))
        if subscription.default_path:
            compiled.append(CompiledRule("", clean_path(subscription.default_path), None))
        return cls(tuple(compiled))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def select(self, event: Mapping[str, Any]) -> str | None:
        """The path of the first rule matching ``event``, or ``None`` when none matches.

        Raises :class:`RoutingError` when a rule fails to evaluate or yields a non-boolean.
        """
        activation: dict[str, Any] | None = None
        for rule in self.rules:
            if rule.program is None:
                return rule.path
            if activation is None:
                activation = {"event": event}
            try:
                result = rule.program.execute(activation)
            except Exception as exc:  # KeyError, TypeError, RuntimeError... from the bindings
                raise RoutingError(
                    f"error evaluating match {rule.match!r}: {type(exc).__name__}: {exc}"
                ) from None
            if result is True:
                return rule.path
            if result is not False:
                raise RoutingError(
                    f"the result of match expression {rule.match!r} was not a boolean: {result!r}"
                )
        return None
