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


def pod_with_ports(annotations: dict[str, str], *ports: int, protocol: str = "TCP") -> dict:
    return {
        "metadata": {"annotations": {"dapr.io/app-id": "orders", **annotations}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "ports": [{"containerPort": p, "protocol": protocol} for p in ports],
                }
            ]
        },
    }


def test_security_defaults() -> None:
    config = parse_sidecar_config(pod({"dapr.io/app-id": "orders"}))
    assert config.listen_addresses == "[::1],127.0.0.1"  # daprd's: loopback only
    assert config.public_port == 3501
    assert config.api_token_secret is None and config.app_token_secret is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1], 127.0.0.1", "[::1],127.0.0.1"),
        ("::1,::1", "[::1]"),
        ("0.0.0.0", "0.0.0.0"),
    ],
)
def test_listen_addresses_are_normalised(value: str, expected: str) -> None:
    annotations = {"dapr.io/app-id": "orders", "dapr.io/sidecar-listen-addresses": value}
    assert parse_sidecar_config(pod(annotations)).listen_addresses == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dapr.io/sidecar-listen-addresses", "localhost"),
        ("dapr.io/sidecar-listen-addresses", "127.0.0.1,"),
        ("dapr.io/sidecar-listen-addresses", "[::1"),
        ("dapr.io/sidecar-public-port", "0"),
        ("dapr.io/sidecar-public-port", "65536"),
        ("dapr.io/sidecar-public-port", "3500"),
        ("dapr.io/sidecar-public-port", "50001"),
        ("dapr.io/api-token-secret", ""),
        ("dapr.io/api-token-secret", "Not_A_Secret"),
        ("dapr.io/app-token-secret", "a/b"),
        ("dapr.io/sidecar-cpu-request", "-100m"),
        ("dapr.io/sidecar-memory-limit", "-1Gi"),
        ("dapr.io/sidecar-liveness-probe-delay-seconds", "-1"),
    ],
)
def test_security_annotations_are_range_checked(key: str, value: str) -> None:
    with pytest.raises(AnnotationError) as err:
        parse_sidecar_config(pod({"dapr.io/app-id": "orders", key: value}))
    assert err.value.key == key, err.value


@pytest.mark.parametrize(
    ("annotations", "ports", "key", "said"),
    [
        # the sidecar's own ports, each against the others
        ({"dapr.io/app-port": "50001"}, (), "dapr.io/app-port", "gRPC API"),
        ({"dapr.io/app-port": "3501"}, (), "dapr.io/sidecar-public-port", "the app's port"),
        (
            {"dapr.io/sidecar-public-port": "9090"},
            (),
            "dapr.io/metrics-port",
            "sidecar-public-port",
        ),
        (
            {"dapr.io/metrics-port": "4000", "dapr.io/sidecar-public-port": "4000"},
            (),
            "dapr.io/metrics-port",
            "sidecar-public-port",
        ),
        # an app container's own ports: the app's metrics on 9090 is the classic clash
        ({}, (8080, 9090), "dapr.io/metrics-port", "containerPort of container 'app'"),
        ({}, (3501,), "dapr.io/sidecar-public-port", "containerPort"),
    ],
)
def test_ports_may_not_clash(
    annotations: dict[str, str], ports: tuple[int, ...], key: str, said: str
) -> None:
    with pytest.raises(AnnotationError) as err:
        parse_sidecar_config(pod_with_ports(annotations, *ports))
    assert err.value.key == key, err.value
    assert said in str(err.value)


def test_ports_that_do_not_clash() -> None:
    # metrics off: 9090 is the app's to take; UDP ports do not clash with TCP listeners
    parse_sidecar_config(pod_with_ports({"dapr.io/enable-metrics": "false"}, 9090))
    parse_sidecar_config(pod_with_ports({}, 9090, 3501, protocol="UDP"))
    config = parse_sidecar_config(
        pod_with_ports({"dapr.io/metrics-port": "9191", "dapr.io/app-port": "8080"}, 8080, 9090)
    )
    assert (config.metrics_port, config.public_port) == (9191, 3501)
