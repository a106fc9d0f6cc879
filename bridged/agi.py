"""The FastAGI side of the phone path: who is calling, which order, may the call go ahead.

Dialplan (dialplan/bridged.conf) runs ``AGI(agi://host:port/order,<code>)``; this handler answers with
one channel variable (the contract is bridged.dialplan). Any failure leaves it unset, and the dialplan
plays its own error prompt: a manager never hangs in silence.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from panoramisk.fast_agi import Application, Request

from . import dialplan
from .config import ConfigHolder
from .outcomes import Refusal, refusal_prompt
from .service import CallService, Refused

log = logging.getLogger(__name__)

_HEADER_LIMIT = 64 * 1024
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
        self._app = Application()
        self._app.add_route(dialplan.AGI_SCRIPT, self.order)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.config.current.agi.host, self.config.current.agi.port, limit=_HEADER_LIMIT
        )
        log.info("FastAGI listening on %s:%s", self.config.current.agi.host, self.config.current.agi.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # panoramisk's own connection handler spins forever on a peer that closes before the blank
        # line, and logs every AGI header; read the headers here and use panoramisk for commands.
        try:
            headers = await _read_headers(reader)
            if headers is None:
                return
            script = headers.get("agi_network_script", "")
            if script != dialplan.AGI_SCRIPT:
                log.warning("FastAGI request for unknown script %r", script[:40])
                return
            request = Request(app=self._app, headers=headers, reader=reader, writer=writer)
            await self.order(request)
        except ManagerHungUp as exc:
            # The manager gave up while bridged was answering: an ordinary end, no error.
            log.info("FastAGI: the manager hung up during %s", exc)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.warning("FastAGI connection dropped: %s", type(exc).__name__)
        except Exception:
            log.exception("FastAGI handler failed")
        finally:
            writer.close()

    async def order(self, request: Request) -> None:
        headers = request.headers
        # The channel name gives the endpoint without a round trip; CHANNEL(endpoint) is the fallback.
        endpoint = _endpoint_from_channel(headers.get("agi_channel", "")) or await get_var(
            request, "CHANNEL(endpoint)"
        )

        async def read_code() -> str | None:
            try:
                return await self._read_code(request)
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
            await self._refused(request, placed)
            return
        # The dialplan sets the label, the manager's connected line and the CONNECTED_LINE_SEND_SUB
        # interception from this answer before the channel enters Stasis.
        config = self.config.current
        stasis_args = f"{config.ari.app},{dialplan.app_args(dialplan.Leg.ORDER, placed.call_id)}"
        reply = dialplan.reply_ok(config.language, stasis_args, placed.label.caller_id)
        await set_var(request, dialplan.REPLY, reply)

    async def _read_code(self, request: Request) -> str:
        """The order code keyed in after ``*77`` (``""`` when none came in time).

        Asterisk answers GET DATA with ``result=-1`` when the channel hung up during the prompt or the
        wait, then sends ``HANGUP``; -1 also comes from a prompt that failed on a live channel, which
        a CHANNEL STATUS tells apart (a dead channel answers ``HANGUP`` or 511 to it).
        """
        config = self.config.current
        # The prompt comes before the answer that sets the channel's language: set here, unless the
        # channel has it already (its endpoint's language=; Asterisk says which in agi_language).
        if request.headers.get("agi_language") != config.language:
            await set_var(request, dialplan.CHANNEL_LANGUAGE, config.language)
        reply = await _send(
            request, f"GET DATA {config.prompts.enter_code} {_DIGITS_TIMEOUT_MS} {_MAX_DIGITS}"
        )
        if reply.get("error") == "AGIAppError":  # result=-1
            await _send(request, "CHANNEL STATUS")
            raise AgiError("GET DATA failed on a live channel (is the enter_code prompt installed?)")
        if "error" in reply:
            raise AgiError(f"GET DATA: {reply.get('error')}")
        result = reply.get("result")
        code = str(result[0]) if isinstance(result, tuple) else ""
        return "" if code in ("-1", "(timeout)") else code

    async def _refused(self, request: Request, refused: Refused) -> None:
        # Unavailable or overloaded: the dialplan asks the next daemon, if any. Overloaded at the last one:
        # the dialplan rejects a phone still ringing with 503 rather than answering it for a prompt, which
        # would cost an overloaded Asterisk seconds of media per refused call.
        config = self.config.current
        prompt = refusal_prompt(config.prompts, refused.reason)
        kind = _REPLY_KIND.get(refused.reason, dialplan.REFUSED)
        await set_var(request, dialplan.REPLY, dialplan.reply_refused(config.language, prompt, kind=kind))


# The refusals the dialplan may take to another daemon: this one's own state, not a decision on the call.
_REPLY_KIND = {Refusal.UNAVAILABLE: dialplan.UNAVAILABLE, Refusal.OVERLOADED: dialplan.OVERLOADED}


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """The AGI environment up to its blank line, read at once (one await, not one per line: about 25
    lines per call); None for a peer that closed before the blank line or sent more than the limit."""
    try:
        async with asyncio.timeout(10):
            block = await reader.readuntil(b"\n\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.rstrip("\r").partition(": ")
        if sep:
            headers[key] = value
    return headers


def _endpoint_from_channel(name: str) -> str:
    match = re.fullmatch(r"PJSIP/(.+)-[0-9a-f]{8}", name)
    return match[1] if match else ""


async def get_var(request: Request, name: str) -> str:
    reply = await request.send_command(f"GET VARIABLE {name}")
    result = reply.get("result")
    if isinstance(result, tuple) and result[0] == "1":
        return result[1].strip("()") if len(result) > 1 else ""
    return ""


async def set_var(request: Request, name: str, value: str) -> None:
    await _command(request, f"SET VARIABLE {name} {_quote(value)}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _command(request: Request, command: str) -> str:
    reply = await _send(request, command)
    if "error" in reply:
        raise AgiError(f"{command.split()[0]}: {reply.get('error')}")
    result = reply.get("result")
    if isinstance(result, tuple):
        return str(result[0])
    return "" if result is None else str(result)


async def _send(request: Request, command: str) -> dict[str, Any]:
    try:
        reply: dict[str, Any] = await request.send_command(command)
    except ValueError:
        # panoramisk cannot parse the empty read of a closed connection: Asterisk ended the session.
        raise ManagerHungUp(command.split()[0]) from None
    except ConnectionError as exc:
        raise ManagerHungUp(command.split()[0]) from exc
    if reply.get("error") == "AGIResultHangup" or reply.get("status_code") == 511:
        raise ManagerHungUp(command.split()[0])
    return reply
