"""bridged.ari.transport against a plain asyncio HTTP server that answers as scripted: connections kept
alive and reused, closed when the server says so, after a timeout, or once idle too long; bodies by
length, in chunks, or to the end; errors that never carry the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridged.ari import transport as transport_module
from bridged.ari.transport import HttpTransport, TransportError

NUMBER = "+4930123456789"


@dataclass
class Server:
    """Answers each request with the next scripted raw answer (default: 200 with a JSON body)."""

    answers: list[bytes] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    hold: asyncio.Event | None = None
    close_after: bool = False  # close every connection after its first answer

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                if self.hold is not None:
                    await self.hold.wait()
                answer = self.answers.pop(0) if self.answers else _ok(b'{"id": "c-1"}')
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer or self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    srv = await asyncio.start_server(s.handle, "127.0.0.1", 0)
    s.port = srv.sockets[0].getsockname()[1]
    yield s
    srv.close()


def _transport(server: Server, limit: int = 4) -> HttpTransport:
    return HttpTransport(f"http://127.0.0.1:{server.port}/ari", {"Authorization": "Basic eA=="}, limit=limit)


async def test_requests_one_after_another_share_one_connection(server: Server) -> None:
    t = _transport(server)
    for _ in range(3):
        assert await t.request("GET", "/ari/channels") == (200, b'{"id": "c-1"}')
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /ari/channels HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in server.requests[0]
    assert b"Authorization: Basic eA==\r\n" in server.requests[0]
    await t.close()


async def test_a_body_is_sent_as_json_with_its_length_and_a_post_without_one_says_zero(
    server: Server,
) -> None:
    t = _transport(server)
    await t.request("POST", "/ari/channels?endpoint=PJSIP%2F%2B49", b'{"variables": {}}')
    await t.request("POST", "/ari/channels/c-1/answer")
    first, second = server.requests
    assert b"Content-Type: application/json\r\nContent-Length: 17\r\n\r\n" in first
    assert first.endswith(b'{"variables": {}}')
    assert b"Content-Length: 0\r\n" in second
    await t.close()


async def test_requests_at_once_each_get_a_connection_up_to_the_limit(server: Server) -> None:
    server.hold = asyncio.Event()
    t = _transport(server, limit=2)
    requests = [asyncio.ensure_future(t.request("GET", f"/ari/x{i}")) for i in range(3)]
    await asyncio.sleep(0.05)
    assert server.connections == 2 and len(server.requests) == 2  # the third waits for a free one
    server.hold.set()
    assert [status for status, _ in await asyncio.gather(*requests)] == [200, 200, 200]
    assert server.connections == 2
    await t.close()


async def test_the_server_closing_the_connection_makes_the_next_request_open_a_new_one(
    server: Server,
) -> None:
    server.answers = [_ok(b"{}", b"Connection: close\r\n")]
    t = _transport(server)
    assert await t.request("GET", "/ari/a") == (200, b"{}")
    assert await t.request("GET", "/ari/b") == (200, b'{"id": "c-1"}')
    assert server.connections == 2
    await t.close()


async def test_a_connection_idle_for_too_long_is_not_reused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "IDLE_SECONDS", 0.05)
    t = _transport(server)
    await t.request("GET", "/ari/a")
    await asyncio.sleep(0.1)
    await t.request("GET", "/ari/b")
    assert server.connections == 2
    await t.close()


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        (
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n',
            b'{"a": 1}',
        ),
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}", b"{}"),
    ],
)
async def test_bodies_by_length_in_chunks_or_none(server: Server, answer: bytes, body: bytes) -> None:
    server.answers = [answer]
    t = _transport(server)
    status, data = await t.request("GET", "/ari/a")
    assert (status, data) == (int(answer[9:12]), body)
    assert await t.request("GET", "/ari/b") == (200, b'{"id": "c-1"}')  # the connection still in step
    assert server.connections == 1
    await t.close()


async def test_a_body_to_the_end_of_the_connection_is_read_and_the_connection_not_reused(
    server: Server,
) -> None:
    server.answers = [b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n{}"]
    t = _transport(server)
    assert await t.request("GET", "/ari/a") == (200, b"{}")
    await t.request("GET", "/ari/b")
    assert server.connections == 2
    await t.close()


async def test_a_request_cut_short_by_a_timeout_closes_its_connection(server: Server) -> None:
    server.hold = asyncio.Event()
    t = _transport(server)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await t.request("GET", "/ari/a")
    server.hold.set()
    # Its late answer must not be taken for the next request's: that one goes on a new connection.
    server.answers = [_ok(b'{"late": 1}')]
    assert await t.request("GET", "/ari/b") == (200, b'{"id": "c-1"}')
    assert server.connections == 2
    await t.close()


@pytest.mark.parametrize(
    "answer",
    [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", b"SIP/2.0 200 OK\r\n\r\n"],
)
async def test_an_answer_that_is_not_http_fails_without_the_request_in_it(
    server: Server, answer: bytes
) -> None:
    server.answers, server.close_after = [answer], True
    t = _transport(server)
    with pytest.raises(TransportError) as excinfo:
        await t.request("POST", f"/ari/channels?endpoint=PJSIP%2F{NUMBER}")
    assert NUMBER not in str(excinfo.value) and NUMBER[1:] not in repr(excinfo.value)
    assert excinfo.value.__suppress_context__
    await t.close()


async def test_nobody_listening_is_a_transport_error() -> None:
    t = HttpTransport("http://127.0.0.1:9/ari", {}, limit=1)
    with pytest.raises(TransportError):
        await t.request("GET", "/ari/a")


async def test_a_request_cancelled_while_waiting_closes_its_connection(server: Server) -> None:
    server.hold = asyncio.Event()
    t = _transport(server)
    first = asyncio.ensure_future(t.request("GET", "/ari/a"))
    await asyncio.sleep(0.05)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    server.answers = [_ok(b'{"late": 1}')]
    server.hold.set()
    assert await t.request("GET", "/ari/b") == (200, b'{"id": "c-1"}')
    assert server.connections == 2
    await t.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{",
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n0\r\n',
    ],
)
async def test_a_connection_closed_in_the_middle_of_the_answer_fails_the_request(
    server: Server, answer: bytes
) -> None:
    server.answers, server.close_after = [answer], True
    t = _transport(server)
    with pytest.raises(TransportError, match="IncompleteReadError"):
        await t.request("GET", f"/ari/channels?endpoint=PJSIP%2F{NUMBER}")
    assert await t.request("GET", "/ari/b") == (200, b'{"id": "c-1"}')
    await t.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(server: Server) -> None:
    server.close_after = True  # closes without saying so in the answer
    t = _transport(server)
    assert await t.request("GET", "/ari/a") == (200, b'{"id": "c-1"}')
    await asyncio.sleep(0.05)
    assert await t.request("GET", "/ari/b") == (200, b'{"id": "c-1"}')
    assert server.connections == 2
    await t.close()


async def test_bytes_after_an_answer_are_never_taken_for_the_next_answer(server: Server) -> None:
    server.answers = [_ok(b"{}") + _ok(b'{"stray": 1}')]
    t = _transport(server)
    assert await t.request("GET", "/ari/a") == (200, b"{}")
    assert await t.request("GET", "/ari/b") == (200, b'{"id": "c-1"}')
    assert server.connections == 2
    await t.close()


async def test_a_head_past_the_limit_is_refused(server: Server) -> None:
    server.answers = [b"HTTP/1.1 200 OK\r\nX: " + b"y" * (transport_module._HEAD_LIMIT + 10)]
    t = _transport(server)
    with pytest.raises(TransportError, match="LimitOverrunError"):
        await t.request("GET", "/ari/a")
    await t.close()


class _Wire(asyncio.Transport):
    """Stands in for a connection's socket: what was written, whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes | bytearray | memoryview] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


