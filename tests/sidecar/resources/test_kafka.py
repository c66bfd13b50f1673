"""``pubsub.kafka`` metadata (dapr-pubsub-contract.md §3.3, §5.5)."""

from __future__ import annotations

import pytest

from tests.tlskit import Pki
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
        ({"brokers": "a:1", "authType": "oidc"}, "spec.metadata.oidcTokenEndpoint"),
        ({"brokers": "a:1", "authType": "awsiam"}, "spec.metadata.authType"),
        ({"brokers": "a:1", "authType": "oidc_private_key_jwt"}, "spec.metadata.authType"),
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


BASE = {"brokers": "a:1"}
SASL = {**BASE, "authType": "password", "saslUsername": "u", "saslPassword": "p"}
OIDC = {
    **BASE,
    "authType": "oidc",
    "oidcTokenEndpoint": "https://idp.example/oauth2/token",
    "oidcClientID": "sidecar",
    "oidcClientSecret": "s3cret",
}


@pytest.mark.parametrize(
    ("values", "tls"),
    [
        ({**BASE, "authType": "none"}, False),  # a local broker needs no disableTls
        (SASL, True),  # Dapr: TLS for every authType but none
        ({**SASL, "disableTls": "true"}, False),
        (OIDC, True),
        ({**OIDC, "disableTls": "TRUE"}, False),
        ({**BASE, "authType": "none", "skipVerify": "true"}, True),  # Dapr: plain, silently
    ],
)
def test_tls_is_on_for_every_auth_type_but_none(values: dict[str, str], tls: bool) -> None:
    assert parse_kafka_metadata(values, app_id="x").tls is tls


def test_tls_fields_in_pem(pki: Pki) -> None:
    meta = parse_kafka_metadata(
        {
            **BASE,
            "authType": "mtls",
            "caCert": pki.text("ca_cert"),
            "clientCert": pki.text("client_cert"),
            "clientKey": pki.text("client_key"),
        },
        app_id="x",
    )
    assert meta.tls and meta.client_cert and meta.ca_cert
    none_with_ca = parse_kafka_metadata(
        {**BASE, "authType": "none", "caCert": pki.text("ca_cert")}, app_id="x"
    )
    assert none_with_ca.tls  # Dapr would drop the CA and connect in plain text
    assert parse_kafka_metadata(
        {**BASE, "authType": "certificate", "caCert": pki.text("ca_cert")}, app_id="x"
    ).tls


def test_oidc_fields() -> None:
    meta = parse_kafka_metadata(
        {**OIDC, "oidcScopes": "openid, kafka", "oidcExtensions": '{"logicalCluster": "lkc-1"}'},
        app_id="x",
    )
    assert meta.oidc_token_endpoint == OIDC["oidcTokenEndpoint"]
    assert (meta.oidc_client_id, meta.oidc_client_secret) == ("sidecar", "s3cret")
    assert meta.oidc_scopes == ("openid", "kafka")
    assert meta.oidc_extensions == (("logicalCluster", "lkc-1"),)
    assert parse_kafka_metadata(OIDC, app_id="x").oidc_scopes == ("openid",)  # Dapr's default


@pytest.mark.parametrize(
    ("values", "field", "says"),
    [
        ({**BASE, "authType": "mtls"}, "clientCert", "requires clientCert"),
        ({**BASE, "authType": "certificate"}, "caCert", "requires caCert"),
        ({**BASE, "authType": "none", "caCert": "not a pem"}, "caCert", "not a PEM"),
        ({**SASL, "clientCert": "x"}, "clientKey", "give both or neither"),
        ({**SASL, "clientKey": "x"}, "clientCert", "give both or neither"),
        ({**SASL, "clientCert": "x", "clientKey": "y"}, "clientCert", "do not load"),
        ({**SASL, "disableTls": "true", "skipVerify": "true"}, "disableTls", "would be ignored"),
        ({**SASL, "saslMechanism": "GSSAPI"}, "saslMechanism", "must be PLAINTEXT"),
        ({**OIDC, "oidcTokenEndpoint": "http://idp/token"}, "oidcTokenEndpoint", "https"),
        ({**OIDC, "oidcClientSecret": ""}, "oidcClientSecret", "requires oidcClientSecret"),
        ({**OIDC, "oidcExtensions": "[1]"}, "oidcExtensions", "JSON object of strings"),
        ({**OIDC, "oidcExtensions": '{"auth": "x"}'}, "oidcExtensions", "not allowed"),
        ({**BASE, "authType": "awsiam"}, "authType", "AWS IAM"),
    ],
)
def test_security_fields_are_checked_naming_the_field(
    values: dict[str, str], field: str, says: str
) -> None:
    with pytest.raises(ResourceError) as err:
        parse_kafka_metadata(values, app_id="x", source="pubsub.yaml")
    assert err.value.field == f"spec.metadata.{field}"
    assert says in str(err.value)


def test_mtls_refuses_disable_tls(pki: Pki) -> None:
    with pytest.raises(ResourceError) as err:
        parse_kafka_metadata(
            {
                **BASE,
                "authType": "mtls",
                "clientCert": pki.text("client_cert"),
                "clientKey": pki.text("client_key"),
                "disableTls": "true",
            },
            app_id="x",
        )
    assert err.value.field == "spec.metadata.disableTls"
