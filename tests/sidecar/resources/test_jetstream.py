"""``pubsub.jetstream`` metadata (Dapr's names, components-contrib pubsub/jetstream/metadata.go)."""

from __future__ import annotations

import datetime

import pytest

from tidings.sidecar.delivery.retries import delay_s
from tidings.sidecar.resources import ResourceError
from tidings.sidecar.resources.jetstream import (
    consumer_name,
    filter_subject_problem,
    parse_jetstream_metadata,
    subject_problem,
)

URL = {"natsURL": "nats://a:4222, nats://b:4222"}


def test_defaults_durable_is_the_app_id_single_mode_all_and_retry_forever() -> None:
    meta = parse_jetstream_metadata(URL, app_id="orders")
    assert meta.servers == ("nats://a:4222", "nats://b:4222")
    assert meta.durable_name == "orders" and meta.connection_name == "tidings-orders"
    assert meta.deliver_policy == "all" and meta.ack_wait_s == 30.0
    assert meta.max_in_flight == 1 and meta.max_ack_pending is None
    assert meta.retry.max_retries == -1 and meta.unused == ()
    assert meta.in_progress_interval_s == 10.0  # ackWait / 3


def test_durable_name_then_consumer_id_then_app_id_keys_any_case() -> None:
    assert parse_jetstream_metadata({**URL, "consumerID": "c"}, app_id="x").durable_name == "c"
    meta = parse_jetstream_metadata(
        {"NATSURL": "nats://h:1", "consumerID": "c", "DURABLENAME": "d", "ackwait": "2s"},
        app_id="x",
    )
    assert meta.durable_name == "d" and meta.ack_wait_s == 2.0


def test_max_deliver_bounds_engine_attempts_and_backoff_is_a_schedule() -> None:
    meta = parse_jetstream_metadata(
        {**URL, "maxDeliver": "5", "backOff": "50ms, 1s,10s"}, app_id="x"
    )
    assert meta.retry.max_retries == 4  # 5 deliveries = the first attempt and 4 retries
    assert [delay_s(meta.retry, n) for n in (1, 2, 3, 4)] == [0.05, 1.0, 10.0, 10.0]
    meta = parse_jetstream_metadata(
        {
            **URL,
            "maxDeliver": "5",
            "backOffMaxRetries": "2",
            "backOffPolicy": "constant",
            "backOffDuration": "3s",
        },
        app_id="x",
    )
    assert meta.retry.max_retries == 2 and delay_s(meta.retry, 7) == 3.0
    assert parse_jetstream_metadata({**URL, "maxDeliver": "-1"}, app_id="x").retry.max_retries == -1


def test_deliver_policies_and_start_positions() -> None:
    assert (
        parse_jetstream_metadata({**URL, "deliverPolicy": "New"}, app_id="x").deliver_policy
        == "new"
    )
    meta = parse_jetstream_metadata({**URL, "startSequence": "42"}, app_id="x")
    assert (meta.deliver_policy, meta.start_sequence) == ("sequence", 42)
    meta = parse_jetstream_metadata({**URL, "startTime": "1630349391"}, app_id="x")
    assert meta.deliver_policy == "time"
    assert meta.start_time == datetime.datetime(2021, 8, 30, 18, 49, 51, tzinfo=datetime.UTC)
    meta = parse_jetstream_metadata(
        {**URL, "deliverPolicy": "all", "startSequence": "4"}, app_id="x"
    )
    assert meta.start_sequence is None  # only the sequence policy starts at a sequence


def test_parallel_mode_in_flight_is_max_ack_pending() -> None:
    meta = parse_jetstream_metadata(
        {**URL, "concurrencyMode": "parallel", "maxAckPending": "7"}, app_id="x"
    )
    assert meta.max_in_flight == 7 and meta.max_ack_pending == 7
    assert (
        parse_jetstream_metadata({**URL, "concurrencyMode": "parallel"}, app_id="x").max_in_flight
        == 100
    )


