"""Test helpers for delivery tests: a real HTTP app on a loopback port, and an in-test stand-in
for the dead-letter producer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from tidings.sidecar.brokers.base import BrokerError, Record


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[int]:
    """Serve ``handler`` for every POST on 127.0.0.1 over real TCP; yields the port it got and
    stops the server on exit."""
    web_app = web.Application()
    web_app.router.add_route("POST", "/{tail:.*}", handler)
    runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@dataclass
class DeadLetters:
    """In-test stand-in for ``Publisher.dead_letter``: records calls; can fail the first ones."""

    calls: list[tuple[str, Record]] = field(default_factory=list)
    fail_first: int = 0
    attempts: int = 0
    block: asyncio.Event | None = None

    async def __call__(self, topic: str, rec: Record) -> None:
        self.attempts += 1
        if self.block is not None:
            await self.block.wait()
        if self.attempts <= self.fail_first:
            raise BrokerError("broker unavailable", retriable=True)
        self.calls.append((topic, rec))
