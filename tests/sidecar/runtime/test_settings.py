"""settings.py: daprd-compatible flags, and the numbers they refuse (argparse exits 2 with a
clear message, nothing starts)."""

from __future__ import annotations

import argparse

import pytest

from tidings.sidecar.runtime.settings import (
    MAX_BODY_SIZE_LIMIT,
    add_sidecar_arguments,
    settings_from_args,
)


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tidings sidecar")
    add_sidecar_arguments(parser)
    return parser.parse_args(["--app-id", "orders", *flags])


def refused(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    with pytest.raises(SystemExit) as exited:
        parse(*flags)
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # The newcomer's two: both started without complaint.
        (("--delivery-timeout-seconds", "-3"), "must be greater than 0"),
        (("--dapr-graceful-shutdown-seconds", "nan"), "not a finite number"),
        (("--delivery-timeout-seconds", "0"), "must be greater than 0"),
        (("--delivery-timeout-seconds", "inf"), "not a finite number"),
        (("--delivery-timeout-seconds", "soon"), "not a number of seconds"),
        (("--graceful-shutdown-seconds", "-1"), "must be 0 or more"),
        (("--dapr-graceful-shutdown-seconds=-inf",), "not a finite number"),
        (("--max-body-size", "infMi"), "not a finite number"),  # was an OverflowError traceback
        (("--max-body-size", "nanMi"), "invalid size"),
        (("--max-body-size", "0"), "must be positive"),
        (("--max-body-size", "3Gi"), "2047Mi"),  # gRPC cannot carry it
        (("--dapr-http-port", "0"), "out of range"),
        (("--metrics-port", "70000"), "out of range"),
        (("--app-port", "-1"), "out of range"),
        (("--dapr-public-port", "0"), "out of range"),
        (("--dapr-listen-addresses", "localhost"), "invalid listen address"),
        (("--dapr-listen-addresses", "127.0.0.1,"), "invalid listen address"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_nonsense_numbers_are_refused(
    capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    err = refused(capsys, *flags)
    assert flags[0].split("=")[0] in err and message in err, err


def test_sensible_numbers_are_taken() -> None:
    settings = settings_from_args(
        parse(
            "--delivery-timeout-seconds",
            "2.5",
            "--dapr-graceful-shutdown-seconds",
            "0",
            "--max-body-size",
            "2047Mi",
            "--dapr-http-port",
            "3501",
        ),
        environ={},
    )
    assert settings.delivery_timeout_s == 2.5
    assert settings.graceful_shutdown_seconds == 0.0
    assert settings.max_body_size == MAX_BODY_SIZE_LIMIT
    assert settings.dapr_http_port == 3501
    defaults = settings_from_args(parse(), environ={})
    assert (defaults.delivery_timeout_s, defaults.graceful_shutdown_seconds) == (60.0, 5.0)


def test_listen_and_public_port_defaults_are_daprds() -> None:
    settings = settings_from_args(parse(), environ={})
    assert settings.dapr_listen_addresses == ("::1", "127.0.0.1")  # loopback only
    assert (settings.dapr_public_port, settings.dapr_public_port_explicit) == (3501, False)
    assert settings.api_token is None and settings.app_api_token is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0", ("0.0.0.0",)),
        ("[::1], 127.0.0.1,127.0.0.1", ("::1", "127.0.0.1")),
        ("::", ("::",)),
    ],
)
def test_listen_addresses(value: str, expected: tuple[str, ...]) -> None:
    settings = settings_from_args(parse("--dapr-listen-addresses", value), environ={})
    assert settings.dapr_listen_addresses == expected


def test_tokens_and_an_explicit_public_port() -> None:
    settings = settings_from_args(
        parse("--dapr-public-port", "3601"),
        environ={"DAPR_API_TOKEN": "api", "APP_API_TOKEN": "app"},
    )
    assert (settings.dapr_public_port, settings.dapr_public_port_explicit) == (3601, True)
    assert (settings.api_token, settings.app_api_token) == ("api", "app")
