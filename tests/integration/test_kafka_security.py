"""The Kafka connection's security, for real: TLS, mTLS, SASL PLAIN/SCRAM and OAUTHBEARER.

Each test starts its own Tansu whose advertised listener is a TLS (and SASL) front
(``kafka_front.py``: Tansu speaks only plain text and keeps no SASL users in memory mode, so the
front does both, as a broker's security layer; a test double for those two layers only, the
broker behind it is real). A real sidecar process publishes through it and delivers to a real
app. Certificates come from a CA the test makes (``tests/tlskit.py``).

Failures must be loud and specific, never a plain-text fallback: a wrong CA says "certificate
verify failed" in the sidecar's log and in ``/v1.0/healthz/outbound``; the front records every
refused handshake and why, and a plain-text attempt shows there as ``WRONG_VERSION_NUMBER`` (the
test shows that with a plain-text probe of its own).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.tlskit import Pki
from tidings.sidecar.cli.localbroker import (
    LocalBroker,
    free_port,
    kafka_api_versions_ok,
    start_local_broker,
)

from .processes import (
    HERE,
    Proc,
    http_json,
    poll,
    publish,
    received,
    start_app,
    start_sidecar,
    write_component,
)

USERS = {"alice": "wonder-land", "bob": "builder-2"}
OIDC_CLIENT = ("tidings-sidecar", "client-secret-1")
PLAIN_TEXT = "WRONG_VERSION_NUMBER"  # OpenSSL's word for bytes that are not a TLS record


@dataclass
class Front:
    """A Tansu behind a TLS/SASL front; ``bootstrap`` is the front."""

    broker: LocalBroker
    process: subprocess.Popen[bytes]
    port: int
    oidc_port: int
    events_path: Path
    log_path: Path

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"

    @property
    def token_endpoint(self) -> str:
        return f"https://localhost:{self.oidc_port}/token"

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        found = [json.loads(line) for line in self.events_path.read_text().splitlines()]
        return [e for e in found if kind is None or e["kind"] == kind]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.broker.stop()


@pytest.fixture
def fronts(tmp_path: Path, pki: Pki) -> Iterator[Any]:
    started: list[Front] = []

    def start(
        *, sasl: str = "", client_ca: bool = False, oidc: bool = False, lifetime_s: int = 3600
    ) -> Front:
        n = len(started)
        port = free_port()
        broker = start_local_broker(
            log_path=tmp_path / f"tansu-{n}.log", advertised=f"localhost:{port}"
        )
        events, ready, log = (tmp_path / f"front-{n}.{s}" for s in ("events", "ready", "log"))
        oidc_port = free_port() if oidc else 0
        argv = [
            sys.executable, str(HERE / "kafka_front.py"), "--port", str(port),
            "--upstream", broker.bootstrap, "--cert", str(pki.server_cert),
            "--key", str(pki.server_key), "--events", str(events), "--ready", str(ready),
            "--sasl", sasl, "--users", json.dumps(USERS),
            "--oidc-port", str(oidc_port), "--oidc-client", ":".join(OIDC_CLIENT),
            "--token-lifetime", str(lifetime_s),
        ]  # fmt: skip
        if client_ca:
            argv += ["--client-ca", str(pki.ca_cert)]
        process = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        front = Front(broker, process, port, oidc_port, events, log)
        started.append(front)
        poll(
            "the Kafka front to listen",
            lambda: ready.exists() or (process.poll() is not None and _died(log)),
            timeout_s=30,
        )
        return front

    yield start
    for front in started:
        front.stop()


def _died(log: Path) -> bool:
    raise AssertionError(f"kafka_front.py exited:\n{log.read_text()}")


def roundtrip(tmp_path: Path, procs: list[Proc], resources: Path, unique: str) -> None:
    """A publisher sidecar publishes (204: the broker stored it, through the front), then a
    subscriber sidecar (a new group, ``initialOffset: oldest``) delivers it to its app."""
    topic = f"secure-{unique}"
    publisher = start_sidecar(tmp_path, "publisher", app_id=f"pub-{unique}", resources=resources)
    procs.append(publisher)
    publish(publisher, topic, {"id": unique})
    app = start_app(tmp_path, "app", topics=[topic])
    procs.append(app)
    subscriber = start_sidecar(
        tmp_path, "subscriber", app_id=f"sub-{unique}", resources=resources, app_port=app.port
    )
    procs.append(subscriber)
    poll("the event at the app, through the front", lambda: received(app)["finished"], 60)


def not_ready_because(sidecar: Proc, words: str, timeout_s: float = 60) -> str:
    """Poll ``/v1.0/healthz/outbound`` until it is a 500 whose message holds ``words``."""

    def check() -> str | None:
        status, body = http_json(f"http://127.0.0.1:{sidecar.port}/v1.0/healthz/outbound")
        message = body.get("message", "") if isinstance(body, dict) else ""
        return message if status == 500 and words in message else None

    return poll(f"healthz/outbound to say {words!r}", check, timeout_s=timeout_s)


def test_tls_with_the_ca_from_the_component(
    tmp_path: Path, procs: list[Proc], fronts: Any, pki: Pki, unique: str
) -> None:
    front = fronts()
    resources = write_component(
        tmp_path / "res", front.bootstrap, authType="certificate", caCert=pki.text("ca_cert")
    )
    roundtrip(tmp_path, procs, resources, unique)
    assert front.events("connection") and not front.events("tls-refused")


def test_wrong_ca_fails_loudly_and_never_in_plain_text(
    tmp_path: Path, procs: list[Proc], fronts: Any, pki: Pki, unique: str
) -> None:
    front = fronts()
    resources = write_component(
        tmp_path / "res",
        front.bootstrap,
        authType="password",
        saslUsername="alice",
        saslPassword=USERS["alice"],
        caCert=pki.text("other_ca_cert"),
    )
    sidecar = start_sidecar(
        tmp_path, "wrong-ca", app_id=f"wrong-{unique}", resources=resources, wait=False
    )
    procs.append(sidecar)
    message = not_ready_because(sidecar, "certificate verify failed")
    assert "pubsub: cannot connect to kafka brokers" in message
    poll("the log to say why", lambda: "certificate verify failed" in sidecar.log())
    refused = front.events("tls-refused")
    assert refused, "the front saw no refused handshake"
    assert not front.events("auth"), "the password was sent"
    # None of them was plain text. What plain text looks like at the front (control):
    assert not kafka_api_versions_ok("127.0.0.1", front.port)
    plain = poll(
        "the plain-text probe's refusal", lambda: front.events("tls-refused")[len(refused) :]
    )
    assert all(PLAIN_TEXT in e["why"] for e in plain), plain
    assert not [e for e in refused if PLAIN_TEXT in e["why"]], refused
    status, body = http_json(
        f"http://127.0.0.1:{sidecar.port}/v1.0/publish/pubsub/t-{unique}",
        method="POST",
        body=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert status == 500, body


@pytest.mark.parametrize(
    ("mechanism", "user", "dapr_name"),
    [
        ("PLAIN", "alice", "PLAINTEXT"),  # Dapr's default name for SASL PLAIN
        ("SCRAM-SHA-256", "bob", "SHA-256"),
        ("SCRAM-SHA-512", "alice", "SHA-512"),
    ],
)
def test_sasl_over_tls(
    tmp_path: Path,
    procs: list[Proc],
    fronts: Any,
    pki: Pki,
    unique: str,
    mechanism: str,
    user: str,
    dapr_name: str,
) -> None:
    front = fronts(sasl=mechanism)
    resources = write_component(
        tmp_path / "res",
        front.bootstrap,
        authType="password",
        saslUsername=user,
        saslPassword=USERS[user],
        saslMechanism=dapr_name,
        caCert=pki.text("ca_cert"),
    )
    roundtrip(tmp_path, procs, resources, unique)
    auths = front.events("auth")
    assert auths and all(
        (e["mechanism"], e["user"], e["ok"]) == (mechanism, user, True) for e in auths
    ), auths


def test_sasl_wrong_password_is_named(
    tmp_path: Path, procs: list[Proc], fronts: Any, pki: Pki, unique: str
) -> None:
    front = fronts(sasl="SCRAM-SHA-512")
    resources = write_component(
        tmp_path / "res",
        front.bootstrap,
        authType="password",
        saslUsername="alice",
        saslPassword="not-her-password",
        saslMechanism="SHA-512",
        caCert=pki.text("ca_cert"),
    )
    sidecar = start_sidecar(
        tmp_path, "wrong-pw", app_id=f"wrongpw-{unique}", resources=resources, wait=False
    )
    procs.append(sidecar)
    not_ready_because(sidecar, "SaslAuthenticationFailed")
    assert any(not e["ok"] for e in front.events("auth"))


def test_mtls_presents_the_client_certificate(
    tmp_path: Path, procs: list[Proc], fronts: Any, pki: Pki, unique: str
) -> None:
    front = fronts(client_ca=True)
    resources = write_component(
        tmp_path / "res",
        front.bootstrap,
        authType="mtls",
        caCert=pki.text("ca_cert"),
        clientCert=pki.text("client_cert"),
        clientKey=pki.text("client_key"),
    )
    roundtrip(tmp_path, procs, resources, unique)
    connections = front.events("connection")
    assert connections and {e["client_cn"] for e in connections} == {"tidings-client"}


def test_mtls_without_a_client_certificate_is_refused(
    tmp_path: Path, procs: list[Proc], fronts: Any, pki: Pki, unique: str
) -> None:
    front = fronts(client_ca=True)
    resources = write_component(
        tmp_path / "res", front.bootstrap, authType="certificate", caCert=pki.text("ca_cert")
    )
    sidecar = start_sidecar(
        tmp_path, "no-cert", app_id=f"nocert-{unique}", resources=resources, wait=False
    )
    procs.append(sidecar)
    not_ready_because(sidecar, "cannot connect to kafka brokers")
    assert not front.events("connection")
    poll("the front to refuse the handshake", lambda: front.events("tls-refused"))


def test_oidc_client_credentials(
    tmp_path: Path, procs: list[Proc], fronts: Any, pki: Pki, unique: str
) -> None:
    front = fronts(sasl="OAUTHBEARER", oidc=True)
    resources = write_component(
        tmp_path / "res",
        front.bootstrap,
        authType="oidc",
        oidcTokenEndpoint=front.token_endpoint,
        oidcClientID=OIDC_CLIENT[0],
        oidcClientSecret=OIDC_CLIENT[1],
        oidcScopes="openid,kafka",
        oidcExtensions=json.dumps({"logicalCluster": "lkc-1"}),
        caCert=pki.text("ca_cert"),  # the broker's and the token endpoint's CA, as in Dapr
    )
    roundtrip(tmp_path, procs, resources, unique)
    tokens = front.events("token")
    assert tokens and all(t["ok"] and t["scope"] == "openid kafka" for t in tokens), tokens
    auths = front.events("auth")
    assert auths and all(
        e["ok"]
        and e["mechanism"] == "OAUTHBEARER"
        and e["extensions"] == {"logicalCluster": "lkc-1"}
        for e in auths
    ), auths
    # One token serves every connection while it is valid (producer, consumer, coordinator).
    assert len(tokens) < len(auths)


def test_oidc_wrong_secret_is_named(
    tmp_path: Path, procs: list[Proc], fronts: Any, pki: Pki, unique: str
) -> None:
    front = fronts(sasl="OAUTHBEARER", oidc=True)
    resources = write_component(
        tmp_path / "res",
        front.bootstrap,
        authType="oidc",
        oidcTokenEndpoint=front.token_endpoint,
        oidcClientID=OIDC_CLIENT[0],
        oidcClientSecret="wrong",
        caCert=pki.text("ca_cert"),
    )
    sidecar = start_sidecar(
        tmp_path, "wrong-secret", app_id=f"oidc-{unique}", resources=resources, wait=False
    )
    procs.append(sidecar)
    message = not_ready_because(sidecar, "answered 401: invalid_client")
    assert front.token_endpoint in message
    assert not front.events("auth")
