"""bridged's HTTP server over real sockets on loopback: aiohttp's own error answers in JSON without the
request's bytes, the header and body timeouts, the per-client connection cap."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from http import HTTPStatus
from ipaddress import ip_network
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from bridged import metrics
from bridged.api import errors, server
from bridged.api.errors import error_middleware
from bridged.api.params import read_json
from bridged.api.server import GuardedAppRunner
from bridged.appkeys import CONFIG
from bridged.config import ConfigError, ConfigHolder, HttpConfig
from bridged.configfile import parse_config

from .fakes import example_data, make_config

SECRET = "+79161234567"  # stands for anything a client may send: it must come back nowhere
DEADLINE = 10.0  # generous: a bound on waiting, not a measure of speed


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"got": await read_json(request, 300_000)})


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": True})


Serve = Callable[..., Awaitable[int]]

# Every test runs on asyncio's loop and on uvloop's (tests/unit/conftest.py).


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(**http: Any) -> int:
        config = make_config()
        config = replace(config, http=replace(HttpConfig(host="127.0.0.1", port=0), **http))
        app = web.Application(middlewares=[error_middleware])
        app[CONFIG] = ConfigHolder(config)
        app.router.add_post("/echo", _echo)
        app.router.add_get("/hello", _hello)
        runner = GuardedAppRunner(app, config.http, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE)  # to EOF: the server closes
    finally:
        writer.close()


@asynccontextmanager
async def guarded(app: web.Application) -> AsyncIterator[int]:
    """``app`` served by bridged's server (GuardedAppRunner) on a free port, given as the value."""
    runner = GuardedAppRunner(app, HttpConfig(host="127.0.0.1", port=0), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def _split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    "raw",
    [
        f"FOO {SECRET}\r\n\r\n".encode(),  # no such method
        f"GET /hello/{SECRET}\xff HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"),  # not a URL
        f"GET /hello HTTP/1.1\r\nX-Long: {SECRET * 1000}\r\n\r\n".encode(),  # header over 8190 bytes
        f"GET /hello HTTP/1.1\r\nX-Null: {SECRET}\x00\r\n\r\n".encode(),  # NUL in a header
        (
            f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{SECRET}\r\n"
        ).encode(),  # a chunk size that is not hex
    ],
    ids=["method", "url", "long-header", "nul-header", "chunked"],
)
async def test_unparseable_requests_get_the_json_error_body_and_no_echo(
    serve: Serve, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    port = await serve()
    caplog.set_level(logging.DEBUG)
    status, headers, body = _split(await _exchange(port, raw))
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"error": {"id": "bad_request", "message": "the request is not valid HTTP"}}
    digits = SECRET.lstrip("+")
    assert digits not in body.decode("latin-1")
    assert digits not in caplog.text  # aiohttp logged the bytes with a traceback
    assert "refused by the HTTP parser" in caplog.text


async def _timed_out(request: web.Request) -> web.Response:
    raise TimeoutError


async def _failed(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/timed-out", 504, {"id": "timeout", "message": "gateway timeout"}),
        ("/failed", 500, {"id": "internal", "message": "internal error"}),
    ],
)
async def test_a_handler_failing_outside_the_middleware_gets_the_catalogue_error(
    path: str, status: int, error: dict[str, str]
) -> None:
    """aiohttp answers a handler's timeout (504) or exception (500) itself when no middleware caught it:
    the answer is bridged's error from bridged.api.errors, and the connection is closed."""
    app = web.Application()  # no error_middleware: aiohttp's handle_error answers
    app.router.add_get("/timed-out", _timed_out)
    app.router.add_get("/failed", _failed)
    async with guarded(app) as port:
        got, headers, body = _split(await _exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
    assert (got, json.loads(body)) == (status, {"error": error})
    assert headers["connection"] == "close"


def test_an_answer_aiohttp_makes_with_a_status_bridged_has_no_error_for_is_http_status() -> None:
    assert errors.aiohttp_error(418).body() == {"error": {"id": "http_418", "message": "i'm a teapot"}}
    assert errors.aiohttp_error(400).body() == {
        "error": {"id": "bad_request", "message": "the request is not valid HTTP"}
    }


# What an aiohttp HTTPException of each status is answered with: the catalogue's error for the statuses
# it has one for (the router's 404 and 405, the request's 413, aiohttp's own 400, 500, 504 and those
# such an answer would have), http_<status> for any other.
_BY_STATUS = {
    400: ("bad_request", errors.BadHttp),
    404: ("not_found", errors.NotFound),
    405: ("method_not_allowed", errors.MethodNotAllowed),
    408: ("request_timeout", errors.RequestTimeout),
    413: ("body_too_large", errors.BodyTooLarge),
    431: ("headers_too_large", errors.HeadersTooLarge),
    500: ("internal", errors.Internal),
    503: ("unavailable", errors.Unavailable),
    504: ("timeout", errors.Timeout),
}
_IDS = {error_id for error_id, _ in _BY_STATUS.values()} | {f"http_{status}" for status in range(400, 600)}


def _expected_error(status: int) -> dict[str, str]:
    known = _BY_STATUS.get(status)
    if known is not None:
        return {"id": known[0], "message": known[1].message}
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "error"
    return {"id": f"http_{status}", "message": phrase}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _raised(status: int, reason: str | None) -> web.HTTPException:
    """An aiohttp HTTPException of any status, with ``reason`` as its reason phrase and its text."""
    kind = type(f"HTTP{status}", (web.HTTPException,), {"status_code": status})
    return kind(reason=reason, text=reason)


def _through_the_middleware(exc: web.HTTPException) -> web.StreamResponse:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise exc

    return asyncio.run(error_middleware(make_mocked_request("GET", "/x"), handler))


# Reason phrases as a handler or aiohttp may give them: any text but CR and LF (aiohttp refuses those in a
# reason), a phone number's digits among them, non-ASCII and control characters; aiohttp's own phrases.
_REASONS = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=60),
    st.from_regex(r"\+?[0-9][0-9 ()-]{6,18}", fullmatch=True),
    st.sampled_from([SECRET, f"no order for {SECRET}", "Not Found", "Method Not Allowed", "Заказ №5\x07"]),
)


