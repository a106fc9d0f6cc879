"""AriClient against a fake ARI served on loopback."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from bridged.ari import (
    OPERATIONS,
    AriAccess,
    AriBadRequest,
    AriClient,
    AriConflict,
    AriError,
    AriNotFound,
    AriUnavailable,
    Operation,
    background_requests,
)
from bridged.ari.client import is_background
from bridged.ari.nodes import current_node, on_node
from bridged.ari.targets import encode_value, quoted

NUMBER = "5557654321"
ENDPOINT = f"PJSIP/+1{NUMBER}@carrier"


class FakeAri:
    """Records every request; answers with whatever the test queued for a path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: dict[tuple[str, str], Callable[[], Awaitable[web.StreamResponse]]] = {}

    def reply(
        self, method: str, path: str, status: int = 200, body: Any = None, text: str | None = None
    ) -> None:
        async def make() -> web.StreamResponse:
            if text is not None:
                return web.Response(status=status, text=text)
            if body is None:
                return web.Response(status=status)
            return web.json_response(body, status=status)

        self.replies[(method, path)] = make

    def hold(self, method: str, path: str, body: Any) -> asyncio.Event:
        """Answer ``body`` only once the returned event is set: Asterisk stuck on that request."""
        release = asyncio.Event()

        async def held() -> web.StreamResponse:
            await release.wait()
            return web.json_response(body)

        self.replies[(method, path)] = held
        return release

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "query": dict(request.query),
                "json": await request.json() if raw else None,
                "auth": request.headers.get("Authorization"),
                "range": request.headers.get("Range"),
            }
        )
        make = self.replies.get((request.method, request.path))
        if make is None:
            return web.json_response({"message": "Resource not found"}, status=404)
        return await make()


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeAri, AriClient]]:
    ari = FakeAri()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ari.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        client = AriClient(
            session, AriAccess(str(server.make_url("/ari")), "bridged", "s3cret"), request_timeout=2.0
        )
        yield ari, client
    await server.close()


