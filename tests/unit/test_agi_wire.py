"""The FastAGI session on the wire: the environment and the answers split at any byte, the answers
Asterisk gives on a dead channel or to a command it cannot parse, and peers that stop half way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from bridged import agi as agi_module
from bridged.agi import AGI_APP_ERROR, AGI_HANGUP, AGI_USAGE_ERROR, AgiReply, AgiSession, parse_reply
from tests.unit.fakes import wait_until
from tests.unit.test_agi import CALL_ID, Agi, _finished, _headers, _start, default_answers, session


class WireTransport(asyncio.Transport):
    """Stands in for the socket, so that a test decides exactly which bytes each ``data_received`` gets."""

    def __init__(self, protocol: AgiSession) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


def _environment(headers: dict[str, str]) -> bytes:
    return "".join(f"{key}: {value}\n" for key, value in headers.items()).encode() + b"\n"


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


async def _split_session(
    env_cuts: list[int], answer_cuts: list[int], headers: dict[str, str], answer: Callable[[str], str]
) -> tuple[Agi, list[str]]:
    """One session on a WireTransport: the environment and every answer cut at the given points, each
    piece a ``data_received`` of its own; returns the commands the server sent."""
    agi = await _start()
    try:
        protocol = agi.server._session()
        transport = WireTransport(protocol)
        protocol.connection_made(transport)
        for piece in _pieces(_environment(headers), env_cuts):
            protocol.data_received(piece)
            await asyncio.sleep(0)
        commands: list[str] = []
        while not transport.closing:
            await wait_until(lambda: b"\n" in transport.written or transport.closing, what="a command")
            if transport.closing:
                break
            line, _, rest = bytes(transport.written).partition(b"\n")
            transport.written[:] = rest
            commands.append(line.decode())
            for piece in _pieces((answer(commands[-1]) + "\n").encode(), answer_cuts):
                protocol.data_received(piece)
                await asyncio.sleep(0)
        await _finished(agi, 1)
        return agi, commands
    finally:
        await agi.server.stop()


def _run(loop: str, check: Callable[[], object]) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(check())  # type: ignore[arg-type]


_CUTS = st.lists(st.integers(min_value=0, max_value=2000), max_size=12)


@settings(max_examples=60, deadline=None)
@given(env_cuts=_CUTS, answer_cuts=_CUTS, keyed=st.booleans())
def test_the_environment_and_the_answers_split_at_any_byte(
    env_cuts: list[int], answer_cuts: list[int], keyed: bool
) -> None:
    """Asterisk sends the environment a line per segment, and TCP may cut anywhere: whatever the cuts, the
    same commands go out and the same call is asked for. The channel name is not PJSIP's, so the
    endpoint comes from a GET VARIABLE; without a code (``keyed``) the code comes from a GET DATA."""
    headers = _headers(agi_channel="Local/x@y", agi_language="ru", agi_arg_1="" if keyed else "123")

    async def check() -> None:
        agi, commands = await _split_session(env_cuts, answer_cuts, headers, default_answers(digits="4567"))
        code = "4567" if keyed else "123"
        assert agi.service.requests == [("anna", code, "phone", "1767261600.17")]
        assert commands[0] == "GET VARIABLE CHANNEL(endpoint)"
        assert ('SET VARIABLE CHANNEL(language) "en"' in commands) is keyed
        assert ("GET DATA vm-enter-num-to-call 8000 16" in commands) is keyed
        assert commands[-1] == (
            f'SET VARIABLE BRIDGED_REPLY "ok|en|bridged,order,{CALL_ID}|\\"Order {code} Ivan P.\\" <*77{code}>"'
        )

    _run("asyncio", check)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_blank_line_cut_between_its_two_newlines(loop: str) -> None:
    async def check() -> None:
        env = _environment(_headers())
        agi, commands = await _split_session([len(env) - 1], [], _headers(), default_answers())
        assert agi.service.requests == [("anna", "123", "phone", "1767261600.17")]
        assert [c.split(" ", 2)[:2] for c in commands] == [["SET", "VARIABLE"]]

    _run(loop, check)


@pytest.mark.parametrize(
    "answer",
    ["HANGUP", "511 Command Not Permitted on a dead channel or intercept routine", "200 result=0 (hangup)"],
)
async def test_a_dead_channel_answering_the_reply_is_the_manager_hanging_up(
    answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The manager hung up while bridged decided: Asterisk answers the reply's SET VARIABLE with HANGUP or
    511. An ordinary end, logged at INFO, not a failure."""
    caplog.set_level(logging.INFO, logger="bridged.agi")
    agi = await _start()
    try:
        commands = await session(agi.port, _headers(), lambda command: answer)
        await _finished(agi, 1)
    finally:
        await agi.server.stop()
    assert [c.split(" ", 3)[:3] for c in commands] == [["SET", "VARIABLE", "BRIDGED_REPLY"]]
    assert agi.service.requests == [("anna", "123", "phone", "1767261600.17")]
    assert "the manager hung up during SET" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_a_multi_line_usage_error_is_read_to_its_end(caplog: pytest.LogCaptureFixture) -> None:
    """A 520 usage text spans lines up to ``520 End of proper usage.``: all of it is the one answer, so the
    next command reads its own answer, not a line of the usage text."""
    usage = "\n".join(
        [
            "520-Invalid command syntax.  Proper usage follows:",
            " Usage: GET VARIABLE <variableName>",
            "       Returns 0 if <variablename> is not set.",
            "520 End of proper usage.",
        ]
    )

    def answer(command: str) -> str:
        return usage if command.startswith("GET VARIABLE ") else "200 result=1"

    caplog.set_level(logging.INFO, logger="bridged.agi")
    agi = await _start()
    try:
        commands = await session(agi.port, _headers(agi_channel="Local/x@y"), answer)
        await _finished(agi, 1)
    finally:
        await agi.server.stop()
    # No endpoint came back: refused as an unknown manager, and that answer went out and was read.
    assert agi.service.unknown == [""]
    assert commands[-1] == 'SET VARIABLE BRIDGED_REPLY "refused|en|ss-noservice"'
    # Its answer was the 200 (a usage line read as its answer would end the session as a hang-up).
    assert "hung up" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("cut", ["mid-line", "after-a-line"])