@settings(max_examples=400, deadline=None)
@given(status=st.integers(400, 599), reason=_REASONS)
def test_any_http_exception_is_answered_by_its_status_alone_with_a_catalogue_id(
    status: int, reason: str
) -> None:
    """error_middleware answers an HTTPException of any error status with an id of a fixed set, made
    from the status: its reason and text (which may quote the request) reach no part of the answer."""
    response = _through_the_middleware(_raised(status, reason))
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    assert (response.status, response.content_type) == (status, "application/json")
    raw = response.body.decode()
    body = json.loads(raw)
    expected = {"error": _expected_error(status)}
    assert body == expected
    error_id = body["error"]["id"]
    assert re.fullmatch(r"[a-z0-9_]+", error_id) and error_id in _IDS
    # Nothing of the reason, in any encoding: only a reason that is words of the catalogue's own answer
    # (its message, or a part of it such as "a") is found in it.
    if reason not in json.dumps(expected, ensure_ascii=False) and json.dumps(reason)[1:-1] not in json.dumps(
        expected
    ):
        assert reason not in raw and json.dumps(reason)[1:-1] not in raw
    # The status line's phrase is aiohttp's for the status, not the reason.
    assert response.reason == _phrase(status)


def test_a_redirect_or_another_answer_that_is_no_error_passes_through_the_middleware() -> None:
    """/ops is a permanent redirect to /ops/ (bridged.ops): the middleware leaves it to aiohttp."""
    for exc in (web.HTTPPermanentRedirect("/ops/"), web.HTTPNotModified(), web.HTTPNoContent()):
        with pytest.raises(web.HTTPException) as raised:
            _through_the_middleware(exc)
        assert raised.value is exc


