"""Typed metadata reads shared by the kafka, redis and jetstream components."""

from __future__ import annotations

import pytest

from tidings.sidecar.resources import ResourceError
from tidings.sidecar.resources.metadata_values import MetadataValues, parse_bool


def test_names_match_in_any_case_and_empty_is_unset() -> None:
    meta = MetadataValues({"QueueDepth": "7", "consumerID": "", "name": " x "}, source="c")
    assert meta.integer("queuedepth", 1) == 7
    assert meta.get("consumerId") is None and meta.get("consumerID", "app") == "app"
    assert meta.get("name") == " x "  # kept as given unless asked to strip


def test_strip_makes_white_space_unset() -> None:
    meta = MetadataValues({"name": " x ", "token": "  "}, strip=True)
    assert meta.get("name") == "x" and meta.get("token") is None


def test_durations_in_go_syntax_or_bare_milliseconds() -> None:
    meta = MetadataValues({"a": "1m30s", "b": "250"})
    assert (meta.seconds("a", "0"), meta.seconds("b", "0"), meta.seconds("c", "5s")) == (
        90,
        0.25,
        5,
    )


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (lambda m: m.seconds("v", "1s"), "invalid duration"),
        (lambda m: m.integer("v", 0), "'ten' is not an integer"),
        (lambda m: m.boolean("v"), "'ten' is not a boolean"),
    ],
)
def test_a_bad_value_names_the_component_and_field(read, message) -> None:
    with pytest.raises(ResourceError, match=message) as info:
        read(MetadataValues({"V": "ten"}, source="pubsub"))
    assert info.value.field == "spec.metadata.v" and info.value.source == "pubsub"


def test_booleans_as_go_reads_them_plus_yes_on() -> None:
    assert [parse_bool(v, field="f", source="s") for v in ("True", "1", "on", "yes")] == [True] * 4
    assert [parse_bool(v, field="f", source="s") for v in ("f", "0", "off", "")] == [False] * 4
    assert MetadataValues({}).boolean("enableTLS") is False
