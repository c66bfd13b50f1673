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
never per message. Two per-message costs are cut there too, because the CEL bindings convert the
whole ``event`` map into CEL values on every evaluation (about 50 us for a 1 KiB event, 0.5 ms for
an event with a 50-element array, measured): the event is converted once per message for all
rules (one ``cel.Context``), and when every use of ``event`` in the rules is a plain field chain
(``event.data.x``, ``event.type``, ``has(event.data.x)``, ``event.data.items.exists(...)``) only
those fields are handed to CEL. Any other use (``event[...]``, bare ``event``, backquoted names)
falls back to the whole event, so results are always identical.

Neighbours: ``subscriptions.py`` validates with it, ``engine.py`` selects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..resources.models import TopicSubscription
from ..resources.rules import compile_rules, new_context

__all__ = ["CompiledRule", "Routes", "RoutingError", "clean_path", "field_paths", "prune"]


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


# A use of the variable ``event`` (not ``myevent``, not ``x.event``) and the field chain after it.
_EVENT_USE = re.compile(r"(?<![\w.])event\b((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)(\s*\(?)")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

FieldPath = tuple[str, ...]


def field_paths(expressions: Iterable[str]) -> tuple[FieldPath, ...] | None:
    """The event field paths the ``expressions`` read, shortest first; ``None`` if any use of
    ``event`` is not a plain field chain (then the whole event is needed).

    Over-approximates on purpose (a chain inside a string literal is counted too), never under.
    """
    paths: set[FieldPath] = set()
    for expression in expressions:
        for use in _EVENT_USE.finditer(expression):
            chain = tuple(_FIELD.findall(use.group(1)))
            if use.group(2).strip() == "(" and chain:
                chain = chain[:-1]  # ``event.data.items.exists(`` calls a method on items
            end = use.end(1)
            follows = expression[end:].lstrip()[:1]
            if not chain or follows in ("[", "`", "."):
                return None
            paths.add(chain)
    return tuple(sorted(paths, key=lambda path: (len(path), path)))


def prune(event: Mapping[str, Any], paths: tuple[FieldPath, ...]) -> dict[str, Any]:
    """A copy of ``event`` holding only ``paths`` (shortest first); absent fields stay absent
    and a non-map value on the way is kept whole, so evaluation fails exactly as on ``event``."""
    result: dict[str, Any] = {}
    for path in paths:
        source: Any = event
        target = result
        for depth, key in enumerate(path):
            if key not in source:
                break
            value = source[key]
            if depth == len(path) - 1 or not isinstance(value, dict):
                target[key] = value
                break
            existing = target.get(key)
            if existing is value:  # a shorter path already took the whole subtree
                break
            if existing is None:
                existing = target[key] = {}
            source, target = value, existing
    return result


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
    paths: tuple[FieldPath, ...] | None = None
    """Event fields the rules read (see :func:`field_paths`); ``None``: the whole event."""

    @classmethod
    def compile(cls, subscription: TopicSubscription, *, clean_paths: bool = True) -> Routes:
        """Compile every ``match`` of ``subscription`` once.

        ``clean_paths=False`` keeps each path as listed: the gRPC app channel sends it in
        ``TopicEventRequest.path``, where SDKs look handlers up by the exact string
        (``delivery/channel/grpc.py``).

        Raises ``ResourceError`` (``resources/rules.py``) naming the subscription and the rule for
        a CEL expression that does not compile (Dapr fails the subscription, §2.1).
        """
        clean = clean_path if clean_paths else str
        compiled = [
            CompiledRule(rule.match, clean(rule.path), program)
            for rule, program in zip(subscription.rules, compile_rules(subscription))
        ]
        if subscription.default_path:
            compiled.append(CompiledRule("", clean(subscription.default_path), None))
        paths = field_paths(r.match for r in compiled if r.program is not None)
        return cls(tuple(compiled), paths)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def select(self, event: Mapping[str, Any]) -> str | None:
        """The path of the first rule matching ``event``, or ``None`` when none matches.

        Raises :class:`RoutingError` when a rule fails to evaluate or yields a non-boolean.
        """
        activation: Any = None
        for rule in self.rules:
            if rule.program is None:
                return rule.path
            if activation is None:
                # One context for all rules: the event is converted to CEL values once.
                activation = new_context()
                activation.add_variable(
                    "event", event if self.paths is None else prune(event, self.paths)
                )
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
