"""brokers/kafka/producing.py and clients.py against the real Tansu broker (``kafka_bootstrap``)."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.tlskit import Pki
from tidings.sidecar.brokers.base import BrokerError, PublishRecord
from tidings.sidecar.brokers.kafka.clients import OidcTokenProvider, client_kwargs
from tidings.sidecar.brokers.kafka.producing import KafkaProducer
from tidings.sidecar.envelopes.wrapping import wrap
from tidings.sidecar.resources.kafka import KafkaMetadata, parse_kafka_metadata

from ...records import read_records


def meta(bootstrap: str, **extra: str) -> KafkaMetadata:
    return parse_kafka_metadata({"brokers": bootstrap, "authType": "none", **extra}, app_id="app")


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


async def test_publish_waits_for_ack_and_keeps_key_headers_value(
    kafka_bootstrap: str, unique: str
) -> None:
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
    kafka_bootstrap: str, unique: str
) -> None:
    producer = KafkaProducer(meta(kafka_bootstrap), pubsubname="ps")
    await producer.start()
    topic = f"many-{unique}"
    try:
        outcomes = await producer.publish_many(
            [
                PublishRecord(topic, f"m{i}".encode(), b"same-key", [("i", str(i).encode())])
                for i in range(20)
            ]
        )
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
        outcomes = await producer.publish_many(
            [PublishRecord(f"big-{unique}", b"x" * 5000), PublishRecord(f"big-{unique}", b"small")]
        )
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
    assert isinstance((await producer.publish_many([PublishRecord("t", b"x")]))[0], BrokerError)
    await producer.stop(1)  # a no-op, never raises


def test_client_kwargs_plaintext() -> None:
    kw = client_kwargs(meta("h1:9092,h2:9092", clientID="cid"))
    assert kw == {
        "bootstrap_servers": ["h1:9092", "h2:9092"],
        "client_id": "cid",
        "security_protocol": "PLAINTEXT",
    }


def test_client_kwargs_sasl_is_tls_unless_disabled() -> None:
    """Dapr's rule (components-contrib auth.go): TLS for every authType but none; a password
    never travels in plain text unless disableTls says so."""
    sasl = {"brokers": "h:1", "authType": "password", "saslUsername": "u", "saslPassword": "p"}
    plain = client_kwargs(parse_kafka_metadata(sasl, app_id="a"))
    assert plain["security_protocol"] == "SASL_SSL"
    assert (
        plain["sasl_mechanism"],
        plain["sasl_plain_username"],
        plain["sasl_plain_password"],
    ) == ("PLAIN", "u", "p")
    ctx = plain["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname  # the system store
    clear = client_kwargs(parse_kafka_metadata({**sasl, "disableTls": "true"}, app_id="a"))
    assert clear["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in clear
    for dapr, ours in (("SHA-512", "SCRAM-SHA-512"), ("scram-sha-256", "SCRAM-SHA-256")):
        scram = client_kwargs(parse_kafka_metadata({**sasl, "saslMechanism": dapr}, app_id="a"))
        assert scram["sasl_mechanism"] == ours


def test_client_kwargs_tls_skip_verify_and_client_certificate(pki: Pki) -> None:
    kw = client_kwargs(
        parse_kafka_metadata(
            {
                "brokers": "h:1",
                "authType": "mtls",
                "skipVerify": "true",
                "clientCert": pki.text("client_cert"),
                "clientKey": pki.text("client_key"),
            },
            app_id="a",
        )
    )
    assert kw["security_protocol"] == "SSL"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_client_kwargs_oidc_has_a_token_provider() -> None:
    kw = client_kwargs(
        parse_kafka_metadata(
            {
                "brokers": "h:1",
                "authType": "oidc",
                "oidcTokenEndpoint": "https://idp.example/token",
                "oidcClientID": "id",
                "oidcClientSecret": "s",
            },
            app_id="a",
        )
    )
    assert (kw["security_protocol"], kw["sasl_mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
    assert isinstance(kw["sasl_oauth_token_provider"], OidcTokenProvider)


@pytest.mark.parametrize(
    "topic", ["a b", "a\x00b", "a/b/c", "../../etc", "or\ufffdders", "t" * 250, ".", ".."]
)
async def test_topic_kafka_cannot_hold_is_refused_before_aiokafka(
    kafka_bootstrap: str, unique: str, topic: str
) -> None:
    # aiokafka used to wait request_timeout_ms (30 s here) for metadata of such a name, logging
    # an error every retry and keeping the name in its metadata for good.
    producer = KafkaProducer(meta(kafka_bootstrap), pubsubname="ps", request_timeout_s=30)
    await producer.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(BrokerError, match="is not a valid Kafka topic name") as info:
            await producer.publish(topic, b"x")
        assert info.value.retriable is False
        good = f"good-{unique}"
        outcomes = await producer.publish_many(
            [PublishRecord(topic, b"x"), PublishRecord(good, b"y")]
        )
        assert isinstance(outcomes[0], BrokerError) and outcomes[1] is None
        assert time.monotonic() - t0 < 5
        assert topic not in producer._started()._metadata.topics()
    finally:
        await producer.stop(5)


async def test_explicit_partition_and_out_of_range(kafka_bootstrap: str, unique: str) -> None:
    producer = KafkaProducer(meta(kafka_bootstrap), pubsubname="ps")
    await producer.start()
    topic = f"partition-{unique}"
    try:
        for i in range(3):
            await producer.publish(topic, f"v{i}".encode(), key=f"k{i}".encode(), partition=2)
        outcomes = await producer.publish_many(
            [PublishRecord(topic, b"m", partition=1), PublishRecord(topic, b"far", partition=4)]
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], BrokerError)
        assert str(outcomes[1]).startswith("partition number 4 is out of range")
        assert outcomes[1].retriable is False
        with pytest.raises(BrokerError, match="partition number 9 is out of range"):
            await producer.publish(topic, b"x", partition=9)
    finally:
        await producer.stop(5)
    records = await read_records(kafka_bootstrap, topic, 4)
    assert sorted((r.value, r.partition) for r in records) == [
        (b"m", 1),
        (b"v0", 2),
        (b"v1", 2),
        (b"v2", 2),
    ]


async def test_records_from_any_accepted_body_fit_the_producer(
    kafka_bootstrap: str, unique: str
) -> None:
    """Regression (issue 5, scenario 9): a 1 MiB binary publish becomes a ~1.4 MB record
    (data_base64), which aiokafka's default max_request_size (1 MiB) refused with a 500 although
    the API accepts 4 MiB bodies. Without maxMessageBytes the limit follows --max-body-size."""
    body_limit = 4 * 1024 * 1024
    big = b"x" * (body_limit // 3 * 4 + 1000)  # a base64'd body near the limit, in an envelope
    limited = KafkaProducer(meta(kafka_bootstrap), pubsubname="ps")
    await limited.start()
    try:
        with pytest.raises(BrokerError, match="MessageSizeTooLarge") as info:
            await limited.publish(f"big-{unique}", big)
        assert info.value.refused == "size"
    finally:
        await limited.stop(5)
    producer = KafkaProducer(meta(kafka_bootstrap), pubsubname="ps", max_body_size=body_limit)
    await producer.start()
    try:
        await producer.publish(f"big-{unique}", big)
    finally:
        await producer.stop(5)
    explicit = KafkaProducer(
        meta(kafka_bootstrap, maxMessageBytes="2000"), pubsubname="ps", max_body_size=body_limit
    )
    await explicit.start()
    try:
        with pytest.raises(BrokerError, match="MessageSizeTooLarge"):
            await explicit.publish(f"big-{unique}", b"y" * 3000)  # maxMessageBytes still rules
    finally:
        await explicit.stop(5)


async def test_a_text_body_of_control_characters_fits_the_producer(
    kafka_bootstrap: str, unique: str
) -> None:
    """Regression: a text/plain body of control characters within --max-body-size grows six-fold
    in the envelope (each one a \\u00XX escape in ``data``); the producer limit took only the
    4/3 of base64 into account and the publish failed as too large."""
    body_limit = 256 * 1024
    body = b"\x01" * body_limit
    record = wrap(body, content_type="text/plain", app_id="a", topic="t", pubsubname="ps")
    assert len(record) > body_limit * 6
    producer = KafkaProducer(meta(kafka_bootstrap), pubsubname="ps", max_body_size=body_limit)
    await producer.start()
    try:
        await producer.publish(f"ctl-{unique}", record)
    finally:
        await producer.stop(5)


async def test_ready_turns_false_while_the_broker_does_not_answer(tmp_path, unique: str) -> None:
    """Regression (issue 5, scenario 6): a frozen broker (SIGSTOP) keeps its connections open, so
    healthz stayed 204 through the outage. The metadata probe turns ready() false, then true."""
    import asyncio
    import os
    import signal

    from tidings.sidecar.cli.localbroker import start_local_broker

    broker = start_local_broker(log_path=tmp_path / "tansu.log")
    producer = KafkaProducer(
        meta(broker.bootstrap), pubsubname="ps", probe_interval_s=0.2, probe_timeout_s=0.5
    )
    try:
        await producer.start()
        assert producer.ready()
        os.kill(broker.process.pid, signal.SIGSTOP)
        async with asyncio.timeout(20):
            while producer.ready():
                await asyncio.sleep(0.05)  # poll interval, bounded by the timeout
        os.kill(broker.process.pid, signal.SIGCONT)
        async with asyncio.timeout(20):
            while not producer.ready():
                await asyncio.sleep(0.05)  # poll interval, bounded by the timeout
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
        await producer.stop(5)
        broker.stop()


async def test_publish_after_the_broker_stopped_says_it_is_unreachable(
    tmp_path, unique: str
) -> None:
    """The newcomer's report: after ``tidings uninstall`` a publish answered 500 with aiokafka
    internals only ("NodeNotReadyError: Attempt to send a request to node which is not ready").
    The message now says the brokers are unreachable first and keeps aiokafka's text."""
    from tidings.sidecar.cli.localbroker import start_local_broker

    broker = start_local_broker(log_path=tmp_path / "tansu.log")
    producer = KafkaProducer(meta(broker.bootstrap), pubsubname="ps", request_timeout_s=3)
    try:
        await producer.start()
        await producer.publish(f"gone-{unique}", b"stored")
        broker.stop()
        with pytest.raises(BrokerError) as err:
            await producer.publish(f"gone-{unique}", b"lost")
        message = str(err.value)
        assert message.startswith(f"kafka brokers {broker.bootstrap} are unreachable (")
        detail = message.partition(" are unreachable (")[2]
        # aiokafka's error kept as detail (NodeNotReadyError here; the exact class depends on
        # timing), its class name said once
        name = detail.partition(":")[0]
        assert name.endswith(("Error", "NoBrokersAvailable")) and detail.count(name) == 1, detail
        assert err.value.retriable and err.value.refused is None
        [outcome] = await producer.publish_many([PublishRecord(f"gone-{unique}", b"lost")])
        assert outcome is not None and "are unreachable" in str(outcome)
    finally:
        await producer.stop(5)
        broker.stop()
