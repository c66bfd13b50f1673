"""The pure pod patch (operator/sidecar_patch.py): shape, idempotency, app containers."""

from __future__ import annotations

import copy

import jsonpatch
import pytest

from tidings.operator.annotations import parse_sidecar_config
from tidings.operator.sidecar_patch import json_patch, patch_pod

IMAGE = "example/tidings-sidecar:test"


def make_pod(**annotations: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "orders-1",
            "namespace": "shop",
            "annotations": {"dapr.io/app-id": "orders", **annotations},
            "labels": {"app": "orders"},
        },
        "spec": {
            "containers": [
                {"name": "app", "image": "orders:1"},
                {
                    "name": "helper",
                    "image": "helper:1",
                    "env": [{"name": "DAPR_HTTP_PORT", "value": "3999"}],
                },
            ]
        },
    }


def daprd(pod: dict) -> dict:
    found = [c for c in pod["spec"]["containers"] if c["name"] == "daprd"]
    assert len(found) == 1
    return found[0]


def test_injects_one_daprd_with_the_contracted_shape() -> None:
    pod = make_pod(
        **{
            "dapr.io/app-port": "8080",
            "dapr.io/sidecar-cpu-request": "50m",
            "dapr.io/sidecar-memory-limit": "256Mi",
            "dapr.io/log-level": "debug",
        }
    )
    patched = patch_pod(pod, parse_sidecar_config(pod), image=IMAGE)
    c = daprd(patched)
    assert c["image"] == IMAGE
    assert c["command"] == ["tidings", "sidecar"]
    assert c["args"] == [
        "--app-id",
        "orders",
        "--app-port",
        "8080",
        "--dapr-http-port",
        "3500",
        "--dapr-grpc-port",
        "50001",
        "--dapr-listen-addresses",
        "[::1],127.0.0.1",
        "--dapr-public-port",
        "3501",
        "--resources-path",
        "/etc/tidings/resources",
        "--log-level",
        "debug",
        "--enable-metrics",
        "--metrics-port",
        "9090",
    ]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "dapr-http": 3500,
        "dapr-grpc": 50001,
        "dapr-public": 3501,
        "dapr-metrics": 9090,
    }
    # The probes go to the public port: the API itself listens on loopback only.
    assert c["readinessProbe"]["httpGet"] == {
        "path": "/v1.0/healthz",
        "port": 3501,
        "scheme": "HTTP",
    }
    assert c["livenessProbe"]["tcpSocket"] == {"port": 3501}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["resources"] == {"requests": {"cpu": "50m"}, "limits": {"memory": "256Mi"}}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env == {"NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    assert c["volumeMounts"] == [
        {"name": "tidings-resources", "mountPath": "/etc/tidings/resources", "readOnly": True}
    ]
    assert patched["spec"]["volumes"] == [
        {
            "name": "tidings-resources",
            "secret": {"secretName": "tidings-orders", "defaultMode": 0o444},
        }
    ]
    assert patched["metadata"]["labels"] == {
        "app": "orders",
        "dapr.io/sidecar-injected": "true",
        "dapr.io/app-id": "orders",
    }


def test_app_containers_get_dapr_http_port_only_if_absent() -> None:
    pod = make_pod()
    patched = patch_pod(pod, parse_sidecar_config(pod), image=IMAGE)
    app, helper = patched["spec"]["containers"][:2]
    assert app["env"] == [
        {"name": "DAPR_HTTP_PORT", "value": "3500"},
        {"name": "DAPR_GRPC_PORT", "value": "50001"},
    ]
    assert helper["env"] == [
        {"name": "DAPR_HTTP_PORT", "value": "3999"},
        {"name": "DAPR_GRPC_PORT", "value": "50001"},
    ]
    assert "env" not in daprd(patched) or all(
        e["name"] != "DAPR_HTTP_PORT" for e in daprd(patched)["env"]
    )


def test_input_pod_is_not_modified() -> None:
    pod = make_pod()
    before = copy.deepcopy(pod)
    patch_pod(pod, parse_sidecar_config(pod), image=IMAGE)
    assert pod == before


def test_idempotent_on_an_injected_pod() -> None:
    pod = make_pod(**{"dapr.io/app-port": "8080"})
    config = parse_sidecar_config(pod)
    once = patch_pod(pod, config, image=IMAGE)
    twice = patch_pod(once, config, image=IMAGE)
    assert twice == once
    assert json_patch(once, config, image=IMAGE) == []


