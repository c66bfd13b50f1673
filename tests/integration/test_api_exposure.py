"""What of a sidecar answers whom, with real processes (issue 13, "The injected sidecar").

- The HTTP and gRPC APIs listen on loopback only by default (daprd's ``[::1],127.0.0.1``): not
  on another address of this host. ``127.0.0.2`` is such an address on every Linux host (all of
  127/8 is local), and the host's own outward address is used too when it has one.
- The public port (``--dapr-public-port``) answers the two health endpoints on every interface
  and nothing else; the metrics port answers ``/metrics`` on every interface and nothing else.
- ``DAPR_API_TOKEN``: every API call over HTTP and gRPC needs ``dapr-api-token``, health does not.
- ``APP_API_TOKEN`` reaches the app as ``dapr-api-token``; what a publisher puts in a record's
  metadata cannot forge it, nor ``Authorization``, ``Proxy-*`` or a hop-by-hop header.
"""

from __future__ import annotations

import json
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
from dapr.proto.runtime.v1 import dapr_pb2_grpc, pubsub_pb2

from tidings.sidecar.cli.localbroker import free_port

from .processes import (
    Proc,
    http_json,
    poll,
    received,
    start_app,
    start_sidecar,
    write_component,
)


def outward_address() -> str | None:
    """This host's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def refuses(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(5)
        return s.connect_ex((host, port)) != 0


def url(host: str, port: int, path: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


@pytest.fixture
def resources(tmp_path: Path, kafka_bootstrap: str) -> Path:
    return write_component(tmp_path / "resources", kafka_bootstrap)


def test_api_on_loopback_health_and_metrics_on_every_interface(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    metrics_port = free_port()
    sidecar = start_sidecar(
        tmp_path,
        "exposed",
        app_id=f"exposure-{unique}",
        resources=resources,
        extra=["--enable-metrics", "--metrics-port", str(metrics_port)],
    )
    procs.append(sidecar)
    assert sidecar.public_port is not None and sidecar.grpc_port is not None
    elsewhere = ["127.0.0.2", *filter(None, [outward_address()])]

    # The API: on both loopback addresses, nowhere else (HTTP and gRPC alike).
    loopback = ["127.0.0.1", *(["::1"] if has_ipv6_loopback() else [])]
    for host in loopback:
        status, body = http_json(url(host, sidecar.port, "/v1.0/metadata"))
        assert status == 200 and body["id"] == f"exposure-{unique}", (host, status, body)
        assert not refuses(host, sidecar.grpc_port), host
    for host in elsewhere:
        assert refuses(host, sidecar.port), f"the HTTP API answers on {host}"
        assert refuses(host, sidecar.grpc_port), f"the gRPC API answers on {host}"
    said = next(line for line in sidecar.log().splitlines() if "sidecar API listening on" in line)
    for host in loopback:
        assert (f"[{host}]" if ":" in host else host) + f":{sidecar.port}" in said, said

    # The public port: health on every interface, nothing else.
    for host in [*loopback, *elsewhere]:
        for path in ("/v1.0/healthz", "/v1.0/healthz/outbound"):
            status, _ = http_json(url(host, sidecar.public_port, path))
            assert status == 204, (host, path, status)
        for method, path in (
            ("GET", "/v1.0/metadata"),
            ("POST", "/v1.0/publish/pubsub/orders"),
            ("GET", "/metrics"),
        ):
            status, body = http_json(
                url(host, sidecar.public_port, path), method=method, body=b"{}"
            )
            assert status == 404 and body["errorCode"] == "ERR_NOT_FOUND", (host, path, body)

    # The metrics port: /metrics on every interface, nothing else.
    for host in elsewhere:
        with_metrics = urllib.request.urlopen(url(host, metrics_port, "/metrics"), timeout=10)
        assert b"dapr_http_server_request_count" in with_metrics.read()
        for path in ("/v1.0/healthz", "/metrics/", "/", "/v1.0/metadata"):
            status, body = http_json(url(host, metrics_port, path))
            assert status == 404 and "only /metrics" in body, (host, path, body)


def test_api_token_guards_http_and_grpc_but_not_health(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    token = f"api-{unique}"
    sidecar = start_sidecar(
        tmp_path,
        "guarded",
        app_id=f"guarded-{unique}",
        resources=resources,
        env={"DAPR_API_TOKEN": token},
    )
    procs.append(sidecar)
    publish = url("127.0.0.1", sidecar.port, f"/v1.0/publish/pubsub/guarded-{unique}")
    for headers in (
        {},
        {"dapr-api-token": "wrong"},
        {"dapr-api-token": token + "x"},
        {"dapr-api-token": token.upper()},
    ):
        status, body = http_json(publish, method="POST", body=b"{}", headers=headers)
        assert (status, body) == (401, "invalid api token"), headers
    for path in ("/v1.0/metadata", "/v1.0/healthzz", "/v1.0/healthz/../metadata"):
        status, _ = http_json(url("127.0.0.1", sidecar.port, path))
        assert status == 401, path
    status, _ = http_json(
        publish,
        method="POST",
        body=b"{}",
        headers={"dapr-api-token": token, "Content-Type": "application/json"},
    )
    assert status == 204
    for port in (sidecar.port, sidecar.public_port):
        assert port is not None
        status, _ = http_json(url("127.0.0.1", port, "/v1.0/healthz"))
        assert status == 204

    with grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)
        request = pubsub_pb2.PublishEventRequest(
            pubsub_name="pubsub", topic=f"guarded-{unique}", data=b"{}"
        )
        with pytest.raises(grpc.RpcError) as denied:
            stub.PublishEvent(request, timeout=30)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as wrong:
            stub.PublishEvent(request, timeout=30, metadata=[("dapr-api-token", "nope")])
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.PublishEvent(request, timeout=30, metadata=[("dapr-api-token", token)])


# What a publisher tries to make arrive at the subscriber through record metadata (Kafka
# headers): credentials, framing and hop-by-hop headers (RFC 9110 §7.6.1).
FORGED = {
    "Authorization": "Bearer forged",
    "authorization": "Basic Zm9yZ2Vk",
    "dapr-api-token": "forged",
    "Proxy-Authorization": "Basic Zm9yZ2Vk",
    "Proxy-Authenticate": "Basic",
    "Proxy-Connection": "keep-alive",
    "Connection": "close, X-Benign",
    "Keep-Alive": "timeout=1",
    "TE": "trailers",
    "Trailer": "X-Forged",
    "Transfer-Encoding": "chunked",
    "Upgrade": "h2c",
    "Host": "evil.example",
    "Content-Length": "1",
}


def test_publisher_cannot_forge_credentials_or_hop_by_hop_headers(
    tmp_path: Path, resources: Path, procs: list[Proc], unique: str
) -> None:
    topic = f"headers-{unique}"
    app_token = f"app-{unique}"
    app = start_app(tmp_path, "app", topics=[topic])
    procs.append(app)
    subscriber = start_sidecar(
        tmp_path,
        "subscriber",
        app_id=f"sub-{unique}",
        resources=resources,
        app_port=app.port,
        env={"APP_API_TOKEN": app_token},
    )
    procs.append(subscriber)
    publisher = start_sidecar(tmp_path, "publisher", app_id=f"pub-{unique}", resources=resources)
    procs.append(publisher)

    def subscribed() -> bool:
        _, meta = http_json(url("127.0.0.1", subscriber.port, "/v1.0/metadata"))
        return any(s["topic"] == topic for s in meta.get("subscriptions", []))

    poll("the subscriber to hold its subscription", subscribed)
    query = urllib.parse.urlencode(
        {f"metadata.{k}": v for k, v in {**FORGED, "X-Benign": "kept"}.items()}
    )
    event_id = f"forged-{unique}"
    status, body = http_json(
        url("127.0.0.1", publisher.port, f"/v1.0/publish/pubsub/{topic}?{query}"),
        method="POST",
        body=json.dumps(
            {"specversion": "1.0", "id": event_id, "source": "t", "type": "t", "data": {}}
        ).encode(),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert status == 204, body
    poll("the event at the app", lambda: event_id in received(app)["finished"], 60)
    _, delivered = http_json(url("127.0.0.1", app.port, f"/event?id={event_id}"))
    headers = {k.lower(): v for k, v in delivered["headers"].items()}

    assert headers["dapr-api-token"] == app_token  # the sidecar's, never the record's
    assert headers["x-benign"] == "kept"  # ordinary metadata still travels as headers
    assert "authorization" not in headers
    assert not [h for h in headers if h.startswith("proxy-")]
    for name in ("keep-alive", "te", "trailer", "transfer-encoding", "upgrade"):
        assert name not in headers, name
    assert headers["host"] == f"127.0.0.1:{app.port}"
    assert int(headers["content-length"]) == len(delivered["body"].encode())
    assert headers.get("connection", "keep-alive").lower() == "keep-alive"
