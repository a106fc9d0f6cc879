"""Shared fakes for the unit tests: an in-memory ARI client, an in-memory Store, a config, events.

The fakes mirror the real signatures (``AriClient``, ``Store``'s aggregates); ``test_fakes_match`` checks
that they do (and ``mypy tests`` their types), so a renamed parameter in the real code breaks the tests
instead of silently passing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import io
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bridged import dialplan
from bridged.ari import AriConflict, AriNotFound, is_background
from bridged.ari.nodes import current_node
from bridged.config import Budget, Config, Manager
from bridged.configfile import parse_config
from bridged.labels import Label, Labeller
from bridged.limits import COUNTED, Attempt, Tally, tally
from bridged.orders import Order
from bridged.redact import PhoneNumber, RedactingFilter, digits
from bridged.store.attempts import NewAttempt
from bridged.store.base import DatabaseUnavailable
from bridged.store.callers import Sticky
from bridged.store.calls import CallRow
from bridged.store.links import LinkUse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "config" / "bridged.example.yaml"

# The customer's number: it may appear in the originate endpoint and nowhere else.
NUMBER = "+14157654321"
NUMBER_DIGITS = digits(NUMBER)
# Tail of the number, to catch partial leaks (e.g. the number without its country code).
NUMBER_TAIL = NUMBER_DIGITS[-7:]

_real_sleep = asyncio.sleep


def example_data() -> dict[str, Any]:
    """The shipped example config as a dict, with every placeholder (``change-me``, zero hash) replaced."""
    text = (
        EXAMPLE_CONFIG.read_text(encoding="utf-8")
        .replace("change-me", "s3cr3t-value")
        .replace("0" * 64, "a" * 64)
    )
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def make_config(**overrides: Any) -> Config:
    """A valid config; keyword arguments replace top-level fields (``recording=RecordingConfig(...)``)."""
    config = parse_config(copy.deepcopy(example_data()))
    return replace(config, **overrides) if overrides else config


def make_order(order_id: str = "123", manager_id: str | None = "anna", name: str = "Ivan Petrov") -> Order:
    return Order(id=order_id, phone=PhoneNumber(NUMBER), customer_name=name, manager_id=manager_id)


@contextlib.contextmanager
def filtered_logger(name: str, formatter: logging.Formatter) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through bridged's RedactingFilter and ``formatter`` into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(formatter)
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)
        log.propagate = True


def make_label(order_id: str = "123", name: str = "") -> Label:
    """The label the default template gives (what the engine's labeller builds with the example config)."""
    return Labeller().label(order_id, name)


def manager(config: Config, manager_id: str = "anna") -> Manager:
    found = config.manager_by_id(manager_id)
    assert found is not None
    return found


# -- events as Asterisk 22 sends them -----------------------------------------------------------------


def _channel(channel_id: str, state: str, name: str | None = None, number: str = "") -> dict[str, Any]:
    return {
        "id": channel_id,
        "name": name or f"PJSIP/anna-{abs(hash(channel_id)) % 0xFFFFFFFF:08x}",
        "state": state,
        "protocol_id": "",
        "caller": {"name": "", "number": number},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "bridged", "exten": "s", "priority": 3, "app_name": "Stasis", "app_data": ""},
        "creationtime": "2026-01-01T10:00:00.000+0000",
        "language": "en",
    }


def stasis_start(channel_id: str, args: list[str], state: str = "Up", **kw: Any) -> dict[str, Any]:
    return {
        "type": "StasisStart",
        "application": "bridged",
        "timestamp": "2026-01-01T10:00:00.000+0000",
        "args": list(args),
        "channel": _channel(channel_id, state, **kw),
    }


def hangup_request(channel_id: str, cause: int = 16, state: str = "Up", soft: bool = False) -> dict[str, Any]:
    """A hard request carries a Q.850 cause; a soft one (``soft``: ARI's DELETE, a dial's timeout) an
    AST_SOFTHANGUP_* flag as its cause (32: EXPLICIT)."""
    return {
        "type": "ChannelHangupRequest",
        "application": "bridged",
        "cause": cause,
        "soft": soft,
        "channel": _channel(channel_id, state),
    }


def stasis_end(channel_id: str, state: str = "Up") -> dict[str, Any]:
    return {"type": "StasisEnd", "application": "bridged", "channel": _channel(channel_id, state)}


