"""CEL ``match`` expressions of subscription routing rules, compiled and checked in one place.

The sidecar's router (``delivery/routing.py``) runs the compiled programs; the operator calls
:func:`compile_rules` only to report a rule that does not compile in the Subscription's status,
so both refuse exactly the same expressions (dapr-pubsub-contract.md §2.1, §2.2). The library is
``common-expression-language`` (``import cel``), compiled bindings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .models import ResourceError, TopicSubscription

if TYPE_CHECKING:
    import cel

__all__ = ["compile_rules", "new_context"]


def _cel() -> Any:
    # Imported on first use: ``cel/__init__.py`` also loads the package's interactive CLI
    # (prompt_toolkit), 14 MB of RSS and ~75 ms of start-up that a sidecar without routing
    # rules never needs.
    import cel

    return cel


def new_context() -> cel.Context:
    """An empty CEL activation (``cel.Context``) to bind the ``event`` variable in."""
    return _cel().Context()


def compile_rules(subscription: TopicSubscription) -> tuple[cel.Program | None, ...]:
    """One compiled program per ``subscription.rules`` entry, ``None`` for an empty match (which
    always matches).

    Raises :class:`ResourceError` naming the subscription and ``routes.rules[i].match`` for an
    expression that does not compile (Dapr fails the subscription, §2.1).
    """
    programs: list[cel.Program | None] = []
    for index, rule in enumerate(subscription.rules):
        expression = rule.match.strip()
        if not expression:
            programs.append(None)
            continue
        try:
            programs.append(_cel().compile(expression))
        except Exception as exc:  # the bindings raise ValueError; be robust to others
            name = subscription.name or f"{subscription.pubsubname}/{subscription.topic}"
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ResourceError(
                f"rule {index} match {expression!r} is not a valid CEL expression: {detail}",
                source=f"subscription {name}",
                field=f"routes.rules[{index}].match",
            ) from None
    return tuple(programs)
