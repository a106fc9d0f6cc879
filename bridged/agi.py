"""The FastAGI side of the phone path: who is calling, which order, may the call go ahead.

Dialplan (dialplan/bridged.conf) runs ``AGI(agi://host:port/order,<code>)``; this handler answers with
one channel variable (the contract is bridged.dialplan). Any failure leaves it unset, and the dialplan
plays its own error prompt: a manager never hangs in silence.

The session is an ``asyncio.Protocol`` of its own (issue 19: asyncio's streams cost CPU on every call):
the environment is gathered in ``data_received`` (Asterisk sends it a line per TCP segment) and handed to
the handler once its blank line is in; a command is one ``write`` and one future for its answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from . import dialplan
from .config import ConfigHolder
from .outcomes import REFUSALS, refusal_prompt
from .service import CallService, Refused

log = logging.getLogger(__name__)

_HEADER_LIMIT = 64 * 1024  # the environment, and any answer line, at most this long
_HEADER_TIMEOUT = 10.0
_DIGITS_TIMEOUT_MS = 8000
_MAX_DIGITS = 16


class AgiError(Exception):
    pass


class ManagerHungUp(Exception):
    """The manager's channel hung up while a command ran (or before it): Asterisk answers ``HANGUP``
    or 511 (a dead channel), or ends the session."""


class AgiServer:
    def __init__(self, config: ConfigHolder, service: CallService) -> None:
        self.config = config
        self.service = service
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            self._session, self.config.current.agi.host, self.config.current.agi.port
        )
        log.info("FastAGI listening on %s:%s", self.config.current.agi.host, self.config.current.agi.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _session(self) -> AgiSession:
        return AgiSession(self._serve)

    def _serve(self, session: AgiSession) -> None:
        task = asyncio.get_running_loop().create_task(self._connection(session))
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, session: AgiSession) -> None:
        try:
            async with asyncio.timeout(_HEADER_TIMEOUT):
                headers = await session.environment()
            if headers is None:
                return  # closed before the blank line, or more than the limit: nothing to answer
            script = headers.get("agi_network_script", "")
            if script != dialplan.AGI_SCRIPT:
                log.warning("FastAGI request for unknown script %r", script[:40])
                return
            await self.order(session)
        except ManagerHungUp as exc:
            # The manager gave up while bridged was answering: an ordinary end, no error.
            log.info("FastAGI: the manager hung up during %s", exc)
        except (TimeoutError, ConnectionError) as exc:
            log.warning("FastAGI connection dropped: %s", type(exc).__name__)
        except Exception:
            log.exception("FastAGI handler failed")
        finally:
            session.close()

    async def order(self, session: AgiSession) -> None:
        headers = session.headers
        # The channel name gives the endpoint without a round trip; CHANNEL(endpoint) is the fallback.
        endpoint = _endpoint_from_channel(headers.get("agi_channel", "")) or await get_var(
            session, "CHANNEL(endpoint)"
        )

        async def read_code() -> str | None:
            try:
                return await self._read_code(session)
            except ManagerHungUp:
                return None

        placed = await self.service.place_from_phone(
            endpoint,
            dialplan.code_from_arg(headers.get("agi_arg_1", "")),
            headers.get("agi_uniqueid") or None,
            read_code=read_code,
            # Another daemon follows this one in the dialplan (BRIDGED_MORE): it may take what this one
            # cannot.
            others_follow=headers.get("agi_arg_2", "").strip() == "1",
        )
        if placed is None:
            return  # the manager hung up while keying the code in
        if isinstance(placed, Refused):
            await self._refused(session, placed)
            return
        # The dialplan sets the label, the manager's connected line and the CONNECTED_LINE_SEND_SUB
        # interception from this answer before the channel enters Stasis.
        config = self.config.current
        stasis_args = f"{config.ari.app},{dialplan.app_args(dialplan.Leg.ORDER, placed.call_id)}"
        reply = dialplan.reply_ok(config.language, stasis_args, placed.label.caller_id)
        await set_var(session, dialplan.REPLY, reply)

    async def _read_code(self, session: AgiSession) -> str:
        """The order code keyed in after ``*77`` (``""`` when none came in time).

        Asterisk answers GET DATA with ``result=-1`` when the channel hung up during the prompt or the
        wait, then sends ``HANGUP``; -1 also comes from a prompt that failed on a live channel, which
        a CHANNEL STATUS tells apart (a dead channel answers ``HANGUP`` or 511 to it).
        """
        config = self.config.current
        # The prompt comes before the answer that sets the channel's language: set here, unless the
        # channel has it already (its endpoint's language=; Asterisk says which in agi_language).
        if session.headers.get("agi_language") != config.language:
            await set_var(session, dialplan.CHANNEL_LANGUAGE, config.language)
        reply = await _send(
            session, f"GET DATA {config.prompts.enter_code} {_DIGITS_TIMEOUT_MS} {_MAX_DIGITS}"
        )
        if reply.error == AGI_APP_ERROR:  # result=-1
            await _send(session, "CHANNEL STATUS")
            raise AgiError("GET DATA failed on a live channel (is the enter_code prompt installed?)")
        if reply.error:
            raise AgiError(f"GET DATA: {reply.error}")
        code = reply.result[0]
        return "" if code in ("-1", "(timeout)") else code

    async def _refused(self, session: AgiSession, refused: Refused) -> None:
        # Unavailable or overloaded: the dialplan asks the next daemon, if any. Overloaded at the last one:
        # the dialplan rejects a phone still ringing with 503 rather than answering it for a prompt, which
        # would cost an overloaded Asterisk seconds of media per refused call.
        config = self.config.current
        prompt = refusal_prompt(config.prompts, refused.reason)
        kind = REFUSALS[refused.reason].reply_kind
        await set_var(session, dialplan.REPLY, dialplan.reply_refused(config.language, prompt, kind=kind))


# -- the wire ---------------------------------------------------------------------------------------

# What an answer's ``error`` says (the names panoramisk gave them, which bridged's logs have carried).
AGI_HANGUP = "AGIResultHangup"  # HANGUP, or a result whose data is (hangup)
AGI_APP_ERROR = "AGIAppError"  # result=-1: the application failed, or the channel hung up
AGI_INVALID_COMMAND = "AGIInvalidCommand"  # 510
AGI_USAGE_ERROR = "AGIUsageError"  # 520
AGI_UNKNOWN_ERROR = "AGIUnknownError"  # any other status (511: a dead channel)


@dataclass(frozen=True, slots=True)
class AgiReply:
    """Asterisk's answer to one command: ``200 result=1 (anna)`` is status 200, result ``("1", "anna")``."""

    status: int
    result: tuple[str, str] = ("", "")
    error: str = ""