def channel_destroyed(channel_id: str, cause: int = 16, state: str = "Down") -> dict[str, Any]:
    return {
        "type": "ChannelDestroyed",
        "application": "bridged",
        "cause": cause,
        "cause_txt": "",
        "channel": _channel(channel_id, state),
    }


def dial(
    peer_id: str, dialstatus: str, dialstring: str = "+14157654321@carrier", state: str = "Ring"
) -> dict[str, Any]:
    # Originated or made-and-dialled channels: no "caller", the "peer" is the dialled channel; the dial
    # string is the number.
    return {
        "type": "Dial",
        "application": "bridged",
        "dialstatus": dialstatus,
        "dialstring": dialstring,
        "forward": "",
        "peer": _channel(peer_id, state, name="PJSIP/carrier-00000002", number=NUMBER),
    }


def answered(leg_id: str) -> dict[str, Any]:
    """A leg bridged rang picked up. A customer's (``<call>-customer``), originated into [bridged-customer],
    enters the application then: its StasisStart, state Up (its Dial ANSWER, seen by the application
    subscribed to it, comes first: :func:`dial_answered`). A manager's, made in the application and
    dialled (its StasisStart came, in state Down, when it was made): its Dial ANSWER."""
    if leg_id.endswith("-customer"):
        return stasis_start(leg_id, ["customer", leg_id.removesuffix("-customer")], state="Up")
    return dial_answered(leg_id)


def dial_answered(leg_id: str) -> dict[str, Any]:
    """A leg's Dial ANSWER: the answer of one made in Stasis and dialled; for a customer's leg rung from
    the dialplan, only that it picked up (it is not in the application yet)."""
    return dial(leg_id, "ANSWER", state="Up")


def caller_id_changed(channel_id: str, number: str, name: str = "") -> dict[str, Any]:
    # A trunk that trusts the carrier's identity headers (PAI/RPID) puts them into the channel's caller.
    return {
        "type": "ChannelCallerId",
        "application": "bridged",
        "caller_presentation": 0,
        "caller_presentation_txt": "Presentation Allowed, Not Screened",
        "channel": _channel(channel_id, "Up", name="PJSIP/carrier-00000002", number=number)
        | {"caller": {"name": name, "number": number}},
    }


def playback_finished(playback_id: str, channel_id: str) -> dict[str, Any]:
    return {
        "type": "PlaybackFinished",
        "application": "bridged",
        "playback": {
            "id": playback_id,
            "media_uri": "sound:x",
            "target_uri": f"channel:{channel_id}",
            "language": "en",
            "state": "done",
        },
    }


def recording_event(
    kind: str, name: str, bridge_id: str, *, duration: int | None = None, cause: str | None = None
) -> dict[str, Any]:
    """RecordingStarted/Finished/Failed as Asterisk 22 sends them for a bridge recording (measured on the
    rig: a full disk ends one with RecordingFinished, state done, and the whole seconds written)."""
    state = {"RecordingStarted": "recording", "RecordingFinished": "done", "RecordingFailed": "failed"}[kind]
    recording: dict[str, Any] = {
        "name": name,
        "format": "wav",
        "state": state,
        "target_uri": f"bridge:{bridge_id}",
    }
    if duration is not None:
        recording["duration"] = duration
    if cause is not None:
        recording["cause"] = cause
    return {
        "type": kind,
        "timestamp": "2026-01-01T10:00:08.000+0000",
        "recording": recording,
        "asterisk_id": "02:00:00:00:00:01",
        "application": "bridged",
    }