async def test_get_info_sends_basic_auth(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply("GET", "/ari/asterisk/info", body={"system": {"version": "22.10.1"}})
    assert await client.get_info() == {"system": {"version": "22.10.1"}}
    assert ari.requests[0]["auth"] == "Basic " + base64.b64encode(b"bridged:s3cret").decode()


async def test_create_channel_encodes_params_and_body(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply("POST", "/ari/channels/create", body={"id": "c1"})
    result = await client.create_channel(
        endpoint=ENDPOINT,
        app="bridged",
        app_args="dial,42",
        channel_id="c1",
        variables={"CALLERID(all)": "Order 42"},
    )
    assert result == {"id": "c1"}
    req = ari.requests[0]
    # "+" must survive as "+", not become a space.
    assert req["query"] == {
        "endpoint": ENDPOINT,
        "app": "bridged",
        "appArgs": "dial,42",
        "channelId": "c1",
    }
    assert req["json"] == {"variables": {"CALLERID(all)": "Order 42"}}


async def test_event_filter_is_the_whole_body(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply("PUT", "/ari/applications/bridged/eventFilter", body={"name": "bridged"})
    await client.allow_events("bridged", ["StasisStart", "Dial", "StasisStart"])
    req = ari.requests[0]
    assert req["query"] == {}
    # Asterisk reads "allowed" at the top of the body (the swagger's body parameter "filter" is the body).
    assert req["json"] == {"allowed": [{"type": "Dial"}, {"type": "StasisStart"}]}


async def test_create_channel_without_variables_sends_no_body(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply("POST", "/ari/channels/create", body={"id": "c1"})
    await client.create_channel(endpoint=ENDPOINT, app="bridged")
    assert ari.requests[0]["json"] is None
    assert set(ari.requests[0]["query"]) == {"endpoint", "app"}


async def test_bools_lowercase_and_lists_comma_joined(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply("POST", "/ari/bridges/b1/addChannel", status=204)
    ari.reply("POST", "/ari/channels/c1/play", body={"id": "p1"})
    ari.reply("POST", "/ari/bridges/b1/record", body={"name": "r1"})
    await client.add_channel("b1", ["c1", "c2"])
    await client.play("c1", ["sound:hello", "sound:world"], playback_id="p1")
    await client.record_bridge("b1", name="orders/42", format="wav")
    assert ari.requests[0]["query"] == {"channel": "c1,c2", "inhibitConnectedLineUpdates": "true"}
    assert ari.requests[1]["query"] == {"media": "sound:hello,sound:world", "playbackId": "p1"}
    assert ari.requests[2]["query"] == {
        "name": "orders/42",
        "format": "wav",
        "ifExists": "fail",
        "beep": "false",
        "terminateOn": "none",
    }


async def test_path_ids_are_one_segment(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    assert await client.get_stored_recording("orders/42") is None
    assert ari.requests[0]["raw_path"] == "/ari/recordings/stored/orders%2F42"


async def test_required_param_checked_before_sending(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    with pytest.raises(ValueError, match="format") as excinfo:
        await client._call("record_bridge", {"bridgeId": "b1"}, {"name": "secret-name-1"})
    assert "secret-name-1" not in str(excinfo.value)
    with pytest.raises(ValueError, match="channelId"):
        await client._call("get_channel", {}, {})
    with pytest.raises(ValueError, match="endpoint"):
        await client._call("create_channel", {}, {"app": "bridged", "endpoint": None})
    with pytest.raises(ValueError, match="bogus"):
        await client._call("answer", {"channelId": "c1"}, {"bogus": 1})
    assert ari.requests == []


async def test_404_means_gone(fake: tuple[FakeAri, AriClient]) -> None:
    _, client = fake
    assert await client.get_channel("nope") is None
    assert await client.hangup("nope") is False
    assert await client.destroy_bridge("nope") is False
    assert await client.get_bridge("nope") is None
    assert await client.get_variable("nope", "X") is None
    assert await client.stop_playback("nope") is False
    assert await client.delete_stored_recording("nope") is False
    assert await client.stop_live_recording("nope") is False
    assert await client.remove_channel("nope", "c1") is False
    with pytest.raises(AriNotFound) as excinfo:
        await client.answer("nope")
    assert excinfo.value.status == 404
    assert excinfo.value.operation == "answer"


async def test_found_values(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply("DELETE", "/ari/channels/c1", status=204)
    ari.reply("GET", "/ari/channels/c1/variable", body={"value": "42"})
    assert await client.hangup("c1") is True
    assert ari.requests[0]["query"] == {"reason": "normal"}
    assert await client.get_variable("c1", "ORDER") == "42"
    assert ari.requests[1]["query"] == {"variable": "ORDER"}


async def test_status_mapping(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply(
        "POST", "/ari/channels/c1/answer", status=409, body={"message": "Channel not in Stasis application"}
    )
    ari.reply("POST", "/ari/channels/c2/answer", status=422, body={"message": "Unprocessable"})
    ari.reply("POST", "/ari/channels/c3/answer", status=500, body={"error": "Allocation failed"})
    ari.reply("POST", "/ari/channels/c4/answer", status=503)
    ari.reply("POST", "/ari/channels/c5/answer", status=401, text="Unauthorized")
    with pytest.raises(AriConflict) as conflict:
        await client.answer("c1")
    assert conflict.value.status == 409
    assert "Channel not in Stasis application" in str(conflict.value)
    with pytest.raises(AriBadRequest):
        await client.answer("c2")
    with pytest.raises(AriError) as server_error:
        await client.answer("c3")
    assert server_error.value.status == 500
    assert not isinstance(server_error.value, AriUnavailable)
    assert "Allocation failed" in str(server_error.value)
    with pytest.raises(AriUnavailable) as unavailable:
        await client.answer("c4")
    assert unavailable.value.status == 503
    with pytest.raises(AriError) as unauthorized:
        await client.answer("c5")
    assert unauthorized.value.status == 401


async def test_an_answer_nobody_reads_is_not_parsed(fake: tuple[FakeAri, AriClient]) -> None:
    """The originate's, the bridge's and the subscription's answers are thrown away by every caller: not
    parsed (a body that is not JSON goes unnoticed); one that is read still is, and must be JSON."""
    ari, client = fake
    for method, path in (
        ("POST", "/ari/channels"),
        ("POST", "/ari/bridges"),
        ("POST", "/ari/applications/bridged/subscription"),
        ("POST", "/ari/channels/c1/answer"),
    ):
        ari.reply(method, path, text="{not json")
    ari.reply("GET", "/ari/asterisk/info", text="{not json")
    variables = {"CALLERID(all)": "Order 42"}
    await client.originate_to_dialplan(
        endpoint=ENDPOINT,
        context="c",
        extension="s",
        channel_id="c1",
        caller_id="x",
        timeout=30,
        variables=variables,
    )
    await client.create_bridge("b1")
    await client.subscribe("bridged", ["channel:c1"])
    await client.answer("c1")
    assert [r["path"] for r in ari.requests] == [
        "/ari/channels",
        "/ari/bridges",
        "/ari/applications/bridged/subscription",
        "/ari/channels/c1/answer",
    ]
    with pytest.raises(AriError, match="invalid JSON"):
        await client.get_info()


async def test_error_never_contains_parameter_values(
    fake: tuple[FakeAri, AriClient], caplog: pytest.LogCaptureFixture
) -> None:
    ari, client = fake
    caplog.set_level(logging.DEBUG, logger="bridged.ari")
    ari.reply("POST", "/ari/channels/create", status=500, body={"error": "Allocation failed"})
    with pytest.raises(AriError) as excinfo:
        await client.create_channel(
            endpoint=ENDPOINT, app="bridged", variables={"CALLERID(all)": f"+1{NUMBER}"}
        )
    for text in (str(excinfo.value), repr(excinfo.value), excinfo.value.message):
        assert NUMBER not in text
    assert "create_channel" in str(excinfo.value) and "500" in str(excinfo.value)
    assert NUMBER not in caplog.text
    assert "create_channel" in caplog.text


async def test_echoed_error_text_is_dropped(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply("POST", "/ari/channels/create", status=400, body={"message": f"Invalid endpoint {ENDPOINT}"})
    ari.reply("POST", "/ari/bridges/b1/addChannel", status=422, body={"message": "Channel xyz-abc not found"})
    with pytest.raises(AriBadRequest) as excinfo:
        await client.create_channel(endpoint=ENDPOINT, app="bridged")
    assert NUMBER not in repr(excinfo.value) and "400" in str(excinfo.value)
    with pytest.raises(AriBadRequest) as echoed:
        await client.add_channel("b1", ["xyz-abc"])
    assert "xyz-abc" not in str(echoed.value)


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused_is_unavailable() -> None:
    async with aiohttp.ClientSession() as session:
        access = AriAccess(f"http://127.0.0.1:{_refused_port()}/ari", "u", "p")
        client = AriClient(session, access, request_timeout=2.0)
        with pytest.raises(AriUnavailable) as excinfo:
            await client.create_channel(endpoint=ENDPOINT, app="bridged")
    assert excinfo.value.status == 0
    assert NUMBER not in str(excinfo.value) and NUMBER not in repr(excinfo.value)
    assert excinfo.value.__suppress_context__


async def test_timeout_is_unavailable(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    client._request_timeout = 0.2

    async def slow() -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response()

    ari.replies[("GET", "/ari/channels")] = slow
    with pytest.raises(AriUnavailable) as excinfo:
        await client.list_channels()
    assert excinfo.value.status == 0


async def test_a_request_its_caller_cancels_is_cancelled_not_unavailable(
    fake: tuple[FakeAri, AriClient],
) -> None:
    ari, client = fake
    release = ari.hold("GET", "/ari/channels", [])
    task = asyncio.create_task(client.list_channels())
    for _ in range(100):
        if ari.requests:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.pending == 0 and client._deadlines._due == {}
    release.set()


async def test_pending_counts_requests_until_answered_or_failed(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    client._request_timeout = 0.5
    release = ari.hold("GET", "/ari/channels", [])
    waiting = [asyncio.create_task(client.list_channels()) for _ in range(3)]
    for _ in range(100):
        if len(ari.requests) == 3:
            break
        await asyncio.sleep(0.01)
    assert client.pending == 3
    await asyncio.sleep(0.05)
    assert 0.05 <= client.oldest_wait() < 5
    release.set()
    assert await asyncio.gather(*waiting) == [[], [], []]
    assert client.pending == 0
    assert client.oldest_wait() == 0.0
    # Failures are counted out too: an error answer, and a request that timed out.
    with pytest.raises(AriNotFound):
        await client.answer("nope")
    release.clear()
    with pytest.raises(AriUnavailable):
        await client.list_channels()
    assert client.pending == 0


async def test_background_requests_are_left_out_of_the_overload_signal(
    fake: tuple[FakeAri, AriClient],
) -> None:
    ari, client = fake
    client._request_timeout = 0.5
    release = ari.hold("GET", "/ari/channels", [])

    async def in_background() -> list[Any]:
        with background_requests():
            return await client.list_channels()

    stuck = asyncio.create_task(in_background())
    for _ in range(100):
        if ari.requests:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert (client.pending, client.oldest_wait()) == (0, 0.0)
    # The same requests from calls being set up count.
    waiting = [asyncio.create_task(client.list_channels()) for _ in range(AriClient.STRAGGLERS + 1)]
    await asyncio.sleep(0.05)
    assert client.pending == AriClient.STRAGGLERS + 1 and client.oldest_wait() > 0
    release.set()
    assert await stuck == [] and await asyncio.gather(*waiting) == [[]] * (AriClient.STRAGGLERS + 1)
    assert client.pending == 0


async def test_a_few_stuck_requests_are_left_out_of_the_overload_signal(
    fake: tuple[FakeAri, AriClient],
) -> None:
    """A request or two stuck on their own (Asterisk answers the others) are not Asterisk being behind;
    a queue of them is."""
    ari, client = fake
    client._request_timeout = 2.0
    release = ari.hold("GET", "/ari/channels", [])
    ari.reply("GET", "/ari/asterisk/info", body={"system": {"version": "22.10.1"}})
    stuck = [asyncio.create_task(client.list_channels()) for _ in range(AriClient.STRAGGLERS)]
    await asyncio.sleep(0.15)
    assert await client.get_info() == {"system": {"version": "22.10.1"}}
    assert client.pending == AriClient.STRAGGLERS and client.oldest_wait() == 0.0
    # One more waiting: now Asterisk is behind, by as long as that one has waited.
    behind = asyncio.create_task(client.list_channels())
    await asyncio.sleep(0.1)
    assert client.pending == AriClient.STRAGGLERS + 1 and 0.05 <= client.oldest_wait() < 0.15
    release.set()
    assert await asyncio.gather(*stuck, behind) == [[]] * (AriClient.STRAGGLERS + 1)
    assert (client.pending, client.oldest_wait()) == (0, 0.0)


async def test_stored_recording_file_streams_with_range(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply("GET", "/ari/recordings/stored/r1/file", status=206, text="RIFF")
    resp = await client.stored_recording_file("r1", range_header="bytes=0-3")
    try:
        assert resp.status == 206
        assert await resp.read() == b"RIFF"
    finally:
        resp.release()
    assert ari.requests[0]["range"] == "bytes=0-3"
    with pytest.raises(AriNotFound):
        await client.stored_recording_file("missing")


async def test_subscribe_and_create_bridge(fake: tuple[FakeAri, AriClient]) -> None:
    ari, client = fake
    ari.reply("POST", "/ari/applications/bridged/subscription", body={"name": "bridged"})
    ari.reply("POST", "/ari/bridges", body={"id": "b1"})
    await client.subscribe("bridged", ["channel:c1", "bridge:b1"])
    await client.create_bridge("b1", name="order-42")
    assert ari.requests[0]["query"] == {"eventSource": "channel:c1,bridge:b1"}
    assert ari.requests[1]["query"] == {"type": "mixing", "bridgeId": "b1", "name": "order-42"}


# -- the spec checker used by tests/e2e/test_ari_spec.py ---------------------------------------------------


def _load_spec_checker() -> Any:
    path = Path(__file__).resolve().parents[1] / "e2e" / "test_ari_spec.py"
    spec = importlib.util.spec_from_file_location("_ari_spec_checker", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _param(name: str, kind: str = "query", required: bool = False) -> dict[str, Any]:
    return {"name": name, "paramType": kind, "required": required, "dataType": "string"}


HAND_SPEC = {
    "channels": {
        "apis": [
            {
                "path": "/channels/{channelId}",
                "operations": [
                    {"httpMethod": "GET", "parameters": [_param("channelId", "path", True)]},
                    {
                        "httpMethod": "DELETE",
                        "parameters": [_param("channelId", "path", True), _param("reason")],
                    },
                ],
            },
            {
                "path": "/channels/{channelId}/play",
                "operations": [
                    {
                        "httpMethod": "POST",
                        "parameters": [
                            _param("channelId", "path", True),
                            _param("media", required=True),
                            _param("lang"),
                        ],
                    }
                ],
            },
        ]
    }
}


def test_check_operations_accepts_a_matching_table() -> None:
    checker = _load_spec_checker()
    ops = {
        "get_channel": Operation("GET", "/channels/{channelId}", (), ()),
        "hangup": Operation("DELETE", "/channels/{channelId}", (), ("reason",)),
        "play": Operation("POST", "/channels/{channelId}/play", ("media",), ("lang",)),
    }
    assert checker.check_operations(HAND_SPEC, ops) == []


def test_check_operations_reports_mismatches() -> None:
    checker = _load_spec_checker()
    ops = {
        "wrong_method": Operation("POST", "/channels/{channelId}", (), ()),
        "missing_required": Operation("POST", "/channels/{channelId}/play", (), ("lang",)),
        "unknown_param": Operation("DELETE", "/channels/{channelId}", (), ("reason", "cause")),
        "no_such_path": Operation("GET", "/channels/{channelId}/nothing", (), ()),
        "path_param_typo": Operation("GET", "/channels/{channel_id}", (), ()),
    }
    problems = checker.check_operations(HAND_SPEC, ops)
    joined = "\n".join(problems)
    assert "wrong_method" in joined
    assert "missing_required: spec requires 'media'" in joined
    assert "unknown_param: parameter 'cause' is not in the spec" in joined
    assert "no_such_path" in joined
    assert "path_param_typo" in joined
    assert len(problems) == 5


def test_operation_table_is_self_consistent() -> None:
    for name, op in OPERATIONS.items():
        assert op.method in {"GET", "POST", "PUT", "DELETE"}, name
        assert set(op.body_params) <= set(op.all_params), name
        assert not set(op.required) & set(op.optional), name
    assert "format" in OPERATIONS["record_bridge"].required


# -- the request target, against the builder it replaced ------------------------------------------


def _target_before(
    base_url: str, op_name: str, path_params: Any, params: Any, body: Any
) -> tuple[str, str, Any]:
    """The request builder as it was (commit 939e082), through yarl: the reference the faster one must
    match, error for error and byte for byte."""
    op = OPERATIONS[op_name]
    for name in op.path_params:
        if path_params.get(name) in (None, ""):
            raise ValueError(f"ARI {op_name}: missing path parameter {name}")
    present = {k for k, v in params.items() if v is not None}
    present |= {k for k, v in (body or {}).items() if v is not None}
    for name in op.required:
        if name not in present:
            raise ValueError(f"ARI {op_name}: missing required parameter {name}")
    for name in params:
        if name not in op.all_params or name in op.body_params:
            raise ValueError(f"ARI {op_name}: unknown query parameter {name}")
    for name in body or {}:
        if name not in op.body_params:
            raise ValueError(f"ARI {op_name}: unknown body parameter {name}")
    path = op.path
    for name in op.path_params:
        path = path.replace("{" + name + "}", quote(str(path_params[name]), safe=""))
    query = "&".join(
        f"{quote(k, safe='')}={quote(encode_value(v), safe='')}" for k, v in params.items() if v is not None
    )
    url = URL(base_url + path + (f"?{query}" if query else ""), encoded=True)
    json_body = {k: v for k, v in body.items() if v is not None} if body else None
    if op.body_whole and json_body:
        [json_body] = json_body.values()
    return op.method, url.raw_path_qs, json_body or None


# Any text, surrogates included (quote cannot encode them: both builders must fail alike), and the
# characters that matter in a target: "/", "+", "%", "?", "#", "&", "=", spaces, dots.
_hostile_text = st.one_of(
    st.text(st.characters(blacklist_categories=())),
    st.text(st.sampled_from("/+%?#&=. ~-_aZ09{}é\u202e"), max_size=12),
    st.sampled_from(["", ".", "..", "+4930123456789", "PJSIP/+49301@carrier", "c1"]),
)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), _hostile_text)
_value = st.one_of(_scalar, st.lists(_scalar, max_size=3), st.tuples(_scalar, _scalar))


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    op_name = draw(st.sampled_from(sorted(OPERATIONS)))
    op = OPERATIONS[op_name]
    names = st.one_of(st.sampled_from(op.all_params or ("none",)), _hostile_text)
    path_params = {n: draw(_value) for n in op.path_params if draw(st.integers(0, 9))}
    params = draw(st.dictionaries(names, _value, max_size=4))
    body = draw(st.none() | st.dictionaries(names, st.none() | st.dictionaries(_hostile_text, _scalar)))
    base = draw(
        st.sampled_from(["http://127.0.0.1:8088/ari", "http://asterisk:8088", "https://h/a%20b/ari/"])
    )
    return base, op_name, path_params, params, body


@settings(max_examples=1500, deadline=None)
@given(_requests())
def test_the_request_target_is_the_one_the_yarl_builder_made(
    request: tuple[str, str, dict[str, Any], dict[str, Any], dict[str, Any] | None],
) -> None:
    base, op_name, path_params, params, body = request
    client = AriClient.__new__(AriClient)  # only what _prepare reads: no session, no transport
    client._base_url = base.rstrip("/")
    client._base_path = URL(client._base_url, encoded=True).raw_path.rstrip("/")
    try:
        expected: Any = _target_before(client._base_url, op_name, path_params, params, body)
    except ValueError as exc:  # UnicodeEncodeError included
        expected = (type(exc), str(exc))
    try:
        op, target, json_body = client._prepare(op_name, path_params, params, body)
        got: Any = (op.method, client._base_path + target, json_body)
    except ValueError as exc:
        got = (type(exc), str(exc))
    assert got == expected


@given(st.text(st.characters(exclude_categories=["Cs"])) | st.text(st.characters(max_codepoint=127)))
def test_quoting_is_urllibs(text: str) -> None:
    assert quoted(text) == quote(text, safe="")


def test_a_context_setting_is_put_back_after_its_block_even_when_it_raises() -> None:
    assert current_node() is None and not is_background()
    with on_node("pbx1"), background_requests():
        assert current_node() == "pbx1" and is_background()
        with pytest.raises(RuntimeError), on_node("pbx2"):
            assert current_node() == "pbx2"
            raise RuntimeError
        assert current_node() == "pbx1"  # what the outer block set, put back by the inner one
    assert current_node() is None and not is_background()
