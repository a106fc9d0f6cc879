"""What a call does in reaction to an event: the steps the engine's reaction tables name.

Each reaction takes the call and the ARI event (or bridged's own) that set it off. The tables
(bridged.calls.engine.REACTIONS, INBOUND_REACTIONS) say which reaction each state has to each event; the
steps below only do them, in the order a call normally takes: the manager's leg, the customer's (an
inbound call: the caller, then the managers rung), the bridge, the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import dialplan, metrics
from ..ari import AriConflict, AriError, AriNotFound, AriUnavailable
from ..ari.nodes import set_node
from ..outcomes import (
    CallEnd,
    Outcome,
    Refusal,
    manager_outcome_for_unanswered,
    outcome_for_unanswered,
    outcome_prompt,
    refusal_prompt,
)
from ..recording_state import RecordingState
from .events import in_stasis
from .inbound_steps import InboundSteps
from .legs import leg_variables
from .model import (
    TRANSITIONS,
    Call,
    CallState,
    Event,
    InvalidTransition,
    ManagerLegFailed,
    customer_leg_id,
)

if TYPE_CHECKING:
    from .engine import CallEngine

log = logging.getLogger(__name__)

Reaction = Callable[["Steps", Call, dict[str, Any]], Awaitable[None]]


# -- reactions the table builds: what ends a call, and what does nothing --------------------------------


async def ignore(steps: Steps, call: Call, event: dict[str, Any]) -> None:
    """Nothing to do in this state (the table says why)."""


def ended(outcome: Outcome, by: str, *, unless_decided: bool = False) -> Reaction:
    """End the call with ``outcome`` (``unless_decided``: the outcome the call has already, if any), ended
    by ``by`` unless something else ended it first."""

    async def end(steps: Steps, call: Call, event: dict[str, Any]) -> None:
        call.ended_by = call.ended_by or by
        await steps.finish(call, (call.outcome or outcome) if unless_decided else outcome)

    return end


def ended_on_request(outcome: Outcome, *, unless_decided: bool = False) -> Reaction:
    """An API client ended the call (``DELETE /v1/calls/{id}``): ended by ``api``, whatever came before."""

    async def end(steps: Steps, call: Call, event: dict[str, Any]) -> None:
        call.ended_by = "api"
        await steps.finish(call, (call.outcome or outcome) if unless_decided else outcome)

    return end


class Steps(InboundSteps):
    """The engine's reactions; they work with the engine's parts (its ARI client, legs, rows and
    recordings) and hand what they find back to the engine (a leg to route, an event to react to)."""

    def __init__(self, engine: CallEngine) -> None:
        self.engine = engine
        self.config, self.ari, self.legs, self.rows = engine.config, engine.ari, engine.legs, engine.rows
        self.recordings = engine.recordings
        # Called with (call, state) after every state change, e.g. to queue webhooks.
        self.listeners: list[Callable[[Call, CallState], None]] = []

    def _transition(self, call: Call, new: CallState) -> None:
        """The one place a call changes state: along TRANSITIONS (model.py), or InvalidTransition."""
        if new not in TRANSITIONS[call.state]:
            raise InvalidTransition(f"{call.state} -> {new}")
        # Debug: each step that matters logs its own line at info (accepted, originated, bridged, ended);
        # three lines more per call cost a tenth of bridged's logging (issue 19).
        log.debug("call %s state %s -> %s", call.id, call.state, new)
        call.state = new
        for listener in self.listeners:
            try:
                listener(call, new)
            except Exception:
                log.exception("call %s: state listener failed", call.id)

    # -- the manager's leg ------------------------------------------------------------------------

    async def ring_customer(self, call: Call, event: dict[str, Any]) -> None:
        """The manager's channel is in Stasis: originate the customer's leg on the trunk (a phone's call:
        originated already, at the decision, as a rule; bridged.calls.engine.expect)."""
        # The service refuses an order without a valid number before any call exists.
        assert call.manager_channel_id is not None and call.order is not None and call.order.phone is not None
        # Rung at the decision: settled before anything may hang the leg up (a hangup sent ahead of the
        # originate would miss the leg and leave the customer ringing).
        early: object = None
        if call.originating is not None:
            try:
                early = await call.originating
            except Exception as exc:
                early = exc
        # A phone's call: its row (inserted in state ringing_customer) was written while the channel
        # entered Stasis; none, no call. Another's row is brought to the new state beside the originate.
        row_inserted = call.row_written is not None
        if call.row_written is not None:
            written, call.row_written = await call.row_written, None
            if not written:
                call.has_row = False  # the service wrote the refusal's row
                await self.refuse(call, Outcome.FAILED, self.config.current.prompts.unavailable)
                return
        if not self.engine.is_connected():
            await self.legs.ringback(call)
            await self.refuse(call, Outcome.FAILED, self.config.current.prompts.unavailable)
            return
        if call.canary_touch:
            await self._ring_nobody(call)
            return
        # The row has named this channel since it was written (a restarted daemon adopts it).
        call.customer_channel_id = customer_leg_id(call.id)
        self.engine.register_leg(call.customer_channel_id, call)
        self._transition(call, CallState.RINGING_CUSTOMER)
        # The ringback, the customer's INVITE and the row's new state are independent: they go out
        # at once, so no database round trip delays the customer's INVITE. All three finish before
        # the next step, and a failure is acted on only then (a late UPDATE must not overwrite the
        # row's end).
        originated: object
        if call.originating is not None:
            # A phone's usual call: rung at the decision. The *77 DTMF case (the channel is up, the
            # dialplan sent no 180) hears the ringback now.
            originated = early
            if call.manager_up:
                await self.legs.ringback(call)
        elif row_inserted and not call.manager_up:
            # A phone's call rung here (its row is written and the dialplan sent 180 Ringing): nothing to
            # run beside the originate (no tasks to make for a gather; issue 19).
            originated = None
            try:
                await self.originate_customer(call)
            except Exception as exc:
                originated = exc
        else:
            ringback, originated, persisted = await asyncio.gather(
                self.legs.ringback(call),
                self.originate_customer(call),
                _done() if row_inserted else self.rows.state(call),
                return_exceptions=True,
            )
            for result in (ringback, persisted):
                if isinstance(result, BaseException):
                    raise result
        call.originating = None
        if isinstance(originated, AriError):
            log.warning("call %s: customer leg could not be originated: %s", call.id, originated)
            await self.refuse(
                call, Outcome.CUSTOMER_UNAVAILABLE, self.config.current.prompts.customer_unavailable
            )
            return
        if isinstance(originated, BaseException):
            raise originated
        if call.direction == "phone":  # an HTTP call's clock would include the manager picking up
            metrics.SETUP_SECONDS.observe(time.monotonic() - call.requested_at)
        # Debug: "accepted", "bridged" and "ended" tell a call's life at info, a failed originate warns
        # (issue 19: one line less per call).
        log.debug("call %s: customer leg %s originated", call.id, call.customer_channel_id)

    async def originate_customer(self, call: Call) -> None:
        """Ring the customer of ``call`` on the trunk: originated into the dialplan ([bridged-customer]),
        not made in the application. Answered, the leg enters the call's application from there, and
        tries again while no daemon serves it, so that a customer answering while their daemon is away is
        put through by the next one (docs/asterisk.md, "A customer or manager answering while the daemon
        is away"); a leg made in the application does that too but costs a request more before the
        carrier's INVITE (bench/RESULTS.md). The application is an adopted call's own (the daemon's that
        died: the leg must be found there when that daemon is back). Until the answer the leg is in no
        application: the application is subscribed to it once the originate returns (off the setup's
        path), for its Dial and hangup events (bridged.calls.legs.Legs.watch)."""
        assert call.order is not None and call.order.phone is not None
        config = self.config.current
        trunk = config.trunk
        app = call.app or config.ari.app
        channel_id = customer_leg_id(call.id)
        call.customer_in_app = False
        extra = {
            **dialplan.identity_variables(trunk.caller_id),
            **dialplan.customer_leg_variables(app, call.id),
        }
        try:
            await self.ari.originate_to_dialplan(
                endpoint=trunk.dial.format(number=call.order.phone.dialable()),
                context=dialplan.CUSTOMER_CONTEXT,
                extension=dialplan.CUSTOMER_EXTEN,
                channel_id=channel_id,
                caller_id=trunk.caller_id,
                timeout=trunk.ring_timeout,
                variables=leg_variables(config, extra),
                originator=call.manager_channel_id,
            )
        except AriError as exc:
            # No answer (or a 5xx): the leg may exist. A refusal (4xx): it does not.
            if isinstance(exc, AriUnavailable) or not exc.status:
                await self.legs.hang_up(channel_id, may_be_gone=True)
            raise
        self.legs.watch(call, channel_id, app)

    async def drop_early(self, call: Call) -> None:
        """A customer rung at the decision whose manager never reached Stasis: the leg hung up (once its
        originate is settled: a hangup ahead of it would miss the leg)."""
        if call.originating is None:
            return
        try:
            await call.originating
        except Exception:
            return  # never originated: nothing rings
        await self.legs.hang_up(customer_leg_id(call.id), may_be_gone=True)

    async def _ring_nobody(self, call: Call) -> None:
        """A canary order (bridged.canaries): the manager hears ringback and the call's row says the
        customer is ringing, as for any call, for the trunk's ring timeout; then it ends as unanswered.
        Nothing is originated: the carrier never sees an INVITE to the shop's own canary number."""
        self._transition(call, CallState.RINGING_CUSTOMER)
        await asyncio.gather(self.legs.ringback(call), self.rows.state(call))
        self.engine.later(call, self.config.current.trunk.ring_timeout)
        if call.direction == "phone":
            metrics.SETUP_SECONDS.observe(time.monotonic() - call.requested_at)

    async def canary_unanswered(self, call: Call, event: dict[str, Any]) -> None:
        """A canary order's "customer" rang out: what Asterisk reports for a leg that rang out (cause 19,
        NO ANSWER), and the prompt and outcome of any unanswered customer."""
        call.hangup_cause = 19
        await self.customer_unreached(call, event)

    async def manager_answered(self, call: Call, event: dict[str, Any]) -> None:
        """HTTP path: the manager picked up the leg bridged rang. A call adopted while it rang (its daemon
        died) has no order: it is looked up again, the customer's number being kept nowhere."""
        call.manager_up = True
        if call.order is None and not await self._order_again(call):
            return
        await self.ring_customer(call, event)

    async def _order_again(self, call: Call) -> bool:
        """An adopted call's order, as the service finds it now (bridged.service.CallService.order_again).
        If it may not be called any more (gone, another manager's, no valid number, the lookup failed), the
        manager, who has picked up, hears why, as a new call's refusal would say it; the customer was never
        rung: the call ends with the refusal, as a new call's row would."""
        assert self.engine.order_again is not None
        found = await self.engine.order_again(call)
        if isinstance(found, Refusal):
            await self.refuse(call, found, refusal_prompt(self.config.current.prompts, found))
            return False
        call.order, call.canary_touch = found
        call.label = self.engine.labeller.label(call.order.id, call.order.customer_name)
        return True

    async def ring_manager(self, call: Call, event: dict[str, Any]) -> None:
        """HTTP path: ring the manager first (the customer is dialled once they answer)."""
        assert call.started is not None and call.manager is not None
        self._transition(call, CallState.RINGING_MANAGER)
        try:
            await self.rows.state(call)  # the row has named the manager's channel since it was written
            await self._make_manager_leg(call)
        except AriError as exc:
            log.warning("call %s: manager leg could not be rung: %s", call.id, exc)
            call.ended_by = "bridged"
            # Taken from the call first: finish() answers a waiting POST with the ended call, and this
            # one is to be answered with the failure (once the row has ended).
            started, call.started = call.started, None
            await self.finish(call, Outcome.MANAGER_UNAVAILABLE)
            if not started.done():
                started.set_exception(ManagerLegFailed(str(exc)))
            return
        if not call.started.done():
            call.started.set_result(None)
        log.debug("call %s: manager leg %s rung", call.id, call.manager_channel_id)

    async def _make_manager_leg(self, call: Call) -> None:
        """The manager's leg (made in the application and dialled, as a customer's: a manager answering
        while this daemon is dead is put through by the next one), on the call's node; where Asterisk
        cannot build it (500 "Allocation failed": the phone is not registered there, it moved since it was
        asked), on the next node it may be on."""
        assert call.manager is not None and call.manager_channel_id is not None
        config = self.config.current
        while True:
            try:
                await self.engine.made.make(
                    call.manager_channel_id,
                    call,
                    call.manager,
                    app=config.ari.app,
                    ring_timeout=config.api.manager_ring_timeout,
                )
                return
            except AriError as exc:
                if not (call.other_nodes and allocation_failed(exc)):
                    raise
            node, call.other_nodes = call.other_nodes[0], call.other_nodes[1:]
            log.info(
                "call %s: the manager's phone is not on node %s; trying node %s", call.id, call.node, node
            )
            call.node = node
            set_node(node)  # this worker's requests go there from now on
            await self.rows.node(call)

    async def manager_unreached(self, call: Call, event: dict[str, Any]) -> None:
        """HTTP path: the manager's phone rang out, declined, or could not be rung (by the leg's cause)."""
        call.ended_by = call.ended_by or "manager"
        await self.finish(call, manager_outcome_for_unanswered(call.manager_cause))

    # -- the customer's leg -----------------------------------------------------------------------

    async def customer_answered(self, call: Call, event: dict[str, Any]) -> None:
        recording = self.config.current.recording
        announcement = recording.announcement if recording.enabled else None
        if announcement:
            self._transition(call, CallState.ANNOUNCING)
            await self.rows.state(call)
            await self.legs.announce(call, announcement)
            return
        await self.bridge(call, event)

    async def customer_unreached(self, call: Call, event: dict[str, Any]) -> None:
        """The customer's leg ended unanswered: the manager hears why (busy, no answer, ...)."""
        outcome = outcome_for_unanswered(call.hangup_cause, call.dialstatus)
        log.info("call %s: customer leg ended unanswered: %s", call.id, outcome)
        await self.refuse(call, outcome, outcome_prompt(self.config.current.prompts, outcome))

    async def caller_id_for_later(self, call: Call, event: dict[str, Any]) -> None:
        # Not in Stasis yet, so ARI cannot set its variables: done right before the bridge.
        call.customer_caller_id_dirty = True

    async def restore_caller_id(self, call: Call, event: dict[str, Any]) -> None:
        """Nothing of a carrier's identity reaches the manager (joins inhibit connected-line updates,
        CONNECTED_LINE_SEND_SUB replaces the rest), but Asterisk would write it into the leg's CDR."""
        await self.legs.restore_customer_caller_id(call)

    # -- the bridge -------------------------------------------------------------------------------

    async def bridge(self, call: Call, event: dict[str, Any]) -> None:
        manager = call.manager_channel_id or ""
        customer = call.customer_channel_id or ""
        await self.legs.stop_ringback(call)
        # Needed: Asterisk 22 does not answer a channel that joins a bridge (ARI addChannel imparts it as
        # it is). Without this request the call is bridged and recorded, but the manager's phone never
        # gets its 200 OK and its CDR says NO ANSWER (tried against the rig, issue 19).
        await self.legs.answer_manager(call)
        bridge = f"{call.id}-bridge"
        try:
            await self.ari.create_bridge(bridge, type="mixing", name=f"bridged-{call.id}")
        except AriConflict:
            # The bridge's id is the call's own: a daemon that died after creating it (this one before a
            # restart, or another whose call this one adopted) left it empty, and it is used as it is.
            log.info("call %s: its bridge exists already (made before an adoption); joined", call.id)
        call.bridge_id = bridge
        # A carrier's PAI in its 200 OK may have replaced the customer channel's caller id with the
        # customer's number (trust_id_inbound=yes; a ChannelCallerId event told us): the label goes
        # back in before the join. The join itself sends no connected-line update, and whatever
        # Asterisk sends the manager later passes through CONNECTED_LINE_SEND_SUB (set before Stasis),
        # which puts the label in its place; the manager's own connected line already is the label.
        if call.customer_caller_id_dirty:
            await self.legs.restore_customer_caller_id(call)
        await self.ari.add_channel(bridge, [manager, customer], inhibit_connected_line_updates=True)
        call.answered_at = datetime.now(UTC)
        self._transition(call, CallState.BRIDGED)
        metrics.CALLS_BRIDGED.inc()
        not_recorded = await self.recordings.start(call)
        await self.rows.bridged(call)
        # Debug: the end's line names the recording; two info lines per call, at its decision and its end.
        log.debug("call %s bridged (recording %s)", call.id, call.recording_name or "off")
        if not_recorded is not None:
            await self.recordings.set_state(
                call, RecordingState.FAILED, f"Asterisk did not start it: {not_recorded}"
            )

    async def decline_transfer(self, call: Call, event: dict[str, Any]) -> None:
        """A leg asked to be transferred (SIP REFER): declined, and the call goes on as it was.

        A transfer would take the customer out of the recorded bridge and out of bridged's control.
        The requested destination is neither logged nor stored: it is whatever the phone sent."""
        channel_id = transferer(event) or ""
        side = "manager" if channel_id == call.manager_channel_id else "customer"
        await self.legs.decline_transfer(call, channel_id, side)
        await self.rows.transfer_refused(call, side)

    async def judge_recording(self, call: Call, event: dict[str, Any]) -> None:
        await self.recordings.on_end(call, event)

    # -- after a reconnect ------------------------------------------------------------------------

    async def recheck(self, call: Call, event: dict[str, Any]) -> None:
        """The event stream (re)connected: what happened to the call's legs meanwhile, as events.

        ``alive``/``states``: the channels Asterisk has and their states (None: ask for this call's)."""
        alive: set[str] | None = event.get("alive")
        states: dict[str, str] = event.get("states") or {}
        stasis: set[str] = event.get("stasis") or set()
        reconnected = alive is not None
        if alive is None:
            alive = set()
            rung = call.ring.legs if call.ring is not None else {}
            for channel_id in (call.manager_channel_id, call.customer_channel_id, *rung):
                if channel_id and (snapshot := await self.ari.get_channel(channel_id)) is not None:
                    alive.add(channel_id)
                    states[channel_id] = snapshot.get("state", "")
                    if in_stasis(snapshot):
                        stasis.add(channel_id)
        customer = call.customer_channel_id
        if customer in stasis:
            call.customer_in_app = True
        # An inbound call's phones that stopped ringing meanwhile: their ChannelDestroyed is lost.
        for leg in [leg for leg in (call.ring.legs if call.ring else {}) if leg not in alive]:
            await self.engine.react(call, Event.MANAGER_GONE, {"channel": {"id": leg}})
        if call.manager_channel_id and call.manager_channel_id not in alive:
            await self.engine.react(call, Event.MANAGER_GONE, {})
        elif customer and customer not in alive and (call.inbound or call.state in _CUSTOMER_UP):
            await self.engine.react(call, Event.CUSTOMER_GONE, {})
        elif call.state is CallState.RINGING_CUSTOMER and states.get(customer or "") == "Up":
            # The customer answered while bridged was away (the Dial event or StasisStart is lost); a leg
            # not in the application yet (between two tries of [bridged-customer]) comes with its
            # StasisStart.
            if call.customer_in_app:
                await self.engine.react(call, Event.CUSTOMER_ANSWERED, {})
        elif call.state is CallState.RINGING_CUSTOMER and reconnected and not call.customer_in_app:
            # Still ringing, in no application: its subscription may have gone with the application's.
            self.legs.watch(call, customer or "", call.app or self.config.current.ari.app)
        elif call.state is CallState.RINGING_MANAGER and (
            answered := [leg for leg in _ringing(call) if leg in alive and states.get(leg) == "Up"]
        ):
            # A manager answered while bridged was away (the Dial event is lost).
            await self.engine.react(call, Event.MANAGER_ANSWERED, {"channel": {"id": answered[0]}})
        elif call.state is CallState.ANNOUNCING and call.announcement_playback_id is None:
            # Adopted mid-announcement: its PlaybackFinished cannot be matched any more; bridge now.
            await self.engine.react(call, Event.ANNOUNCEMENT_DONE, {})
        if (
            call.state is CallState.RINGING_MANAGER
            and call.ring is not None
            and not call.ring.legs
            and call.manager_channel_id is None
        ):
            # An inbound call adopted with no phone ringing for it any more (they stopped while no daemon
            # listened): the caller still waits, and the next managers of the plan are rung.
            await self._ring_next(call)
        if call.state is CallState.BRIDGED and call.recording_name and call.recording_state is None:
            await self.recordings.check_live(call)

    # -- the end ----------------------------------------------------------------------------------

    async def hang_up_manager(self, call: Call, event: dict[str, Any]) -> None:
        """The prompt was played: the call is over for the manager too."""
        await self.legs.hang_up(call.manager_channel_id or "")

    async def refuse(self, call: Call, outcome: CallEnd, prompt: str) -> None:
        """The call cannot go ahead: tell the manager with a prompt, then hang up. An inbound call's
        caller is told instead (nobody answered, or bridged cannot take the call)."""
        call.outcome = outcome
        call.ended_by = call.ended_by or "bridged"
        if call.customer_channel_id and not call.inbound:
            await self.legs.hang_up(call.customer_channel_id)
        self._transition(call, CallState.ENDING)
        await self.rows.state(call)
        await self.legs.stop_ringback(call)
        try:
            await (self.legs.prompt_caller(call, prompt) if call.inbound else self.legs.prompt(call, prompt))
        except AriNotFound:
            await self.finish(call, outcome)
        except AriError as exc:
            log.warning("call %s: prompt failed: %s", call.id, exc)
            await self.legs.hang_up(
                (call.customer_channel_id if call.inbound else call.manager_channel_id) or ""
            )

    async def finish(self, call: Call, outcome: CallEnd) -> None:
        call.outcome = outcome
        await self.legs.hang_up_all(call)
        self.recordings.stopped(call)
        if call.bridge_id:
            try:
                await self.ari.destroy_bridge(call.bridge_id)
            except AriError as exc:
                log.warning("call %s: bridge teardown failed: %s", call.id, exc)
        self._transition(call, CallState.ENDED)
        metrics.CALLS_ENDED.inc(outcome.value)
        if call.started is not None and not call.started.done():
            call.started.set_result(None)
        await self.rows.ended(call, outcome)
        log.info(
            "call %s ended: %s (by %s, recording %s)",
            call.id,
            outcome,
            call.ended_by or "-",
            call.recording_name or "off",
        )

    async def abort(self, call: Call) -> None:
        """A step failed: the call ends (failed, unless it had an outcome already), whatever its state."""
        if call.state is CallState.ENDED:
            return
        try:
            await self.finish(call, call.outcome or Outcome.FAILED)
        except Exception:
            log.exception("call %s: abort failed", call.id)
            if call.state is not CallState.ENDED:
                self._transition(call, CallState.ENDED)


# The states in which a customer's leg that disappeared ended the call (before, it did not exist yet;
# after, it was hung up by bridged). An inbound caller's channel is there from the start.
_CUSTOMER_UP = frozenset({CallState.RINGING_CUSTOMER, CallState.ANNOUNCING, CallState.BRIDGED})


def _ringing(call: Call) -> list[str]:
    """The manager legs a call rings: an HTTP call's one, or those an inbound call rings now."""
    if call.ring is not None:
        return list(call.ring.legs)
    return [call.manager_channel_id] if call.manager_channel_id and not call.inbound else []


def allocation_failed(exc: AriError) -> bool:
    """Asterisk could not build the channel: ``500 {"error": "Allocation failed"}``, e.g. an endpoint
    without a contact (docs/asterisk.md, "Two nodes")."""
    return exc.status == 500 and "Allocation failed" in str(exc)


async def _done() -> None:
    """Nothing to wait for."""


def transferer(event: dict[str, Any]) -> str | None:
    """The channel that sent the REFER of a ChannelTransfer event."""
    referred_by = event.get("referred_by")
    if not isinstance(referred_by, dict):
        return None
    source = referred_by.get("source_channel")
    channel_id = source.get("id") if isinstance(source, dict) else None
    return channel_id if isinstance(channel_id, str) else None
