"""runtime/listening.py: an address the host lacks is skipped and said, anything else is fatal;
one port on several addresses."""

from __future__ import annotations

import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from tidings.sidecar.runtime.listening import (
    ListenError,
    bind_sites,
    host_port,
    usable_addresses,
)

NOT_HERE = "203.0.113.77"  # TEST-NET-3 (RFC 5737): never an address of this host


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_an_address_the_host_lacks_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.sidecar.runtime.listening")
    assert usable_addresses([NOT_HERE, "127.0.0.1"]) == ("127.0.0.1",)
    assert f"not listening on {NOT_HERE}" in caplog.text


def test_no_usable_address_is_an_error() -> None:
    with pytest.raises(ListenError, match=NOT_HERE):
        usable_addresses([NOT_HERE])


async def hello(_: web.Request) -> web.Response:
    return web.Response(text="hi")


async def test_a_port_in_use_is_not_skipped() -> None:
    """Only a missing address is skipped: a port held by another process must stop the
    sidecar rather than leave its API on half of its addresses."""
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert usable_addresses(["127.0.0.1"]) == ("127.0.0.1",)  # the address exists
        try:
            with pytest.raises(OSError, match="address already in use"):
                await bind_sites(runner, ["127.0.0.1"], held.getsockname()[1])
        finally:
            await runner.cleanup()


def test_host_port() -> None:
    assert host_port("::1", 3500) == "[::1]:3500"
    assert host_port("127.0.0.1", 3500) == "127.0.0.1:3500"


async def test_port_zero_is_one_port_on_every_address() -> None:
    addresses = usable_addresses(["::1", "127.0.0.1"])
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        port = await bind_sites(runner, addresses, 0)
        assert port > 0
        async with aiohttp.ClientSession() as http:
            for address in addresses:
                async with http.get(f"http://{host_port(address, port)}/") as resp:
                    assert await resp.text() == "hi"
    finally:
        await runner.cleanup()
    assert ("::1" in addresses) == has_ipv6_loopback()
