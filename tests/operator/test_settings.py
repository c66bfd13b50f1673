"""Flags and TIDINGS_* environment → OperatorSettings (operator/settings.py)."""

from __future__ import annotations

import pytest

from tidings.operator.settings import SettingsError, parse_settings


def test_defaults() -> None:
    s = parse_settings([], environ={})
    assert s.injector.allow_sidecar_image_annotation is False
    assert s.webhook.port == 9443 and s.webhook.cert_file is None
    assert s.namespaces == () and s.leader_election.standalone is False
    assert s.log_format == "json"


def test_environment_as_the_chart_sets_it() -> None:
    s = parse_settings(
        [],
        environ={
            "TIDINGS_SIDECAR_IMAGE": "r/sidecar:1",
            "TIDINGS_ALLOW_SIDECAR_IMAGE_ANNOTATION": "true",
            "TIDINGS_WEBHOOK_PORT": "8443",
            "TIDINGS_WEBHOOK_CERT_FILE": "/c",
            "TIDINGS_WEBHOOK_KEY_FILE": "/k",
            "TIDINGS_NAMESPACES": "a, b,,a",
            "POD_NAME": "op-1",
            "POD_NAMESPACE": "tidings",
        },
    )
    assert s.injector.sidecar_image == "r/sidecar:1"
    assert s.injector.allow_sidecar_image_annotation is True
    assert (s.webhook.port, s.webhook.cert_file, s.webhook.key_file) == (8443, "/c", "/k")
    assert s.namespaces == ("a", "b")
    assert (s.leader_election.identity, s.leader_election.lease_namespace) == ("op-1", "tidings")


def test_sidecar_defaults_from_the_chart() -> None:
    s = parse_settings(
        [],
        environ={
            "TIDINGS_SIDECAR_LOG_LEVEL": "debug",
            "TIDINGS_SIDECAR_RESOURCES": '{"requests": {"cpu": "50m", "memory": "64Mi"}, '
            '"limits": {"memory": "256Mi"}}',
        },
    )
    assert s.injector.sidecar_log_level == "debug"
    assert s.injector.sidecar_resources == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }
    assert parse_settings([], environ={}).injector.sidecar_resources == {}


def test_default_api_token_secret() -> None:
    assert parse_settings([], environ={}).injector.default_api_token_secret is None
    assert (
        parse_settings([], environ={"TIDINGS_SIDECAR_API_TOKEN_SECRET": ""})
    ).injector.default_api_token_secret is None
    s = parse_settings([], environ={"TIDINGS_SIDECAR_API_TOKEN_SECRET": "dapr-api-token"})
    assert s.injector.default_api_token_secret == "dapr-api-token"


def test_flags_override_environment() -> None:
    s = parse_settings(
        ["--webhook-port", "7000", "--standalone", "--namespace", "x"],
        environ={"TIDINGS_WEBHOOK_PORT": "8443"},
    )
    assert s.webhook.port == 7000 and s.leader_election.standalone and s.namespaces == ("x",)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--webhook-cert-file", "/c"], {}, "go together"),
        (["--webhook-port", "70000"], {}, "TCP port"),
        (["--lease-duration-seconds", "2", "--lease-renew-interval-seconds", "3"], {}, "shorter"),
        (["--lease-duration-seconds", "nan"], {}, "--lease-duration-seconds 'nan'"),
        (["--lease-duration-seconds", "inf"], {}, "finite"),
        (["--lease-renew-interval-seconds", "-1"], {}, "greater than 0"),
        (["--resync-interval-seconds", "nan"], {}, "--resync-interval-seconds"),
        ([], {"TIDINGS_LEASE_DURATION_SECONDS": "abc"}, "not a number of seconds"),
        ([], {"TIDINGS_STANDALONE": "perhaps"}, "TIDINGS_STANDALONE"),
        ([], {"TIDINGS_SIDECAR_RESOURCES": "{"}, "not JSON"),
        ([], {"TIDINGS_SIDECAR_RESOURCES": '{"request": {"cpu": "1"}}'}, "requests"),
        ([], {"TIDINGS_SIDECAR_RESOURCES": '{"limits": {"memory": "lots"}}'}, "limits.memory"),
        ([], {"TIDINGS_SIDECAR_API_TOKEN_SECRET": "No_Secret"}, "--sidecar-api-token-secret"),
    ],
)
def test_bad_settings_name_the_setting(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_settings(argv, environ=environ)
