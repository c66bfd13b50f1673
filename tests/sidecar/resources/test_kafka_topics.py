"""resources/kafka_topics.py: which topic names a Kafka cluster can hold."""

from __future__ import annotations

import pytest

from tidings.sidecar.resources.kafka_topics import invalid_topic_message, kafka_topic_problem


@pytest.mark.parametrize("name", ["orders", "a.b_c-D9", "t" * 249, "...", "-", "_x."])
def test_names_kafka_can_hold(name: str) -> None:
    assert kafka_topic_problem(name) is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a b", "it contains ' '"),
        ("a\x00b", "it contains '\\x00'"),
        ("a/b/c", "it contains '/'"),
        ("../../etc", "it contains '/'"),
        ("or\ufffdders", "it contains '\ufffd'"),
        ("caf\u00e9", "it contains '\u00e9'"),
        ("t" * 250, "it has 250 characters, at most 249 are allowed"),
        (".", "'.' and '..' are not allowed"),
        ("..", "'.' and '..' are not allowed"),
        ("", "it is empty"),
    ],
)
def test_names_kafka_cannot_hold(name: str, problem: str) -> None:
    found = kafka_topic_problem(name)
    assert found is not None and found.startswith(problem)


def test_message_quotes_and_shortens_the_name() -> None:
    assert invalid_topic_message("a\x00b", "p") == (
        'topic "a\\u0000b" is not a valid Kafka topic name: p'
    )
    long = invalid_topic_message("/" * 300, "p")
    assert long.startswith('topic "' + "/" * 80 + '..." is not') and len(long) < 140