def test_push_consumer_settings_and_queue_group_are_reported_as_unused() -> None:
    meta = parse_jetstream_metadata(
        {**URL, "flowControl": "true", "queueGroupName": "q", "heartbeat": "15s"}, app_id="x"
    )
    assert set(meta.unused) == {"flowControl", "queueGroupName", "heartbeat"}


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({}, "natsURL"),
        ({**URL, "jwt": "j"}, "seedKey"),
        ({**URL, "seedKey": "s"}, "jwt"),
        ({**URL, "tls_client_cert": "c"}, "tls_client_key"),
        ({**URL, "deliverPolicy": "sometimes"}, "deliverPolicy"),
        ({**URL, "deliverPolicy": "sequence"}, "startSequence"),
        ({**URL, "deliverPolicy": "time"}, "startTime"),
        ({**URL, "ackPolicy": "none"}, "ackPolicy"),
        ({**URL, "ackWait": "0s"}, "ackWait"),
        ({**URL, "ackWait": "soon"}, "ackWait"),
        ({**URL, "maxAckPending": "0"}, "maxAckPending"),
        ({**URL, "maxDeliver": "many"}, "maxDeliver"),
        ({**URL, "backOff": "1s, later"}, "backOff"),
        ({**URL, "concurrencyMode": "lots"}, "concurrencyMode"),
        ({**URL, "durableName": "a.b"}, "durableName"),
        ({**URL, "streamName": "a b"}, "streamName"),
        ({**URL, "memoryStorage": "maybe"}, "memoryStorage"),
    ],
)
def test_refused_values_name_the_field(values: dict[str, str], field: str) -> None:
    with pytest.raises(ResourceError) as exc:
        parse_jetstream_metadata(values, app_id="x", source="pubsub.yaml")
    assert exc.value.field == f"spec.metadata.{field}" and exc.value.source == "pubsub.yaml"


@pytest.mark.parametrize(
    ("subject", "ok"),
    [
        ("orders", True),
        ("orders.eu.1", True),
        ("a-b_c", True),
        ("", False),
        (".a", False),
        ("a.", False),
        ("a..b", False),
        ("a.*", False),
        ("a.>", False),
        ("a b", False),
        ("a\tb", False),
    ],
)
def test_subject_problem(subject: str, ok: bool) -> None:
    assert (subject_problem(subject) is None) is ok


def test_consumer_names_are_valid_deterministic_and_distinct() -> None:
    assert consumer_name("orders", "checkout") == "orders__checkout"
    dotted, underscored = consumer_name("orders", "a.b"), consumer_name("orders", "a_b")
    assert dotted != underscored and "." not in dotted
    assert dotted == consumer_name("orders", "a.b")
    long = consumer_name("d" * 100, "t" * 300)
    assert len(long) <= 200


def test_backoff_max_retries_wins_over_max_deliver_and_bad_ones_name_their_field() -> None:
    meta = parse_jetstream_metadata(
        {**URL, "maxDeliver": "9", "backOffMaxRetries": "0"}, app_id="x"
    )
    assert meta.retry.max_retries == 0
    with pytest.raises(ResourceError) as exc:
        parse_jetstream_metadata({**URL, "backOffMaxRetries": "x"}, app_id="x")
    assert exc.value.field == "spec.metadata.backOffMaxRetries"


@pytest.mark.parametrize(
    ("subject", "ok"),
    [
        ("orders", True),
        ("orders.*", True),
        ("*.eu", True),
        ("orders.>", True),
        (">", True),
        ("orders.>.eu", False),
        ("orders.e*", False),
        ("a..b", False),
        ("a b", False),
        ("", False),
    ],
)
def test_filter_subject_problem_allows_whole_token_wildcards(subject: str, ok: bool) -> None:
    assert (filter_subject_problem(subject) is None) is ok