# -- waiting --------------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], object], timeout: float = 2.0, what: str = "") -> None:  # noqa: ASYNC109
    """Poll ``condition`` (yielding to the loop) until it holds (is truthy: a list of what was awaited
    will do); fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (held := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await _real_sleep(0.001)
    # The type lets any value through, an async condition's coroutine too, which is truthy at once.
    assert not inspect.isawaitable(held), f"{what or condition} is async: wait_until cannot await it"


async def settle(rounds: int = 50) -> None:
    """Let every ready task run for a while (for asserting that something did NOT happen)."""
    for _ in range(rounds):
        await _real_sleep(0)


# -- fake ARI -------------------------------------------------------------------------------------------


class FakeAri:
    """Mirrors ``AriClient``'s methods; records ``(method, {arg: value})`` for each call.

    Scripting: ``errors[method]`` raises (an exception, or a callable ``(kwargs) -> exception | None``);
    ``delays[method]`` awaits that many seconds (or a callable ``(kwargs) -> seconds``) before answering;
    ``channels`` is what Asterisk has (list_channels/get_channel/hangup); ``app_channel_ids`` what
    get_application reports. ``on_nodes`` records the node each request went to (bridged.ari.nodes);
    ``endpoint_states[(node, endpoint)]`` is what get_endpoint answers there (default online).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.returned: list[tuple[str, dict[str, Any]]] = []
        self.errors: dict[str, Any] = {}
        self.delays: dict[str, Any] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.app_channel_ids: list[str] = []
        # Recordings Asterisk is making (name -> LiveRecording) and has stored (name -> (format, bytes)).
        self.live_recordings: dict[str, dict[str, Any]] = {}
        self.stored_recordings: dict[str, tuple[str, int]] = {}
        self.gone_bridges: set[str] = set()  # destroy_bridge answers 404 (False) for these
        self._waiting: dict[int, float] = {}  # as AriClient: when each unanswered request was sent
        self._seq = itertools.count()
        self.on_nodes: list[tuple[str, str | None]] = []
        self.endpoint_states: dict[tuple[str | None, str], str] = {}
        # GET /asterisk/info by node: (systemname, startup time).
        self.info: dict[str | None, tuple[str, str]] = {}
        # Global dialplan variables (GET /asterisk/variable): the shipped dialplan's version by default.
        self.globals: dict[str, str] = {dialplan.VERSION_VARIABLE: dialplan.VERSION}
        # Where Asterisk's own events go (the engine's on_event): a channel made by create_channel enters
        # the application at once, and its StasisStart (state Down) is sent, as Asterisk does.
        self.events: Callable[[dict[str, Any]], None] | None = None
        # Made channels in the application (their StasisStart sent): dial answers 409 for the others.
        self.entered: set[str] = set()
        # Variables of the channels Asterisk has (get_variable), set by originate_to_dialplan.
        self.channel_variables: dict[str, dict[str, str]] = {}

    async def _record(self, method: str, **kwargs: Any) -> None:
        self.calls.append((method, kwargs))
        self.on_nodes.append((method, current_node()))
        token = next(self._seq)
        tracked = not is_background()
        if tracked:
            self._waiting[token] = time.monotonic()
        try:
            delay = self.delays.get(method)
            if callable(delay):
                delay = delay(kwargs)
            if delay:
                await _real_sleep(delay)
            error = self.errors.get(method)
            if callable(error) and not isinstance(error, BaseException):
                error = error(kwargs)
            if error is not None:
                raise error
        finally:
            if tracked:
                del self._waiting[token]
        self.returned.append((method, kwargs))

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def oldest_wait(self) -> float:
        for started in self._waiting.values():
            return time.monotonic() - started
        return 0.0

    # queries over the record
    def named(self, method: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == method]

    def methods(self) -> list[str]:
        return [name for name, _ in self.calls]

    def variables(self, channel_id: str) -> list[tuple[str, str]]:
        found = self.named("set_variable")
        return [(kw["variable"], kw["value"]) for kw in found if kw["channel_id"] == channel_id]

    def hung_up(self) -> list[str]:
        return [kw["channel_id"] for kw in self.named("hangup")]

    # AriClient
    async def get_global(self, variable: str) -> str:
        await self._record("get_global", variable=variable)
        return self.globals.get(variable, "")

    async def get_info(self) -> dict[str, Any]:
        await self._record("get_info")
        name, started = self.info.get(current_node(), ("rig", "2026-01-01T10:00:00.000+0000"))
        return {"config": {"name": name}, "status": {"startup_time": started}}

    async def list_channels(self) -> list[dict[str, Any]]:
        await self._record("list_channels")
        return [dict(c) for c in self.channels.values()]

    async def get_channel(self, channel_id: str) -> dict[str, Any] | None:
        await self._record("get_channel", channel_id=channel_id)
        found = self.channels.get(channel_id)
        return None if found is None else dict(found)

    async def create_channel(
        self,
        *,
        endpoint: str,
        app: str,
        app_args: str | None = None,
        channel_id: str | None = None,
        variables: dict[str, str] | None = None,
        originator: str | None = None,
    ) -> dict[str, Any]:
        await self._record(
            "create_channel",
            endpoint=endpoint,
            app=app,
            app_args=app_args,
            channel_id=channel_id,
            variables=variables,
            originator=originator,
        )
        cid = channel_id or f"made-{len(self.calls)}"
        # Asterisk names a channel after its endpoint (an adopter tells whose phone a leg rings by it).
        self.channels[cid] = {"id": cid, "name": f"{endpoint}-{len(self.calls):08x}", "state": "Down"}
        if self.events is not None:
            args = (app_args or "").split(",") if app_args else []
            self.entered.add(cid)
            asyncio.get_running_loop().call_soon(self.events, stasis_start(cid, args, state="Down"))
        return {"id": cid, "state": "Down"}

    async def originate_to_dialplan(
        self,
        *,
        endpoint: str,
        context: str,
        extension: str,
        channel_id: str,
        caller_id: str,
        timeout: int,  # noqa: ASYNC109
        variables: dict[str, str],
        originator: str | None = None,
    ) -> None:
        await self._record(
            "originate_to_dialplan",
            endpoint=endpoint,
            context=context,
            extension=extension,
            channel_id=channel_id,
            caller_id=caller_id,
            timeout=timeout,
            variables=variables,
            originator=originator,
        )
        # Ringing, in no application (no StasisStart until it is answered).
        snapshot = {"id": channel_id, "state": "Down", "dialplan": {"context": context, "app_name": ""}}
        self.channels[channel_id] = snapshot
        self.channel_variables[channel_id] = dict(variables)

    async def get_variable(self, channel_id: str, variable: str) -> str | None:
        await self._record("get_variable", channel_id=channel_id, variable=variable)
        return self.channel_variables.get(channel_id, {}).get(variable)

    async def dial(self, channel_id: str, *, timeout: int | None = None) -> None:  # noqa: ASYNC109
        await self._record("dial", channel_id=channel_id, timeout=timeout)
        if channel_id not in self.channels:
            raise AriNotFound("dial", 404, f"dial {channel_id}: channel not found")
        if channel_id not in self.entered:
            raise AriConflict("dial", 409, "Channel not in Stasis application")

    async def hangup(self, channel_id: str, reason: str = "normal") -> bool:
        await self._record("hangup", channel_id=channel_id, reason=reason)
        return self.channels.pop(channel_id, None) is not None

    async def answer(self, channel_id: str) -> None:
        await self._record("answer", channel_id=channel_id)

    async def ring(self, channel_id: str) -> None:
        await self._record("ring", channel_id=channel_id)

    async def play(
        self,
        channel_id: str,
        media: str | list[str],
        *,
        playback_id: str | None = None,
        lang: str | None = None,
    ) -> dict[str, Any]:
        await self._record("play", channel_id=channel_id, media=media, playback_id=playback_id, lang=lang)
        return {"id": playback_id or "pb", "target_uri": f"channel:{channel_id}", "state": "queued"}

    async def stop_playback(self, playback_id: str) -> bool:
        await self._record("stop_playback", playback_id=playback_id)
        return True

    async def get_endpoint(self, tech: str, resource: str) -> dict[str, Any] | None:
        await self._record("get_endpoint", tech=tech, resource=resource)
        state = self.endpoint_states.get((current_node(), resource), "online")
        return {"technology": tech, "resource": resource, "state": state, "channel_ids": []}

    async def set_variable(self, channel_id: str, variable: str, value: str) -> None:
        await self._record("set_variable", channel_id=channel_id, variable=variable, value=value)

    async def continue_in_dialplan(
        self,
        channel_id: str,
        *,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
        label: str | None = None,
    ) -> None:
        await self._record(
            "continue_in_dialplan",
            channel_id=channel_id,
            context=context,
            extension=extension,
            priority=priority,
            label=label,
        )

    async def create_bridge(self, bridge_id: str, *, type: str = "mixing", name: str | None = None) -> None:
        await self._record("create_bridge", bridge_id=bridge_id, type=type, name=name)

    async def add_channel(
        self,
        bridge_id: str,
        channel_ids: list[str],
        *,
        inhibit_connected_line_updates: bool = True,
        role: str | None = None,
    ) -> None:
        await self._record(
            "add_channel",
            bridge_id=bridge_id,
            channel_ids=list(channel_ids),
            inhibit_connected_line_updates=inhibit_connected_line_updates,
            role=role,
        )

    async def destroy_bridge(self, bridge_id: str) -> bool:
        await self._record("destroy_bridge", bridge_id=bridge_id)
        return bridge_id not in self.gone_bridges

    async def record_bridge(
        self,
        bridge_id: str,
        *,
        name: str,
        format: str,
        if_exists: str = "fail",
        beep: bool = False,
        terminate_on: str = "none",
        max_duration_seconds: int | None = None,
    ) -> dict[str, Any]:
        await self._record(
            "record_bridge",
            bridge_id=bridge_id,
            name=name,
            format=format,
            if_exists=if_exists,
            beep=beep,
            terminate_on=terminate_on,
            max_duration_seconds=max_duration_seconds,
        )
        return {"name": name, "format": format, "state": "recording"}

    async def get_live_recording(self, name: str) -> dict[str, Any] | None:
        await self._record("get_live_recording", name=name)
        return self.live_recordings.get(name)

    async def get_stored_recording(self, name: str) -> dict[str, Any] | None:
        await self._record("get_stored_recording", name=name)
        stored = self.stored_recordings.get(name)
        return None if stored is None else {"name": name, "format": stored[0]}

    async def stored_recording_size(self, name: str) -> int | None:
        await self._record("stored_recording_size", name=name)
        stored = self.stored_recordings.get(name)
        return None if stored is None else stored[1]

    async def transfer_progress(self, channel_id: str, states: str) -> None:
        await self._record("transfer_progress", channel_id=channel_id, states=states)

    async def get_application(self, name: str) -> dict[str, Any]:
        await self._record("get_application", name=name)
        return {"name": name, "channel_ids": list(self.app_channel_ids), "bridge_ids": []}

    async def subscribe(self, app: str, event_sources: list[str]) -> None:
        await self._record("subscribe", app=app, event_sources=list(event_sources))

    async def allow_events(self, app: str, event_types: Iterable[str]) -> dict[str, Any]:
        await self._record("allow_events", app=app, event_types=sorted(event_types))
        return {"name": app, "events_allowed": [{"type": t} for t in sorted(event_types)]}