def test_json_patch_applies_to_the_patched_pod() -> None:
    pod = make_pod()
    config = parse_sidecar_config(pod)
    ops = json_patch(pod, config, image=IMAGE)
    assert ops
    assert jsonpatch.apply_patch(pod, ops) == patch_pod(pod, config, image=IMAGE)


def test_stale_daprd_is_replaced_not_duplicated() -> None:
    pod = make_pod()
    pod["spec"]["containers"].append({"name": "daprd", "image": "old", "args": ["--app-id", "x"]})
    patched = patch_pod(pod, parse_sidecar_config(pod), image=IMAGE)
    assert daprd(patched)["image"] == IMAGE
    assert [c["name"] for c in patched["spec"]["containers"]] == ["app", "helper", "daprd"]


def test_metrics_disabled_drops_port_and_flags() -> None:
    pod = make_pod(**{"dapr.io/enable-metrics": "false"})
    c = daprd(patch_pod(pod, parse_sidecar_config(pod), image=IMAGE))
    assert "--enable-metrics" not in c["args"]
    assert [p["name"] for p in c["ports"]] == ["dapr-http", "dapr-grpc", "dapr-public"]
    assert "--app-port" not in c["args"]


def test_api_server_defaults_do_not_make_a_patch() -> None:
    pod = make_pod()
    config = parse_sidecar_config(pod)
    stored = patch_pod(pod, config, image=IMAGE)
    c = daprd(stored)
    c["terminationMessagePath"] = "/dev/termination-log"
    c["readinessProbe"]["successThreshold"] = 1
    stored["spec"]["volumes"][0]["secret"]["optional"] = None
    assert json_patch(stored, config, image=IMAGE) == []


def test_a_pod_with_its_own_daprd_is_refused() -> None:
    """Found on a real cluster: merging into a user's daprd made pods the API server refused,
    and kept what the user put there (privileged, root, capabilities) next to the broker
    credentials. Now the pod is refused, saying what to do."""
    from tidings.operator.injection import InjectionRefused, decide
    from tidings.operator.settings import InjectorSettings

    pod = make_pod()
    pod["spec"]["containers"].append(
        {"name": "daprd", "image": "mine", "readinessProbe": {"exec": {"command": ["true"]}}}
    )
    with pytest.raises(InjectionRefused) as refused:
        decide(pod, InjectorSettings(sidecar_image=IMAGE))
    assert "already has a container named 'daprd'" in str(refused.value)
    assert 'dapr.io/enabled: "false"' in str(refused.value)
    injected = patch_pod(make_pod(), parse_sidecar_config(make_pod()), image=IMAGE)
    again, _ = decide(injected, InjectorSettings(sidecar_image=IMAGE))  # re-invocation
    assert again == injected


def test_a_daprd_claiming_to_be_injected_is_rebuilt_without_what_its_author_added() -> None:
    """A pod labelled dapr.io/sidecar-injected (as a re-invocation is) with a daprd of its own
    gets exactly our container: nothing of the author's survives but API-server defaults."""
    pod = make_pod()
    pod["metadata"]["labels"]["dapr.io/sidecar-injected"] = "true"
    pod["spec"]["containers"].append(
        {
            "name": "daprd",
            "image": "mine",
            "command": ["sh", "-c", "cat /etc/tidings/resources/*"],
            "envFrom": [{"secretRef": {"name": "everything"}}],
            "lifecycle": {"postStart": {"exec": {"command": ["steal"]}}},
            "securityContext": {
                "privileged": True,
                "runAsUser": 0,
                "capabilities": {"add": ["NET_ADMIN"]},
            },
            "terminationMessagePath": "/dev/termination-log",
        }
    )
    config = parse_sidecar_config(pod)
    rebuilt = daprd(patch_pod(pod, config, image=IMAGE))
    clean = daprd(patch_pod(make_pod(), config, image=IMAGE))
    assert rebuilt == {**clean, "terminationMessagePath": "/dev/termination-log"}


