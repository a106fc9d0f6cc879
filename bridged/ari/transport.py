"""A lean HTTP/1.1 keep-alive client for ARI's REST requests: what every call's originate, answer, bridge
and hangup go through.

Why not aiohttp's client for these: on the 2-core bench box it spent 180-250 µs of CPU per request
(session, request and response objects, cookie jar, tracing, timers) against about 50 µs for a plain
request written and its answer read on an asyncio stream, and a call makes about seven requests
(bench/RESULTS.md, issue 19). ARI's answers are small JSON documents with a Content-Length, so what is
needed is small: a pool of kept-alive connections, a request line, a status line, a body. aiohttp still
serves the event websocket and the recordings' file downloads.

Nothing here puts the request target (a dial string is a phone number) into an exception or a log line.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping

from yarl import URL

__all__ = ["HttpTransport", "TransportError"]

# Asterisk closes a kept-alive connection after http.conf session_keep_alive (default 15 s) without a
# request; one idle longer than this is not reused, so a request never races that close.
IDLE_SECONDS = 10.0
_HEAD_LIMIT = 64 * 1024


class TransportError(ConnectionError):
    """The connection failed or the answer was not HTTP we can read (never carries the request)."""


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HttpTransport:
    """Requests to one ``http(s)://host:port``, at most ``limit`` at once, each on a connection of its own
    (kept alive and reused, most recently used first)."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, limit: int) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("ARI url must be http:// or https://host[:port]/...")
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        fixed = {"Host": url.host_port_subcomponent or url.raw_host or "", **headers}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._closed = False

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send ``method target`` (path and query, already encoded) with a JSON ``body``; the answer's
        status and body. Raises :class:`TransportError` (or whatever cancels the caller: a timeout)."""
        async with self._slots:
            conn = self._take() or await self._connect()
            reader, writer = conn
            kept = False
            try:
                writer.write(self._head(method, target, body) + (body or b""))
                status, data, kept = await _answer(reader, method)
                return status, data
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                raise TransportError(type(exc).__name__) from None
            finally:
                if kept and not self._closed:
                    self._idle.append((reader, writer, time.monotonic()))
                else:
                    writer.close()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for _, writer, _ in idle:
            writer.close()

    def _head(self, method: str, target: str, body: bytes | None) -> bytes:
        line = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
        if body is not None:
            length = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        else:
            length = b"" if method == "GET" else b"Content-Length: 0\r\n"
        return line + self._fixed + length + b"\r\n"

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < IDLE_SECONDS and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _connect(self) -> _Connection:
        try:
            return await asyncio.open_connection(self._host, self._port, ssl=self._ssl, limit=_HEAD_LIMIT)
        except OSError as exc:
            raise TransportError(type(exc).__name__) from None


async def _answer(reader: asyncio.StreamReader, method: str) -> tuple[int, bytes, bool]:
    """Status, body and whether the connection can be reused."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    status = int(rest[:3])
    if not version.startswith(b"HTTP/1."):
        raise ValueError("not HTTP/1.x")
    keep = version == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            keep = value == b"keep-alive" if not keep else value != b"close"
        elif name == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
    if method == "HEAD" or status in (204, 304) or status < 200:
        return status, b"", keep
    if chunked:
        return status, await _chunks(reader), keep
    if length is not None:
        return status, await reader.readexactly(length), keep
    return status, await reader.read(), False  # the body runs to the end of the connection


async def _chunks(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