def test_a_peer_closing_mid_environment_is_no_call_and_no_log(
    loop: str, cut: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def check() -> None:
        agi = await _start()
        try:
            env = _environment(_headers())
            sent = env[: env.index(b"agi_channel") + (5 if cut == "mid-line" else 0)]
            reader, writer = await asyncio.open_connection("127.0.0.1", agi.port)
            writer.write(sent)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await _finished(agi, 1)
            assert agi.service.requests == [] and agi.service.unknown == []
        finally:
            await agi.server.stop()

    caplog.set_level(logging.INFO, logger="bridged.agi")
    _run(loop, check)
    assert [r.getMessage() for r in caplog.records] == ["FastAGI listening on 127.0.0.1:0"]


async def test_an_environment_never_finished_times_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(agi_module, "_HEADER_TIMEOUT", 0.05)
    agi = await _start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", agi.port)
        writer.write(_environment(_headers())[:-1])  # no blank line
        await writer.drain()
        await _finished(agi, 1)
        assert await asyncio.wait_for(reader.read(), timeout=2) == b""  # closed by the server
        writer.close()
    finally:
        await agi.server.stop()
    assert agi.service.requests == []
    assert "FastAGI connection dropped: TimeoutError" in caplog.text


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("200 result=1", AgiReply(200, ("1", ""))),
        ("200 result=1 (anna)", AgiReply(200, ("1", "anna"))),
        ("200 result=0", AgiReply(200, ("0", ""))),
        ("200 result= (timeout)", AgiReply(200, ("", ""))),
        ("200 result=12 (timeout)", AgiReply(200, ("12", "timeout"))),
        ("200 result=-1", AgiReply(200, error=AGI_APP_ERROR)),
        ("200 result=0 (hangup)", AgiReply(200, error=AGI_HANGUP)),
        ("HANGUP", AgiReply(0, error=AGI_HANGUP)),
        ("100 result=0 Trying...", AgiReply(100)),
        ("510 Invalid or unknown command", AgiReply(510, error="AGIInvalidCommand")),
        ("511 Command Not Permitted on a dead channel", AgiReply(511, error="AGIUnknownError")),
        ("520-Invalid command syntax.  Proper usage follows:", AgiReply(520, error=AGI_USAGE_ERROR)),
    ],
)
def test_answers_read_as_panoramisk_read_them(line: str, reply: AgiReply) -> None:
    assert parse_reply(line) == reply


@pytest.mark.parametrize("line", ["", "garbage", "result=1"])
def test_a_line_without_a_status_is_no_answer(line: str) -> None:
    with pytest.raises(ValueError):
        parse_reply(line)