def not_found(operation: str) -> AriNotFound:
    return AriNotFound(operation, 404, f"ARI {operation} failed: HTTP 404: Channel not found")


# -- fake asyncpg pool -----------------------------------------------------------------------------------


class FakePool:
    """asyncpg's Pool, its statements: each is kept in ``queries`` as (query, args), then raises ``error``
    if one is set (the database away, a refused statement), else answers: ``row`` (fetchrow; fetch a list
    of it), ``value`` (fetchval), "OK" (execute)."""

    def __init__(
        self, row: dict[str, Any] | None = None, *, value: Any = None, error: BaseException | None = None
    ) -> None:
        self.row = row
        self.value = value
        self.error = error
        self.queries: list[tuple[str, tuple[Any, ...]]] = []
        self.closed = False

    def _run(self, query: str, args: tuple[Any, ...]) -> None:
        self.queries.append((query, args))
        if self.error is not None:
            raise self.error

    # The parameters are asyncpg's own (tests/unit/test_fakes_match.py holds them to it).
    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109
        self._run(query, args)
        return "OK"

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109
        record_class: Any = None,
    ) -> list[Any]:
        self._run(query, args)
        return [] if self.row is None else [self.row]

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109
        record_class: Any = None,
    ) -> Any:
        self._run(query, args)
        return self.row

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        self._run(query, args)
        return self.value

    async def close(self) -> None:
        self.closed = True


