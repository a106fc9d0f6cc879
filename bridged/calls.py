"""Masked calls driven through ARI: an explicit state machine per call.

A call links a manager's channel and a customer's channel (originated here, on the trunk) in a
mixing bridge. The customer's number is used exactly once, in the trunk dial string of the
originate request; everything a manager's channel can see is an order label.

Events for one call are handled in order by that call's own worker task: the websocket reader
only enqueues, so a slow call never stalls the others.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from . import dialplan, metrics
from .ari import AriClient, AriError, AriNotFound, AriUnavailable, background_requests
from .config import Config, ConfigHolder, Manager
from .labels import Label, Labeller
from .orders import Order
from .outcomes import Outcome, manager_outcome_for_unanswered, outcome_for_unanswered, outcome_prompt
from .recording_state import END_EVENTS as RECORDING_END_EVENTS
from .recording_state import EVENTS as RECORDING_EVENTS
from .recording_state import RecordingState, StoredFile, judge_end_event, judge_file
from .redact import redact
from .store import CallRow, Store

log = logging.getLogger(__name__)

# A hangup Asterisk did not answer is retried after these delays (seconds), about 4 minutes in all.
HANGUP_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 60.0, 60.0)
# Writing a call's row when bridged's database did not take it: these waits, then once a minute.
ROW_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
# How long a stopping daemon gives those writes a last chance.
LAST_ROW_WRITES_SECONDS = 2.0
# How often channels in our application that belong to no call are looked for.
STRAY_SWEEP_SECONDS = 60.0
# After a call, how long its recording's last event is waited for (Asterisk sends it as the bridge goes,
# within milliseconds) before the stored file is judged instead.
RECORDING_SETTLE_SECONDS = 5.0

# The ARI events the engine acts on; Asterisk is asked to send its application nothing else.
EVENT_TYPES = frozenset(
    {
        "StasisStart",
        "StasisEnd",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "Dial",
        "PlaybackFinished",
        "ChannelTransfer",
        "ChannelCallerId",
        *RECORDING_EVENTS,
    }
)


class CallState(StrEnum):
    REQUESTED = "requested"
    RINGING_MANAGER = "ringing_manager"
    RINGING_CUSTOMER = "ringing_customer"
    ANNOUNCING = "announcing"
    BRIDGED = "bridged"
    REFUSING = "refusing"  # a prompt is being played to the manager before hangup
    ENDED = "ended"


TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.REQUESTED: frozenset(
        {CallState.RINGING_MANAGER, CallState.RINGING_CUSTOMER, CallState.REFUSING, CallState.ENDED}
    ),
    CallState.RINGING_MANAGER: frozenset({CallState.RINGING_CUSTOMER, CallState.REFUSING, CallState.ENDED}),
    CallState.RINGING_CUSTOMER: frozenset(
        {CallState.ANNOUNCING, CallState.BRIDGED, CallState.REFUSING, CallState.ENDED}
    ),
    CallState.ANNOUNCING: frozenset({CallState.BRIDGED, CallState.REFUSING, CallState.ENDED}),
    CallState.BRIDGED: frozenset({CallState.ENDED}),
    CallState.REFUSING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


class InvalidTransition(Exception):
    pass


class ManagerLegFailed(Exception):
    """The manager's phone could not be called (HTTP path)."""


def manager_leg_id(call_id: str) -> str:
    """The channel id of an HTTP call's manager leg (bridged originates it)."""
    return f"{call_id}-manager"


def customer_leg_id(call_id: str) -> str:
    """The channel id of a call's customer leg: known, and in the row, before the leg exists."""
    return f"{call_id}-customer"


def new_call_id() -> str:
    """A random call id that the log redaction leaves readable.

    About half of all hex UUIDs hold a run of 7+ digits, which the phone-number mask would blank out
    in every log line about that call; those are drawn again.
    """
    while True:
        candidate = uuid.uuid4().hex
        if redact(candidate) == candidate:
            return candidate


def caller_number(value: str) -> str:
    """The number part of a caller id string (``"Name" <number>`` or a bare number)."""
    match = re.search(r"<([^<>]*)>\s*$", value)
    return (match[1] if match else value).strip()


@dataclass
class Call:
    id: str
    manager: Manager
    order_id: str
    direction: str
    order: Order | None  # None for a call adopted after a restart: its number is never needed again
    # What the manager's phone is shown as the other party (bridged.labels; the name is not kept in
    # the row, so an adopted call's label is the order alone).
    label: Label = field(kw_only=True)
    state: CallState = CallState.REQUESTED
    manager_channel_id: str | None = None
    customer_channel_id: str | None = None
    bridge_id: str | None = None
    recording_name: str | None = None
    outcome: Outcome | None = None
    hangup_cause: int | None = None
    dialstatus: str | None = None
    ended_by: str | None = None
    requested_at: float = field(default_factory=time.monotonic)
    answered_at: datetime | None = None
    manager_up: bool = False
    prompt_playback_id: str | None = None
    announcement_playback_id: str | None = None
    ringback_playback_id: str | None = None
    manager_cause: int | None = None
    # The recording's clock (host time): from the answer to its request (an adopted call: from the
    # answer) to bridged stopping it; and what it was judged to hold, once known.
    recording_started_at: datetime | None = None
    recording_stopped_at: datetime | None = None
    recording_state: RecordingState | None = None
    # The customer leg's caller id was changed by the trunk (a carrier's identity headers) before the
    # leg entered Stasis: the label goes back in before the bridge.
    customer_caller_id_dirty: bool = False
    # Legs Asterisk already hangs up (ChannelHangupRequest/ChannelDestroyed seen): not hung up again.
    gone: set[str] = field(default_factory=set)
    # Resolved once the manager leg of an HTTP-triggered call has been originated (or not).
    started: asyncio.Future[None] | None = None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    # True while the worker handles an event: a SIGTERM drain waits for the step to finish.
    handling: bool = False
    # Writes to the call's row the database did not take yet, oldest first (see CallEngine._write_row).
    unwritten: collections.deque[tuple[str, Callable[[], Awaitable[None]]]] = field(
        default_factory=collections.deque
    )

    @property
    def label_caller_id(self) -> str:
        return self.label.caller_id


