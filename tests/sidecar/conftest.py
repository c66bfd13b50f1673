"""Fixtures shared by the sidecar's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tidings.sidecar.delivery.channel import open_app_channel
from tidings.sidecar.delivery.channel.grpc import GrpcAppChannel
from tidings.sidecar.runtime.settings import SidecarSettings


@pytest.fixture
async def channels() -> AsyncIterator[Callable[..., GrpcAppChannel]]:
    """``make(port, **settings)``: a gRPC app channel of app-id ``orders-app`` to
    ``127.0.0.1:port`` (``SidecarSettings`` fields as keywords); every one is closed after the
    test."""
    made: list[GrpcAppChannel] = []

    def make(port: int, **kw: Any) -> GrpcAppChannel:
        channel = open_app_channel(
            SidecarSettings(app_id="orders-app", app_port=port, app_protocol="grpc", **kw)
        )
        assert isinstance(channel, GrpcAppChannel)
        made.append(channel)
        return channel

    yield make
    for channel in made:
        await channel.close()