# -- fake store -----------------------------------------------------------------------------------------


class FakeStore:
    """Mirrors ``Store``'s ``calls``, ``audit``, ``links`` and ``idempotency`` aggregates: call rows in a
    dict (column -> value), audit rows in a list, link and Idempotency-Key rows in dicts. tests/db runs the
    same contract against the real store on PostgreSQL."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.apps: dict[str, str | None] = {}
        self.audits: list[dict[str, Any]] = []
        self.link_rows: dict[str, dict[str, Any]] = {}
        self.calls = FakeCallRows(self)
        self.audit = FakeAuditTrail(self.audits)
        self.links = FakeCallLinks(self)
        self.idempotency = FakeIdempotencyKeys()
        self.sticky = FakeStickyCallers()
        self.attempts = FakeManagerAttempts()

    def add_row(self, *, ari_app: str | None = None, **fields: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": "",
            "order_id": "123",
            "manager_id": "anna",
            "direction": "phone",
            "state": "requested",
            "outcome": None,
            "hangup_cause": None,
            "requested_at": datetime.now(UTC),
            "answered_at": None,
            "ended_at": None,
            "recording_name": None,
            "manager_channel_id": None,
            "customer_channel_id": None,
            "bridge_id": None,
            "ended_by": None,
            "recording_state": None,
            "created_by": None,
            "recording_purged_at": None,
            "node": None,
            "caller_ref": None,
            "canary": False,
            "ring_plan": None,  # JSON text, as open_calls reads it
            "ring_rung": None,
            "caller_key": None,
        }
        unknown = set(fields) - set(row)
        assert not unknown, unknown
        # The table's CHECKs.
        direction = fields.get("direction", "phone")
        assert direction in ("phone", "api", "inbound")
        if direction != "inbound":
            assert fields.get("order_id", "123") is not None and fields.get("manager_id", "anna") is not None
        row.update(fields)
        self.rows[row["id"]] = row
        if ari_app is not None:
            self.apps[row["id"]] = ari_app
        return row


class FakeAuditTrail:
    """Mirrors ``AuditTrail``: rows into ``audits`` (a FakeStore's); ``error``, once set, is what ``add``
    and ``identified_by`` raise (the database away for the audit alone)."""

    def __init__(self, audits: list[dict[str, Any]]) -> None:
        self._audits = audits
        self.error: BaseException | None = None

    async def add(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        reason: str | None = None,
        call_id: str | None = None,
        order_id: str | None = None,
        details: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        if self.error is not None:
            raise self.error
        self._audits.append(
            {
                "actor": actor,
                "action": action,
                "outcome": outcome,
                "reason": reason,
                "call_id": call_id,
                "order_id": order_id,
                "details": details or {},
                # Only a write that passes its own time (a retried one) has one here.
                **({"at": at} if at is not None else {}),
            }
        )

    async def identified_by(self, call_id: str) -> str | None:
        if self.error is not None:
            raise self.error
        found = (
            a["details"].get("identified_by")
            for a in self._audits
            if (a["call_id"], a["action"], a["outcome"]) == (call_id, "call.request", "accepted")
        )
        return next(found, None)


class FakeCallRows:
    """Mirrors ``CallRows`` (the methods the engine and the service use)."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store

    @property
    def _rows(self) -> dict[str, dict[str, Any]]:
        return self._store.rows

    async def insert_audited(
        self,
        *,
        call_id: str,
        order_id: str | None,
        manager_id: str | None,
        direction: str,
        state: str,
        manager_channel_id: str | None,
        ari_app: str | None,
        actor: str,
        details: dict[str, Any],
        customer_channel_id: str | None = None,
        created_by: str | None = None,
        caller_ref: str | None = None,
        node: str | None = None,
        canary: bool = False,
        ring_plan: list[list[str]] | None = None,
        caller_key: str | None = None,
        attempt: NewAttempt | None = None,
    ) -> None:
        assert call_id not in self._rows, "duplicate call id"
        self._store.add_row(
            canary=canary,
            id=call_id,
            order_id=order_id,
            manager_id=manager_id,
            direction=direction,
            state=state,
            manager_channel_id=manager_channel_id,
            customer_channel_id=customer_channel_id,
            created_by=created_by,
            node=node,
            caller_ref=caller_ref,
            ring_plan=None if ring_plan is None else json.dumps(ring_plan),
            ring_rung=None if ring_plan is None else min(len(ring_plan), 1),
            caller_key=caller_key,
        )
        self._store.apps[call_id] = ari_app
        await self._store.audit.add(
            actor=actor,
            action="call.request",
            outcome="accepted",
            call_id=call_id,
            order_id=order_id,
            details=details,
        )
        if attempt is not None:  # in the row's statement: written with it, or not at all
            await self._store.attempts.record(attempt)

    async def insert_refused(
        self,
        *,
        call_id: str,
        order_id: str | None,
        manager_id: str | None,
        direction: str,
        outcome: str,
        at: datetime,
        actor: str,
        details: dict[str, Any],
        created_by: str | None = None,
        caller_ref: str | None = None,
    ) -> None:
        if call_id in self._rows:  # ON CONFLICT DO NOTHING: a retry adds nothing
            return
        self._store.add_row(
            id=call_id,
            order_id=order_id,
            manager_id=manager_id,
            direction=direction,
            state="ended",
            outcome=outcome,
            requested_at=at,
            ended_at=at,
            created_by=created_by,
            caller_ref=caller_ref,
        )
        await self._store.audit.add(
            actor=actor,
            action="call.request",
            outcome="refused",
            reason=outcome,
            call_id=call_id,
            order_id=order_id,
            details=details,
            at=at,
        )

    def _live(self, call_id: str) -> dict[str, Any] | None:
        """The row, unless it has ended (what every write but the recording's skips)."""
        row = self._rows.get(call_id)
        return None if row is None or row["state"] == "ended" else row

    async def set_state(self, call_id: str, state: str) -> None:
        if (row := self._live(call_id)) is not None:
            row["state"] = state

    async def set_node(self, call_id: str, node: str) -> None:
        if (row := self._live(call_id)) is not None:
            row["node"] = node

    async def set_ring_rung(self, call_id: str, rung: int) -> None:
        if (row := self._live(call_id)) is not None:
            row["ring_rung"] = rung

    async def set_manager(self, call_id: str, *, manager_id: str, manager_channel_id: str) -> None:
        if (row := self._live(call_id)) is not None:
            row.update(manager_id=manager_id, manager_channel_id=manager_channel_id)

    async def mark_bridged(
        self, call_id: str, *, answered_at: datetime, bridge_id: str, recording_name: str | None
    ) -> None:
        if (row := self._live(call_id)) is not None:
            row.update(
                state="bridged", answered_at=answered_at, bridge_id=bridge_id, recording_name=recording_name
            )

    async def set_recording_state(self, call_id: str, state: str) -> None:
        if call_id in self._rows:
            self._rows[call_id]["recording_state"] = state

    async def finish(
        self,
        call_id: str,
        *,
        outcome: str,
        hangup_cause: int | None,
        ended_by: str | None,
        ended_at: datetime | None = None,
    ) -> None:
        if (row := self._live(call_id)) is not None:
            row.update(
                state="ended",
                outcome=outcome,
                hangup_cause=hangup_cause,
                ended_by=ended_by,
                ended_at=ended_at or datetime.now(UTC),
                caller_key=None,
            )

    async def finish_audited(
        self,
        call_id: str,
        *,
        outcome: str,
        hangup_cause: int | None,
        ended_by: str | None,
        actor: str,
        order_id: str | None,
        ended_at: datetime | None = None,
    ) -> None:
        if self._live(call_id) is None:
            return
        await self.finish(
            call_id, outcome=outcome, hangup_cause=hangup_cause, ended_by=ended_by, ended_at=ended_at
        )
        await self._store.audit.add(
            actor=actor,
            action="call.end",
            outcome=outcome,
            call_id=call_id,
            order_id=order_id,
            reason=ended_by,
        )

    async def get(self, call_id: str) -> CallRow | None:
        row = self._rows.get(call_id)
        # As the real store: an inbound call's ring plan and caller's key are open_calls' only.
        return (
            None
            if row is None
            else CallRow(**{**row, "ring_plan": None, "ring_rung": None, "caller_key": None})
        )

    async def open_calls(self, ari_app: str) -> list[CallRow]:
        # Rows a test adds directly (add_row without ari_app) belong to whichever app asks.
        rows = [
            r
            for r in self._rows.values()
            if r["state"] != "ended" and self._store.apps.get(r["id"], ari_app) in (ari_app, None)
        ]
        rows.sort(key=lambda r: r["requested_at"])
        return [CallRow(**r) for r in rows]


class FakeCallLinks:
    """Mirrors ``CallLinks`` (rows never expire here: a test that needs that runs on PostgreSQL)."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store

    @staticmethod
    def _use(row: dict[str, Any]) -> LinkUse:
        return LinkUse(
            order_id=row["order_id"],
            manager_id=row["manager_id"],
            call_id=row["call_id"],
            status=row["status"],
            response=copy.deepcopy(row["response"]),
        )

    async def claim(
        self, sig_hash: str, *, order_id: str, manager_id: str, expires_at: datetime, capability_hash: str
    ) -> LinkUse | None:
        rows = self._store.link_rows
        if sig_hash in rows:
            return self._use(rows[sig_hash])
        assert all(r["capability_hash"] != capability_hash for r in rows.values()), "UNIQUE"
        rows[sig_hash] = {
            "order_id": order_id,
            "manager_id": manager_id,
            "expires_at": expires_at,
            "capability_hash": capability_hash,
            "call_id": None,
            "status": None,
            "response": None,
        }
        return None

    async def settle(self, sig_hash: str, *, status: int, response: Any, call_id: str | None) -> None:
        if sig_hash in self._store.link_rows:
            self._store.link_rows[sig_hash].update(
                status=status, response=copy.deepcopy(response), call_id=call_id
            )

    async def release(self, sig_hash: str) -> None:
        row = self._store.link_rows.get(sig_hash)
        if row is not None and row["status"] is None:
            del self._store.link_rows[sig_hash]

    async def find(self, sig_hash: str) -> LinkUse | None:
        row = self._store.link_rows.get(sig_hash)
        return None if row is None else self._use(row)

    async def by_capability(self, capability_hash: str) -> LinkUse | None:
        for row in self._store.link_rows.values():
            if row["capability_hash"] == capability_hash:
                return self._use(row)
        return None


class FakeIdempotencyKeys:
    """Mirrors ``IdempotencyKeys``: (principal, key) -> the row's request_hash, status and response (keys
    never expire here: a test that needs that runs on PostgreSQL)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    async def claim(
        self, principal: str, key: str, request_hash: str, *, keep_hours: int
    ) -> tuple[bool, str | None, int | None, Any]:
        row = self.rows.get((principal, key))
        if row is None:
            self.rows[(principal, key)] = {"request_hash": request_hash, "status": None, "response": None}
            return True, None, None, None
        return False, row["request_hash"], row["status"], copy.deepcopy(row["response"])

    async def remember(self, principal: str, key: str, status: int, response: Any) -> None:
        row = self.rows.get((principal, key))
        if row is not None:
            row.update(status=status, response=copy.deepcopy(response))

    async def release(self, principal: str, key: str) -> None:
        row = self.rows.get((principal, key))
        if row is not None and row["status"] is None:
            del self.rows[(principal, key)]