def test_listen_addresses_public_port_and_tokens_reach_the_container() -> None:
    pod = make_pod(
        **{
            "dapr.io/sidecar-listen-addresses": "0.0.0.0",
            "dapr.io/sidecar-public-port": "3601",
            "dapr.io/api-token-secret": "orders-api-token",
            "dapr.io/app-token-secret": "orders-app-token",
        }
    )
    c = daprd(patch_pod(pod, parse_sidecar_config(pod), image=IMAGE))
    args = c["args"]
    assert args[args.index("--dapr-listen-addresses") + 1] == "0.0.0.0"
    assert args[args.index("--dapr-public-port") + 1] == "3601"
    assert c["readinessProbe"]["httpGet"]["port"] == 3601
    assert c["livenessProbe"]["tcpSocket"] == {"port": 3601}
    # Dapr's env names and Secret key; the value never appears in the pod spec.
    assert {
        "name": "DAPR_API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "orders-api-token", "key": "token"}},
    } in c["env"]
    assert {
        "name": "APP_API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "orders-app-token", "key": "token"}},
    } in c["env"]
    plain = daprd(patch_pod(make_pod(), parse_sidecar_config(make_pod()), image=IMAGE))
    assert not any(e["name"].endswith("_API_TOKEN") for e in plain["env"])


def test_cluster_default_api_token_secret_applies_unless_the_pod_names_one() -> None:
    from tidings.operator.injection import decide
    from tidings.operator.settings import InjectorSettings

    settings = InjectorSettings(sidecar_image=IMAGE, default_api_token_secret="dapr-api-token")

    def token_secret(pod: dict) -> str | None:
        patched, _ = decide(pod, settings)
        assert patched is not None
        for e in daprd(patched)["env"]:
            if e["name"] == "DAPR_API_TOKEN":
                return str(e["valueFrom"]["secretKeyRef"]["name"])
        return None

    assert token_secret(make_pod()) == "dapr-api-token"
    assert token_secret(make_pod(**{"dapr.io/api-token-secret": "own"})) == "own"
    unset, _ = decide(make_pod(), InjectorSettings(sidecar_image=IMAGE))
    assert unset is not None
    assert not any(e["name"] == "DAPR_API_TOKEN" for e in daprd(unset)["env"])


def test_app_protocol_annotation_reaches_the_sidecar_and_the_app() -> None:
    pod = make_pod(**{"dapr.io/app-port": "50051", "dapr.io/app-protocol": "gRPC"})
    pod["spec"]["containers"][1]["env"].append({"name": "APP_PROTOCOL", "value": "mine"})
    patched = patch_pod(pod, parse_sidecar_config(pod), image=IMAGE)
    args = daprd(patched)["args"]
    assert args[args.index("--app-protocol") + 1] == "grpc"
    app, helper = patched["spec"]["containers"][:2]
    assert {"name": "APP_PROTOCOL", "value": "grpc"} in app["env"]
    assert {"name": "APP_PROTOCOL", "value": "mine"} in helper["env"]
    assert {"name": "APP_PROTOCOL", "value": "grpc"} not in helper["env"]
    assert patch_pod(patched, parse_sidecar_config(patched), image=IMAGE) == patched

    plain = make_pod()
    patched = patch_pod(plain, parse_sidecar_config(plain), image=IMAGE)
    assert "--app-protocol" not in daprd(patched)["args"]
    assert all(e["name"] != "APP_PROTOCOL" for e in patched["spec"]["containers"][0]["env"])


def test_operator_defaults_for_resources_and_log_level_yield_to_annotations() -> None:
    """The chart's sidecar.resources / sidecar.logLevel reach daprd unless the pod says
    otherwise."""
    from tidings.operator.injection import decide
    from tidings.operator.settings import InjectorSettings

    settings = InjectorSettings(
        sidecar_image=IMAGE,
        sidecar_log_level="warn",
        sidecar_resources={
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
    )
    patched, _ = decide(make_pod(), settings)
    assert patched is not None
    daprd = next(c for c in patched["spec"]["containers"] if c["name"] == "daprd")
    assert daprd["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }
    assert daprd["args"][daprd["args"].index("--log-level") + 1] == "warn"

    pod = make_pod()
    pod["metadata"]["annotations"].update(
        {"dapr.io/sidecar-memory-limit": "1Gi", "dapr.io/log-level": "debug"}
    )
    patched, _ = decide(pod, settings)
    assert patched is not None
    daprd = next(c for c in patched["spec"]["containers"] if c["name"] == "daprd")
    assert daprd["resources"]["limits"] == {"memory": "1Gi"}
    assert daprd["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert daprd["args"][daprd["args"].index("--log-level") + 1] == "debug"


def test_otlp_endpoint_is_the_sidecars_otel_exporter_endpoint() -> None:
    pod = make_pod()
    config = parse_sidecar_config(pod)
    env = daprd(patch_pod(pod, config, image=IMAGE, otlp_endpoint="http://otel:4318"))["env"]
    assert {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel:4318"} in env
    plain = daprd(patch_pod(pod, config, image=IMAGE))["env"]
    assert not any(e["name"].startswith("OTEL_") for e in plain)