@dataclass
class PendingCall:
    """A call accepted by the services, waiting for its manager channel to enter Stasis."""

    call_id: str
    order: Order
    manager: Manager
    direction: str
    manager_channel_id: str | None
    label: Label = field(kw_only=True)
    created: float = field(default_factory=time.monotonic)

    @property
    def label_caller_id(self) -> str:
        return self.label.caller_id


def _recording_state(value: str | None) -> RecordingState | None:
    try:
        return None if value is None else RecordingState(value)
    except ValueError:
        return None


def _channel_id(event: dict[str, Any], key: str = "channel") -> str | None:
    channel = event.get(key)
    if isinstance(channel, dict):
        value = channel.get("id")
        return value if isinstance(value, str) else None
    return None


def _transferer(event: dict[str, Any]) -> str | None:
    """The channel that sent the REFER of a ChannelTransfer event."""
    referred_by = event.get("referred_by")
    if not isinstance(referred_by, dict):
        return None
    return _channel_id(referred_by, "source_channel")


def _target_channel(event: dict[str, Any], key: str) -> str | None:
    target = (event.get(key) or {}).get("target_uri", "")
    if isinstance(target, str) and target.startswith("channel:"):
        return target[len("channel:") :]
    return None


class CallEngine:
    """Owns every live call of this daemon and routes ARI events to them."""

    PENDING_TTL = 60.0

    def __init__(
        self,
        config: ConfigHolder,
        ari: AriClient,
        store: Store,
        *,
        is_connected: Callable[[], bool],
    ) -> None:
        self._config = config
        self.ari = ari
        self.store = store
        self.is_connected = is_connected
        self._shop_number = caller_number(self.config.trunk.caller_id)
        # The one label builder: the service labels the calls it accepts with it too.
        self.labeller = Labeller(self.config.labels.template, self.config.labels.name_style)
        self.calls: dict[str, Call] = {}
        self._by_channel: dict[str, Call] = {}
        # Calls by the name of their recording, until its end has been judged (which may be after the call).
        self._by_recording: dict[str, Call] = {}
        # Ended calls whose worker still waits for their recording's last event.
        self._settling: dict[str, Call] = {}
        self._pending: dict[str, PendingCall] = {}
        self._orphans: set[asyncio.Task[Any]] = set()
        # Hangups being retried: cancelled at shutdown (the next start's reconcile hangs up strays).
        self._retries: set[asyncio.Task[None]] = set()
        # Calls whose row has writes the database did not take yet (kept after the call is forgotten).
        self._unwritten: dict[str, Call] = {}
        self._seq = itertools.count(1)
        self.reconnects = 0
        # Called with (call, state) after every persisted state change, e.g. to queue webhooks.
        self.listeners: list[Callable[[Call, CallState], None]] = []

    @property
    def config(self) -> Config:
        return self._config.current

    # -- intake ----------------------------------------------------------------------------------

    def expect(self, pending: PendingCall) -> None:
        self._pending[pending.call_id] = pending
        if pending.direction == "phone":
            asyncio.get_running_loop().call_later(self.PENDING_TTL, self._expire_pending, pending.call_id)

    def _expire_pending(self, call_id: str) -> None:
        """The manager hung up between the FastAGI check and Stasis: close the row."""
        pending = self._pending.pop(call_id, None)
        if pending is None:
            return
        log.info("call %s: the manager's channel never reached Stasis", call_id)
        self._background(
            self.store.finish(
                call_id, outcome=Outcome.MANAGER_ABANDONED.value, hangup_cause=None, ended_by="manager"
            )
        )

    async def start_api_call(self, pending: PendingCall) -> Call:
        """HTTP path: ring the manager first; the customer is dialled once the manager answers.

        Returns when the manager leg has been originated; raises :class:`ManagerLegFailed` if it
        could not be.
        """
        call = Call(
            id=pending.call_id,
            manager=pending.manager,
            order_id=pending.order.id,
            direction=pending.direction,
            order=pending.order,
            label=pending.label,
            manager_channel_id=manager_leg_id(pending.call_id),
        )
        self._pending.pop(pending.call_id, None)
        call.started = asyncio.get_running_loop().create_future()
        metrics.CALLS_STARTED.inc()
        self._register(call)
        call.queue.put_nowait({"type": "OriginateManager"})
        await asyncio.shield(call.started)
        return call

    def terminate(self, call_id: str) -> bool:
        """End a live call on request (HTTP DELETE); False if this daemon has no such live call."""
        call = self.calls.get(call_id)
        if call is None or call.state is CallState.ENDED:
            return False
        call.queue.put_nowait({"type": "Terminate"})
        return True

    def on_event(self, event: dict[str, Any]) -> None:
        """Called by the websocket reader for every event; never blocks."""
        kind = event.get("type")
        if kind == "StasisStart":
            legs = dialplan.parse_app_args(event.get("args") or [])
            channel_id = _channel_id(event)
            if legs is not None and legs[0] is dialplan.Leg.ORDER and channel_id:
                self._start_phone_call(legs[1], channel_id, event)
                return
        call = self._route(event)
        if call is not None:
            call.queue.put_nowait(event)
        elif kind == "StasisStart":
            channel_id = _channel_id(event)
            if channel_id:
                log.warning("channel %s entered Stasis without a call; hanging it up", channel_id)
                self._background(self._hangup_quietly(channel_id))

    def _route(self, event: dict[str, Any]) -> Call | None:
        recording = event.get("recording")
        if isinstance(recording, dict):
            return self._by_recording.get(str(recording.get("name")))
        for channel_id in (
            _channel_id(event),
            _channel_id(event, "peer"),
            _target_channel(event, "playback"),
            _transferer(event),
        ):
            if channel_id and channel_id in self._by_channel:
                return self._by_channel[channel_id]
        return None

    def _start_phone_call(self, call_id: str, channel_id: str, event: dict[str, Any]) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is None or (pending.manager_channel_id and pending.manager_channel_id != channel_id):
            log.warning("call %s: no pending request for channel %s; refusing", call_id, channel_id)
            self._background(self._refuse_stray(channel_id))
            return
        call = Call(
            id=pending.call_id,
            manager=pending.manager,
            order_id=pending.order.id,
            direction=pending.direction,
            order=pending.order,
            label=pending.label,
            manager_channel_id=channel_id,
        )
        call.manager_up = (event.get("channel") or {}).get("state") == "Up"
        metrics.CALLS_STARTED.inc()
        self._register(call)
        call.queue.put_nowait(event)

    def _register(self, call: Call) -> None:
        self.calls[call.id] = call
        for channel_id in (call.manager_channel_id, call.customer_channel_id):
            if channel_id:
                self._by_channel[channel_id] = call
        call.task = asyncio.get_running_loop().create_task(self._worker(call), name=f"call-{call.id}")

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _hangup_quietly(self, channel_id: str, *, may_be_gone: bool = False) -> None:
        """Hang a channel up; failures are logged, never raised (at debug when it may be gone already).

        A hangup Asterisk did not answer (overloaded, restarting) is retried in the background: lost,
        it would leave a customer's line up with nobody on the other end.
        """
        try:
            await self.ari.hangup(channel_id)
        except AriUnavailable as exc:
            log.warning("hangup of %s failed: %s; retrying", channel_id, exc)
            retry = asyncio.get_running_loop().create_task(self._retry_hangup(channel_id))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)
        except AriError as exc:
            log.log(
                logging.DEBUG if may_be_gone else logging.WARNING, "hangup of %s failed: %s", channel_id, exc
            )

    async def _retry_hangup(self, channel_id: str) -> None:
        for attempt, delay in enumerate(HANGUP_RETRY_DELAYS, start=1):
            await asyncio.sleep(delay)
            try:
                with background_requests():  # not a sign that calls being set up wait
                    await self.ari.hangup(channel_id)
            except AriNotFound:
                return
            except AriUnavailable:
                continue
            except AriError as exc:
                log.warning("hangup of %s failed: %s", channel_id, exc)
                return
            log.info("hangup of %s done on retry %d", channel_id, attempt)
            return
        log.error(
            "hangup of %s failed %d more times; the stray sweep will try again",
            channel_id,
            len(HANGUP_RETRY_DELAYS),
        )

    async def sweep_strays_forever(self, interval: float = STRAY_SWEEP_SECONDS) -> None:
        """Every ``interval`` seconds, :meth:`sweep_strays` (runs for the daemon's lifetime)."""
        suspects: set[str] = set()
        while True:
            await asyncio.sleep(interval)
            if not self.is_connected():
                suspects = set()  # the reconcile after the reconnect sweeps
                continue
            try:
                with background_requests():
                    suspects = await self.sweep_strays(suspects)
            except AriError as exc:
                log.debug("stray sweep skipped: %s", exc)

    async def sweep_strays(self, suspects: set[str]) -> set[str]:
        """Hang up the channels in our application that belong to no call; returns the next suspects.

        Such a channel is one whose hangup was lost for good, or a customer leg Asterisk created after
        its originate had timed out on our side. A channel is hung up only when two sweeps in a row
        find it without a call, so a channel whose StasisStart is on its way is never touched.
        """
        app = await self.ari.get_application(self.config.ari.app)
        unowned = {c for c in app.get("channel_ids", []) if c not in self._by_channel}
        for channel_id in sorted(unowned & suspects):
            log.warning("channel %s in our app belongs to no call; hanging it up", channel_id)
            metrics.STRAY_CHANNELS.inc()
            await self._hangup_quietly(channel_id)
        return unowned - suspects

    async def _refuse_stray(self, channel_id: str) -> None:
        try:
            await self.ari.answer(channel_id)
            await self.ari.play(channel_id, self._media(self.config.prompts.unavailable))
            await asyncio.sleep(3)
        except AriError:
            pass
        await self._hangup_quietly(channel_id)

    # -- the worker ------------------------------------------------------------------------------

    async def _worker(self, call: Call) -> None:
        while call.state is not CallState.ENDED:
            event = await call.queue.get()
            call.handling = True
            try:
                await self._handle(call, event)
            except AriUnavailable as exc:
                # Asterisk down or overloaded: expected in operation, one line without a traceback.
                log.warning(
                    "call %s: aborted handling %s in state %s: %s",
                    call.id,
                    event.get("type"),
                    call.state,
                    exc,
                )
                await self._abort(call)
            except Exception:
                log.exception(
                    "call %s: failed handling %s in state %s", call.id, event.get("type"), call.state
                )
                await self._abort(call)
            finally:
                call.handling = False
        self._forget(call)
        if call.recording_name is not None and call.recording_state is None:
            await self._settle_recording(call)

    async def _handle(self, call: Call, event: dict[str, Any]) -> None:
        kind = event.get("type")
        channel_id = _channel_id(event)
        is_manager = channel_id is not None and channel_id == call.manager_channel_id
        is_customer = channel_id is not None and channel_id == call.customer_channel_id

        if kind == "StasisStart" and is_manager and call.state is CallState.REQUESTED:
            await self._on_manager_ready(call)
        elif kind == "StasisStart" and is_manager and call.state is CallState.RINGING_MANAGER:
            call.manager_up = True
            await self._on_manager_ready(call)
        elif kind == "OriginateManager":
            await self._originate_manager(call)
        elif kind == "Terminate":
            await self._terminate(call)
        elif kind == "StasisStart" and is_customer:
            await self._on_customer_answered(call)
        elif kind == "Dial" and _channel_id(event, "peer") == call.customer_channel_id:
            # Dial events carry the dial string (the number): keep only the status.
            status = event.get("dialstatus")
            if status:
                call.dialstatus = str(status)
        elif kind == "PlaybackFinished":
            playback_id = (event.get("playback") or {}).get("id")
            if playback_id and playback_id == call.announcement_playback_id:
                call.announcement_playback_id = None
                if call.state is CallState.ANNOUNCING:
                    await self._bridge(call)
            elif playback_id and playback_id == call.prompt_playback_id:
                call.prompt_playback_id = None
                await self._hangup_quietly(call.manager_channel_id or "")
        elif kind in ("ChannelHangupRequest", "StasisEnd", "ChannelDestroyed") and (
            is_manager or is_customer
        ):
            if kind == "ChannelDestroyed" or (kind == "ChannelHangupRequest" and not event.get("soft")):
                # Asterisk hangs this leg up itself. Not so after StasisEnd (a channel leaving
                # Stasis may stay up) or a soft hangup request (it may only interrupt the channel).
                call.gone.add(channel_id or "")
            cause = event.get("cause")
            if isinstance(cause, int) and is_customer and call.hangup_cause is None:
                call.hangup_cause = cause
            if isinstance(cause, int) and is_manager and call.manager_cause is None:
                call.manager_cause = cause
                if call.state is CallState.RINGING_MANAGER:
                    call.hangup_cause = cause
            await self._on_leg_gone(call, "manager" if is_manager else "customer", kind or "")
        elif kind == "Reconcile":
            await self._on_reconcile(call, event["alive"], event["states"])
        elif kind == "ChannelCallerId" and is_customer:
            await self._on_customer_caller_id(call, event)
        elif kind == "ChannelTransfer":
            # A new REFER comes without a state; the progress we report comes back with one.
            if not event.get("state"):
                await self._refuse_transfer(call, _transferer(event) or "")
        elif kind in RECORDING_END_EVENTS:
            await self._on_recording_end(call, event)
        elif kind == "RecordingStarted":
            log.debug("call %s: recording %s started", call.id, call.recording_name)

    # -- steps -----------------------------------------------------------------------------------

    def _transition(self, call: Call, new: CallState) -> None:
        if new not in TRANSITIONS[call.state]:
            raise InvalidTransition(f"{call.state} -> {new}")
        log.info("call %s state %s -> %s", call.id, call.state, new)
        call.state = new
        for listener in self.listeners:
            try:
                listener(call, new)
            except Exception:
                log.exception("call %s: state listener failed", call.id)

    async def _persist_state(self, call: Call) -> None:
        state = call.state.value
        await self._write_row(call, f"state {state}", lambda: self.store.set_state(call.id, state))

    async def _write_row(self, call: Call, what: str, write: Callable[[], Awaitable[None]]) -> None:
        """Write to the call's row without ever letting the database decide the call's fate.

        A write the database does not take (bridged's PostgreSQL away for a moment) is kept and retried
        in the background, in order with the call's later writes, while the call goes on: a bridged
        call is not cut off because its bookkeeping failed. Every write is idempotent, so a retry after
        an answer lost on the way is harmless."""
        if call.unwritten:  # earlier writes are still waiting: this one goes after them
            call.unwritten.append((what, write))
            return
        try:
            await write()
        except Exception as exc:
            log.warning("call %s: %s not written (%s); retrying", call.id, what, type(exc).__name__)
            call.unwritten.append((what, write))
            self._unwritten[call.id] = call
            retry = asyncio.get_running_loop().create_task(self._retry_row_writes(call))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)

    async def _flush_row_writes(self, call: Call) -> None:
        """The call's waiting writes, oldest first; raises at the first the database refuses."""
        while call.unwritten:
            _, write = call.unwritten[0]
            await write()
            call.unwritten.popleft()
        self._unwritten.pop(call.id, None)

    async def _retry_row_writes(self, call: Call) -> None:
        delays = itertools.chain(ROW_RETRY_DELAYS, itertools.repeat(60.0))
        for attempt, delay in enumerate(delays, start=1):
            await asyncio.sleep(delay)
            try:
                await self._flush_row_writes(call)
            except Exception as exc:
                if attempt == len(ROW_RETRY_DELAYS):
                    log.error(
                        "call %s: %s still not written (%s); retrying once a minute",
                        call.id,
                        call.unwritten[0][0],
                        type(exc).__name__,
                    )
                continue
            log.info("call %s: row written on retry %d", call.id, attempt)
            return

    async def _on_manager_ready(self, call: Call) -> None:
        manager_channel = call.manager_channel_id
        # The service refuses an order without a valid number before any call exists.
        assert manager_channel is not None and call.order is not None and call.order.phone is not None
        if not self.is_connected():
            await self._prepare_manager(call)
            await self._refuse(call, Outcome.FAILED, self.config.prompts.unavailable)
            return
        # The row has named this channel since it was written (a restarted daemon adopts it).
        call.customer_channel_id = customer_leg_id(call.id)
        self._by_channel[call.customer_channel_id] = call
        self._transition(call, CallState.RINGING_CUSTOMER)
        # The ringback, the customer's INVITE and the row's new state are independent: they go out
        # at once, so no database round trip delays the customer's INVITE. All three finish before
        # the next step, and a failure is acted on only then (a late UPDATE must not overwrite the
        # row's end).
        trunk = self.config.trunk
        ringback, originated, persisted = await asyncio.gather(
            self._prepare_manager(call),
            self.ari.originate(
                endpoint=trunk.dial.format(number=call.order.phone.dialable()),
                app=self.config.ari.app,
                app_args=dialplan.app_args(dialplan.Leg.CUSTOMER, call.id),
                channel_id=call.customer_channel_id,
                caller_id=trunk.caller_id,
                timeout=trunk.ring_timeout,
                originator=manager_channel,
                variables=dialplan.NO_TRANSFERS,
            ),
            self._persist_state(call),
            return_exceptions=True,
        )
        for result in (ringback, persisted):
            if isinstance(result, BaseException):
                raise result
        if isinstance(originated, AriError):
            log.warning("call %s: customer leg could not be originated: %s", call.id, originated)
            await self._refuse(call, Outcome.CUSTOMER_UNAVAILABLE, self.config.prompts.customer_unavailable)
            return
        if isinstance(originated, BaseException):
            raise originated
        if call.direction == "phone":  # an HTTP call's clock would include the manager picking up
            metrics.SETUP_SECONDS.observe(time.monotonic() - call.requested_at)
        log.info("call %s: customer leg %s originated", call.id, call.customer_channel_id)

    async def _prepare_manager(self, call: Call) -> None:
        # The manager's phone already shows the order label: the FastAGI reply set its connected
        # line (phone path), or the label was its caller id on the originate (HTTP path).
        await self._ringback(call)

    async def _ringback(self, call: Call) -> None:
        """Let the manager hear that the customer is being called."""
        channel = call.manager_channel_id or ""
        if not call.manager_up:
            # A phone that dialled the code has been sent 180 Ringing by the dialplan right before
            # Stasis() (dialplan/bridged.conf): no ARI request for it.
            return
        try:
            call.ringback_playback_id = f"{call.id}-ringback-{next(self._seq)}"
            await self.ari.play(channel, "tone:ring", playback_id=call.ringback_playback_id)
        except AriError as exc:
            log.debug("call %s: ringback failed: %s", call.id, exc)

    async def _stop_ringback(self, call: Call) -> None:
        if call.ringback_playback_id:
            playback_id, call.ringback_playback_id = call.ringback_playback_id, None
            try:
                await self.ari.stop_playback(playback_id)
            except AriError as exc:
                log.debug("call %s: stopping ringback failed: %s", call.id, exc)

    async def _originate_manager(self, call: Call) -> None:
        assert call.started is not None
        self._transition(call, CallState.RINGING_MANAGER)
        try:
            await self._persist_state(call)  # the row has named the manager's channel since it was written
            await self.ari.originate(
                endpoint=f"PJSIP/{call.manager.endpoint}",
                app=self.config.ari.app,
                app_args=dialplan.app_args(dialplan.Leg.MANAGER, call.id),
                channel_id=call.manager_channel_id,
                # The manager's phone shows the order label as the caller; its number part redials the order.
                caller_id=call.label_caller_id,
                timeout=self.config.api.manager_ring_timeout,
                variables=dialplan.label_variables(call.label_caller_id),
            )
        except AriError as exc:
            log.warning("call %s: manager leg could not be originated: %s", call.id, exc)
            call.ended_by = "bridged"
            # Taken from the call first: _finish answers a waiting POST with the ended call, and this
            # one is to be answered with the failure (once the row has ended).
            started, call.started = call.started, None
            await self._finish(call, Outcome.MANAGER_UNAVAILABLE)
            if not started.done():
                started.set_exception(ManagerLegFailed(str(exc)))
            return
        if not call.started.done():
            call.started.set_result(None)
        log.info("call %s: manager leg %s originated", call.id, call.manager_channel_id)

    async def _terminate(self, call: Call) -> None:
        if call.state is CallState.ENDED:
            return
        call.ended_by = "api"
        if call.state is CallState.BRIDGED:
            outcome = Outcome.COMPLETED
        elif call.state is CallState.REFUSING:
            outcome = call.outcome or Outcome.CANCELLED
        else:
            outcome = Outcome.CANCELLED
        await self._finish(call, outcome)

    async def _on_customer_answered(self, call: Call) -> None:
        if call.state is not CallState.RINGING_CUSTOMER:
            return
        customer = call.customer_channel_id or ""
        announcement = self.config.recording.announcement if self.config.recording.enabled else None
        if announcement:
            self._transition(call, CallState.ANNOUNCING)
            await self._persist_state(call)
            call.announcement_playback_id = f"{call.id}-announce-{next(self._seq)}"
            await self.ari.play(
                customer, self._media(announcement), playback_id=call.announcement_playback_id
            )
            return
        await self._bridge(call)

    async def _bridge(self, call: Call) -> None:
        manager = call.manager_channel_id or ""
        customer = call.customer_channel_id or ""
        await self._stop_ringback(call)
        if not call.manager_up:
            await self.ari.answer(manager)
            call.manager_up = True
        bridge_id = f"{call.id}-bridge"
        await self.ari.create_bridge(bridge_id, type="mixing", name=f"bridged-{call.id}")
        call.bridge_id = bridge_id
        # A carrier's PAI in its 200 OK may have replaced the customer channel's caller id with the
        # customer's number (trust_id_inbound=yes; a ChannelCallerId event told us): the label goes
        # back in before the join. The join itself sends no connected-line update, and whatever
        # Asterisk sends the manager later passes through CONNECTED_LINE_SEND_SUB (set before Stasis),
        # which puts the label in its place; the manager's own connected line already is the label.
        if call.customer_caller_id_dirty:
            await self._restore_customer_caller_id(call)
        await self.ari.add_channel(bridge_id, [manager, customer], inhibit_connected_line_updates=True)
        call.answered_at = datetime.now(UTC)
        self._transition(call, CallState.BRIDGED)
        metrics.CALLS_BRIDGED.inc()
        not_recorded = await self._start_recording(call, bridge_id)
        answered_at, recording_name = call.answered_at, call.recording_name
        await self._write_row(
            call,
            "bridged",
            lambda: self.store.mark_bridged(
                call.id, answered_at=answered_at, bridge_id=bridge_id, recording_name=recording_name
            ),
        )
        log.info("call %s bridged (recording %s)", call.id, call.recording_name or "off")
        if not_recorded is not None:
            await self._set_recording_state(
                call, RecordingState.FAILED, f"Asterisk did not start it: {not_recorded}"
            )

    # -- the recording ---------------------------------------------------------------------------

    async def _start_recording(self, call: Call, bridge_id: str) -> str | None:
        """Record the bridge; returns why Asterisk refused, or None (recording, or recording is off)."""
        recording = self.config.recording
        if not recording.enabled:
            return None
        name = f"bridged-{call.id}"
        # Its events may arrive before the answer to the request.
        self._by_recording[name] = call
        try:
            await self.ari.record_bridge(bridge_id, name=name, format=recording.format, if_exists="overwrite")
        except AriError as exc:
            self._by_recording.pop(name, None)
            return str(exc)
        call.recording_name = name
        call.recording_started_at = datetime.now(UTC)
        return None

    def _recorded_seconds(self, call: Call) -> float | None:
        """How long the recording should be: from its start to bridged stopping it (or now)."""
        if call.recording_started_at is None:
            return None
        stopped = call.recording_stopped_at or datetime.now(UTC)
        return max(0.0, (stopped - call.recording_started_at).total_seconds())

    async def _on_recording_end(self, call: Call, event: dict[str, Any]) -> None:
        """Asterisk's last event for the call's recording: RecordingFinished or RecordingFailed.

        Asterisk 22 reports a full disk or a folder it cannot write to as RecordingFinished (state
        ``done``) at the first failed write, while the bridge goes on: a recording that finishes before
        bridged stopped it was cut short (rig/NOTES.md, "Recording failures").
        """
        recording = event.get("recording") or {}
        if call.recording_state is not None or recording.get("name") != call.recording_name:
            return
        kind = str(event.get("type"))
        duration = recording.get("duration")
        if not isinstance(duration, int) or isinstance(duration, bool):
            duration = None
        early = call.recording_stopped_at is None
        expected = self._recorded_seconds(call)
        state = judge_end_event(kind, duration, ended_early=early, expected_seconds=expected)
        if kind == "RecordingFailed":
            why = f"Asterisk reported it failed ({str(recording.get('cause') or 'no cause')[:80]})"
        elif duration is None:
            state, why = await self._judge_by_file(
                call.recording_name, RecordingState.TRUNCATED if early else RecordingState.UNKNOWN, expected
            )
            why = f"no duration in its end event; {why}"
        elif early:
            why = f"Asterisk stopped it after {duration} s while the call went on (see Asterisk's log)"
        else:
            why = f"{duration} s recorded of {expected or 0:.0f} s bridged"
        assert state is not None
        await self._set_recording_state(call, state, why)

    async def _judge_by_file(
        self, name: str | None, otherwise: RecordingState, expected: float | None
    ) -> tuple[RecordingState, str]:
        """A recording whose end event was missed, judged by what Asterisk stored (see judge_file)."""
        name = name or ""
        try:
            with background_requests():
                info = await self.ari.get_stored_recording(name)
                size = None if info is None else await self.ari.stored_recording_size(name)
        except AriError as exc:
            return RecordingState.UNKNOWN, f"its file could not be checked ({exc})"
        stored = StoredFile(size, str((info or {}).get("format") or ""))
        found = "no file" if size is None else f"a file of {size} bytes"
        return judge_file(stored, otherwise, expected), f"Asterisk has {found}"

    async def _live_recording(self, name: str) -> bool | None:
        """Whether Asterisk is still recording under ``name``; None when it did not answer."""
        try:
            with background_requests():
                live = await self.ari.get_live_recording(name)
        except AriError:
            return None
        return live is not None and live.get("state") in ("queued", "recording", "paused")

    async def _check_live_recording(self, call: Call) -> None:
        """After a reconnect: a recording that ended while the events were not heard ended early (only a
        failure ends a bridge recording before bridged destroys the bridge)."""
        if await self._live_recording(call.recording_name or "") is False:
            state, why = await self._judge_by_file(call.recording_name, RecordingState.TRUNCATED, None)
            await self._set_recording_state(call, state, f"it ended while bridged was not listening; {why}")

    async def _settle_recording(self, call: Call) -> None:
        """After the call, wait for its recording's last event, then judge it (by the file if it never
        comes). Stopped meanwhile, the state is left ``unknown`` rather than taken for complete."""
        self._settling[call.id] = call
        deadline = asyncio.get_running_loop().time() + RECORDING_SETTLE_SECONDS
        try:
            while call.recording_state is None:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await call.queue.get()
                except TimeoutError:
                    state, why = await self._judge_by_file(
                        call.recording_name, RecordingState.UNKNOWN, self._recorded_seconds(call)
                    )
                    await self._set_recording_state(call, state, f"Asterisk sent no end event; {why}")
                    break
                if event.get("type") in RECORDING_END_EVENTS:
                    await self._on_recording_end(call, event)
        except asyncio.CancelledError:
            if call.recording_state is None:
                await self._set_recording_state(
                    call, RecordingState.UNKNOWN, "bridged stopped before Asterisk reported its end"
                )
            raise
        except Exception:
            log.exception("call %s: judging the recording failed", call.id)
        finally:
            self._settling.pop(call.id, None)
            self._by_recording.pop(call.recording_name or "", None)

    def _report_recording(self, call_id: str, name: str | None, state: RecordingState, why: str) -> None:
        if state is RecordingState.COMPLETE:
            log.info("call %s: recording %s complete (%s)", call_id, name, why)
        elif state is RecordingState.UNKNOWN:
            metrics.RECORDINGS_UNVERIFIED.inc()
            log.warning("call %s: recording %s could not be checked: %s", call_id, name, why)
        else:
            metrics.RECORDINGS_FAILED.inc(state.value)
            log.error("call %s: recording %s %s: %s", call_id, name or "-", state.value, why)

    async def _set_recording_state(self, call: Call, state: RecordingState, why: str) -> None:
        call.recording_state = state
        self._by_recording.pop(call.recording_name or "", None)
        self._report_recording(call.id, call.recording_name, state, why)
        value = state.value
        await self._write_row(
            call, f"recording {value}", lambda: self.store.set_recording_state(call.id, value)
        )

    async def _on_leg_gone(self, call: Call, side: str, kind: str) -> None:
        if call.state is CallState.ENDED:
            return
        if side == "customer":
            if call.state is CallState.RINGING_CUSTOMER:
                if kind != "ChannelDestroyed":
                    return  # wait for the cause, which ChannelDestroyed carries
                outcome = outcome_for_unanswered(call.hangup_cause, call.dialstatus)
                log.info("call %s: customer leg ended unanswered: %s", call.id, outcome)
                await self._refuse(call, outcome, outcome_prompt(self.config.prompts, outcome))
                return
            if call.state is CallState.REFUSING:
                return
            call.ended_by = call.ended_by or "customer"
            outcome = Outcome.COMPLETED if call.state is CallState.BRIDGED else Outcome.CUSTOMER_ABANDONED
        else:
            call.ended_by = call.ended_by or "manager"
            if call.state is CallState.BRIDGED:
                outcome = Outcome.COMPLETED
            elif call.state is CallState.REFUSING:
                outcome = call.outcome or Outcome.FAILED
            elif call.state is CallState.RINGING_MANAGER:
                if kind != "ChannelDestroyed":
                    return  # the cause comes with ChannelDestroyed
                outcome = manager_outcome_for_unanswered(call.manager_cause)
            else:
                outcome = Outcome.MANAGER_ABANDONED
        await self._finish(call, outcome)

    async def _on_customer_caller_id(self, call: Call, event: dict[str, Any]) -> None:
        """The customer leg's caller id changed: a trunk that trusts the carrier's identity headers
        (PAI/RPID in its 200 OK or in a mid-call UPDATE) put the customer's number there.

        Nothing of it reaches the manager (joins inhibit connected-line updates, CONNECTED_LINE_SEND_SUB
        replaces the rest), but Asterisk would write it into the leg's CDR: the label goes back in.
        Carriers that send no identity cost no request.
        """
        caller = (event.get("channel") or {}).get("caller") or {}
        number = caller.get("number") if isinstance(caller, dict) else None
        if number in (call.label.number, self._shop_number):
            return  # ours: the originate's caller id, or the label put back
        if call.state is CallState.RINGING_CUSTOMER:
            # Not in Stasis yet, so ARI cannot set its variables: done right before the bridge.
            call.customer_caller_id_dirty = True
            return
        if call.state in (CallState.ANNOUNCING, CallState.BRIDGED):
            await self._restore_customer_caller_id(call)

    async def _restore_customer_caller_id(self, call: Call) -> None:
        call.customer_caller_id_dirty = False
        log.info("call %s: the trunk changed the customer leg's caller id; the label is put back", call.id)
        try:
            await self.ari.set_variable(call.customer_channel_id or "", "CALLERID(all)", call.label_caller_id)
        except AriError as exc:
            log.warning("call %s: putting the label back on the customer leg failed: %s", call.id, exc)

    async def _refuse_transfer(self, call: Call, channel_id: str) -> None:
        """A leg asked to be transferred (SIP REFER): declined, and the call goes on as it was.

        A transfer would take the customer out of the recorded bridge and out of bridged's control.
        The requested destination is neither logged nor stored: it is whatever the phone sent.
        """
        side = "manager" if channel_id == call.manager_channel_id else "customer"
        log.warning("call %s: the %s's phone asked for a transfer; declined", call.id, side)
        try:
            await self.ari.transfer_progress(channel_id, "channel_declined")
        except AriError as exc:
            log.warning("call %s: declining the transfer failed: %s", call.id, exc)
        actor = call.manager.id if side == "manager" else "customer"
        await self._write_row(
            call,
            "transfer audit",
            lambda: self.store.audit(
                actor=actor,
                action="call.transfer",
                outcome="refused",
                call_id=call.id,
                order_id=call.order_id,
                reason=f"{side} sent REFER",
            ),
        )

    async def _refuse(self, call: Call, outcome: Outcome, prompt: str) -> None:
        """The call cannot go ahead: tell the manager with a prompt, then hang up."""
        call.outcome = outcome
        call.ended_by = call.ended_by or "bridged"
        if call.customer_channel_id:
            await self._hangup_quietly(call.customer_channel_id)
        self._transition(call, CallState.REFUSING)
        await self._persist_state(call)
        manager = call.manager_channel_id or ""
        await self._stop_ringback(call)
        try:
            if not call.manager_up:
                await self.ari.answer(manager)
                call.manager_up = True
            call.prompt_playback_id = f"{call.id}-prompt-{next(self._seq)}"
            await self.ari.play(manager, self._media(prompt), playback_id=call.prompt_playback_id)
        except AriNotFound:
            await self._finish(call, outcome)
        except AriError as exc:
            log.warning("call %s: prompt failed: %s", call.id, exc)
            await self._hangup_quietly(manager)

    async def _finish(self, call: Call, outcome: Outcome) -> None:
        call.outcome = outcome
        for channel_id in (call.manager_channel_id, call.customer_channel_id):
            if channel_id and channel_id not in call.gone:
                await self._hangup_quietly(channel_id, may_be_gone=True)
        if call.recording_name is not None and call.recording_stopped_at is None:
            # Destroying the bridge ends the recording: a RecordingFinished from now on is no early end.
            call.recording_stopped_at = datetime.now(UTC)
        if call.bridge_id:
            try:
                await self.ari.destroy_bridge(call.bridge_id)
            except AriError as exc:
                log.warning("call %s: bridge teardown failed: %s", call.id, exc)
        self._transition(call, CallState.ENDED)
        metrics.CALLS_ENDED.inc(outcome.value)
        if call.started is not None and not call.started.done():
            call.started.set_result(None)
        # The host's clock, as for answered_at: a retried write keeps when the call really ended.
        ended_at = datetime.now(UTC)
        outcome_value, hangup_cause, ended_by = outcome.value, call.hangup_cause, call.ended_by
        await self._write_row(
            call,
            "end",
            lambda: self.store.finish_audited(
                call.id,
                outcome=outcome_value,
                hangup_cause=hangup_cause,
                ended_by=ended_by,
                actor=call.manager.id,
                order_id=call.order_id,
                ended_at=ended_at,
            ),
        )
        log.info("call %s ended: %s (by %s)", call.id, outcome, call.ended_by or "-")

    async def _abort(self, call: Call) -> None:
        if call.state is CallState.ENDED:
            return
        try:
            call.state = CallState.REFUSING  # any state may be aborted
            await self._finish(call, call.outcome or Outcome.FAILED)
        except Exception:
            log.exception("call %s: abort failed", call.id)
            call.state = CallState.ENDED

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        for channel_id in (call.manager_channel_id, call.customer_channel_id):
            if channel_id and self._by_channel.get(channel_id) is call:
                del self._by_channel[channel_id]

    def _media(self, sounds: str) -> list[str]:
        return [f"sound:{name}" for name in sounds.split("&") if name]

    # -- reconnects ------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """After each websocket (re)connect: adopt calls still up, finish those that ended meanwhile.

        Asterisk keeps channels in Stasis while the websocket is down but drops the events of the
        gap, so the truth is read back from ``GET /channels`` and the daemon's own rows.
        """
        self.reconnects += 1
        try:
            await self.ari.allow_events(self.config.ari.app, EVENT_TYPES)
        except AriError as exc:  # every event still arrives; only slower
            log.warning("ARI event filter not set: %s", exc)
        channels = {c["id"]: c for c in await self.ari.list_channels()}
        states = {cid: c.get("state", "") for cid, c in channels.items()}
        alive = set(channels)
        for call in list(self.calls.values()):
            call.queue.put_nowait({"type": "Reconcile", "alive": alive, "states": states})
        known = set(self.calls)
        for row in await self.store.open_calls(self.config.ari.app):
            if row.id in known:
                continue
            await self._adopt(row, alive, states)
        owned = set(self._by_channel)
        try:
            app = await self.ari.get_application(self.config.ari.app)
        except AriError:
            return
        for channel_id in app.get("channel_ids", []):
            if channel_id not in owned:
                log.warning("channel %s in our app belongs to no call; hanging it up", channel_id)
                metrics.STRAY_CHANNELS.inc()
                await self._hangup_quietly(channel_id)

    async def _adopt(self, row: CallRow, alive: set[str], states: dict[str, str]) -> None:
        manager = self.config.manager_by_id(row.manager_id)
        legs = [c for c in (row.manager_channel_id, row.customer_channel_id) if c]
        live_legs = [c for c in legs if c in alive]
        state = CallState(row.state)
        if state in (CallState.REQUESTED, CallState.RINGING_MANAGER) and row.customer_channel_id in alive:
            # The customer leg exists only once it has been originated; the row's state update,
            # sent along with the originate, had not landed when the daemon stopped.
            state = CallState.RINGING_CUSTOMER
        resumable = state in (CallState.BRIDGED, CallState.RINGING_CUSTOMER, CallState.ANNOUNCING)
        if manager is None or not resumable or len(live_legs) < 2:
            for channel_id in live_legs:
                await self._hangup_quietly(channel_id)
            unjudged = row.recording_name is not None and row.recording_state is None
            recording_live = await self._live_recording(row.recording_name or "") if unjudged else None
            bridge_found = False
            if row.bridge_id:
                try:
                    bridge_found = await self.ari.destroy_bridge(row.bridge_id)
                except AriError:
                    pass
            if unjudged:
                await self._judge_adopted_recording(row, recording_live, bridge_found)
            outcome = Outcome.COMPLETED if row.answered_at else Outcome.FAILED
            metrics.CALLS_ENDED.inc(outcome.value)
            await self.store.finish(row.id, outcome=outcome.value, hangup_cause=None, ended_by="unknown")
            await self.store.audit(
                actor="bridged",
                action="call.end",
                outcome=outcome.value,
                call_id=row.id,
                order_id=row.order_id,
                reason="ended while bridged was disconnected",
            )
            log.info("call %s finalized after reconnect: %s", row.id, outcome)
            return
        call = Call(
            id=row.id,
            manager=manager,
            order_id=row.order_id,
            direction=row.direction,
            order=None,
            label=self.labeller.label(row.order_id),
            state=state,
            manager_channel_id=row.manager_channel_id,
            customer_channel_id=row.customer_channel_id,
            bridge_id=row.bridge_id,
            recording_name=row.recording_name,
            answered_at=row.answered_at,
            manager_up=states.get(row.manager_channel_id or "") == "Up",
            recording_started_at=row.answered_at,
            recording_state=_recording_state(row.recording_state),
        )
        if call.recording_name is not None and call.recording_state is None:
            # Still to be judged: its events come to this daemon now (the Reconcile below first checks
            # that it did not end while none was listening).
            self._by_recording[call.recording_name] = call
        sources = [f"channel:{c}" for c in live_legs]
        if row.bridge_id:
            sources.append(f"bridge:{row.bridge_id}")
        try:
            await self.ari.subscribe(self.config.ari.app, sources)
        except AriError as exc:
            log.warning("call %s: resubscribe failed: %s", row.id, exc)
        self._register(call)
        log.info("call %s adopted in state %s", call.id, call.state)
        # A leg may have gone between the listing and the subscription.
        call.queue.put_nowait({"type": "Reconcile", "alive": None, "states": None})

    async def _judge_adopted_recording(self, row: CallRow, live: bool | None, bridge_found: bool) -> None:
        """The recording of a call that ended while bridged was away (its events are lost).

        Still recording when found: it ran through the whole conversation (Asterisk ends a bridge
        recording at its first failed write), so complete if its file holds audio. Ended while its
        bridge still stood: cut short. Bridge gone too (Asterisk restarted): unknown. Either way failed
        when the file holds no audio. Nothing is taken for complete without a sign of it."""
        if live and bridge_found:
            otherwise = RecordingState.COMPLETE
        elif live is False and bridge_found:
            otherwise = RecordingState.TRUNCATED
        else:
            otherwise = RecordingState.UNKNOWN
        state, why = await self._judge_by_file(row.recording_name, otherwise, None)
        live_text = {True: "still recording", False: "no longer recording", None: "not known to be recording"}
        self._report_recording(row.id, row.recording_name, state, f"{live_text[live]} when found; {why}")
        await self.store.set_recording_state(row.id, state.value)

    async def _on_reconcile(self, call: Call, alive: set[str] | None, states: dict[str, str] | None) -> None:
        if alive is None:
            alive = set()
            states = {}
            for channel_id in (call.manager_channel_id, call.customer_channel_id):
                if channel_id:
                    snapshot = await self.ari.get_channel(channel_id)
                    if snapshot is not None:
                        alive.add(channel_id)
                        states[channel_id] = snapshot.get("state", "")
        assert states is not None
        if call.manager_channel_id and call.manager_channel_id not in alive:
            await self._on_leg_gone(call, "manager", "ChannelDestroyed")
        elif (
            call.customer_channel_id
            and call.customer_channel_id not in alive
            and call.state
            in (
                CallState.BRIDGED,
                CallState.ANNOUNCING,
            )
        ):
            await self._on_leg_gone(call, "customer", "ChannelDestroyed")
        elif (
            call.customer_channel_id
            and call.customer_channel_id not in alive
            and call.state is (CallState.RINGING_CUSTOMER)
        ):
            await self._on_leg_gone(call, "customer", "ChannelDestroyed")
        elif call.state is CallState.RINGING_CUSTOMER and states.get(call.customer_channel_id or "") == "Up":
            # The customer answered while we were away (its StasisStart is lost).
            await self._on_customer_answered(call)
        elif call.state is CallState.ANNOUNCING and call.announcement_playback_id is None:
            # Adopted mid-announcement: its PlaybackFinished cannot be matched any more; bridge now.
            await self._bridge(call)
        if call.state is CallState.BRIDGED and call.recording_name and call.recording_state is None:
            await self._check_live_recording(call)

    def setting_up(self) -> int:
        """Calls between request and bridge (or prompt and hangup): what a SIGTERM drain waits for."""
        now = time.monotonic()
        fresh = sum(1 for p in self._pending.values() if now - p.created < 10.0)
        return fresh + sum(
            1
            for c in self.calls.values()
            if c.handling or c.state not in (CallState.BRIDGED, CallState.ENDED)
        )

    async def shutdown(self) -> None:
        """Stop the workers; calls stay up in Asterisk and are adopted by the next start."""
        # Workers of ended calls still waiting for their recording's end too (they leave it unknown).
        workers = [c.task for c in (*self.calls.values(), *self._settling.values()) if c.task is not None]
        for worker in workers:
            worker.cancel()
        for retry in self._retries:
            retry.cancel()
        for task in workers + list(self._orphans) + list(self._retries):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self._last_row_writes()

    async def _last_row_writes(self) -> None:
        """On the way out, one last try at the rows the database has not taken yet; what is still
        refused is left to the next start, whose reconcile ends those rows from what Asterisk has."""
        if not self._unwritten:
            return
        try:
            async with asyncio.timeout(LAST_ROW_WRITES_SECONDS):
                for call in list(self._unwritten.values()):
                    await self._flush_row_writes(call)
            log.info("rows brought up to date before stopping")
        except Exception as exc:
            left = sum(len(call.unwritten) for call in self._unwritten.values())
            log.error("stopping with %d writes to call rows not done (%s)", left, type(exc).__name__)
