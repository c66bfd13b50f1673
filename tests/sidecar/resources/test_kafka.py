"""``pubsub.kafka`` metadata (dapr-pubsub-contract.md §3.3, §5.5)."""

from __future__ import annotations

import pytest

from tidings.sidecar.resources import ResourceError, parse_kafka_metadata


def test_defaults_follow_dapr_with_app_id_as_consumer_group() -> None:
    meta = parse_kafka_metadata({"brokers": "a:9092, b:9092", "authType": "none"}, app_id="orders")
    assert meta.brokers == ("a:9092", "b:9092")
    assert meta.consumer_group == "orders"  # §5.5: the app-id is the consumer group
    assert meta.initial_offset == "newest"
    assert (meta.session_timeout_s, meta.heartbeat_interval_s) == (10.0, 3.0)
    assert meta.retry.max_retries == -1  # retries forever, so nothing is lost
    assert not meta.tls


def test_consumer_group_then_consumer_id_then_app_id() -> None:
    base = {"brokers": "a:1", "authType": "none"}
    assert parse_kafka_metadata({**base, "consumerID": "cid"}, app_id="x").consumer_group == "cid"
    assert (
        parse_kafka_metadata(
            {**base, "consumerID": "cid", "consumerGroup": "g"}, app_id="x"
        ).consumer_group
        == "g"
    )


def test_keys_match_case_insensitively() -> None:
    meta = parse_kafka_metadata(
        {
            "BROKERS": "a:1",
            "authtype": "none",
            "INITIALOFFSET": "Oldest",
            "sessiontimeout": "3s",
            "heartbeatInterval": "1000",
        },
        app_id="x",
    )
    assert meta.initial_offset == "oldest" and meta.session_timeout_s == 3.0
    assert meta.heartbeat_interval_s == 1.0  # a bare number is milliseconds


def test_password_auth_maps_sasl_mechanisms() -> None:
    meta = parse_kafka_metadata(
        {
            "brokers": "a:1",
            "authType": "password",
            "saslUsername": "u",
            "saslPassword": "p",
            "saslMechanism": "SHA-512",
        },
        app_id="x",
    )
    assert meta.sasl_mechanism == "SCRAM-SHA-512"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"authType": "none"}, "spec.metadata.brokers"),
        ({"brokers": "a:1"}, "spec.metadata.authType"),
        ({"brokers": "a:1", "authType": "oidc"}, "spec.metadata.authType"),
        (
            {"brokers": "a:1", "authType": "none", "initialOffset": "latest"},
            "spec.metadata.initialOffset",
        ),
        (
            {"brokers": "a:1", "authType": "password", "saslUsername": "u"},
            "spec.metadata.saslPassword",
        ),
        (
            {"brokers": "a:1", "authType": "none", "sessionTimeout": "soon"},
            "spec.metadata.sessionTimeout",
        ),
        (
            {"brokers": "a:1", "authType": "none", "maxMessageBytes": "big"},
            "spec.metadata.maxMessageBytes",
        ),
        (
            {"brokers": "a:1", "authType": "none", "heartbeatInterval": "20s"},
            "spec.metadata.heartbeatInterval",
        ),
    ],
)
def test_refused_metadata_names_the_field(values: dict[str, str], field: str) -> None:
    with pytest.raises(ResourceError) as err:
        parse_kafka_metadata(values, app_id="x", source="pubsub.yaml")
    assert err.value.field == field
