"""Pure parsing of the injector's pod annotations (operator/annotations.py)."""

from __future__ import annotations

import pytest

from tidings.operator.annotations import (
    AnnotationError,
    default_app_id,
    injection_requested,
    parse_sidecar_config,
)


def pod(annotations: dict[str, str] | None = None, **meta: object) -> dict[str, object]:
    return {"metadata": {"annotations": annotations or {}, **meta}, "spec": {"containers": []}}


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, False),
        ({"dapr.io/app-id": "orders"}, True),
        ({"dapr.io/id": "orders"}, True),
        ({"dapr.io/enabled": "true"}, True),
        ({"dapr.io/enabled": "TRUE"}, True),
        ({"dapr.io/enabled": "false", "dapr.io/app-id": "orders"}, False),
        ({"dapr.io/enabled": "False", "dapr.io/id": "orders"}, False),
        ({"dapr.io/app-port": "8080"}, False),
    ],
)
def test_injection_requested(annotations: dict[str, str], expected: bool) -> None:
    assert injection_requested(annotations) is expected


def test_enabled_must_be_a_boolean() -> None:
    with pytest.raises(AnnotationError) as err:
        injection_requested({"dapr.io/enabled": "yes"})
    assert err.value.key == "dapr.io/enabled"
    assert "dapr.io/enabled" in str(err.value)


def test_app_id_precedence_app_id_over_id() -> None:
    config = parse_sidecar_config(pod({"dapr.io/app-id": "a", "dapr.io/id": "b"}, name="p"))
    assert (config.app_id, config.app_id_source) == ("a", "dapr.io/app-id")
    assert any("dapr.io/id is deprecated" in w for w in config.warnings)


def test_legacy_id_accepted_with_warning() -> None:
    config = parse_sidecar_config(pod({"dapr.io/id": "orders"}, name="p"))
    assert config.app_id == "orders"
    assert config.app_id_source == "dapr.io/id"
    assert config.warnings and "deprecated" in config.warnings[0]


def test_matching_legacy_id_is_not_warned_twice() -> None:
    config = parse_sidecar_config(pod({"dapr.io/app-id": "x", "dapr.io/id": "x"}, name="p"))
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"name": "worker-0"}, ("worker-0", "pod name")),
        (
            {"generateName": "orders-5d8f7c9b4-", "labels": {"pod-template-hash": "5d8f7c9b4"}},
            ("orders", "owner name"),
        ),
        ({"generateName": "batch-"}, ("batch", "generateName")),
        ({}, None),
    ],
)
def test_default_app_id(meta: dict[str, object], expected: object) -> None:
    assert default_app_id({"metadata": meta}) == expected


def test_defaulted_app_id_warns() -> None:
    config = parse_sidecar_config(pod({"dapr.io/enabled": "true"}, name="web"))
    assert config.app_id == "web"
    assert "not set" in config.warnings[0]


def test_full_config() -> None:
    config = parse_sidecar_config(
        pod(
            {
                "dapr.io/app-id": "orders",
                "dapr.io/app-port": "8080",
                "dapr.io/log-level": "debug",
                "dapr.io/sidecar-cpu-request": "100m",
                "dapr.io/sidecar-cpu-limit": "1",
                "dapr.io/sidecar-memory-request": "64Mi",
                "dapr.io/sidecar-memory-limit": "0.5Gi",
                "dapr.io/enable-metrics": "false",
                "dapr.io/sidecar-liveness-probe-period-seconds": "7",
            }
        )
    )
    assert config.app_port == 8080
    assert config.log_level == "debug"
    assert config.enable_metrics is False
    assert config.resources == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "0.5Gi"},
    }
    assert config.liveness.period_seconds == 7


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dapr.io/app-port", "http"),
        ("dapr.io/app-port", "70000"),
        ("dapr.io/app-port", "-1"),
        ("dapr.io/metrics-port", "x"),
        ("dapr.io/sidecar-cpu-request", "lots"),
        ("dapr.io/sidecar-memory-limit", "12 Mi"),
        ("dapr.io/sidecar-memory-limit", "1Mb"),
        ("dapr.io/log-level", "loud"),
        ("dapr.io/enable-metrics", "maybe"),
        ("dapr.io/sidecar-readiness-probe-threshold", "0"),
        ("dapr.io/app-id", "Orders_Service"),
        ("dapr.io/sidecar-image", " "),
    ],
)
def test_malformed_annotation_names_the_key(key: str, value: str) -> None:
    annotations = {"dapr.io/app-id": "orders", key: value}
    with pytest.raises(AnnotationError) as err:
        parse_sidecar_config(pod(annotations))
    assert err.value.key == key
    assert key in str(err.value) and repr(value) in str(err.value)


def test_bad_legacy_id_names_the_legacy_key() -> None:
    with pytest.raises(AnnotationError) as err:
        parse_sidecar_config(pod({"dapr.io/id": "UPPER"}))
    assert err.value.key == "dapr.io/id"


def test_warning_log_level_is_normalised() -> None:
    assert (
        parse_sidecar_config(pod({"dapr.io/app-id": "a", "dapr.io/log-level": "WARNING"})).log_level
        == "warn"
    )


@pytest.mark.parametrize(
    ("annotations", "key"),
    [
        ({"dapr.io/app-port": "²"}, "dapr.io/app-port"),  # isdigit() is true, int() refuses it
        ({"dapr.io/app-port": "3500"}, "dapr.io/app-port"),  # the sidecar's own port
        ({"dapr.io/app-port": "8000", "dapr.io/metrics-port": "8000"}, "dapr.io/metrics-port"),
        ({"dapr.io/metrics-port": "3500"}, "dapr.io/metrics-port"),
        (
            {"dapr.io/sidecar-liveness-probe-period-seconds": "99999999999999999999"},
            "dapr.io/sidecar-liveness-probe-period-seconds",
        ),  # beyond int32: the API server failed
    ],
)
def test_ports_and_probe_numbers_found_on_a_real_cluster(
    annotations: dict[str, str], key: str
) -> None:
    with pytest.raises(AnnotationError) as err:
        parse_sidecar_config(pod({"dapr.io/app-id": "orders", **annotations}))
    assert err.value.key == key


@pytest.mark.parametrize(("value", "expected"), [("grpc", "grpc"), (" HTTP ", "http")])
def test_app_protocol(value: str, expected: str) -> None:
    config = parse_sidecar_config(pod({"dapr.io/app-id": "orders", "dapr.io/app-protocol": value}))
    assert config.app_protocol == expected
    assert parse_sidecar_config(pod({"dapr.io/app-id": "orders"})).app_protocol is None


@pytest.mark.parametrize("value", ["https", "grpcs", "h2c", ""])
def test_app_protocol_tidings_does_not_speak_is_refused(value: str) -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_sidecar_config(pod({"dapr.io/app-id": "orders", "dapr.io/app-protocol": value}))
    assert caught.value.key == "dapr.io/app-protocol"
    assert "http or grpc" in str(caught.value)
