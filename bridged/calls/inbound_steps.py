"""The steps of an inbound call (bridged.calls.engine.INBOUND_REACTIONS): the caller, the managers rung,
the one who answers; and a call to a canary number. A part of :class:`~bridged.calls.steps.Steps`, whose
helpers (transitions, refusals, the end) they use."""

from __future__ import annotations

import asyncio
import collections
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..ari import AriError, AriNotFound
from ..callers import read_stasis_start
from ..config import Manager
from ..outcomes import Outcome
from ..recording_state import RecordingState
from .model import (
    Call,
    CallState,
    CanaryPlan,
    Ringing,
    TurnedAway,
    answered_leg,
    channel_id_of,
    ring_leg_id,
)

if TYPE_CHECKING:
    from ..ari import AriClient
    from ..config import ConfigHolder
    from .engine import CallEngine
    from .legs import Legs
    from .recording import Recordings
    from .rows import Rows

log = logging.getLogger(__name__)


class InboundSteps:
    # What Steps (the class these are a part of) holds and does, for these steps.
    engine: CallEngine
    config: ConfigHolder
    ari: AriClient
    legs: Legs
    rows: Rows
    recordings: Recordings

    if TYPE_CHECKING:

        def _transition(self, call: Call, new: CallState) -> None: ...

        async def refuse(self, call: Call, outcome: Outcome, prompt: str) -> None: ...

        async def customer_answered(self, call: Call, event: dict[str, Any]) -> None: ...

    # -- an inbound call: the caller, the managers rung, the one who answers ----------------------

    async def take_inbound(self, call: Call, event: dict[str, Any]) -> None:
        """A customer called the shop: the service says whom to ring (or turns the call away); the caller's
        channel gets the label in place of their number; the first managers' phones ring."""
        assert self.engine.decide_inbound is not None
        caller = read_stasis_start(event)
        # The caller's redirecting party (a forwarded call's Diversion/History-Info) is their number too:
        # emptied while the service decides.
        clearing = asyncio.ensure_future(
            self.legs.clear_redirecting(call) if caller.redirected else _nothing()
        )
        try:
            decided = await self.engine.decide_inbound(call, caller)
        finally:
            await clearing
        if isinstance(decided, TurnedAway):
            call.has_row = False
            await self.refuse(call, Outcome.FAILED, decided.prompt)
            return
        if isinstance(decided, CanaryPlan):
            await self._canary_ring(call, decided)
            return
        call.manager, call.order_id, call.label = decided.route.first, decided.order_id, decided.label
        call.caller_ref = decided.caller_ref
        call.ring = Ringing(collections.deque(decided.route.steps), caller_key=decided.caller_key)
        self._transition(call, CallState.RINGING_MANAGER)
        # The first phones and the call's row (written in this state) at once, so that no database round
        # trip delays the managers' INVITEs; both are done before the call goes on.
        first = call.ring.next_step() if call.ring.steps else ()
        rung, written = await asyncio.gather(
            self._ring_managers(call, first), decided.write_row(), return_exceptions=True
        )
        for result in (rung, written):
            if isinstance(result, BaseException):
                raise result
        if isinstance(written, TurnedAway):
            # No row, no call: the phones just rung stop (a call bridged cannot record is not placed).
            ringing, call.ring.legs = list(call.ring.legs), {}
            for leg in ringing:
                await self.legs.hang_up(leg, may_be_gone=True)
            call.has_row = False
            await self.refuse(call, Outcome.FAILED, written.prompt)
            return
        # The caller's channel carries the label from now on (its CDR included); after the originate, which
        # it would only slow down.
        await self.legs.label_customer_leg(call)
        if not rung:
            await self._ring_next(call)

    async def _canary_ring(self, call: Call, plan: CanaryPlan) -> None:
        """A call to a canary number: the caller keeps hearing ringing (the dialplan's Ringing()) for
        ``canaries.ring_seconds``, as if a phone rang; the row, the audit row and the alert meanwhile."""
        call.canary = True
        call.manager, call.order_id, call.label = plan.manager, plan.order_id, plan.label
        call.caller_ref = plan.caller_ref
        self._transition(call, CallState.RINGING_MANAGER)
        await plan.write_row()
        await self.legs.label_customer_leg(call)
        self.engine.later(call, self.config.current.canaries.ring_seconds)

    async def canary_answer(self, call: Call, event: dict[str, Any]) -> None:
        """Nobody "picked up": the caller is answered with the greeting, as a voicemail would answer."""
        await self.ari.answer(call.customer_channel_id or "")
        greeting = self.config.current.canaries.greeting
        self._transition(call, CallState.ANNOUNCING)
        await self.rows.state(call)
        await self.legs.announce(call, greeting)

    async def canary_record(self, call: Call, event: dict[str, Any]) -> None:
        """After the greeting the caller is recorded (a bridge of their own, recorded as any call's), for
        ``canaries.max_record_seconds`` at most."""
        customer = call.customer_channel_id or ""
        bridge = f"{call.id}-bridge"
        await self.ari.create_bridge(bridge, type="mixing", name=f"bridged-{call.id}")
        call.bridge_id = bridge
        await self.ari.add_channel(bridge, [customer], inhibit_connected_line_updates=True)
        call.answered_at = datetime.now(UTC)
        self._transition(call, CallState.BRIDGED)
        not_recorded = await self.recordings.start(call)
        await self.rows.bridged(call)
        self.engine.later(call, self.config.current.canaries.max_record_seconds)
        log.info("call %s: canary caller being recorded (%s)", call.id, call.recording_name or "off")
        if not_recorded is not None:
            await self.recordings.set_state(
                call, RecordingState.FAILED, f"Asterisk did not start it: {not_recorded}"
            )

    async def ring_on(self, call: Call, event: dict[str, Any]) -> None:
        """A manager's phone rung for an inbound call went without answering: busy, declined, rang out or
        unreachable. Once the others rung with it are gone too, the next managers are rung."""
        assert call.ring is not None
        leg = channel_id_of(event)
        manager = call.ring.legs.pop(leg, None)
        if manager is None:
            return
        cause = call.ring.causes.get(leg)
        log.info("call %s: manager %s did not answer (cause %s)", call.id, manager.id, cause)
        if not call.ring.legs:
            await self._ring_next(call)

    async def inbound_answered(self, call: Call, event: dict[str, Any]) -> None:
        """A manager answered an inbound call: the others rung with them stop ringing ("answered
        elsewhere"), the caller is answered, and the call goes on as an outbound call's customer answer."""
        assert call.ring is not None
        leg = answered_leg(event)
        manager = call.ring.legs.pop(leg, None)
        if manager is None:  # a leg already given up on that answered all the same
            await self.legs.hang_up(leg, may_be_gone=True)
            return
        call.manager, call.manager_channel_id, call.manager_up = manager, leg, True
        others, call.ring.legs = list(call.ring.legs), {}
        log.info("call %s: manager %s answered", call.id, manager.id)
        try:
            await asyncio.gather(
                self.ari.answer(call.customer_channel_id or ""),
                *(self.legs.hang_up(o, may_be_gone=True, reason="answered_elsewhere") for o in others),
            )
        except AriNotFound:
            return  # the caller hung up meanwhile: their hangup follows (missed)
        await self.rows.answered(call)
        await self.rows.talked(call)
        await self.customer_answered(call, event)

    async def hang_up_caller(self, call: Call, event: dict[str, Any]) -> None:
        """The caller heard why nobody took the call: hung up."""
        await self.legs.hang_up(call.customer_channel_id or "")

    async def _ring_next(self, call: Call) -> None:
        """The next managers that can be rung; nobody left: the call is missed."""
        assert call.ring is not None
        while call.ring.steps:
            if await self._ring_managers(call, call.ring.next_step()):
                await self.rows.ring_rung(call)
                return
        log.info("call %s: nobody answered", call.id)
        await self.refuse(call, Outcome.MISSED, self.config.current.inbound.missed_prompt)

    async def _ring_managers(self, call: Call, managers: tuple[Manager, ...]) -> bool:
        """Ring these managers' phones at once, each showing the call's label; whether any rings. Each
        leg is made in the application and dialled (bridged.calls.legs.MadeLegs): a manager answering
        while this daemon is dead is put through to the caller by the next one.

        No ``originator``: a leg originated with the caller's channel as originator took its redirecting
        party along, the caller's number in Diversion and History-Info (docs/asterisk.md). A phone that
        is not registered is found by the create itself: Asterisk answers 500 at once and rings nothing."""
        assert call.ring is not None
        config = self.config.current
        legs: dict[str, Manager] = {}
        for manager in managers:
            leg = ring_leg_id(call.id, len(call.ring.rung) + 1)
            call.ring.rung.append(leg)
            call.ring.legs[leg] = legs[leg] = manager
            self.engine.register_leg(leg, call)
        results = await asyncio.gather(
            *(
                self.engine.made.make(
                    leg,
                    call,
                    manager,
                    app=call.app or config.ari.app,
                    ring_timeout=config.inbound.ring_timeout,
                )
                for leg, manager in legs.items()
            ),
            return_exceptions=True,
        )
        for (leg, manager), result in zip(legs.items(), results, strict=True):
            if isinstance(result, AriError):
                log.info("call %s: manager %s's phone cannot be rung: %s", call.id, manager.id, result)
                call.ring.legs.pop(leg, None)
                self.engine.forget_leg(leg, call)
            elif isinstance(result, BaseException):
                raise result
            else:
                log.info("call %s: ringing manager %s on leg %s", call.id, manager.id, leg)
        return any(leg in call.ring.legs for leg in legs)


async def _nothing() -> None:
    """What there is to wait for when there is nothing to do (a caller who was not forwarded)."""
