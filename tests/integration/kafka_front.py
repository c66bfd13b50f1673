"""A TLS and SASL front for the test Kafka broker, plus an OAuth 2.0 token endpoint.

Why it exists: the local broker (Tansu 0.6) speaks Kafka in plain text only, and keeps SASL users
nowhere it can be given them in memory mode. So the tests put this in front of a Tansu started
with its advertised listener set to this front's port (every connection a client makes, the
bootstrap one and those to the broker named in metadata, comes here). It does for real what a
Kafka broker's security layer does, nothing else:

- TLS (on every accepted connection; a refused handshake is recorded with its reason) with a
  certificate from the test's CA (``--cert``/``--key``); with ``--client-ca`` client
  certificates signed by that CA are required (mTLS);
- with ``--sasl PLAIN,SCRAM-SHA-256,...``: Kafka's ``SaslHandshake`` / ``SaslAuthenticate``
  exchange (KIP-152) answered here, ``PLAIN`` (RFC 4616) and ``SCRAM-SHA-256/512`` (RFC 5802,
  RFC 7677) against ``--users`` (JSON ``{"user": "password"}``), ``OAUTHBEARER`` (RFC 7628)
  against the tokens the token endpoint issued and has not seen expire; until a client has
  authenticated, only ``ApiVersions`` is passed to the broker, anything else closes the
  connection (as a broker does);
- after the handshake, bytes are passed both ways unchanged;
- with ``--oidc-port``: ``POST /token`` over TLS (same certificate), the client-credentials grant
  for ``--oidc-client id:secret`` (HTTP Basic or in the form), tokens lasting
  ``--token-lifetime`` seconds.

Every event (TLS handshake refused and why, authentication and its mechanism, user, outcome,
OAUTHBEARER extensions, token issued and its scope) is appended as a JSON line to ``--events``,
which the test reads. ``--ready`` is written once both servers listen.

Run: ``python kafka_front.py --port N --upstream host:port --cert ... --key ... --events F
--ready F [--client-ca F] [--sasl M,...] [--users JSON] [--oidc-port N --oidc-client id:secret
--token-lifetime S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import ssl
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58
SCRAM_ITERATIONS = 4096
BAD_CREDENTIALS = "Authentication failed during authentication due to invalid credentials"
HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


class Front:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.upstream_host, _, port = args.upstream.rpartition(":")
        self.upstream_port = int(port)
        self.mechanisms = [m for m in (args.sasl or "").split(",") if m]
        self.users: dict[str, str] = json.loads(args.users or "{}")
        self.tokens: dict[str, float] = {}  # token -> expiry (time.monotonic)
        self.events = Path(args.events)
        self.tls = self.server_context()

    def event(self, **fields: Any) -> None:
        with self.events.open("a") as f:
            f.write(json.dumps(fields) + "\n")

    # --- TLS ---------------------------------------------------------------------------------
    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.args.cert, self.args.key)
        if self.args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.args.client_ca)
        return ctx

    # --- Kafka -------------------------------------------------------------------------------
    async def serve_kafka(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:  # TLS on the accepted connection, so a refused handshake is seen and recorded
            await writer.start_tls(self.tls, ssl_handshake_timeout=10)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self.event(kind="tls-refused", why=str(exc) or type(exc).__name__)
            writer.close()
            return
        cert = writer.get_extra_info("peercert") or {}
        subject = dict(x[0] for x in cert.get("subject", ())) if cert else {}
        self.event(kind="connection", client_cn=subject.get("commonName"))
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            return
        try:
            if self.mechanisms and not await self.authenticate(
                reader, writer, up_reader, up_writer
            ):
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    async def authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        mechanism: str | None = None
        state: dict[str, Any] = {}
        while True:
            frame = await read_frame(reader)
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            body = skip_client_id(frame, 8)
            if api_key == API_VERSIONS:
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
                answer = await read_frame(up_reader)
                writer.write(struct.pack(">i", len(answer)) + answer)
                await writer.drain()
            elif api_key == SASL_HANDSHAKE:
                asked, _ = read_string(body, 0)
                ok = asked in self.mechanisms
                mechanism = asked if ok else None
                reply = struct.pack(">h", 0 if ok else UNSUPPORTED_SASL_MECHANISM)
                reply += struct.pack(">i", len(self.mechanisms))
                for m in self.mechanisms:
                    reply += struct.pack(">h", len(m)) + m.encode()
                await respond(writer, correlation, reply)
                if not ok:
                    self.event(kind="auth", mechanism=asked, ok=False, why="unsupported")
                    return False
            elif api_key == SASL_AUTHENTICATE and mechanism is not None:
                (size,) = struct.unpack(">i", body[:4])
                auth = body[4 : 4 + size]
                done, server_bytes, failure = self.step(mechanism, auth, state)
                reply = struct.pack(">h", SASL_AUTHENTICATION_FAILED if failure else 0)
                reply += nullable_string(failure)
                reply += struct.pack(">i", len(server_bytes)) + server_bytes
                if version >= 1:
                    reply += struct.pack(">q", 0)
                await respond(writer, correlation, reply)
                if failure:
                    self.event(
                        kind="auth", mechanism=mechanism, user=state.get("user"), ok=False,
                        why=failure,
                    )  # fmt: skip
                    return False
                if done:
                    self.event(
                        kind="auth", mechanism=mechanism, user=state.get("user"), ok=True,
                        extensions=state.get("extensions"),
                    )  # fmt: skip
                    return True
            else:
                self.event(kind="auth", mechanism=mechanism, ok=False, why=f"api {api_key} first")
                return False  # ILLEGAL_SASL_STATE: a broker closes the connection

    def step(self, mechanism: str, auth: bytes, state: dict[str, Any]) -> tuple[bool, bytes, str]:
        """(done, bytes for the client, failure message or "")."""
        if mechanism == "PLAIN":
            try:
                _, user, password = auth.decode().split("\0")
            except ValueError:
                return True, b"", "malformed PLAIN message"
            state["user"] = user
            if user in self.users and hmac.compare_digest(self.users[user], password):
                return True, b"", ""
            return True, b"", "Authentication failed: Invalid username or password"
        if mechanism in HASHES:
            return self.scram(HASHES[mechanism], auth.decode(), state)
        if mechanism == "OAUTHBEARER":
            parts = auth.decode().split("\x01")
            fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            token = fields.pop("auth", "").removeprefix("Bearer ")
            state["user"], state["extensions"] = "oauth", fields
            expiry = self.tokens.get(token)
            if expiry is None or expiry < time.monotonic():
                return True, b"", "invalid or expired token"
            return True, b"", ""
        return True, b"", f"unsupported mechanism {mechanism}"

    def scram(self, digest: Any, message: str, state: dict[str, Any]) -> tuple[bool, bytes, str]:
        if "server_first" not in state:  # client-first: n,,n=user,r=nonce
            bare = message.split(",", 2)[2]
            attrs = dict(a.split("=", 1) for a in bare.split(","))
            user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
            state.update(user=user, client_first_bare=bare)
            salt = hashlib.sha256(user.encode()).digest()[:16]
            nonce = attrs["r"] + secrets.token_hex(12)
            first = f"r={nonce},s={base64.b64encode(salt).decode()},i={SCRAM_ITERATIONS}"
            state.update(server_first=first, nonce=nonce, salt=salt)
            return False, first.encode(), ""
        attrs = dict(a.split("=", 1) for a in message.split(","))
        without_proof = message.rsplit(",p=", 1)[0]
        password = self.users.get(state["user"])
        if password is None or attrs.get("r") != state["nonce"]:
            return (
                True,
                b"",
                "Authentication failed during authentication due to invalid credentials",
            )
        salted = hashlib.pbkdf2_hmac(
            digest().name, password.encode(), state["salt"], SCRAM_ITERATIONS
        )
        client_key = hmac.new(salted, b"Client Key", digest).digest()
        stored = digest(client_key).digest()
        auth_message = f"{state['client_first_bare']},{state['server_first']},{without_proof}"
        signature = hmac.new(stored, auth_message.encode(), digest).digest()
        proof = base64.b64decode(attrs["p"])
        recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(digest(recovered).digest(), stored):
            return (
                True,
                b"",
                "Authentication failed during authentication due to invalid credentials",
            )
        server_key = hmac.new(salted, b"Server Key", digest).digest()
        verifier = hmac.new(server_key, auth_message.encode(), digest).digest()
        return True, f"v={base64.b64encode(verifier).decode()}".encode(), ""

    # --- OAuth 2.0 token endpoint ----------------------------------------------------------
    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, _, client_secret = self.args.oidc_client.partition(":")
        given: tuple[str, str] | None = None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            given, style = (unquote(user), unquote(password)), "basic"
        elif "client_id" in form:
            given, style = (str(form["client_id"]), str(form.get("client_secret", ""))), "form"
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if given != (client_id, client_secret):
            self.event(kind="token", ok=False)
            return web.json_response({"error": "invalid_client"}, status=401)
        token = secrets.token_urlsafe(24)
        lifetime = self.args.token_lifetime
        self.tokens[token] = time.monotonic() + lifetime
        self.event(kind="token", ok=True, scope=form.get("scope"), style=style)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}
        )


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def skip_client_id(frame: bytes, at: int) -> bytes:
    (size,) = struct.unpack(">h", frame[at : at + 2])
    return frame[at + 2 + max(size, 0) :]


def read_string(data: bytes, at: int) -> tuple[str, int]:
    (size,) = struct.unpack(">h", data[at : at + 2])
    return data[at + 2 : at + 2 + size].decode(), at + 2 + size


def nullable_string(text: str) -> bytes:
    if not text:
        return struct.pack(">h", -1)
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


async def respond(writer: asyncio.StreamWriter, correlation: int, body: bytes) -> None:
    payload = struct.pack(">i", correlation) + body
    writer.write(struct.pack(">i", len(payload)) + payload)
    await writer.drain()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> None:
    front = Front(args)
    kafka = await asyncio.start_server(front.serve_kafka, "127.0.0.1", args.port)
    runner = None
    if args.oidc_port:
        app = web.Application()
        app.router.add_post("/token", front.token)
        runner = web.AppRunner(app)
        await runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
        await web.TCPSite(runner, "127.0.0.1", args.oidc_port, ssl_context=tls).start()
    Path(args.ready).write_text(str(os.getpid()))  # noqa: ASYNC240 - once, a few bytes
    async with kafka:
        await kafka.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca")
    parser.add_argument("--sasl", default="")
    parser.add_argument("--users", default="{}")
    parser.add_argument("--oidc-port", type=int, default=0)
    parser.add_argument("--oidc-client", default="")
    parser.add_argument("--token-lifetime", type=int, default=3600)
    parser.add_argument("--events", required=True)
    parser.add_argument("--ready", required=True)
    asyncio.run(main(parser.parse_args()))
