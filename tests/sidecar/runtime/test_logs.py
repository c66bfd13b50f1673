"""logs.py: RepeatFilter with real LogRecords and an injected clock (no sleeps), and that
configure_logging installs it on the handler it creates."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest

from tidings.sidecar.runtime.logs import RepeatFilter, configure_logging


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, args, None)


def passed(f: RepeatFilter, records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if f.filter(r)]


def test_first_passes_repeats_are_held_back_then_counted() -> None:
    clock = Clock()
    f = RepeatFilter(window_s=30, clock=clock)
    # aiokafka during an outage: the same template, different node ids, every 100 ms
    out = []
    for i in range(300):
        out += passed(
            f,
            [
                record(
                    "aiokafka.conn",
                    "Unable connect to node with id %s: %s",
                    i % 3,
                    "Connect call failed",
                )
            ],
        )
        clock.now += 0.1
    assert out == ["Unable connect to node with id 0: Connect call failed"]
    clock.now = 1030.0  # exactly one window after the first
    # 30 s after the first one went through, the next repeat goes through with the count
    assert passed(
        f, [record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "x")]
    ) == ["Unable connect to node with id 1: x (held back 299 more like this in the last 30 s)"]
    # ...and starts a new window
    clock.now += 29
    assert (
        passed(f, [record("aiokafka.conn", "Unable connect to node with id %s: %s", 2, "x")]) == []
    )
    clock.now += 1
    assert passed(
        f, [record("aiokafka.conn", "Unable connect to node with id %s: %s", 0, "y")]
    ) == ["Unable connect to node with id 0: y (held back 1 more like this in the last 30 s)"]


def test_a_repeat_after_a_quiet_window_has_no_note() -> None:
    clock = Clock()
    f = RepeatFilter(window_s=30, clock=clock)
    assert passed(f, [record("aiokafka", "Failed fetch messages from %s", 1)]) == [
        "Failed fetch messages from 1"
    ]
    clock.now += 31
    assert passed(f, [record("aiokafka", "Failed fetch messages from %s", 1)]) == [
        "Failed fetch messages from 1"
    ]


def test_kinds_are_logger_plus_template() -> None:
    f = RepeatFilter(clock=Clock())
    records = [
        record("aiokafka.cluster", "%r is not a valid topic name", "a b"),
        record("aiokafka.cluster", "%r is not a valid topic name", "a/b"),  # same kind
        record("aiokafka.cluster", "Topic %s not found in cluster metadata", "t"),
        record("aiokafka.consumer.fetcher", "%r is not a valid topic name", "a b"),
    ]
    assert passed(f, records) == [
        "'a b' is not a valid topic name",
        "Topic t not found in cluster metadata",
        "'a b' is not a valid topic name",
    ]


def test_other_loggers_and_low_levels_always_pass() -> None:
    f = RepeatFilter(clock=Clock())
    for _ in range(3):
        for name in ("tidings.sidecar.delivery.engine", "aiokafkax", "aiohttp.access", "root"):
            assert f.filter(record(name, "same %s", 1))
        assert f.filter(record("aiokafka.conn", "debug detail", level=logging.INFO))


def test_aiohttp_server_tracebacks_for_malformed_requests() -> None:
    f = RepeatFilter(clock=Clock())
    try:
        raise ValueError("Invalid method encountered")
    except ValueError:
        exc_info = sys.exc_info()
    logger = logging.getLogger("aiohttp.server")
    records = [
        logger.makeRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "Error handling request from %s",
            (f"10.0.0.{i}",),
            exc_info,
        )
        for i in range(50)
    ]
    assert passed(f, records) == ["Error handling request from 10.0.0.0"]


def test_kinds_remembered_are_bounded() -> None:
    clock = Clock()
    f = RepeatFilter(clock=clock, max_kinds=3)
    for i in range(10):
        assert f.filter(record("aiokafka", f"unformatted message {i}"))
    assert len(f._kinds) == 3
    assert not f.filter(record("aiokafka", "unformatted message 9"))  # the newest are kept
    assert f.filter(record("aiokafka", "unformatted message 0"))  # the oldest were forgotten


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root, kafka = logging.getLogger(), logging.getLogger("aiokafka")
    saved = (root.handlers[:], root.level, kafka.level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    kafka.setLevel(saved[2])


def test_configure_logging_installs_the_filter(
    restore_root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info")
    for node in range(100):
        logging.getLogger("aiokafka.conn").error("Unable connect to node with id %s", node)
        logging.getLogger("tidings.sidecar.runtime.runner").warning("ours %s", node)
    err = capsys.readouterr().err
    assert err.count("Unable connect to node with id") == 1
    assert err.count("ours") == 100


def test_json_lines_carry_the_fixed_vocabulary() -> None:
    """``--log-as-json``: one JSON object per line, the context fields by their fixed names and
    nothing else from ``extra``."""
    import orjson

    from tidings.sidecar.runtime.logs import JsonFormatter

    rec = logging.getLogger("tidings.sidecar.delivery.engine").makeRecord(
        "tidings.sidecar.delivery.engine",
        logging.WARNING,
        __file__,
        1,
        "delivery of event %s failed",
        ("ce-1",),
        None,
        extra={
            "app_id": "orders",
            "pubsubname": "pubsub",
            "topic": "t",
            "partition": 2,
            "offset": 41,
            "cloudevent_id": "ce-1",
            "attempt": 3,
            "outcome": "retry",
            "unrelated": "x",
        },
    )
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["msg"] == "delivery of event ce-1 failed" and entry["level"] == "warning"
    assert {
        k: entry[k]
        for k in (
            "app_id",
            "pubsubname",
            "topic",
            "partition",
            "offset",
            "cloudevent_id",
            "attempt",
            "outcome",
        )
    } == {
        "app_id": "orders",
        "pubsubname": "pubsub",
        "topic": "t",
        "partition": 2,
        "offset": 41,
        "cloudevent_id": "ce-1",
        "attempt": 3,
        "outcome": "retry",
    }
    assert "unrelated" not in entry