async def test_the_routers_405_names_the_allowed_methods_and_its_404_is_not_found(serve: Serve) -> None:
    port = await serve()
    status, headers, body = _split(
        await _exchange(port, b"DELETE /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert (status, json.loads(body)["error"]["id"]) == (405, "method_not_allowed")
    assert headers["allow"] == "GET,HEAD"
    status, _, body = _split(
        await _exchange(port, f"GET /{SECRET} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    )
    assert (status, json.loads(body)) == (404, {"error": {"id": "not_found", "message": "no such resource"}})


async def test_headers_not_finished_in_time_get_408_and_the_connection_is_closed(serve: Serve) -> None:
    port = await serve(header_timeout=0.3)
    before = metrics.HTTP_HEADER_TIMEOUTS.value()
    status, headers, body = _split(await _exchange(port, b"GET /hello HTTP/1.1\r\nHost: x\r\n"))
    assert (status, json.loads(body)["error"]["id"]) == (408, "request_timeout")
    assert headers["connection"] == "close"
    # Nothing sent at all: closed too.
    assert _split(await _exchange(port, b""))[0] == 408
    assert metrics.HTTP_HEADER_TIMEOUTS.value() == before + 2


async def test_a_trickle_does_not_keep_the_header_clock_from_running(serve: Serve) -> None:
    port = await serve(header_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"

    async def trickle() -> None:
        for byte in request:  # one byte every 50 ms: 12 s for the whole request
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), DEADLINE)
        assert not sender.done(), "the whole request went out: the server waited for it"
    finally:
        sender.cancel()
        writer.close()
    assert _split(answer)[0] == 408


async def test_an_idle_keep_alive_connection_is_not_cut_by_the_header_clock(serve: Serve) -> None:
    port = await serve(header_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):
            writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
            length = int(_split(head + b"")[1]["content-length"])
            assert json.loads(await reader.readexactly(length)) == {"hello": True}
            await asyncio.sleep(0.6)  # twice the header timeout, idle between requests
    finally:
        writer.close()


async def test_a_body_that_does_not_arrive_in_time_gets_408_and_a_closed_connection(serve: Serve) -> None:
    port = await serve(body_timeout=0.3)
    raw = (
        b'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a'
    )
    status, headers, body = _split(await _exchange(port, raw))
    assert (status, json.loads(body)["error"]["id"]) == (408, "request_timeout")
    assert headers["connection"] == "close"


async def test_a_body_arriving_in_pieces_is_read_whole(serve: Serve) -> None:
    port = await serve(body_timeout=5)
    body = json.dumps({"order_id": "1" * 50, "manager_id": "anna"}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler has started reading the body by now
    writer.write(body[10:])
    answer = await asyncio.wait_for(reader.read(), DEADLINE)
    writer.close()
    status, _, payload = _split(answer)
    assert (status, json.loads(payload)) == (200, {"got": json.loads(body)})


@pytest.mark.parametrize(
    ("raw", "status", "error_id"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),  # deeper than the interpreter recurses
        (b"[" * 33 + b"]" * 33, 400, "invalid_json"),
        (b'{"order_id": "1\\u0000"}', 422, "invalid_request"),
        (b'{"order_id": "\\ud800"}', 422, "invalid_request"),
        (b'{"\\u0000": 1}', 422, "invalid_request"),
        (b'"' + b"1" * 300_000 + b'"', 413, "body_too_large"),
    ],
    ids=["deep", "depth-33", "nul", "surrogate", "nul-key", "large"],
)
async def test_json_bodies_refused(serve: Serve, raw: bytes, status: int, error_id: str) -> None:
    port = await serve()
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    got, _, body = _split(await _exchange(port, request))
    assert (got, json.loads(body)["error"]["id"]) == (status, error_id)


async def _open(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]


async def test_one_connection_over_the_per_client_cap_is_refused_with_503(serve: Serve) -> None:
    port = await serve(max_connections_per_client=3, header_timeout=30)
    before = metrics.HTTP_CONNECTIONS_REFUSED.value()
    held = await _open(port, 3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status, headers, body = _split(await asyncio.wait_for(reader.read(), DEADLINE))
    writer.close()
    assert (status, json.loads(body)["error"]["id"]) == (503, "too_many_connections")
    assert headers["retry-after"] == "5"
    assert metrics.HTTP_CONNECTIONS_REFUSED.value() == before + 1
    # The held connections still work, and one closed makes room for another.
    held[0][1].write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _split(await asyncio.wait_for(held[0][0].read(), DEADLINE))[0] == 200
    held[0][1].close()

    async def admitted() -> int:
        while True:
            status, _, _ = _split(
                await _exchange(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            )
            if status != 503:
                return status
            await asyncio.sleep(0.05)

    assert await asyncio.wait_for(admitted(), DEADLINE) == 200
    for _, w in held[1:]:
        w.close()


async def test_trusted_proxies_are_not_capped(serve: Serve) -> None:
    port = await serve(
        max_connections_per_client=2, header_timeout=30, trusted_proxies=(ip_network("127.0.0.0/8"),)
    )
    held = await _open(port, 5)
    reader, writer = held[-1]
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _split(await asyncio.wait_for(reader.read(), DEADLINE))[0] == 200
    for _, w in held:
        w.close()


def test_the_limits_default_and_are_read_from_the_config() -> None:
    assert (make_config().http.header_timeout, make_config().http.max_connections_per_client) == (10.0, 50)
    data = example_data()
    data["http"].update(header_timeout=2.5, body_timeout=60, max_connections_per_client=500)
    http = parse_config(data).http
    assert (http.header_timeout, http.body_timeout, http.max_connections_per_client) == (2.5, 60.0, 500)


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"header_timeout": 0}, "http.header_timeout"),
        ({"header_timeout": "10"}, "http.header_timeout"),
        ({"body_timeout": -1}, "http.body_timeout"),
        ({"max_connections_per_client": 0}, "http.max_connections_per_client"),
        ({"max_connections_per_client": 1.5}, "http.max_connections_per_client"),
    ],
)
def test_bad_limits_are_refused_naming_the_key(keys: dict[str, Any], key: str) -> None:
    data = example_data()
    data["http"].update(keys)
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert raised.value.key == key


async def test_a_start_that_fails_closes_what_was_opened_before() -> None:
    # serve() sets the application up; a cleanup context that fails must not leave the ones before it
    # (the database pool, the ARI session...) open.
    events: list[str] = []

    async def opened(app: web.Application) -> AsyncIterator[None]:
        events.append("open")
        yield
        events.append("closed")

    async def failing(app: web.Application) -> AsyncIterator[None]:
        raise RuntimeError("cannot start")
        yield  # pragma: no cover - a generator that fails before its first step

    app = web.Application()
    app.cleanup_ctx.extend([opened, failing])
    with pytest.raises(RuntimeError, match="cannot start"):
        await server.serve(app, HttpConfig(host="127.0.0.1", port=0))
    assert events == ["open", "closed"]