_ANSWERS = [
    (
        b'HTTP/1.1 200 OK\r\nServer: Asterisk\r\nContent-Length: 13\r\n\r\n{"id": "c-1"}',
        (200, b'{"id": "c-1"}', True),
    ),
    (b"HTTP/1.1 204 No Content\r\nServer: Asterisk\r\n\r\n", (204, b"", True)),
    (b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}", (404, b"{}", False)),
    (
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\n{"a":\r\n3\r\n 1}\r\n0\r\nT: 1\r\n\r\n',
        (200, b'{"a": 1}', True),
    ),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", (200, b"", True)),
]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(
    order=st.lists(st.sampled_from(range(len(_ANSWERS))), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=30),
)
def test_answers_read_the_same_however_their_bytes_are_split(order: list[int], cuts: list[int]) -> None:
    """Many answers on one connection, each arriving in pieces cut at random points (down to a byte)."""
    loop = asyncio.new_event_loop()
    try:
        conn = transport_module._Connection()
        wire = _Wire()
        conn.connection_made(wire)
        for i in order:
            answer, expected = _ANSWERS[i]
            waiter = conn.send(loop, "GET", b"GET /ari/x HTTP/1.1\r\n\r\n")
            for piece in _split(answer, cuts):
                assert not waiter.done()
                conn.data_received(piece)
            assert waiter.result() == expected
            if not expected[2]:
                break
        assert not wire.closed
        assert wire.written and set(wire.written) == {b"GET /ari/x HTTP/1.1\r\n\r\n"}
    finally:
        loop.close()


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=10_000), index=st.sampled_from(range(len(_ANSWERS))))
def test_two_answers_in_one_read_give_the_first_and_the_connection_up(cut: int, index: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = transport_module._Connection()
        conn.connection_made(_Wire())
        answer, expected = _ANSWERS[index]
        waiter = conn.send(loop, "GET", b"GET /ari/x HTTP/1.1\r\n\r\n")
        both = answer + _ANSWERS[0][0]
        first, second = both[: cut % len(answer)], both[cut % len(answer) :]
        for piece in (first, second):
            if piece:
                conn.data_received(piece)
        assert waiter.result() == (*expected[:2], False)
    finally:
        loop.close()


def test_bytes_nobody_asked_for_close_an_idle_connection() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = transport_module._Connection()
        wire = _Wire()
        conn.connection_made(wire)
        waiter = conn.send(loop, "GET", b"GET /ari/x HTTP/1.1\r\n\r\n")
        conn.data_received(_ANSWERS[1][0])
        assert waiter.result() == (204, b"", True) and conn.reusable(conn.used)
        conn.data_received(_ANSWERS[0][0])
        assert wire.closed and not conn.reusable(conn.used)
    finally:
        loop.close()
