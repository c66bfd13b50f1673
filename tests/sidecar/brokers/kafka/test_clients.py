"""brokers/kafka/clients.py: the OAUTHBEARER token provider against a real HTTPS token endpoint
(an aiohttp server in the test, TLS with the session's test CA), with a clock the test moves
instead of waiting for tokens to expire."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.tlskit import Pki
from tidings.sidecar.brokers.kafka.clients import OidcTokenError, OidcTokenProvider
from tidings.sidecar.cli.localbroker import free_port
from tidings.sidecar.resources.kafka import KafkaMetadata, parse_kafka_metadata


class Endpoint:
    """``POST /token``: counts requests; answers what ``answer`` returns for the form."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: Callable[[dict[str, Any]], web.Response] = self.grant
        self.lifetime: Any = 100
        self.basic = True  # accepts client_secret_basic

    def grant(self, seen: dict[str, Any]) -> web.Response:
        if seen["client"] != ("sidecar", "s3:cret/"):
            return web.json_response({"error": "invalid_client"}, status=401)
        body: dict[str, Any] = {"access_token": f"tok-{len(self.requests)}", "token_type": "Bearer"}
        if self.lifetime is not None:
            body["expires_in"] = self.lifetime
        return web.json_response(body)

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        header = request.headers.get("Authorization", "")
        client: tuple[str, str] | None = None
        if header.startswith("Basic ") and self.basic:
            from urllib.parse import unquote

            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            client = (unquote(user), unquote(password))
        elif "client_id" in form:
            client = (str(form["client_id"]), str(form["client_secret"]))
        seen = {"form": form, "client": client, "basic": bool(header)}
        self.requests.append(seen)
        if client is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        await asyncio.sleep(0)  # let concurrent callers pile up behind the provider's lock
        return self.answer(seen)


@pytest.fixture
async def endpoint(pki: Pki) -> AsyncIterator[tuple[Endpoint, str]]:
    ep = Endpoint()
    app = web.Application()
    app.router.add_post("/token", ep.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.server_cert, pki.server_key)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield ep, f"https://localhost:{port}/token"
    finally:
        await runner.cleanup()


def oidc_meta(url: str, pki: Pki, **extra: str) -> KafkaMetadata:
    return parse_kafka_metadata(
        {
            "brokers": "k:9093",
            "authType": "oidc",
            "oidcTokenEndpoint": url,
            "oidcClientID": "sidecar",
            "oidcClientSecret": "s3:cret/",  # ':' and '/' are form-encoded for Basic
            "oidcScopes": "openid,kafka",
            "caCert": pki.text("ca_cert"),
            **extra,
        },
        app_id="a",
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_token_is_reused_until_near_expiry_then_refreshed(
    endpoint: tuple[Endpoint, str], pki: Pki
) -> None:
    ep, url = endpoint
    clock = Clock()
    provider = OidcTokenProvider(oidc_meta(url, pki), clock=clock)
    # Concurrent connections share one fetch.
    tokens = await asyncio.gather(*(provider.token() for _ in range(5)))
    assert set(tokens) == {"tok-1"} and len(ep.requests) == 1
    assert ep.requests[0]["form"] == {"grant_type": "client_credentials", "scope": "openid kafka"}
    assert ep.requests[0]["basic"]
    clock.now += 79  # 100 s lifetime, refreshed 20 s (a fifth) before it ends
    assert await provider.token() == "tok-1"
    clock.now += 2
    assert await provider.token() == "tok-2" and len(ep.requests) == 2
    assert provider.fetches == 2


async def test_long_lived_tokens_refresh_a_minute_early_and_no_expiry_means_five_minutes(
    endpoint: tuple[Endpoint, str], pki: Pki
) -> None:
    ep, url = endpoint
    clock = Clock()
    ep.lifetime = 3600
    provider = OidcTokenProvider(oidc_meta(url, pki), clock=clock)
    await provider.token()
    clock.now += 3600 - 61
    assert await provider.token() == "tok-1"
    clock.now += 2
    assert await provider.token() == "tok-2"
    ep.lifetime = None  # no expires_in: not forever, 300 s
    clock.now += 3600
    assert await provider.token() == "tok-3"
    clock.now += 300 - 61
    assert await provider.token() == "tok-3"
    clock.now += 2
    assert await provider.token() == "tok-4"


async def test_credentials_in_the_form_when_basic_is_refused(
    endpoint: tuple[Endpoint, str], pki: Pki
) -> None:
    ep, url = endpoint
    ep.basic = False
    clock = Clock()
    provider = OidcTokenProvider(oidc_meta(url, pki), clock=clock)
    assert await provider.token() == "tok-2"  # Basic refused, then the form
    clock.now += 1000
    assert await provider.token() == "tok-3"  # remembered: the form at once
    assert [r["basic"] for r in ep.requests] == [True, False, False]


async def test_refusals_and_bad_answers_are_named(endpoint: tuple[Endpoint, str], pki: Pki) -> None:
    ep, url = endpoint
    wrong = OidcTokenProvider(oidc_meta(url, pki, oidcClientSecret="nope"))
    with pytest.raises(OidcTokenError, match="answered 401: invalid_client"):
        await wrong.token()
    provider = OidcTokenProvider(oidc_meta(url, pki))
    for answer, says in (
        (lambda _: web.json_response({"token_type": "Bearer"}), "no bearer access_token"),
        (lambda _: web.json_response({"access_token": "t", "token_type": "MAC"}), "no bearer"),
        (lambda _: web.Response(body=b"x" * (1 << 20)), "answered 200; no token"),
        (lambda _: web.json_response({"error": "slow_down"}, status=503), "503: slow_down"),
    ):
        ep.answer = answer
        with pytest.raises(OidcTokenError, match=says):
            await provider.token()


async def test_the_endpoint_is_verified_against_the_ca(
    endpoint: tuple[Endpoint, str], pki: Pki
) -> None:
    _, url = endpoint
    provider = OidcTokenProvider(oidc_meta(url, pki, caCert=pki.text("other_ca_cert")))
    with pytest.raises(OidcTokenError, match="certificate verify failed"):
        await provider.token()


async def test_an_unreachable_endpoint_is_an_error_in_bounded_time(pki: Pki) -> None:
    url = f"https://127.0.0.1:{free_port()}/token"
    with pytest.raises(OidcTokenError, match="unreachable"):
        await OidcTokenProvider(oidc_meta(url, pki), timeout_s=5).token()
