"""inbound/grpc/server.py ``start_grpc_server``: one port on every listen address; a port taken
on one of them is an error that leaves none of them bound."""

from __future__ import annotations

import socket

import pytest
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from tidings.sidecar.inbound.grpc.server import start_grpc_server
from tidings.sidecar.runtime.listening import usable_addresses
from tidings.sidecar.runtime.settings import SidecarSettings


def bindable(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


async def test_one_port_on_every_address() -> None:
    addresses = usable_addresses(["::1", "127.0.0.1"])
    settings = SidecarSettings(app_id="a", dapr_listen_addresses=addresses)
    server, port = await start_grpc_server(settings, dapr_pb2_grpc.DaprServicer(), 0)
    try:
        assert port > 0
        for address in addresses:
            assert not bindable(address, port), address
    finally:
        await server.stop(None)


async def test_a_taken_port_leaves_no_address_bound() -> None:
    addresses = usable_addresses(["::1", "127.0.0.1"])
    if len(addresses) < 2:
        pytest.skip("this host has no IPv6 loopback: one address only")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = SidecarSettings(app_id="a", dapr_listen_addresses=addresses)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await start_grpc_server(settings, dapr_pb2_grpc.DaprServicer(), port)
        assert bindable("::1", port)  # what was bound before the failure is released
