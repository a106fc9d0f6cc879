"""The call engine: every live call of this daemon, the ARI events routed to them, and what each state
does with each event (REACTIONS for the calls managers place, INBOUND_REACTIONS for customers calling the
shop: each state machine on one screen; the transitions are in model.py).

Events for one call are handled in order by that call's own worker task: the websocket reader only
enqueues, so a slow call never stalls the others.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import dialplan, metrics
from ..ari import AriClient, AriUnavailable
from ..ari.nodes import NodeNames, set_node
from ..callers import InboundCaller
from ..config import ConfigHolder
from ..labels import Labeller
from ..orders import Order
from ..outcomes import Outcome as O
from ..outcomes import Refusal
from ..recording_state import END_EVENTS as RECORDING_END_EVENTS
from ..recording_state import EVENTS as RECORDING_EVENTS
from ..redact import redact
from ..store import Store
from ..tasks import Tasks
from . import events
from .legs import Legs, MadeLegs
from .model import (
    INBOUND,
    INTERNAL_EVENTS,
    LEFT_FOR_GONE,
    Call,
    CallState,
    CanaryPlan,
    Event,
    InboundPlan,
    PendingCall,
    TurnedAway,
    caller_number,
    customer_leg_id,
    manager_leg_id,
    new_call_id,
)
from .model import CallState as S
from .model import Event as E
from .reconcile import Reconciler
from .recording import Recordings
from .rows import Rows
from .steps import Reaction, Steps, ended, ended_on_request, ignore, transferer

log = logging.getLogger(__name__)

# What each state does with each event. A pair not listed is ignored; a row under ANY applies in every
# state without a row of its own for the event; a leg that is gone (*_GONE: ChannelDestroyed, with its
# cause) or cut off (*_CUT_OFF: hung up by neither its phone nor bridged) is reacted to as a leg that left
# (*_LEFT) where a state has no row for it being gone or cut off.
ANY = None
REACTIONS: dict[tuple[CallState | None, Event], Reaction] = {
    # the phone path: the manager's channel is in Stasis, the customer is called
    (S.REQUESTED, E.MANAGER_IN_STASIS): Steps.ring_customer,
    # the HTTP path: bridged rings the manager first, then the customer once they answer
    (S.REQUESTED, E.ORIGINATE_MANAGER): Steps.ring_manager,
    (S.RINGING_MANAGER, E.MANAGER_ANSWERED): Steps.manager_answered,
    (S.RINGING_MANAGER, E.MANAGER_LEFT): ignore,  # why comes with ChannelDestroyed (its cause)
    (S.RINGING_MANAGER, E.MANAGER_GONE): Steps.manager_unreached,
    (S.RINGING_MANAGER, E.MANAGER_CUT_OFF): ended(O.CANCELLED, "asterisk"),  # told by its ChannelDestroyed
    # the customer's phone rings
    (S.RINGING_CUSTOMER, E.CUSTOMER_ANSWERED): Steps.customer_answered,
    (S.RINGING_CUSTOMER, E.CUSTOMER_LEFT): ignore,  # why comes with ChannelDestroyed (its cause)
    (S.RINGING_CUSTOMER, E.CUSTOMER_GONE): Steps.customer_unreached,
    (S.RINGING_CUSTOMER, E.CUSTOMER_CUT_OFF): ended(O.CANCELLED, "asterisk"),
    (S.RINGING_CUSTOMER, E.CUSTOMER_CALLER_ID): Steps.caller_id_for_later,
    # a canary order: nobody was dialled; it rang for the trunk's ring timeout, as an unanswered customer
    (S.RINGING_CUSTOMER, E.CANARY_TIMER): Steps.canary_unanswered,
    # the customer hears that the call is recorded, then the legs are bridged
    (S.ANNOUNCING, E.ANNOUNCEMENT_DONE): Steps.bridge,
    (S.ANNOUNCING, E.CUSTOMER_CALLER_ID): Steps.restore_caller_id,
    (S.BRIDGED, E.CUSTOMER_CALLER_ID): Steps.restore_caller_id,
    (S.BRIDGED, E.MANAGER_LEFT): ended(O.COMPLETED, "manager"),
    (S.BRIDGED, E.CUSTOMER_LEFT): ended(O.COMPLETED, "customer"),
    (S.BRIDGED, E.MANAGER_CUT_OFF): ended(O.COMPLETED, "asterisk"),
    (S.BRIDGED, E.CUSTOMER_CUT_OFF): ended(O.COMPLETED, "asterisk"),
    (S.BRIDGED, E.TERMINATE): ended_on_request(O.COMPLETED),
    # the manager hears a prompt (why the call did not go ahead), then is hung up
    (S.ENDING, E.PROMPT_DONE): Steps.hang_up_manager,
    (S.ENDING, E.MANAGER_LEFT): ended(O.FAILED, "manager", unless_decided=True),
    (S.ENDING, E.CUSTOMER_LEFT): ignore,  # bridged hung it up before the prompt
    (S.ENDING, E.TERMINATE): ended_on_request(O.CANCELLED, unless_decided=True),
    # in any other state
    (ANY, E.MANAGER_LEFT): ended(O.MANAGER_ABANDONED, "manager"),
    (ANY, E.CUSTOMER_LEFT): ended(O.CUSTOMER_ABANDONED, "customer"),
    # a leg cut off (its hangup asked of Asterisk by someone else: an administrator, another program)
    (ANY, E.MANAGER_CUT_OFF): ended(O.CANCELLED, "asterisk"),
    (ANY, E.CUSTOMER_CUT_OFF): ended(O.CANCELLED, "asterisk"),
    (ANY, E.TERMINATE): ended_on_request(O.CANCELLED),
    (ANY, E.TRANSFER_ASKED): Steps.decline_transfer,
    (ANY, E.RECORDING_ENDED): Steps.judge_recording,
    (ANY, E.RECONCILE): Steps.recheck,
}

# An inbound call: the caller's channel is there first (the customer leg), bridged rings managers.
# From a manager's answer on it is the conversation of an outbound call (the rows taken from REACTIONS).
_CONVERSATION = [
    (S.ANNOUNCING, E.ANNOUNCEMENT_DONE),
    (S.BRIDGED, E.MANAGER_LEFT),
    (S.BRIDGED, E.CUSTOMER_LEFT),
    (S.BRIDGED, E.TERMINATE),
    (S.BRIDGED, E.MANAGER_CUT_OFF),
    (S.BRIDGED, E.CUSTOMER_CUT_OFF),
    (ANY, E.MANAGER_LEFT),
    (ANY, E.CUSTOMER_LEFT),
    (ANY, E.MANAGER_CUT_OFF),
    (ANY, E.CUSTOMER_CUT_OFF),
    (ANY, E.TERMINATE),
    (ANY, E.TRANSFER_ASKED),
    (ANY, E.RECORDING_ENDED),
    (ANY, E.RECONCILE),
]
INBOUND_REACTIONS: dict[tuple[CallState | None, Event], Reaction] = {
    # the caller's channel entered bridged's application: who is calling, whom to ring
    (S.REQUESTED, E.CUSTOMER_IN_STASIS): Steps.take_inbound,
    # managers' phones ring (one, or a ring group at once); the caller hears ringing
    (S.RINGING_MANAGER, E.MANAGER_ANSWERED): Steps.inbound_answered,
    (S.RINGING_MANAGER, E.MANAGER_LEFT): ignore,  # why comes with ChannelDestroyed (its cause)
    (S.RINGING_MANAGER, E.MANAGER_GONE): Steps.ring_on,
    (S.RINGING_MANAGER, E.CUSTOMER_LEFT): ended(O.MISSED, "customer"),
    (S.RINGING_MANAGER, E.CUSTOMER_CUT_OFF): ended(O.MISSED, "asterisk"),
    # the caller hears that nobody answered (or that bridged cannot take the call), then is hung up
    (S.ENDING, E.PROMPT_DONE): Steps.hang_up_caller,
    (S.ENDING, E.CUSTOMER_LEFT): ended(O.MISSED, "customer", unless_decided=True),
    (S.ENDING, E.MANAGER_LEFT): ignore,  # a phone that rang, hung up before the prompt
    # a carrier's identity update, in any state: the label goes back on the caller's channel at once
    (ANY, E.CUSTOMER_CALLER_ID): Steps.restore_caller_id,
    **{key: REACTIONS[key] for key in _CONVERSATION},
}

# A call from outside to a canary number (bridged.canaries): the caller rings, hears a greeting, is
# recorded as a voicemail would record them, and is hung up; nobody is rung. (The call is a canary once the
# service said so, on INBOUND_REACTIONS' take_inbound.)
CANARY_REACTIONS: dict[tuple[CallState | None, Event], Reaction] = {
    (S.RINGING_MANAGER, E.CANARY_TIMER): Steps.canary_answer,
    (S.ANNOUNCING, E.ANNOUNCEMENT_DONE): Steps.canary_record,
    (S.BRIDGED, E.CANARY_TIMER): ended(O.COMPLETED, "bridged"),
    (S.BRIDGED, E.CUSTOMER_LEFT): ended(O.COMPLETED, "customer"),
    (S.BRIDGED, E.CUSTOMER_CUT_OFF): ended(O.COMPLETED, "asterisk"),  # a canary call has no manager's leg
    (S.ENDING, E.PROMPT_DONE): Steps.hang_up_caller,
    (ANY, E.CUSTOMER_LEFT): ended(O.CUSTOMER_ABANDONED, "customer"),
    (ANY, E.MANAGER_LEFT): ignore,
    (ANY, E.CUSTOMER_CALLER_ID): Steps.restore_caller_id,
    **{key: REACTIONS[key] for key in ((ANY, E.TERMINATE), (ANY, E.RECORDING_ENDED), (ANY, E.RECONCILE))},
}

# What an inbound call's worker asks the service (bridged.service.CallService.take_inbound).
DecideInbound = Callable[[Call, InboundCaller], Awaitable[InboundPlan | CanaryPlan | TurnedAway]]
# What it asks for an HTTP call adopted while its manager rang (bridged.service.CallService.order_again).
OrderAgain = Callable[[Call], Awaitable[tuple[Order, bool] | Refusal]]
# What it asks for an inbound call adopted with phones still to ring: the name its label showed, "" when
# not known (bridged.inbound.InboundDesk.name_again: call id, order id).
NameAgain = Callable[[str, str], Awaitable[str]]


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
        # Another websocket took the application (bridged.serving stops serving it on that node).
        "ApplicationReplaced",
    }
)
_LEG_EVENTS = frozenset({"ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"})


class CallEngine:
    """Owns every live call of this daemon and routes ARI events to them."""

    PENDING_TTL = 60.0
    # A call whose customer rings already (expect's ring_now): its manager's channel normally enters
    # Stasis a millisecond or two after the FastAGI answer; a customer is not left ringing for nobody long.
    EARLY_TTL = 5.0
    event_types = EVENT_TYPES

    def __init__(
        self, config: ConfigHolder, ari: AriClient, store: Store, *, is_connected: Callable[[], bool]
    ) -> None:
        self.config = config
        self.ari = ari
        self.is_connected = is_connected
        # The Asterisk nodes: a call's requests go to its own (bridged.ari.nodes).
        self.nodes = NodeNames(tuple(node.node for node in config.current.nodes))
        self._shop_number = caller_number(self.config.current.trunk.caller_id)
        # The one label builder: the service labels the calls it accepts with it too.
        labels = self.config.current.labels
        self.labeller = Labeller(labels.template, labels.name_style, self.config.current.language)
        self.calls: dict[str, Call] = {}
        self._by_channel: dict[str, Call] = {}
        self._pending: dict[str, PendingCall] = {}
        # Tasks that run to their end (awaited at shutdown), and retries (cancelled at shutdown: the next
        # start's reconcile hangs up strays and ends rows).
        self._background = Tasks()
        self._retries = Tasks()
        self.rows = Rows(store, self._retries, lambda: self.config.current.inbound.sticky_days)
        self.legs = Legs(config, ari, self._retries)
        # The legs bridged rings, made in the application and dialled (bridged.calls.legs.MadeLegs).
        self.made = MadeLegs(ari, self.legs)
        self.recordings = Recordings(config, ari, self.rows)
        self.steps = Steps(self)
        self.reconciler = Reconciler(self)
        # Called with (call, state) after every state change, e.g. to queue webhooks.
        self.listeners = self.steps.listeners
        # Set by the service: decides whether an inbound call goes ahead and whom it rings; looks an adopted
        # call's order up again, and an adopted inbound caller's name.
        self.decide_inbound: DecideInbound | None = None
        self.order_again: OrderAgain | None = None
        self.name_again: NameAgain | None = None

    # -- intake -----------------------------------------------------------------------------------

    def expect(self, pending: PendingCall, *, ring_now: bool = False) -> None:
        """A call the service accepted, its manager's channel (phone path) on its way into Stasis.

        ``ring_now`` (phone path): the customer's leg is originated at once, while the FastAGI answer goes
        out and the channel enters Stasis, not after (issue 19: that trip is a third of the setup). The
        customer's events wait in the call's queue, unhandled, until the manager's StasisStart starts its
        worker; no row is needed for it first (the leg's id names the call: a restart's reconcile hangs up
        a leg whose row was never written)."""
        self._pending[pending.call_id] = pending
        if pending.direction != "phone":
            return
        ttl = self.PENDING_TTL
        if ring_now and self.is_connected():
            call = pending.early = pending.call(pending.manager_channel_id)
            call.customer_channel_id = customer_leg_id(call.id)
            for channel_id in (call.manager_channel_id, call.customer_channel_id):
                if channel_id:
                    self._by_channel[channel_id] = call
            call.originating = asyncio.ensure_future(self.steps.originate_customer(call))
            ttl = self.EARLY_TTL
        asyncio.get_running_loop().call_later(ttl, self._expire_pending, pending.call_id)

    def _expire_pending(self, call_id: str) -> None:
        """The manager hung up between the FastAGI check and Stasis: close the row (and hang up the
        customer's leg, rung already)."""
        pending = self._pending.pop(call_id, None)
        if pending is None:
            return
        log.info("call %s: the manager's channel never reached Stasis", call_id)
        if pending.early is not None:
            self._forget(pending.early)
            self._background.spawn(self.steps.drop_early(pending.early), name=f"expire-leg-{call_id}")
        self._background.spawn(
            self.rows.abandoned_before_stasis(call_id, pending.row_written), name=f"expire-{call_id}"
        )

    async def start_api_call(self, pending: PendingCall) -> Call:
        """HTTP path: ring the manager first; the customer is dialled once the manager answers.

        Returns when the manager leg is ringing; raises :class:`ManagerLegFailed` if it could not be
        rung.
        """
        call = pending.call(manager_leg_id(pending.call_id))
        self._pending.pop(pending.call_id, None)
        call.started = asyncio.get_running_loop().create_future()
        metrics.CALLS_STARTED.inc()
        self.register(call)
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
        """Called by the websocket reader of a node (in that node's context) for every event; never blocks."""
        kind = event.get("type")
        channel_id = events.channel_of(event)
        own = True
        if kind == "StasisStart":
            if channel_id:
                self.made.entered(channel_id)
            app = self.config.current.ari.app
            own = event.get("application", app) == app
            legs = events.app_args(event) if own else None
            if legs is not None and legs[0] is dialplan.Leg.ORDER and channel_id:
                self._start_phone_call(legs[1], channel_id, event)
                return
            if legs is not None and legs[0] is dialplan.Leg.INBOUND and channel_id:
                if channel_id not in self._by_channel:
                    self._start_inbound_call(channel_id, event)
                return
        call = self._route(event)
        if call is not None:
            self._deliver(call, event)
        elif kind == "StasisStart" and channel_id and not own:
            # Another daemon's application, adopted for the calls it had: no new call is taken under its
            # name. Back to the dialplan, which tries the next daemon.
            log.warning(
                "channel %s entered adopted application %s; handed back", channel_id, event["application"]
            )
            self._background.spawn(self.legs.hand_back(channel_id), name=f"stray-{channel_id}")
        elif kind == "StasisStart" and channel_id:
            log.warning("channel %s entered Stasis without a call; hanging it up", channel_id)
            self._background.spawn(self.legs.hang_up(channel_id), name=f"stray-{channel_id}")

    def _deliver(self, call: Call, event: dict[str, Any]) -> None:
        """Hand an Asterisk event to its call's worker, in the order events came.

        Two kinds never wake the worker (issue 19: most of a call's events are these): one that comes after
        the call ended (its worker reads nothing any more; a recording's end still goes to its settling),
        and one that means nothing to a worker that is idle (waiting, its queue empty): such an event is
        read here at once, as the worker would read it next (nothing else changes the call meanwhile), and
        what it tells is noted (a Dial's status, a leg's hangup cause); a ringing leg's Dial, a caller id
        that is ours. One that does mean something is queued with its reading, for the worker to react."""
        if call.state is CallState.ENDED and events.kind_of(event) not in RECORDING_END_EVENTS:
            return
        if call.waiting and call.queue.empty():
            happened: Event | Exception | None
            try:
                happened = self._read(call, event)
            except Exception as exc:  # the worker's to report (bridged.calls.engine.CallEngine._worker)
                happened = exc
            if happened is None:
                return
            call.read_ahead = (event, happened)
        call.queue.put_nowait(event)

    def _route(self, event: dict[str, Any]) -> Call | None:
        if isinstance(event.get("recording"), dict):
            return self.recordings.call_of(event)
        by_channel = self._by_channel
        # In this order: the event's channel, a Dial's peer, a playback's channel, a REFER's sender.
        for channel_id in (events.channel_of(event), events.channel_of(event, "peer")):
            if channel_id and channel_id in by_channel:
                return by_channel[channel_id]
        for channel_id in (events.played_on(event), transferer(event)):
            if channel_id and channel_id in by_channel:
                return by_channel[channel_id]
        return None

    def _start_phone_call(self, call_id: str, channel_id: str, event: dict[str, Any]) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is None or (pending.manager_channel_id and pending.manager_channel_id != channel_id):
            # The call id is the Stasis arguments' (bridged's own FastAGI reply, as a rule): here it names
            # no call of ours, whatever it is, and is logged masked (as bridged.refusals masks a code).
            log.warning("call %s: no pending request for channel %s; refusing", redact(call_id), channel_id)
            self._background.spawn(self.legs.refuse_stray(channel_id), name=f"stray-{channel_id}")
            return
        call = pending.early or pending.call(channel_id)
        call.manager_channel_id = channel_id
        call.node = self.nodes.current()  # the node whose websocket brought the channel
        call.manager_up = (event.get("channel") or {}).get("state") == "Up"
        metrics.CALLS_STARTED.inc()
        # The StasisStart first: a customer's events queued meanwhile (rung early) come after it.
        self.register(call, first=event)

    def _start_inbound_call(self, channel_id: str, event: dict[str, Any]) -> None:
        """A customer called the shop's number: a call of its own from now on, so that everything that
        happens to the caller's channel reaches it in order, while the service decides (its first step)."""
        call = Call(
            id=new_call_id(),
            manager=None,
            order_id=None,
            direction=INBOUND,
            order=None,
            label=self.labeller.anonymous(),  # replaced by the service's decision; shown to nobody before
            customer_channel_id=channel_id,
            node=self.nodes.current(),  # the node whose websocket brought the caller
        )
        metrics.CALLS_STARTED.inc()
        self.register(call)
        call.queue.put_nowait(event)

    def later(self, call: Call, seconds: float) -> None:
        """A CanaryTimer event for the call in ``seconds`` (dropped if the call has ended by then)."""
        asyncio.get_running_loop().call_later(seconds, call.queue.put_nowait, {"type": "CanaryTimer"})

    def register(self, call: Call, *, first: dict[str, Any] | None = None) -> None:
        """The call is live: its legs' events are routed to it and its worker runs (``first``: the event
        it handles before those queued)."""
        self.calls[call.id] = call
        rung = call.ring.rung if call.ring is not None else []  # an adopted inbound call's
        for channel_id in (call.manager_channel_id, call.customer_channel_id, *rung):
            if channel_id:
                self._by_channel[channel_id] = call
        # The worker's ARI requests (and those of the tasks it starts) go to the call's node.
        context = contextvars.copy_context()
        context.run(set_node, call.node or None)
        call.task = asyncio.get_running_loop().create_task(
            self._worker(call, first), name=f"call-{call.id}", context=context
        )

    def calls_on(self, node: str, app: str | None = None) -> list[Call]:
        """The live calls on ``node`` (in application ``app``, None: in any)."""
        own = self.config.current.ari.app
        return [
            c
            for c in self.calls.values()
            if (c.node or self.nodes.first) == node and (app is None or (c.app or own) == app)
        ]

    def stop_serving(self, node: str, app: str | None = None) -> list[Call]:
        """Stop handling the calls on ``node`` (in ``app``; None: in any) without ending them: their
        events now go to someone else (another websocket took the application), or nothing is heard
        of the node any more (bridged.serving ends their rows then). Returns those calls."""
        calls = self.calls_on(node, app)
        for call in calls:
            if call.task is not None and call.task is not asyncio.current_task():
                call.task.cancel()
            self.recordings.by_name.pop(call.recording_name or "", None)
            self._forget(call)
        if calls:
            log.warning(
                "%d calls on node %s no longer handled here (application %s)", len(calls), node, app or "any"
            )
        return calls

    def register_leg(self, channel_id: str, call: Call) -> None:
        """The call's events on a leg it has just named are routed to it."""
        self._by_channel[channel_id] = call

    def forget_leg(self, channel_id: str, call: Call) -> None:
        """A leg the call named but that does not exist (it could not be made): not the call's any more."""
        if self._by_channel.get(channel_id) is call:
            del self._by_channel[channel_id]

    def owned_channels(self) -> set[str]:
        return set(self._by_channel)

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        rung = call.ring.rung if call.ring is not None else []
        for channel_id in (call.manager_channel_id, call.customer_channel_id, *rung):
            if channel_id and self._by_channel.get(channel_id) is call:
                del self._by_channel[channel_id]

    # -- the worker -------------------------------------------------------------------------------

    async def _worker(self, call: Call, first: dict[str, Any] | None = None) -> None:
        while call.state is not CallState.ENDED:
            if first is not None:
                event, first = first, None
            else:
                call.waiting = True
                try:
                    event = await call.queue.get()
                finally:
                    call.waiting = False
            call.handling = True
            try:
                await self._handle(call, event)
            except AriUnavailable as exc:
                # Asterisk down or overloaded: expected in operation, one line without a traceback.
                kind = events.kind_of(event)
                log.warning("call %s: aborted handling %s in state %s: %s", call.id, kind, call.state, exc)
                await self.steps.abort(call)
            except Exception:
                kind = events.kind_of(event)  # a type that is no string (not Asterisk's) is not logged
                log.exception("call %s: failed handling %s in state %s", call.id, kind, call.state)
                await self.steps.abort(call)
            finally:
                call.handling = False
        self._forget(call)
        if call.recording_name is not None and call.recording_state is None:
            await self.recordings.settle(call)

    async def _handle(self, call: Call, event: dict[str, Any]) -> None:
        ahead, call.read_ahead = call.read_ahead, None
        if ahead is not None and ahead[0] is event:
            # Read as it came, the worker idle (_deliver): the next event it takes.
            happened: Event | Exception | None = ahead[1]
            if isinstance(happened, Exception):
                raise happened
        else:
            happened = self._read(call, event)
        if happened is not None:
            await self.react(call, happened, event)

    def _read(self, call: Call, event: dict[str, Any]) -> Event | None:
        """What an event means for the call, as REACTIONS is keyed (None: nothing to react to); and what
        it tells whatever the call's state, noted before the state reacts: the legs Asterisk hangs up,
        hangup causes, the Dial status, the playbacks that are over."""
        kind = event.get("type")
        legs = {call.manager_channel_id: "manager", call.customer_channel_id: "customer"}
        channel = events.channel_of(event) or "-"
        ringing = call.ring is not None and channel in call.ring.legs
        side = "manager" if ringing else legs.get(channel)
        if kind in INTERNAL_EVENTS:
            return INTERNAL_EVENTS[kind]
        if kind == "StasisStart" and side is not None:
            if side == "manager" and events.leg_of(event) is not dialplan.Leg.MANAGER:
                return E.MANAGER_IN_STASIS  # a phone's own channel
            if side == "customer" and call.inbound:
                return E.CUSTOMER_IN_STASIS
            if side == "customer":
                call.customer_in_app = True
            # A manager leg bridged rang is made in the application (state Down) and dialled: its answer is
            # the Dial event below. Up here is a leg that entered answered: the customer's, originated into
            # the dialplan (or a manager's originated by an earlier release).
            if events.state_of(event) != "Up":
                return None
            return E.MANAGER_ANSWERED if side == "manager" else E.CUSTOMER_ANSWERED
        if kind in _LEG_EVENTS and side is not None:
            if ringing:
                events.note_ring_end(call, event)
            else:
                events.note_leg_end(call, event, side == "manager")
            gone, manager = kind == "ChannelDestroyed", side == "manager"
            if events.cut_off(call, event, manager):
                return E.MANAGER_CUT_OFF if manager else E.CUSTOMER_CUT_OFF
            if manager:
                return E.MANAGER_GONE if gone else E.MANAGER_LEFT
            return E.CUSTOMER_GONE if gone else E.CUSTOMER_LEFT
        if kind == "Dial":
            return events.dialled(call, event)
        elif kind == "PlaybackFinished":
            playback_id = events.playback_of(event).get("id")
            if playback_id and playback_id == call.announcement_playback_id:
                call.announcement_playback_id = None
                return E.ANNOUNCEMENT_DONE
            if playback_id and playback_id == call.prompt_playback_id:
                call.prompt_playback_id = None
                return E.PROMPT_DONE
        elif kind == "ChannelCallerId" and side == "customer":
            caller = (event.get("channel") or {}).get("caller") or {}
            number = caller.get("number") if isinstance(caller, dict) else None
            # Ours (the originate's caller id, or the label put back): nothing to restore.
            return None if number in (call.label.number, self._shop_number) else E.CUSTOMER_CALLER_ID
        elif kind == "ChannelTransfer":
            # A new REFER comes without a state; the progress we report comes back with one.
            return None if event.get("state") else E.TRANSFER_ASKED
        elif kind in RECORDING_END_EVENTS:
            return E.RECORDING_ENDED
        elif kind == "RecordingStarted":
            log.debug("call %s: recording %s started", call.id, call.recording_name)
        return None

    async def react(self, call: Call, happened: Event, event: dict[str, Any]) -> None:
        """What the call's state does with what happened: its row in REACTIONS (see there)."""
        left = LEFT_FOR_GONE.get(happened, happened)
        table = CANARY_REACTIONS if call.canary else INBOUND_REACTIONS if call.inbound else REACTIONS
        for key in ((call.state, happened), (call.state, left), (ANY, happened), (ANY, left)):
            if key in table:
                if call.state is not CallState.ENDED:
                    await table[key](self.steps, call, event)
                return

    # -- the daemon's lifecycle -------------------------------------------------------------------

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
        calls = (*self.calls.values(), *self.recordings.settling.values())
        workers = [c.task for c in calls if c.task is not None]
        for worker in workers:
            worker.cancel()
        self._retries.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await self._background.wait()
        await self._retries.wait()
        await self.rows.last_writes()
