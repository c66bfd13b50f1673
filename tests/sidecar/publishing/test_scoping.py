"""scoping.py: §5.1 topic scoping as a table (Dapr's IsOperationAllowed)."""

from __future__ import annotations

import pytest

from tidings.sidecar.publishing.scoping import (
    TopicScopes,
    publish_allowed,
    scopes_of,
    subscribe_allowed,
)

CASES = [
    # (metadata, app, topic, allowed)
    ({}, "a", "t", True),
    ({"publishingScopes": "a=t1,t2;b=t3"}, "a", "t1", True),
    ({"publishingScopes": "a=t1,t2;b=t3"}, "a", "t3", False),
    ({"publishingScopes": "a=t1,t2;b=t3"}, "c", "t3", True),  # no entry for c: unrestricted
    ({"publishingScopes": "a=;b=t3"}, "a", "t3", False),  # "a=" grants nothing
    ({"publishingScopes": " a = t1 , t2 "}, "a", "t2", True),  # spaces stripped
    ({"publishingScopes": "garbage;a=t1"}, "a", "t1", True),  # entries without '=' ignored
    ({"publishingScopes": "a=t1;a=t2"}, "a", "t2", True),  # repeated entries add up
    ({"PUBLISHINGSCOPES": "a=t1"}, "a", "t2", False),  # key name case-insensitive
    ({"allowedTopics": "t1,t2"}, "a", "t3", False),
    ({"allowedTopics": "t1,t2"}, "a", "t1", True),
    ({"allowedTopics": "t1", "publishingScopes": "a=t2"}, "a", "t2", False),
    ({"protectedTopics": "t1"}, "a", "t1", False),
    ({"protectedTopics": "t1"}, "a", "t2", True),
    ({"protectedTopics": "t1", "publishingScopes": "a=t1"}, "a", "t1", True),
    ({"protectedTopics": "t1", "publishingScopes": "b=t1"}, "a", "t1", False),
    ({"allowedTopics": ""}, "a", "t", True),  # empty: not set
]


@pytest.mark.parametrize(("metadata", "app", "topic", "allowed"), CASES)
def test_publish_scoping(metadata: dict[str, str], app: str, topic: str, allowed: bool) -> None:
    assert publish_allowed(metadata, app, topic) is allowed


def test_subscription_scopes_are_separate() -> None:
    metadata = {"publishingScopes": "a=t1", "subscriptionScopes": "a=t2"}
    assert publish_allowed(metadata, "a", "t1") and not publish_allowed(metadata, "a", "t2")
    assert subscribe_allowed(metadata, "a", "t2") and not subscribe_allowed(metadata, "a", "t1")


def test_parsed_once_per_metadata_object() -> None:
    metadata = {"publishingScopes": "a=t1"}
    first = scopes_of(metadata)
    assert scopes_of(metadata) is first
    assert scopes_of(dict(metadata)) is not first  # another component (e.g. after a reload)
    assert isinstance(first, TopicScopes)
