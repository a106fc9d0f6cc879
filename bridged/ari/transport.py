"""A lean HTTP/1.1 keep-alive client for ARI's REST requests: what every call's originate, answer, bridge
and hangup go through.

Why not aiohttp's client for these: on the 2-core bench box it spent 180-250 µs of CPU per request
(session, request and response objects, cookie jar, tracing, timers) against about 50 µs for a plain
request written and its answer read on an asyncio stream, and a call makes about seven requests
(bench/RESULTS.md, issue 19). ARI's answers are small JSON documents with a Content-Length, so what is
needed is small: a pool of kept-alive connections, a request line, a status line, a body. aiohttp still
serves the event websocket and the recordings' file downloads.

A connection is an ``asyncio.Protocol`` rather than a stream: its ``data_received`` reads the answer as its
bytes arrive (status line, head, then a body by Content-Length, in chunks or to the end of the connection)
into the one future the request awaits. It saves little: 1.5-5 µs of CPU a request of some 30-45, not
measurable per call (bench/RESULTS.md, "CPU per call, sixth round"). One request at a time per
connection: bytes beyond an answer, or bytes nobody asked for, mean the connection is out of step and it
is closed, never read as the next request's answer.

Nothing here puts the request target (a dial string is a phone number) into an exception or a log line.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from typing import cast

from yarl import URL

__all__ = ["HttpTransport", "TransportError"]

# Asterisk closes a kept-alive connection after http.conf session_keep_alive (default 15 s) without a
# request; one idle longer than this is not reused, so a request never races that close.
IDLE_SECONDS = 10.0
_HEAD_LIMIT = 64 * 1024  # an answer's head, a chunk's size line or a trailer longer than this is refused


class TransportError(ConnectionError):
    """The connection failed or the answer was not HTTP we can read (never carries the request)."""


def _error(name: str) -> TransportError:
    exc = TransportError(name)
    exc.__suppress_context__ = True  # as ``raise ... from None``: no request in a chained traceback
    return exc


class _TooLong(ValueError):
    """A head or a line past _HEAD_LIMIT (reported as asyncio's streams named it)."""


_Answer = tuple[int, bytes, bool]  # status, body, whether the connection can be reused

# What a connection is reading.
_IDLE, _HEAD, _BODY, _SIZE, _CHUNK, _CRLF, _TRAILER, _TO_EOF, _BROKEN = range(9)


class _Connection(asyncio.Protocol):
    """One kept-alive connection to Asterisk's HTTP server, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.used = 0.0
        self._waiter: asyncio.Future[_Answer] | None = None
        self._method = "GET"
        self._state = _IDLE
        self._buffer = b""  # bytes of a head or a line not complete yet
        self._status = 0
        self._keep = False
        self._need = 0  # bytes of the body or the chunk still to come
        self._parts: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def send(self, loop: asyncio.AbstractEventLoop, method: str, data: bytes) -> asyncio.Future[_Answer]:
        """Write a request; the future of its answer."""
        assert self.transport is not None and self._state == _IDLE
        waiter = self._waiter = loop.create_future()
        self._method, self._state, self._parts = method, _HEAD, []
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self._state = _BROKEN
        if self.transport is not None:
            self.transport.close()

    def reusable(self, now: float) -> bool:
        return (
            not self.lost
            and now - self.used < IDLE_SECONDS
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _IDLE or state == _BROKEN:
            self.close()  # an answer nobody asked for: never to be taken for the next request's
            return
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        try:
            self._read(data)
        except _TooLong:
            self._fail("LimitOverrunError")
        except ValueError:
            self._fail("ValueError")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        state, self._state = self._state, _BROKEN
        if state == _TO_EOF and exc is None:
            self._keep = False
            self._answer(b"".join(self._parts), b"")
        elif state != _IDLE and state != _BROKEN:
            # Closed in the middle of the answer: as a stream's read would have failed.
            self._fail(type(exc).__name__ if exc is not None else "IncompleteReadError")

    def _read(self, data: bytes) -> None:
        """Take in what arrived, as far as it goes; what is not complete yet waits in ``_buffer``."""
        while True:
            state = self._state
            if state == _HEAD:
                if (end := self._end(data, b"\r\n\r\n")) < 0:
                    return
                head, data = data[:end], data[end + 4 :]
                self._head(head, data)
            elif state == _BODY or state == _CHUNK:
                need = self._need
                if len(data) < need:
                    if data:
                        self._parts.append(data)
                        self._need = need - len(data)
                    return
                self._parts.append(data[:need])
                data = data[need:]
                if state == _BODY:
                    self._answer(b"".join(self._parts), data)
                else:
                    self._state, self._need = _CRLF, 2
            elif state == _CRLF:
                if len(data) < self._need:
                    self._need -= len(data)
                    return
                data, self._state = data[self._need :], _SIZE
            elif state == _SIZE or state == _TRAILER:
                if (end := self._end(data, b"\r\n")) < 0:
                    return
                line, data = data[:end], data[end + 2 :]
                if state == _TRAILER:
                    if not line:
                        self._answer(b"".join(self._parts), data)
                elif (size := int(line.split(b";")[0].strip(), 16)) == 0:
                    self._state = _TRAILER
                elif size < 0:
                    raise ValueError
                else:
                    self._state, self._need = _CHUNK, size
            elif state == _TO_EOF:
                if data:
                    self._parts.append(data)
                return
            else:  # the answer is in: what follows it was not asked for (_answer saw it) and stays unread
                return

    def _end(self, data: bytes, separator: bytes) -> int:
        """Where the head or the line ``separator`` ends begins; -1 when it is not all in yet (what is
        in waits in ``_buffer`` for the rest)."""
        end = data.find(separator)
        if end > _HEAD_LIMIT or (end < 0 and len(data) > _HEAD_LIMIT):
            raise _TooLong
        if end < 0:
            self._buffer = data
        return end

    def _head(self, head: bytes, rest: bytes) -> None:
        version, _, reason = head.split(b"\r\n", 1)[0].partition(b" ")
        self._status = status = int(reason[:3])
        if not version.startswith(b"HTTP/1."):
            raise ValueError("not HTTP/1.x")
        keep = version == b"HTTP/1.1"
        fields = head.lower()  # each field's name follows a CRLF: the status line comes first
        if (connection := _field(fields, b"\r\nconnection:")) is not None:
            keep = connection == b"keep-alive" if not keep else connection != b"close"
        length = None if (value := _field(fields, b"\r\ncontent-length:")) is None else int(value)
        coding = _field(fields, b"\r\ntransfer-encoding:")
        chunked = coding is not None and coding.endswith(b"chunked")
        self._keep = keep
        if self._method == "HEAD" or status in (204, 304) or status < 200 or length == 0:
            self._answer(b"", rest)
        elif chunked:
            self._state = _SIZE
        elif length is None:
            self._state = _TO_EOF  # the body runs to the end of the connection
        elif length < 0:
            raise ValueError("negative Content-Length")
        else:
            self._state, self._need = _BODY, length

    def _answer(self, body: bytes, rest: bytes) -> None:
        """The answer is in; ``rest``, what came after it, makes the connection unfit for another."""
        if self._state != _BROKEN:
            self._state = _IDLE
        if rest:
            self._keep = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body, self._keep))

    def _fail(self, name: str) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(_error(name))


def _field(fields: bytes, name: bytes) -> bytes | None:
    """The value of the last field ``name`` (``b"\\r\\nname:"``) in a head in lower case; None without one."""
    at = fields.rfind(name)
    if at < 0:
        return None
    end = fields.find(b"\r\n", at + len(name))
    return fields[at + len(name) : end if end >= 0 else len(fields)].strip()


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
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send ``method target`` (path and query, already encoded) with a JSON ``body``; the answer's
        status and body. Raises :class:`TransportError` (or whatever cancels the caller: a timeout)."""
        async with self._slots:
            loop = asyncio.get_running_loop()
            conn = self._take() or await self._connect(loop)
            kept = False
            try:
                waiter = conn.send(loop, method, self._head(method, target, body) + (body or b""))
                status, data, kept = await waiter
                return status, data
            except TransportError:  # the waiter's: already without the request
                raise
            except OSError as exc:
                raise _error(type(exc).__name__) from None
            finally:
                # A request cut short (a timeout cancels it) leaves its connection awaiting an answer
                # that would be taken for the next request's: closed, as any connection not kept.
                if kept and not self._closed:
                    conn.used = time.monotonic()
                    self._idle.append(conn)
                else:
                    conn.close()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

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
            conn = self._idle.pop()
            if conn.reusable(now):
                return conn
            conn.close()
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            _, conn = await loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl)
        except OSError as exc:
            raise _error(type(exc).__name__) from None
        return conn
