"""AriEventStream against a fake ARI websocket served on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridged.ari import AriAccess
from bridged.ari.events import AriEventStream, event_bridge_id, event_channel_id, ws_url_from_base

NUMBER = "5557654321"


class FakeEvents:
    """Each connection gets the next script: a list of frames, then the server closes (or holds)."""

    def __init__(self) -> None:
        self.scripts: list[list[str]] = []
        self.hold_open = True  # after the last script, keep the socket open
        self.reject_status: list[int] = []  # statuses to answer instead of upgrading, one per attempt
        self.connections = 0
        self.queries: list[dict[str, str]] = []
        self.auths: list[str | None] = []
        self.sockets: list[web.WebSocketResponse] = []
        # Before closing a dropped connection: lets the client finish on_connect() on it first.
        self.close_delay = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        self.auths.append(request.headers.get("Authorization"))
        if self.reject_status:
            return web.Response(status=self.reject_status.pop(0))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        index = self.connections
        self.connections += 1
        script = self.scripts[index] if index < len(self.scripts) else []
        for frame in script:
            await ws.send_str(frame)
        last = index >= len(self.scripts) - 1
        if last and self.hold_open:
            async for _ in ws:
                pass
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_delay):
                    async for _ in ws:  # returns early if the client closes first
                        pass
            await ws.close()
        return ws


def ev(n: int, kind: str = "ChannelVarset", **extra: Any) -> str:
    return json.dumps({"type": kind, "n": n, **extra})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeEvents, str, aiohttp.ClientSession]]:
    events = FakeEvents()
    app = web.Application()
    app.router.add_get("/ari/events", events.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield events, str(server.make_url("/ari")), session
        for ws in events.sockets:
            await ws.close()
    await server.close()


def make_stream(
    base: str, session: aiohttp.ClientSession, received: list[Any], **kwargs: Any
) -> AriEventStream:
    def handler(event: dict[str, Any]) -> None:
        received.append(event.get("n"))
        if event.get("type") == "Boom":
            raise RuntimeError(f"cannot route call to {NUMBER}")

    kwargs.setdefault("min_backoff", 0.01)
    kwargs.setdefault("max_backoff", 0.05)
    return AriEventStream(session, AriAccess(base, "bridged", "s3cret"), "bridged", handler=handler, **kwargs)


async def wait_for(predicate: Any, limit: float = 3.0) -> None:
    async with asyncio.timeout(limit):
        # Polling is fine here: the conditions are plain lists the callbacks append to.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_ws_url_derivation() -> None:
    assert str(ws_url_from_base("http://127.0.0.1:8088/ari")) == "ws://127.0.0.1:8088/ari/events"
    assert str(ws_url_from_base("https://pbx/ari/")) == "wss://pbx/ari/events"


async def test_events_in_order_despite_bad_json_and_raising_handler(
    fake: tuple[FakeEvents, str, aiohttp.ClientSession], caplog: pytest.LogCaptureFixture
) -> None:
    server, base, session = fake
    caplog.set_level(logging.DEBUG, logger="bridged.ari")
    server.scripts = [[ev(1), f"{{not json {NUMBER}", ev(2, "Boom", dialstring=NUMBER), "[1]", ev(3)]]
    received: list[Any] = []
    stream = make_stream(base, session, received)
    task = asyncio.create_task(stream.run())
    await wait_for(lambda: len(received) == 3)
    assert received == [1, 2, 3]
    assert stream.connected
    assert server.queries[0] == {"app": "bridged", "subscribeAll": "false"}
    assert server.auths[0] == "Basic " + base64.b64encode(b"bridged:s3cret").decode()
    # The failures were logged, but never with the event's content.
    assert "not valid JSON" in caplog.text and "RuntimeError" in caplog.text
    assert NUMBER not in caplog.text
    await stream.close()
    await asyncio.wait_for(task, 2)
    assert not stream.connected


async def test_events_during_on_connect_are_delivered_after_it_in_order(
    fake: tuple[FakeEvents, str, aiohttp.ClientSession],
) -> None:
    server, base, session = fake
    server.scripts = [[ev(1), ev(2), ev(3)]]
    received: list[Any] = []

    async def on_connect() -> None:
        # Long enough for the three frames to arrive while we "reconcile".
        await wait_for(lambda: bool(server.sockets))
        await asyncio.sleep(0.2)
        received.append("reconciled")

    stream = make_stream(base, session, received, on_connect=on_connect)
    task = asyncio.create_task(stream.run())
    await wait_for(lambda: len(received) == 4)
    assert received == ["reconciled", 1, 2, 3]
    await stream.close()
    await asyncio.wait_for(task, 2)


async def test_reconnect_calls_on_connect_again_and_flips_connected(
    fake: tuple[FakeEvents, str, aiohttp.ClientSession],
) -> None:
    server, base, session = fake
    server.scripts = [[ev(1)], [ev(2)]]  # the first connection is dropped by the server
    server.close_delay = 0.2
    received: list[Any] = []
    log: list[str] = []
    states: list[bool] = []

    async def on_connect() -> None:
        states.append(stream.connected)
        log.append("connect")

    def on_disconnect() -> None:
        states.append(stream.connected)
        log.append("disconnect")

    stream = make_stream(base, session, received, on_connect=on_connect, on_disconnect=on_disconnect)
    task = asyncio.create_task(stream.run())
    await wait_for(lambda: received == [1, 2])
    assert await stream.wait_connected(1.0)
    assert log == ["connect", "disconnect", "connect"]
    assert states == [True, False, True]
    assert server.connections == 2
    await stream.close()
    await asyncio.wait_for(task, 2)
    assert log[-1] == "disconnect"
    assert not stream.connected


async def test_failed_on_connect_drops_connection_and_retries(
    fake: tuple[FakeEvents, str, aiohttp.ClientSession],
) -> None:
    server, base, session = fake
    server.scripts = [[ev(1)], [ev(2)]]
    server.close_delay = 5.0  # the client, not the server, must end the first connection
    received: list[Any] = []
    calls = 0

    async def on_connect() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        if calls == 1:
            raise RuntimeError("reconcile failed")

    stream = make_stream(base, session, received, on_connect=on_connect)
    task = asyncio.create_task(stream.run())
    await wait_for(lambda: received == [2])
    assert calls == 2
    assert server.connections == 2
    await stream.close()
    await asyncio.wait_for(task, 2)


async def test_unauthorized_keeps_retrying(
    fake: tuple[FakeEvents, str, aiohttp.ClientSession], caplog: pytest.LogCaptureFixture
) -> None:
    server, base, session = fake
    server.reject_status = [401, 401]
    server.scripts = [[ev(1)]]
    received: list[Any] = []
    stream = make_stream(base, session, received)
    task = asyncio.create_task(stream.run())
    assert not await stream.wait_connected(0.01)
    await wait_for(lambda: received == [1])
    assert len(server.queries) == 3
    assert "HTTP 401" in caplog.text
    await stream.close()
    await asyncio.wait_for(task, 2)


async def test_close_while_reconnecting_ends_run() -> None:
    async with aiohttp.ClientSession() as session:
        # Nothing listens on port 9 of loopback: every attempt is refused.
        stream = AriEventStream(
            session,
            AriAccess("http://127.0.0.1:9/ari", "u", "p"),
            "bridged",
            handler=lambda e: None,
            min_backoff=5,
        )
        task = asyncio.create_task(stream.run())
        await asyncio.sleep(0.1)
        await stream.close()
        await asyncio.wait_for(task, 2)
        assert not stream.connected


async def test_event_accessors() -> None:
    assert event_channel_id({"channel": {"id": "c1"}}) == "c1"
    assert event_channel_id({"peer": {"id": "c2"}}) == "c2"
    assert event_channel_id({"type": "PlaybackStarted"}) is None
    assert event_bridge_id({"bridge": {"id": "b1"}}) == "b1"
    assert event_bridge_id({"bridge": "b1"}) is None
