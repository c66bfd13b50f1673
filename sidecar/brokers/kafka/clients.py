"""aiokafka connection settings shared by the producer and the consumer group of a component.

Maps Dapr's ``pubsub.kafka`` security fields (components-contrib
``common/component/kafka/auth.go``; checked in ``resources/kafka.py``) to aiokafka's:

=================  ==========================  ==============================================
``authType``       TLS (``KafkaMetadata.tls``)   ``security_protocol``, SASL
=================  ==========================  ==============================================
``none``           only with ``caCert``,        ``PLAINTEXT`` or ``SSL``
                   ``clientCert``, ``skipVerify``
``password``       on unless ``disableTls``     ``SASL_SSL`` / ``SASL_PLAINTEXT``; ``PLAIN``,
                                                ``SCRAM-SHA-256``, ``SCRAM-SHA-512``
``mtls``           always                       ``SSL`` with the client certificate
``certificate``    on unless ``disableTls``     ``SSL``, brokers verified by ``caCert``
``oidc``           on unless ``disableTls``     ``SASL_SSL`` / ``SASL_PLAINTEXT``;
                                                ``OAUTHBEARER`` (:class:`OidcTokenProvider`)
=================  ==========================  ==============================================

The TLS context trusts ``caCert`` alone when given (as Dapr), the system store otherwise, and
carries ``clientCert``/``clientKey`` whenever both are set (``resources/tls.py``, nothing written
to disk). aiokafka reports a refused TLS handshake or SASL login only as "Unable to bootstrap";
:func:`connection_problem` repeats the connection to say why (``certificate verify failed``,
``SaslAuthenticationFailedError``) in the component's error, its log line and
``/v1.0/healthz/outbound``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaConnectionError

from ...resources.kafka import KafkaMetadata
from ...resources.tls import client_context

__all__ = [
    "OidcTokenError",
    "OidcTokenProvider",
    "client_kwargs",
    "connection_problem",
    "ssl_context",
]

log = logging.getLogger(__name__)


def ssl_context(meta: KafkaMetadata) -> ssl.SSLContext:
    """A client TLS context from ``meta``: CA from ``caCert`` (else the system store), client
    certificate from ``clientCert``/``clientKey`` when both are set, no verification when
    ``skipVerify``. Raises ``ValueError`` (``resources.tls.TlsMaterialError``) for PEM text
    that does not load (already refused when the component was loaded)."""
    return client_context(
        ca_pem=meta.ca_cert,
        cert_pem=meta.client_cert,
        key_pem=meta.client_key,
        skip_verify=meta.skip_verify,
    )


def client_kwargs(meta: KafkaMetadata) -> dict[str, Any]:
    """Keyword arguments common to ``AIOKafkaProducer`` and ``AIOKafkaConsumer`` for ``meta``:
    ``bootstrap_servers``, ``client_id``, ``security_protocol`` and, as needed,
    ``sasl_mechanism``/``sasl_plain_username``/``sasl_plain_password``,
    ``sasl_oauth_token_provider`` and ``ssl_context``."""
    tls = meta.tls
    kwargs: dict[str, Any] = {
        "bootstrap_servers": list(meta.brokers),
        "client_id": meta.client_id,
    }
    if meta.auth_type == "password":
        kwargs["security_protocol"] = "SASL_SSL" if tls else "SASL_PLAINTEXT"
        kwargs["sasl_mechanism"] = meta.sasl_mechanism
        kwargs["sasl_plain_username"] = meta.sasl_username
        kwargs["sasl_plain_password"] = meta.sasl_password
    elif meta.auth_type == "oidc":
        kwargs["security_protocol"] = "SASL_SSL" if tls else "SASL_PLAINTEXT"
        kwargs["sasl_mechanism"] = "OAUTHBEARER"
        kwargs["sasl_oauth_token_provider"] = OidcTokenProvider(meta)
    else:
        kwargs["security_protocol"] = "SSL" if tls else "PLAINTEXT"
    if kwargs["security_protocol"] in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(meta)
    return kwargs


def _host_port(broker: str) -> tuple[str, int]:
    host, _, port = broker.rpartition(":")
    return host.strip("[]") or broker, int(port) if port.isdigit() else 9092


_CONNECTION_ARGS = (
    "client_id",
    "ssl_context",
    "security_protocol",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "sasl_oauth_token_provider",
)


async def connection_problem(kwargs: dict[str, Any], *, timeout_s: float = 10.0) -> str | None:
    """Why no bootstrap broker accepts a connection made with ``kwargs`` (:func:`client_kwargs`),
    or ``None`` when one does (or fails only by being unreachable, which aiokafka's own error
    says). aiokafka answers every refusal with "Unable to bootstrap from [...]" and logs the
    reason under its own logger; this makes the same connection once (TLS handshake, SASL) to
    say it in the component's error: ``localhost:9093: SSLCertVerificationError: [SSL:
    CERTIFICATE_VERIFY_FAILED] certificate verify failed: ...`` or ``...: SaslAuthentication
    FailedError: ...``. Each broker is tried once, bounded by ``timeout_s``; never raises."""
    from aiokafka.conn import create_conn

    args = {k: kwargs[k] for k in _CONNECTION_ARGS if k in kwargs}
    problems: list[str] = []
    for broker in kwargs.get("bootstrap_servers", ()):
        host, port = _host_port(broker)
        try:
            conn = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **args),
                timeout_s,
            )
        except (ConnectionError, TimeoutError, socket.gaierror):
            continue  # unreachable: not a settings problem
        except Exception as exc:  # noqa: BLE001 - SSLError, KafkaError, SCRAM ValueError...
            name = type(exc).__name__
            text = str(exc)
            problems.append(f"{broker}: {text if name in text else f'{name}: {text}'}")
            continue
        conn.close()
        return None
    return "; ".join(problems) or None


class OidcTokenError(KafkaConnectionError):  # type: ignore[misc]
    """The token endpoint did not issue an access token (aiokafka then treats the connection
    attempt as failed and retries it)."""


_TOKEN_RESPONSE_LIMIT = 64 * 1024
"""Largest token endpoint answer read, bytes: a token response is a few KiB at most."""
_DEFAULT_LIFETIME_S = 300.0
"""Lifetime assumed for a token whose response has no ``expires_in`` (then it is fetched again
after that long instead of being used forever)."""


class OidcTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """SASL OAUTHBEARER access tokens by the OAuth 2.0 client-credentials grant (RFC 6749
    §4.4), as Dapr's Kafka component gets them (``authType: oidc``; components-contrib
    ``common/component/kafka/sasl_oauthbearer.go``).

    ``POST oidcTokenEndpoint`` with ``grant_type=client_credentials`` and ``scope`` (the
    ``oidcScopes``), the client authenticated by HTTP Basic, or by ``client_id`` /
    ``client_secret`` in the form when the endpoint refuses Basic (Go's ``oauth2`` does the
    same). TLS to the endpoint trusts the system store plus ``caCert``. A token is reused
    until ``refresh_margin`` before it expires (a fifth of its lifetime, at most 60 s), so
    every new broker connection gets one with time left; concurrent connections share one
    fetch. Each fetch is bounded by ``timeout_s`` and reads at most 64 KiB. ``extensions``
    are the ``oidcExtensions``. Raises :class:`OidcTokenError` when no token comes back.
    """

    def __init__(
        self,
        meta: KafkaMetadata,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (meta.oidc_token_endpoint and meta.oidc_client_id and meta.oidc_client_secret):
            raise ValueError(
                "authType oidc needs oidcTokenEndpoint, oidcClientID, oidcClientSecret"
            )
        self._endpoint = meta.oidc_token_endpoint
        self._client_id = meta.oidc_client_id
        self._client_secret = meta.oidc_client_secret
        self._scopes = " ".join(meta.oidc_scopes)
        self._extensions = dict(meta.oidc_extensions)
        self._timeout_s = timeout_s
        self._clock = clock
        self._ssl = client_context(
            ca_pem=meta.ca_cert, skip_verify=meta.skip_verify, extend_system=True
        )
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._basic_auth = True  # client_secret_basic first; client_secret_post if refused
        self.fetches = 0
        """Tokens fetched so far (for logs and tests)."""

    def extensions(self) -> dict[str, str]:
        return dict(self._extensions)

    async def token(self) -> str:
        async with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token
            token, lifetime_s = await self._fetch()
            margin_s = min(60.0, lifetime_s / 5)
            self._token, self._refresh_at = token, self._clock() + lifetime_s - margin_s
            return token

    async def _fetch(self) -> tuple[str, float]:
        import aiohttp  # the sidecar's HTTP stack, already loaded

        form = {"grant_type": "client_credentials"}
        if self._scopes:
            form["scope"] = self._scopes
        # RFC 6749 §2.3.1: id and secret are form-encoded, then joined for Basic.
        pair = f"{quote(self._client_id, safe='')}:{quote(self._client_secret, safe='')}"
        basic_header = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        in_form = {"client_id": self._client_id, "client_secret": self._client_secret}
        status, body = 0, b""
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s)
            ) as http:
                for basic in (True, False) if self._basic_auth else (False,):
                    headers = {"Accept": "application/json"}
                    if basic:
                        headers["Authorization"] = basic_header
                    async with http.post(
                        self._endpoint,
                        data=form if basic else form | in_form,
                        headers=headers,
                        ssl=self._ssl,
                    ) as resp:
                        status = resp.status
                        body = await resp.content.read(_TOKEN_RESPONSE_LIMIT)
                    if status not in (400, 401):
                        self._basic_auth = basic
                        break
                    # Refused: the endpoint may not take Basic; the form once, as Go's oauth2.
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            why = str(exc) or type(exc).__name__
            raise OidcTokenError(
                f"OIDC token endpoint {self._endpoint} unreachable: {why}"
            ) from None
        self.fetches += 1
        return self._read(status, body)

    def _read(self, status: int, body: bytes) -> tuple[str, float]:
        import orjson

        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if status != 200 or not isinstance(answer, dict):
            detail = ""
            if isinstance(answer, dict) and isinstance(answer.get("error"), str):
                detail = f": {answer['error']}"
            raise OidcTokenError(
                f"OIDC token endpoint {self._endpoint} answered {status}{detail}; no token"
            )
        token = answer.get("access_token")
        kind = answer.get("token_type", "Bearer")
        if not isinstance(token, str) or not token or str(kind).lower() != "bearer":
            raise OidcTokenError(
                f"OIDC token endpoint {self._endpoint} sent no bearer access_token"
            )
        lifetime = answer.get("expires_in")
        lifetime_s = (
            float(lifetime)
            if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0
            else _DEFAULT_LIFETIME_S
        )
        return token, lifetime_s
