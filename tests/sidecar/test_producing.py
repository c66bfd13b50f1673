"""brokers/kafka/producing.py and clients.py against the real Tansu broker (``kafka_bootstrap``)."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tidings.sidecar.brokers.base import BrokerError
from tidings.sidecar.brokers.kafka.clients import client_kwargs
from tidings.sidecar.brokers.kafka.producing import KafkaProducer
from tidings.sidecar.resources.kafka import KafkaMetadata, parse_kafka_metadata

from .records import read_records


def meta(bootstrap: str, **extra: str) -> KafkaMetadata:
    return parse_kafka_metadata({"brokers": bootstrap, "authType": "none", **extra}, app_id="app")


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


async def test_publish_waits_for_ack_and_keeps_key_headers_value(
        kafka_bootstrap: str, unique: str) -> None:
    producer = KafkaProducer(meta(kafka_bootstrap), pubsubname="ps")
    await producer.start()
    assert producer.ready()
    topic = f"produce-{unique}"
    try:
        await producer.publish(topic, b"v1", key=b"k1", headers=[("h", b"\xe2\x82\xac")])
        await producer.publish(topic, b"v2")
    finally:
        await producer.stop(5)
    assert not producer.ready()
    records = sorted(await read_records(kafka_bootstrap, topic, 2), key=lambda r: r.value)
    assert [(r.key, r.value) for r in records] == [(b"k1", b"v1"), (None, b"v2")]
    assert list(records[0].headers) == [("h", b"\xe2\x82\xac")]


async def test_publish_many_reports_one_outcome_per_record(
        kafka_bootstrap: str, unique: str) -> None:
    producer = KafkaProducer(meta(kafka_bootstrap), pubsubname="ps")
    await producer.start()
    topic = f"many-{unique}"
    try:
        outcomes = await producer.publish_many(
            [(topic, f"m{i}".encode(), b"same-key", [("i", str(i).encode())]) for i in range(20)])
    finally:
        await producer.stop(5)
    assert outcomes == [None] * 20
    records = await read_records(kafka_bootstrap, topic, 20)
    # one key, so one partition, so the order is the publish order
    assert [r.value for r in records] == [f"m{i}".encode() for i in range(20)]


async def test_too_large_record_is_a_permanent_error(kafka_bootstrap: str, unique: str) -> None:
    producer = KafkaProducer(meta(kafka_bootstrap, maxMessageBytes="2000"), pubsubname="ps")
    await producer.start()
    try:
        with pytest.raises(BrokerError) as info:
            await producer.publish(f"big-{unique}", b"x" * 5000)
        assert "MessageSizeTooLarge" in str(info.value)
        assert info.value.retriable is False
        outcomes = await producer.publish_many([(f"big-{unique}", b"x" * 5000, None, ()),
                                                (f"big-{unique}", b"small", None, ())])
        assert isinstance(outcomes[0], BrokerError) and outcomes[1] is None
    finally:
        await producer.stop(5)


async def test_unreachable_broker_fails_start_and_publish() -> None:
    producer = KafkaProducer(meta(closed_port()), pubsubname="ps", request_timeout_s=1)
    t0 = time.monotonic()
    with pytest.raises(BrokerError) as info:
        await producer.start()
    assert info.value.retriable
    assert time.monotonic() - t0 < 5
    assert not producer.ready()
    # the failed client was thrown away: publishing errors at once instead of hanging (#759)
    with pytest.raises(BrokerError, match="not connected"):
        await producer.publish("t", b"x")
    assert isinstance((await producer.publish_many([("t", b"x", None, ())]))[0], BrokerError)
    await producer.stop(1)  # a no-op, never raises


def test_client_kwargs_plaintext() -> None:
    kw = client_kwargs(meta("h1:9092,h2:9092", clientID="cid"))
    assert kw == {"bootstrap_servers": ["h1:9092", "h2:9092"], "client_id": "cid",
                  "security_protocol": "PLAINTEXT"}


def test_client_kwargs_sasl() -> None:
    plain = client_kwargs(parse_kafka_metadata(
        {"brokers": "h:1", "authType": "password", "saslUsername": "u", "saslPassword": "p"},
        app_id="a"))
    assert plain["security_protocol"] == "SASL_PLAINTEXT"
    assert (plain["sasl_mechanism"], plain["sasl_plain_username"],
            plain["sasl_plain_password"]) == ("PLAIN", "u", "p")
    scram = client_kwargs(parse_kafka_metadata(
        {"brokers": "h:1", "authType": "password", "saslUsername": "u", "saslPassword": "p",
         "saslMechanism": "SHA-512", "skipVerify": "true", "caCert": ""}, app_id="a"))
    assert scram["sasl_mechanism"] == "SCRAM-SHA-512"


def test_client_kwargs_tls_skip_verify() -> None:
    kw = client_kwargs(parse_kafka_metadata(
        {"brokers": "h:1", "authType": "mtls", "skipVerify": "true"}, app_id="a"))
    assert kw["security_protocol"] == "SSL"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_client_kwargs_bad_ca_pem_is_refused() -> None:
    with pytest.raises((ssl.SSLError, ValueError)):
        client_kwargs(parse_kafka_metadata(
            {"brokers": "h:1", "authType": "none", "caCert": "not a pem"}, app_id="a"))
