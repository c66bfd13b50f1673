"""Tests of CEL routing (``sidecar/routing.py``, §2.1, §2.2)."""

from __future__ import annotations

import pytest

from tidings.sidecar.resources.models import ResourceError, Route, TopicSubscription
from tidings.sidecar.routing import Routes, RoutingError, clean_path


def sub(*rules: tuple[str, str], default: str | None = None, name: str = "") -> TopicSubscription:
    return TopicSubscription(pubsubname="pubsub", topic="orders",
                             rules=tuple(Route(m, p) for m, p in rules), default_path=default,
                             name=name)


@pytest.mark.parametrize(("path", "expected"), [
    ("orders", "/orders"),
    ("/orders", "/orders"),
    ("/orders/", "/orders"),
    ("a/b/../c", "/a/c"),
    ("../../x", "/x"),
    ("//x//y/./z", "/x/y/z"),
    ("", "/"),
    ("/", "/"),
    ("/a/b?x=1/../", "/a/b?x=1/../"),
])
def test_clean_path(path: str, expected: str) -> None:
    assert clean_path(path) == expected


def test_first_true_rule_wins_then_default() -> None:
    routes = Routes.compile(sub(
        ('event.type == "widget"', "/widgets"),
        ('event.type == "gadget" || event.type == "widget"', "/gadgets"),
        default="/products/",
    ))
    assert routes.select({"type": "widget"}) == "/widgets"
    assert routes.select({"type": "gadget"}) == "/gadgets"
    assert routes.select({"type": "other"}) == "/products"


def test_event_used_twice_in_one_rule() -> None:
    routes = Routes.compile(sub(
        ('event.type == "order" && event.source == "shop"', "/shop-orders"),
        default="/rest",
    ))
    assert routes.select({"type": "order", "source": "shop"}) == "/shop-orders"
    assert routes.select({"type": "order", "source": "other"}) == "/rest"


@pytest.mark.parametrize(("x", "expected"), [(20, "/big"), (20.0, "/big"), (5, "/small"),
                                             (10.9, "/small")])
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

