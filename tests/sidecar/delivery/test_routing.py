"""Tests of CEL routing (``sidecar/delivery/routing.py``, §2.1, §2.2)."""

from __future__ import annotations

import dataclasses

import pytest

from tidings.sidecar.delivery.routing import Routes, RoutingError, clean_path, field_paths, prune
from tidings.sidecar.resources.models import ResourceError, Route, TopicSubscription


def sub(*rules: tuple[str, str], default: str | None = None, name: str = "") -> TopicSubscription:
    return TopicSubscription(
        pubsubname="pubsub",
        topic="orders",
        rules=tuple(Route(m, p) for m, p in rules),
        default_path=default,
        name=name,
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("orders", "/orders"),
        ("/orders", "/orders"),
        ("/orders/", "/orders"),
        ("a/b/../c", "/a/c"),
        ("../../x", "/x"),
        ("//x//y/./z", "/x/y/z"),
        ("", "/"),
        ("/", "/"),
        ("/a/b?x=1/../", "/a/b?x=1/../"),
    ],
)
def test_clean_path(path: str, expected: str) -> None:
    assert clean_path(path) == expected


def test_first_true_rule_wins_then_default() -> None:
    routes = Routes.compile(
        sub(
            ('event.type == "widget"', "/widgets"),
            ('event.type == "gadget" || event.type == "widget"', "/gadgets"),
            default="/products/",
        )
    )
    assert routes.select({"type": "widget"}) == "/widgets"
    assert routes.select({"type": "gadget"}) == "/gadgets"
    assert routes.select({"type": "other"}) == "/products"


def test_event_used_twice_in_one_rule() -> None:
    routes = Routes.compile(
        sub(
            ('event.type == "order" && event.source == "shop"', "/shop-orders"),
            default="/rest",
        )
    )
    assert routes.select({"type": "order", "source": "shop"}) == "/shop-orders"
    assert routes.select({"type": "order", "source": "other"}) == "/rest"


@pytest.mark.parametrize(
    ("x", "expected"), [(20, "/big"), (20.0, "/big"), (5, "/small"), (10.9, "/small")]
)
def test_int_conversion_of_json_numbers(x: object, expected: str) -> None:
    """JSON numbers are doubles in Dapr's CEL; users write ``int(event.data.x) > N``."""
    routes = Routes.compile(sub(("int(event.data.x) > 10", "/big"), default="/small"))
    assert routes.select({"data": {"x": x}}) == expected


@pytest.mark.parametrize("amount", [20000, 20000.0, 10000.5])
def test_double_comparison_matches_ints(amount: object) -> None:
    routes = Routes.compile(sub(("event.data.amount > 10000.0", "/large")))
    assert routes.select({"data": {"amount": amount}}) == "/large"


def test_empty_or_blank_match_always_matches() -> None:
    routes = Routes.compile(sub(("false", "/never"), ("  ", "/always"), default="/default"))
    assert routes.select({}) == "/always"


def test_no_match_and_no_default_is_none() -> None:
    routes = Routes.compile(sub(('event.type == "x"', "/x")))
    assert routes.select({"type": "y"}) is None


def test_v1_single_route_is_the_default() -> None:
    assert Routes.compile(sub(default="orders")).select({}) == "/orders"


def test_no_rules_and_no_default_is_empty() -> None:
    assert not Routes.compile(sub())


def test_missing_field_is_a_routing_error() -> None:
    routes = Routes.compile(sub(("event.data.missing > 1", "/x"), default="/d"))
    with pytest.raises(RoutingError, match="KeyError"):
        routes.select({"data": {}})


def test_type_mismatch_is_a_routing_error() -> None:
    routes = Routes.compile(sub(("event.data.x + 1 > 2", "/x")))
    with pytest.raises(RoutingError):
        routes.select({"data": {"x": "text"}})


def test_non_boolean_result_is_a_routing_error() -> None:
    routes = Routes.compile(sub(("event.data", "/x")))
    with pytest.raises(RoutingError, match="not a boolean"):
        routes.select({"data": {"a": 1}})


def test_compile_error_names_subscription_and_rule() -> None:
    with pytest.raises(ResourceError) as info:
        Routes.compile(sub(("true", "/a"), ("event.(", "/b"), name="orders-sub"))
    assert info.value.field == "routes.rules[1].match"
    assert "orders-sub" in str(info.value)
    assert "event.(" in str(info.value)


# --- converting only the fields the rules read (a hot-path saving; results must not change) ---


@pytest.mark.parametrize(
    ("expression", "paths"),
    [
        ('event.type == "widget"', (("type",),)),
        ('int(event.data.x) > 10 && event.source == "a"', (("source",), ("data", "x"))),
        ("has(event.data.x)", (("data", "x"),)),
        ("event.data.items.exists(i, i.a > 3)", (("data", "items"),)),
        ("size(event.data) > 2", (("data",),)),
        ("event . data . x > 1", (("data", "x"),)),
        ("myevent.x == 1 && event.y", (("y",),)),
        ('event.type == "event.fake"', (("fake",), ("type",))),  # over-approximation is fine
        ('event.data["x"] > 1', None),
        ("event == {}", None),
        ('event["type"] == "a"', None),
        ("event.`a-b` == 1", None),
        ("event.size() > 1", None),
        ("event.?data.x == 1", None),
    ],
)
def test_field_paths(expression: str, paths: tuple[tuple[str, ...], ...] | None) -> None:
    assert field_paths([expression]) == paths


def test_prune_keeps_only_paths_and_absences() -> None:
    event = {"a": {"b": 1, "c": 2}, "d": 3, "s": "text"}
    assert prune(event, (("a", "b"), ("s", "x"), ("z",))) == {"a": {"b": 1}, "s": "text"}
    assert prune(event, (("a",), ("a", "b"))) == {"a": {"b": 1, "c": 2}}
    assert prune(event, (("a", "q"),)) == {"a": {}}


EXPRESSIONS = [
    'event.type == "order" && event.source == "shop"',
    "int(event.data.x) > 10",
    "event.data.amount > 10000.0",
    "has(event.data.x)",
    "event.data.items.exists(i, i.a > 3)",
    "size(event.data) > 1",
    "event.data.x.y == 1",
    'event["type"] == "order"',
]
EVENTS = [
    {
        "type": "order",
        "source": "shop",
        "data": {"x": 20, "amount": 20000, "items": [{"a": 5}], "big": "x" * 100},
    },
    {"type": "other", "source": "web", "data": {"x": 1.5, "amount": 5, "items": []}},
    {"type": "order", "data": {"x": {"y": 1}}},
    {"type": "order", "data": "a string"},
    {"type": "order"},
    {},
]


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_pruned_evaluation_equals_full_evaluation(expression: str) -> None:
    pruned = Routes.compile(sub((expression, "/hit"), default="/miss"))
    full = dataclasses.replace(pruned, paths=None)
    for event in EVENTS:
        outcomes = []
        for routes in (pruned, full):
            try:
                outcomes.append(routes.select(event))
            except RoutingError as exc:
                outcomes.append(type(exc).__name__)
        assert outcomes[0] == outcomes[1], (expression, event)