class FakeStickyCallers:
    """Mirrors ``StickyCallers``: caller key -> Sticky."""

    def __init__(self) -> None:
        self.rows: dict[str, Sticky] = {}

    async def last_talked(self, caller_key: str, *, since: datetime) -> Sticky | None:
        found = self.rows.get(caller_key)
        return found if found is not None and found.last_at >= since else None

    async def remember(
        self, caller_key: str, *, manager_id: str, order_id: str | None, at: datetime, forget_before: datetime
    ) -> None:
        for key in [k for k, row in self.rows.items() if row.last_at < forget_before and k != caller_key]:
            del self.rows[key]
        found = self.rows.get(caller_key)
        if found is None or found.last_at <= at:
            self.rows[caller_key] = Sticky(manager_id, order_id, at)


class FakeManagerAttempts:
    """Mirrors ``ManagerAttempts``: attempts in a list, alerts by (manager, budget)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.alerts: dict[tuple[str, str], datetime] = {}

    async def window(
        self, manager_id: str, seconds: int, budget: Budget, code: str
    ) -> tuple[datetime, Tally]:
        now = datetime.now(UTC)
        found = [
            Attempt(r["at"], r["outcome"], r["order_id"])
            for r in self.rows
            if r["manager_id"] == manager_id and r["outcome"] in COUNTED
        ]
        return now, tally(found, now=now, window=timedelta(seconds=seconds), budget=budget, code=code)

    async def record(self, attempt: NewAttempt) -> None:
        self.rows.append(
            {
                "manager_id": attempt.manager_id,
                "outcome": attempt.outcome,
                "order_id": attempt.order_id,
                "code_length": attempt.keyed.length,
                "code_shape": attempt.keyed.shape,
                "at": attempt.at,
            }
        )

    async def alert_due(self, manager_id: str, budget: str, seconds: int) -> bool:
        now = datetime.now(UTC)
        last = self.alerts.get((manager_id, budget))
        if last is not None and last > now - timedelta(seconds=seconds):
            return False
        self.alerts[(manager_id, budget)] = now
        return True


class _Outage:
    """An aggregate whose every coroutine method raises DatabaseUnavailable while its store is down."""

    def __init__(self, store: DownStore, aggregate: object) -> None:
        self._store = store
        self._aggregate = aggregate

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._aggregate, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(found) or not self._store.down:
            return found

        async def unavailable(*args: Any, **kwargs: Any) -> Any:
            self._store.refused.append(name)
            raise DatabaseUnavailable("ConnectionRefusedError")

        return unavailable


class DownStore(FakeStore):
    """A FakeStore whose every method raises DatabaseUnavailable while ``down`` is set (bridged's
    PostgreSQL away), as the real Store does for any outage."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused: list[str] = []
        self.calls = _Outage(self, self.calls)  # type: ignore[assignment]
        self.audit = _Outage(self, self.audit)  # type: ignore[assignment]
        self.links = _Outage(self, self.links)  # type: ignore[assignment]
        self.idempotency = _Outage(self, self.idempotency)  # type: ignore[assignment]
        self.sticky = _Outage(self, self.sticky)  # type: ignore[assignment]
        self.attempts = _Outage(self, self.attempts)  # type: ignore[assignment]
