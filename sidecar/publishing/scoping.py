"""Topic scoping from component metadata (dapr-pubsub-contract.md §5.1; dapr/dapr#pkg/scopes).

Keys (names matched case-insensitively, spaces stripped from values):

- ``publishingScopes`` / ``subscriptionScopes``: ``"app1=t1,t2;app2=;app3=t3"``; an entry without
  ``=`` is ignored; ``app2=`` grants that app no topic at all;
- ``allowedTopics``: ``"t1,t2"``; when set, every other topic is denied to every app;
- ``protectedTopics``: ``"t1,t2"``; such a topic needs an explicit grant in the app's scope list.

Decision (Dapr's ``IsOperationAllowed``): deny a topic outside ``allowedTopics``; allow an
unprotected topic when the app has no scope entry; otherwise allow iff the app's list names it.

A component's metadata is parsed once and cached by identity (components are immutable once
loaded; hot reload builds new ones), so the per-message cost is a dict lookup and a set test.
Neighbours: ``publisher.py`` (publish and dead-letter checks), ``delivery/subscriptions.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TopicScopes", "publish_allowed", "scopes_of", "subscribe_allowed"]

_CACHE_LIMIT = 256


@dataclass(frozen=True, slots=True)
class TopicScopes:
    """Parsed scoping of one component. ``None`` for ``allowed_topics`` means not set."""

    publishing: dict[str, frozenset[str]]
    subscription: dict[str, frozenset[str]]
    allowed_topics: frozenset[str] | None
    protected_topics: frozenset[str]

    @classmethod
    def parse(cls, metadata: Mapping[str, str]) -> TopicScopes:
        lower = {k.lower(): v for k, v in metadata.items()}
        return cls(
            publishing=_app_scopes(lower.get("publishingscopes", "")),
            subscription=_app_scopes(lower.get("subscriptionscopes", "")),
            allowed_topics=_topic_list(lower.get("allowedtopics", "")) or None,
            protected_topics=_topic_list(lower.get("protectedtopics", "")),
        )

    def _allowed(self, scopes: dict[str, frozenset[str]], app_id: str, topic: str) -> bool:
        if self.allowed_topics is not None and topic not in self.allowed_topics:
            return False
        granted = scopes.get(app_id)
        if granted is None:
            return topic not in self.protected_topics
        return topic in granted

    def publish_allowed(self, app_id: str, topic: str) -> bool:
        return self._allowed(self.publishing, app_id, topic)

    def subscribe_allowed(self, app_id: str, topic: str) -> bool:
        return self._allowed(self.subscription, app_id, topic)


def _topic_list(value: str) -> frozenset[str]:
    value = value.replace(" ", "")
    return frozenset(t for t in value.split(",") if t) if value else frozenset()


def _app_scopes(value: str) -> dict[str, frozenset[str]]:
    scopes: dict[str, set[str]] = {}
    for entry in value.replace(" ", "").split(";"):
        if "=" not in entry:
            continue
        app, _, topics = entry.partition("=")
        # "app=" grants nothing: Dapr's list is [""], which matches no real topic.
        scopes.setdefault(app, set()).update(topics.split(","))
    return {app: frozenset(topics) for app, topics in scopes.items()}


_cache: dict[int, tuple[Mapping[str, str], TopicScopes]] = {}


def scopes_of(metadata: Mapping[str, str]) -> TopicScopes:
    """The parsed :class:`TopicScopes` of a component's metadata, cached by identity.

    The cache holds a reference to ``metadata`` so its id cannot be reused while cached; it is
    cleared when it grows past a few hundred entries (many hot reloads).
    """
    hit = _cache.get(id(metadata))
    if hit is not None and hit[0] is metadata:
        return hit[1]
    scopes = TopicScopes.parse(metadata)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[id(metadata)] = (metadata, scopes)
    return scopes


def publish_allowed(metadata: Mapping[str, str], app_id: str, topic: str) -> bool:
    """Whether ``app_id`` may publish to ``topic`` on the component with ``metadata``."""
    return scopes_of(metadata).publish_allowed(app_id, topic)


def subscribe_allowed(metadata: Mapping[str, str], app_id: str, topic: str) -> bool:
    """Whether ``app_id`` may subscribe to ``topic`` on the component with ``metadata``."""
    return scopes_of(metadata).subscribe_allowed(app_id, topic)
