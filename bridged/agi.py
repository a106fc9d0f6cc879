"""The FastAGI side of the phone path: who is calling, which order, may the call go ahead.

Dialplan (dialplan/bridged.conf) runs ``AGI(agi://host:port/order,<code>)``; this handler answers with
one channel variable, ``BRIDGED_REPLY``: ``ok|<Stasis() arguments>|<label>`` (the dialplan then sets
the label as the manager's connected line, installs the connected-line interception and enters
Stasis), or ``refused|<prompt>`` (a stock sound to play before hangup). Any failure leaves it unset,
and the dialplan plays its own error prompt: a manager never hangs in silence.
"""

from __future__ import annotations

import asyncio
import logging
import re

from panoramisk.fast_agi import Application, Request

from . import metrics
from .config import Config
from .orders import Refusal
from .service import CallService, Refused

log = logging.getLogger(__name__)

SCRIPT_ORDER = "order"
# Channel variables shared with dialplan/bridged.conf.
# The whole answer in one variable, one AGI round trip: "ok|<Stasis() arguments>|<label>" or
# "refused|<prompt>". The dialplan takes it apart with CUT(); the label is last, so a "|" in it
# (a customer's name) cannot shift the other fields.
VAR_REPLY = "BRIDGED_REPLY"

_HEADER_LIMIT = 64 * 1024
_DIGITS_TIMEOUT_MS = 8000
_MAX_DIGITS = 16


class AgiError(Exception):
    pass


async def _command(request: Request, command: str) -> str:
    reply = await request.send_command(command)
    if "error" in reply:
        raise AgiError(f"{command.split()[0]}: {reply.get('error')}")
    result = reply.get("result")
    if isinstance(result, tuple):
        return str(result[0])
    return "" if result is None else str(result)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def set_var(request: Request, name: str, value: str) -> None:
    await _command(request, f"SET VARIABLE {name} {_quote(value)}")


async def get_var(request: Request, name: str) -> str:
    reply = await request.send_command(f"GET VARIABLE {name}")
    result = reply.get("result")
    if isinstance(result, tuple) and result[0] == "1":
        return result[1].strip("()") if len(result) > 1 else ""
    return ""


def _endpoint_from_channel(name: str) -> str:
    match = re.match(r"^PJSIP/(.+)-[0-9a-f]{8}$", name)
    return match[1] if match else ""


class AgiServer:
    def __init__(self, config: Config, service: CallService) -> None:
        self.config = config
        self.service = service
        self._app = Application()
        self._app.add_route(SCRIPT_ORDER, self.order)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.config.agi.host, self.config.agi.port
        )
        log.info("FastAGI listening on %s:%s", self.config.agi.host, self.config.agi.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # panoramisk's own connection handler spins forever on a peer that closes before the blank
        # line, and logs every AGI header; read the headers here and use panoramisk for commands.
        try:
            headers: dict[str, str] = {}
            size = 0
            while True:
                line = await asyncio.wait_for(reader.readline(), timeout=10)
                size += len(line)
                if not line or size > _HEADER_LIMIT:
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if not text:
                    break
                key, sep, value = text.partition(": ")
                if sep:
                    headers[key] = value
            script = headers.get("agi_network_script", "")
            if script != SCRIPT_ORDER:
                log.warning("FastAGI request for unknown script %r", script[:40])
                return
            request = Request(app=self._app, headers=headers, reader=reader, writer=writer)
            await self.order(request)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.warning("FastAGI connection dropped: %s", type(exc).__name__)
        except Exception:
            log.exception("FastAGI handler failed")
        finally:
            writer.close()

    async def order(self, request: Request) -> None:
        headers = request.headers
        channel_id = headers.get("agi_uniqueid") or None
        # The channel name gives the endpoint without a round trip; CHANNEL(endpoint) is the fallback.
        endpoint = _endpoint_from_channel(headers.get("agi_channel", "")) or await get_var(
            request, "CHANNEL(endpoint)"
        )
        manager = self.service.manager_for_endpoint(endpoint)
        if manager is None:
            refused = await self.service.refuse_unknown_manager(endpoint or "?")
            await self._refused(request, refused)
            return
        code = headers.get("agi_arg_1", "").strip()
        if not code:
            code = await _command(
                request,
                f"GET DATA {self.config.prompts.enter_code} {_DIGITS_TIMEOUT_MS} {_MAX_DIGITS}",
            )
            if code in ("-1", "(timeout)"):
                code = ""
        outcome = await self.service.request(manager, code, direction="phone", manager_channel_id=channel_id)
        if isinstance(outcome, Refused):
            await self._refused(request, outcome)
            return
        # The dialplan sets the label, the manager's connected line and the CONNECTED_LINE_SEND_SUB
        # interception from this answer before the channel enters Stasis.
        stasis_args = f"{self.config.ari.app},order,{outcome.call_id}"
        await set_var(request, VAR_REPLY, f"ok|{stasis_args}|{outcome.label_caller_id}")

    async def _refused(self, request: Request, refused: Refused) -> None:
        metrics.CALLS_REFUSED.inc(refused.reason.value)
        # Overloaded: the dialplan rejects a phone still ringing with 503 rather than answering it for a
        # prompt, which would cost an overloaded Asterisk seconds of media per refused call.
        kind = "overloaded" if refused.reason is Refusal.OVERLOADED else "refused"
        await set_var(request, VAR_REPLY, f"{kind}|{self.service.prompt_for(refused.reason)}")
