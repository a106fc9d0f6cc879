"""The FastAGI server, spoken to over loopback the way Asterisk does, with a fake CallService."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import pytest

from bridged.agi import AgiServer, AgiSession
from bridged.calls.model import PendingCall
from bridged.config import AgiConfig, Config, ConfigHolder
from bridged.configfile import parse_config
from bridged.labels import Labeller
from bridged.outcomes import Refusal
from bridged.service import ReadCode, Refused
from tests.unit.fakes import example_data, make_config, make_order, wait_until

CALL_ID = "c0ffeec0ffee"


class FakeService:
    """Mirrors the CallService surface the AGI handler uses; records every request."""

    customer_name = "Ivan Petrov"

    def __init__(self, config: Config, refuse: Refusal | None = None) -> None:
        self.config = ConfigHolder(config)  # as CallService holds it
        self.refuse = refuse
        self.labeller = Labeller(config.labels.template, config.labels.name_style)
        self.requests: list[tuple[str, str, str, str | None]] = []
        self.unknown: list[str] = []
        self.abandoned: list[str] = []
        self.others_follow: list[bool] = []

    async def place_from_phone(
        self,
        endpoint: str,
        code: str,
        channel_id: str | None,
        *,
        read_code: ReadCode,
        others_follow: bool = False,
    ) -> PendingCall | Refused | None:
        self.others_follow.append(others_follow)
        manager = self.config.current.manager_by_endpoint(endpoint)
        if manager is None:
            self.unknown.append(endpoint)
            return Refused(Refusal.UNKNOWN_MANAGER)
        if not code:
            keyed = await read_code()
            if keyed is None:
                self.abandoned.append(manager.id)
                return None
            code = keyed
        self.requests.append((manager.id, code, "phone", channel_id))
        if not code:
            return Refused(Refusal.INVALID_CODE)
        if self.refuse is not None:
            return Refused(self.refuse, "refused-call")
        return PendingCall(
            call_id=CALL_ID,
            order=make_order(code),
            manager=manager,
            direction="phone",
            manager_channel_id=channel_id,
            label=self.labeller.label(code, self.customer_name),
        )


class TrackedAgiServer(AgiServer):
    """Counts finished connections, so a test can tell a handler returned (did not hang or spin)."""

    def __init__(self, config: ConfigHolder, service: FakeService) -> None:
        super().__init__(config, service)  # type: ignore[arg-type]
        self.finished = 0

    async def _connection(self, session: AgiSession) -> None:
        try:
            await super()._connection(session)
        finally:
            self.finished += 1


@dataclass
class Agi:
    server: TrackedAgiServer
    service: FakeService
    port: int


async def _start(refuse: Refusal | None = None, config: Config | None = None) -> Agi:
    config = replace(config or make_config(), agi=AgiConfig(host="127.0.0.1", port=0))
    service = FakeService(config, refuse)
    server = TrackedAgiServer(ConfigHolder(config), service)
    await server.start()
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    return Agi(server, service, port)


@pytest.fixture
async def agi() -> AsyncIterator[Agi]:
    a = await _start()
    yield a
    await a.server.stop()


def _headers(**extra: str) -> dict[str, str]:
    headers = {
        "agi_network": "yes",
        "agi_network_script": "order",
        "agi_request": "agi://127.0.0.1:4573/order",
        "agi_channel": "PJSIP/anna-00000001",
        "agi_language": "en",
        "agi_type": "PJSIP",
        "agi_uniqueid": "1767261600.17",
        "agi_version": "22.0.0",
        "agi_callerid": "201",
        "agi_calleridname": "Anna",
        "agi_context": "managers",
        "agi_extension": "*77123",
        "agi_priority": "2",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "140000000000000",
        "agi_arg_1": "123",
    }
    headers.update(extra)
    return {k: v for k, v in headers.items() if v is not None}


def default_answers(endpoint: str = "anna", digits: str = "123") -> Callable[[str], str]:
    def answer(command: str) -> str:
        if command == "GET VARIABLE CHANNEL(endpoint)":
            return f"200 result=1 ({endpoint})" if endpoint else "200 result=0"
        if command.startswith("GET DATA "):
            return f"200 result={digits}" if digits else "200 result= (timeout)"
        if command.startswith("SET VARIABLE "):
            return "200 result=1"
        return "510 Invalid or unknown command"

    return answer


async def session(
    port: int, headers: dict[str, str], answer: Callable[[str], str] | None = None
) -> list[str]:
    """One FastAGI session as Asterisk runs it; returns the commands the server sent."""
    answer = answer or default_answers()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for key, value in headers.items():
            writer.write(f"{key}: {value}\n".encode())
        writer.write(b"\n")
        await writer.drain()
        commands: list[str] = []
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout=2)
            if not line:
                return commands
            command = line.decode().rstrip("\n")
            commands.append(command)
            writer.write((answer(command) + "\n").encode())
            await writer.drain()
    finally:
        writer.close()


def _set_vars(commands: list[str]) -> list[str]:
    return [c for c in commands if c.startswith("SET VARIABLE ")]


async def test_accepted_call_hands_over_to_stasis(agi: Agi) -> None:
    commands = await session(agi.port, _headers())
    # The endpoint comes from the channel name: no round trip for it.
    assert not any(c.startswith("GET VARIABLE") for c in commands)
    # One round trip: the Stasis() arguments and the label, which the dialplan takes apart.
    assert _set_vars(commands) == [
        f'SET VARIABLE BRIDGED_REPLY "ok|en|bridged,order,{CALL_ID}|\\"Order 123 Ivan P.\\" <*77123>"',
    ]
    assert not any(c.startswith("GET DATA") for c in commands)
    assert agi.service.requests == [("anna", "123", "phone", "1767261600.17")]
    await asyncio.wait_for(_finished(agi, 1), timeout=2)


async def _finished(agi: Agi, count: int) -> None:
    await wait_until(lambda: agi.server.finished >= count, what=f"{count} finished connection(s)")


async def test_refused_call_sets_prompt() -> None:
    agi = await _start(refuse=Refusal.DENIED)
    try:
        commands = await session(agi.port, _headers())
    finally:
        await agi.server.stop()
    assert _set_vars(commands) == ['SET VARIABLE BRIDGED_REPLY "refused|en|im-sorry&feature-not-avail-line"']


async def test_overloaded_is_its_own_answer_so_the_dialplan_can_reject_with_503() -> None:
    agi = await _start(refuse=Refusal.OVERLOADED)
    try:
        commands = await session(agi.port, _headers())
    finally:
        await agi.server.stop()
    assert _set_vars(commands) == [
        'SET VARIABLE BRIDGED_REPLY "overloaded|en|all-circuits-busy-now&please-try-call-later"'
    ]


async def test_unavailable_is_its_own_answer_so_the_dialplan_can_ask_the_next_daemon() -> None:
    agi = await _start(refuse=Refusal.UNAVAILABLE)
    try:
        commands = await session(agi.port, _headers(agi_arg_2="1"))
    finally:
        await agi.server.stop()
    assert _set_vars(commands) == ['SET VARIABLE BRIDGED_REPLY "unavailable|en|please-try-call-later"']
    # The dialplan's second argument: another daemon follows this one.
    assert agi.service.others_follow == [True]


@pytest.mark.parametrize("argument", ["0", "", "yes", "11"])
async def test_only_a_1_says_that_another_daemon_follows(argument: str) -> None:
    agi = await _start()
    try:
        await session(agi.port, _headers(agi_arg_2=argument))
    finally:
        await agi.server.stop()
    assert agi.service.others_follow == [False]


async def test_the_code_argument_is_decoded_whole(agi: Agi) -> None:
    # The dialplan URI-encodes the dialled code (AGI() would split it at the comma): the service gets
    # "123,1" as dialled, to refuse as malformed, and the 1 after the comma does not pose as BRIDGED_MORE.
    await session(agi.port, _headers(agi_arg_1="123%2C1", agi_arg_2="0"))
    assert agi.service.requests == [("anna", "123,1", "phone", "1767261600.17")]
    assert agi.service.others_follow == [False]


async def test_unknown_endpoint_is_refused(agi: Agi) -> None:
    commands = await session(
        agi.port, _headers(agi_channel="PJSIP/mallory-0000000a"), default_answers("mallory")
    )
    assert agi.service.unknown == ["mallory"]
    assert agi.service.requests == []
    assert _set_vars(commands) == ['SET VARIABLE BRIDGED_REPLY "refused|en|ss-noservice"']


async def test_endpoint_falls_back_to_the_channel_name(agi: Agi) -> None:
    commands = await session(agi.port, _headers(agi_channel="PJSIP/boris-0000001f"), default_answers(""))
    assert agi.service.requests == [("boris", "123", "phone", "1767261600.17")]
    assert _set_vars(commands)[-1].startswith('SET VARIABLE BRIDGED_REPLY "ok|')


async def test_missing_code_is_asked_for_with_get_data(agi: Agi) -> None:
    headers = _headers()
    del headers["agi_arg_1"]
    commands = await session(agi.port, headers, default_answers(digits="456"))
    assert "GET DATA vm-enter-num-to-call 8000 16" in commands
    assert agi.service.requests == [("anna", "456", "phone", "1767261600.17")]
    assert _set_vars(commands)[-1].startswith('SET VARIABLE BRIDGED_REPLY "ok|')


async def test_get_data_timeout_is_an_empty_code(agi: Agi) -> None:
    commands = await session(agi.port, _headers(agi_arg_1=""), default_answers(digits=""))
    assert any(c.startswith("GET DATA ") for c in commands)
    assert agi.service.requests == [("anna", "", "phone", "1767261600.17")]
    assert _set_vars(commands) == ['SET VARIABLE BRIDGED_REPLY "refused|en|invalid"']


async def test_unknown_script_gets_no_commands(agi: Agi) -> None:
    commands = await session(agi.port, _headers(agi_network_script="other"))
    assert commands == []
    assert agi.service.requests == []


async def test_peer_closing_before_the_blank_line(agi: Agi) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", agi.port)
    writer.write(b"agi_network: yes\nagi_network_script: order\nagi_channel: PJSIP/anna-00000001\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(_finished(agi, 1), timeout=2)
    assert agi.service.requests == []
    # The server still serves the next caller.
    commands = await session(agi.port, _headers())
    assert _set_vars(commands)[-1].startswith('SET VARIABLE BRIDGED_REPLY "ok|')


async def test_peer_hanging_up_mid_command(agi: Agi, caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", agi.port)
    # *77 without a code: the server's first command asks for the digits; the peer hangs up then.
    for key, value in _headers(agi_arg_1="").items():
        writer.write(f"{key}: {value}\n".encode())
    writer.write(b"\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readline(), timeout=2)
    assert first.startswith(b"GET DATA ")
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(_finished(agi, 1), timeout=2)
    assert agi.service.requests == []
    assert agi.service.abandoned == ["anna"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# What Asterisk 22 sends a FastAGI server when the channel hangs up around GET DATA: "200 result=-1"
# then "HANGUP" during the prompt or the wait; "HANGUP" first when it hung up before the command ran;
# 511 for a command on a channel that is already dead.
HANGUPS = {
    "during GET DATA": ["200 result=-1", "HANGUP"],
    "before GET DATA": ["HANGUP", "511 Command Not Permitted on a dead channel or intercept routine"],
    "dead channel": ["511 Command Not Permitted on a dead channel or intercept routine"],
}


@pytest.mark.parametrize("lines", HANGUPS.values(), ids=HANGUPS.keys())
async def test_manager_hanging_up_while_keying_the_code_is_manager_abandoned(
    agi: Agi, caplog: pytest.LogCaptureFixture, lines: list[str]
) -> None:
    caplog.set_level(logging.INFO, logger="bridged.agi")
    pending = list(lines)

    def answer(command: str) -> str:
        if command.startswith("GET DATA ") or command == "CHANNEL STATUS":
            # Asterisk sends HANGUP on its own, without a command: it arrives with the reply before it.
            out = "\n".join(pending) if command.startswith("GET DATA ") else "511 Command Not Permitted"
            pending.clear()
            return out
        return "510 Invalid or unknown command"

    commands = await session(agi.port, _headers(agi_arg_1=""), answer)
    await asyncio.wait_for(_finished(agi, 1), timeout=2)
    assert agi.service.abandoned == ["anna"]
    assert agi.service.requests == []
    assert _set_vars(commands) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_get_data_failing_on_a_live_channel_is_no_hangup(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    # result=-1 with the channel still up (a missing prompt file): not the manager's doing.
    def answer(command: str) -> str:
        if command.startswith("GET DATA "):
            return "200 result=-1"
        if command == "CHANNEL STATUS":
            return "200 result=6"
        return "200 result=1"

    commands = await session(agi.port, _headers(agi_arg_1=""), answer)
    await asyncio.wait_for(_finished(agi, 1), timeout=2)
    assert "CHANNEL STATUS" in commands
    assert agi.service.abandoned == [] and agi.service.requests == []
    # No answer: the dialplan plays its own error prompt; the failure is logged as one.
    assert _set_vars(commands) == []
    assert "GET DATA failed on a live channel" in caplog.text


async def test_invalid_phone_is_refused_with_its_prompt() -> None:
    agi = await _start(refuse=Refusal.INVALID_PHONE)
    try:
        commands = await session(agi.port, _headers())
    finally:
        await agi.server.stop()
    assert _set_vars(commands) == ['SET VARIABLE BRIDGED_REPLY "refused|en|cannot-complete-as-dialed"']


async def test_oversized_headers_are_dropped(agi: Agi) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", agi.port)
    try:
        writer.write(b"agi_network_script: order\n")
        for i in range(2000):
            writer.write(f"agi_junk_{i}: {'x' * 40}\n".encode())
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the server may close (and reset) before all of it is sent
        await _finished(agi, 1)
        try:
            rest = await asyncio.wait_for(reader.read(), timeout=2)
        except ConnectionError:
            rest = b""
        assert rest == b""
    finally:
        writer.close()
    assert agi.service.requests == []


# -- the language of the prompts --------------------------------------------------------------------


def _russian() -> Config:
    data = example_data()
    data["language"] = "ru"
    return parse_config(data)


async def test_the_answer_names_the_language_and_carries_a_cyrillic_label_intact() -> None:
    agi = await _start(config=_russian())
    agi.service.customer_name = "Иван Петров"
    try:
        commands = await session(agi.port, _headers())  # decoded as strict UTF-8
    finally:
        await agi.server.stop()
    # Still one round trip: the dialplan sets CHANNEL(language) from the answer's second field.
    assert _set_vars(commands) == [
        f'SET VARIABLE BRIDGED_REPLY "ok|ru|bridged,order,{CALL_ID}|\\"Заказ 123 Иван П.\\" <*77123>"',
    ]


@pytest.mark.parametrize(("channel_language", "set_first"), [("en", True), ("ru", False)])
async def test_the_code_prompt_is_played_in_the_configured_language(
    channel_language: str, set_first: bool
) -> None:
    """The code is asked for before the answer that sets the language: the handler sets it first,
    unless the channel has it already (Asterisk's agi_language header)."""
    agi = await _start(config=_russian())
    try:
        commands = await session(
            agi.port, _headers(agi_arg_1="", agi_language=channel_language), default_answers(digits="456")
        )
    finally:
        await agi.server.stop()
    get_data = next(i for i, c in enumerate(commands) if c.startswith("GET DATA "))
    assert ('SET VARIABLE CHANNEL(language) "ru"' in commands[:get_data]) is set_first
    assert commands[-1].startswith('SET VARIABLE BRIDGED_REPLY "ok|ru|')
