"""The leaner transports of ``python -m bench.floor_app --raw`` (issue 19): the ARI requests and the FastAGI
session on ``asyncio.Protocol`` instead of asyncio's streams, to see what the streams cost the floor.

:class:`RawHttp` keeps connections to Asterisk's HTTP server alive as bridged's ``HttpTransport`` does,
sends the same request head, and reads an answer as it arrives (its head, ``Content-Length``, its body
dropped: the floor reads no answer); :class:`AgiSession` reads the FastAGI environment, hands it to the
floor's decision and writes its answer, then closes once Asterisk's ``200`` is in. No stream, no reader
task, one future per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from yarl import URL

# As bridged's transport: a connection idle longer than this is not reused (Asterisk closes it at 15 s).
IDLE_SECONDS = 10.0


class HttpConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False
        self.used = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(buffer) < end + 4 + length:
            return
        status = int(buffer[9:12])
        del buffer[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("closed"))


class RawHttp:
    """Requests to one ``http://host:port``, each on a kept-alive connection of its own (most recently used
    first), as ``bridged.ari.transport.HttpTransport``; answers' bodies are not kept."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        url = URL(base_url)
        self.host, self.port = url.host or "127.0.0.1", url.port or 80
        fixed = {"Host": url.host_port_subcomponent or url.raw_host or "", **headers}
        self.fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self.idle: list[HttpConnection] = []

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        conn = None
        now = time.monotonic()
        while self.idle:
            kept = self.idle.pop()
            if not kept.closed and now - kept.used < IDLE_SECONDS:
                conn = kept
                break
            if kept.transport is not None:
                kept.transport.close()
        if conn is None:
            _, conn = await loop.create_connection(HttpConnection, self.host, self.port)
        assert conn.transport is not None
        if body is not None:
            length = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        else:
            length = b"" if method == "GET" else b"Content-Length: 0\r\n"
        waiter = conn.waiter = loop.create_future()
        head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self.fixed + length + b"\r\n"
        conn.transport.write(head + (body or b""))
        status = await waiter
        conn.used = time.monotonic()
        self.idle.append(conn)
        return status, b""

    async def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle = []


class AgiSession(asyncio.Protocol):
    """One FastAGI connection: the environment to ``decide`` (which returns the answer to write), then
    closed once Asterisk's answer to it (``200 result=1``) is in."""

    def __init__(
        self, decide: Callable[[bytes], Awaitable[bytes | None]], spawn: Callable[[Any], Any]
    ) -> None:
        self.decide, self.spawn = decide, spawn
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.asked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.asked:
            end = self.buffer.find(b"\n\n")
            if end >= 0:
                self.asked = True
                block, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
                self.spawn(self._answer(block))
        elif b"\n" in self.buffer and self.transport is not None:
            self.transport.close()

    async def _answer(self, block: bytes) -> None:
        assert self.transport is not None
        reply = await self.decide(block)
        if reply is None:
            self.transport.close()
        elif not self.transport.is_closing():
            self.transport.write(reply)