_CODE = re.compile(r"(?P<code>^\d*)\s*(?P<response>.*)")
_KEY_VALUE = re.compile(r"(?P<key>\w+)=(?P<value>[^\s]+)\s*(?:\((?P<data>.*)\))*")


def parse_reply(line: str) -> AgiReply:
    """One answer line, as panoramisk 1.4's ``parse_agi_result`` read it (bridged relied on its reading);
    ValueError for a line that is no answer (no status code)."""
    if line == "HANGUP":
        return AgiReply(0, error=AGI_HANGUP)
    match = _CODE.search(line)
    assert match is not None  # every string matches it
    status = int(match["code"])  # ValueError without one
    if status == 200:
        result = ("", "")
        for key, value, data in _KEY_VALUE.findall(match["response"]):
            if data == "hangup":
                return AgiReply(status, error=AGI_HANGUP)
            if key == "result":
                if value == "-1":
                    return AgiReply(status, error=AGI_APP_ERROR)
                result = (value, data)
        return AgiReply(status, result)
    if status == 100:
        return AgiReply(status)
    return AgiReply(
        status,
        error={510: AGI_INVALID_COMMAND, 520: AGI_USAGE_ERROR}.get(status, AGI_UNKNOWN_ERROR),
    )


class AgiSession(asyncio.Protocol):
    """One FastAGI connection: its environment (``headers``), then commands and their answers, one at a
    time. Nothing here logs what Asterisk sent: the environment holds phone numbers."""

    def __init__(self, connected: Callable[[AgiSession], None]) -> None:
        self._connected = connected
        self.headers: dict[str, str] = {}
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._environment_in = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self._connected(self)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        # The blank line may straddle two segments: look from the last byte already in, not from the start.
        start = max(len(buffer) - 1, 0)
        buffer += data
        if not self._environment_in:
            end = buffer.find(b"\n\n", start)
            if end < 0 and len(buffer) <= _HEADER_LIMIT:
                return
            if end < 0 or end > _HEADER_LIMIT:
                self.close()  # more than the limit: not Asterisk
                return
            self._environment_in = True
            self.headers = _parse_environment(bytes(buffer[: end + 2]))
            del buffer[: end + 2]
            self._wake()
        elif len(buffer) > _HEADER_LIMIT:
            self.close()  # no answer is this long: not Asterisk
        elif b"\n" in data:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        await waiter

    # -- the handler's side

    async def environment(self) -> dict[str, str] | None:
        """The AGI environment, once its blank line is in; None for a peer that closed before it or sent
        more than the limit."""
        while not self._environment_in:
            if self._closed:
                return None
            await self._wait()
        return self.headers

    async def command(self, command: str) -> AgiReply:
        """Send one command and read its answer (``100 Trying`` skipped, a ``520-`` usage text read to
        its end); ManagerHungUp when Asterisk ended the session instead (or answered with no status)."""
        name = command.split(" ", 1)[0]
        if self._closed or self._transport is None or self._transport.is_closing():
            raise ManagerHungUp(name)
        self._transport.write(command.encode() + b"\n")
        try:
            line = await self._line()
            reply = parse_reply(line)
            while reply.status == 100:
                line = await self._line()
                reply = parse_reply(line)
            if line.startswith("520-"):
                while not (await self._line()).startswith("520 "):
                    pass
        except (EOFError, ValueError):
            raise ManagerHungUp(name) from None
        return reply

    async def _line(self) -> str:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = self._buffer[:end].decode()
                del self._buffer[: end + 1]
                return line.removesuffix("\r")
            if self._closed:
                raise EOFError
            await self._wait()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _parse_environment(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.rstrip("\r").partition(": ")
        if sep:
            headers[key] = value
    return headers


def _endpoint_from_channel(name: str) -> str:
    match = re.fullmatch(r"PJSIP/(.+)-[0-9a-f]{8}", name)
    return match[1] if match else ""


async def get_var(session: AgiSession, name: str) -> str:
    reply = await session.command(f"GET VARIABLE {name}")
    value, data = reply.result
    return data.strip("()") if value == "1" else ""


async def set_var(session: AgiSession, name: str, value: str) -> None:
    await _command(session, f"SET VARIABLE {name} {_quote(value)}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _command(session: AgiSession, command: str) -> str:
    reply = await _send(session, command)
    if reply.error:
        raise AgiError(f"{command.split()[0]}: {reply.error}")
    return reply.result[0]


async def _send(session: AgiSession, command: str) -> AgiReply:
    reply = await session.command(command)
    if reply.error == AGI_HANGUP or reply.status == 511:
        raise ManagerHungUp(command.split()[0])
    return reply
