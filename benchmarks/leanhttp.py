"""A minimal HTTP/1.1 keep-alive client for load generation: POST prebuilt request bytes, read
the status and the ``Content-Length`` body of the answer.

Why not aiohttp's client: it costs the load generator ~0.1-0.2 ms of CPU per request, which on a
small machine takes CPU away from the sidecar being measured; an app in Go or Java pays far less
per request. This client does the least HTTP/1.1 needs (one request in flight per connection,
no pipelining), so what the benchmark sees is the sidecar's cost. Answers must carry
``Content-Length`` (aiohttp's server always sends it for non-streamed responses).
"""

from __future__ import annotations

import asyncio
from collections import deque


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("chunked answers are not supported by this client")
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))


class LeanClient:
    """POSTs to ``host:port``; up to ``size`` keep-alive connections, one request each at a
    time. ``post(path, body, content_type)`` returns ``(status, body)``."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiting = 0
        self._available = asyncio.Condition()

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if conn.lost is None:
                    return conn
                self._open -= 1
            if self._open < self.size:
                self._open += 1
                try:
                    _, conn = await asyncio.get_running_loop().create_connection(
                        _Connection, self.host, self.port
                    )
                except BaseException:
                    self._open -= 1
                    raise
                return conn
            self._waiting += 1
            try:
                async with self._available:
                    await self._available.wait()
            finally:
                self._waiting -= 1

    async def _release(self, conn: _Connection) -> None:
        self._idle.append(conn)
        if self._waiting:
            async with self._available:
                self._available.notify()

    def request_bytes(self, path: str, body: bytes, content_type: str) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send prebuilt ``request`` bytes (see :meth:`request_bytes`)."""
        conn = await self._acquire()
        conn.waiter = asyncio.get_running_loop().create_future()
        assert conn.transport is not None
        conn.transport.write(request)
        try:
            return await conn.waiter
        finally:
            conn.waiter = None
            await self._release(conn)

    def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None:
                conn.transport.close()
