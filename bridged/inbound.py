"""Inbound calls as the service takes them (bridged.service.CallService.take_inbound): who is calling,
without keeping their number (bridged.callers), whom to ring in which order (bridged.routing), the
call's row, and the alarm of a call to a canary number (bridged.canaries)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime, timedelta

from . import metrics, routing
from .callers import Caller, InboundCaller, identify, is_shop_number
from .calls.engine import CallEngine
from .calls.model import (
    INBOUND,
    Call,
    CallState,
    CanaryPlan,
    InboundPlan,
    TurnedAway,
)
from .canaries import Canary, CanaryRegistry, e164_of
from .config import ConfigHolder
from .orders import CallerOrder, LookupFailed, OrderDirectory
from .outcomes import Refusal, refusal_prompt
from .store import Store
from .store.base import DatabaseUnavailable
from .store.callers import Sticky
from .store.deferred import DeferredWrites

log = logging.getLogger(__name__)

# How a caller told by their order is written in the call's accepted audit row (details.identified_by):
# their label showed the order's customer name, which a daemon adopting the call shows again.
BY_ORDER = "their order"


@dataclass(eq=False)
class InboundDesk:
    """Takes a customer's call to the shop's numbers for the service (its one place that decides), with
    the service's own parts (bridged.service.CallService hands them over)."""

    config: ConfigHolder
    store: Store
    directory: OrderDirectory
    engine: CallEngine
    deferred: DeferredWrites
    canaries: CanaryRegistry
    _: KW_ONLY
    accepting_calls: Callable[[], bool]
    alert: Callable[[str, str, dict[str, object]], None]

    async def take(self, call: Call, caller: InboundCaller) -> InboundPlan | CanaryPlan | TurnedAway:
        """A customer called ``caller.did``: who they are (their order, the manager who last talked to
        them), whom to ring in which order, what the managers' phones show, and the call's row (written
        by the plan's ``write_row`` while the first phones ring: refused there if bridged's database is
        away). The caller's number is read here and goes no further than the shop's reverse lookup."""
        config = self.config.current
        inbound = config.inbound
        canary = self.canaries.match(inbound.secret, e164_of(caller.did, config.orders.default_region))
        if canary is not None:
            return self._canary_called(call, caller, canary)
        if not inbound.enabled or inbound.secret is None or not is_shop_number(inbound.numbers, caller.did):
            # bridged-inbound reached with a number that is not the shop's: a dialplan to fix, no call.
            log.warning("call %s: inbound call to a number not in inbound.numbers; turned away", call.id)
            metrics.CALLS_REFUSED.inc("not_a_shop_number")
            return TurnedAway(config.prompts.unavailable)
        who = identify(
            caller.number, caller.presentation, secret=inbound.secret, region=config.orders.default_region
        )
        if not self.accepting_calls():  # draining (SIGTERM)
            return await self._turn_away(call, who, Refusal.UNAVAILABLE, None)
        order, sticky = await asyncio.gather(self._caller_order(call, who), self._sticky(call, who))
        route = routing.route(
            config,
            sticky=sticky.manager_id if sticky else None,
            order_manager=order.manager_id if order else None,
        )
        order_id = order.id if order else sticky.order_id if sticky else None
        label = self.engine.labeller.of_caller(order_id, order.customer_name if order else "", who.ref)
        how = _identified_by(who, order, sticky)

        async def write_row() -> TurnedAway | None:
            try:
                await self._insert_row(
                    call,
                    order_id=order_id,
                    manager_id=route.first.id if route.first else None,
                    details={"direction": INBOUND, "identified_by": how},
                    caller_ref=who.ref,
                    # What a daemon adopting the call while phones ring goes on with
                    # (bridged.calls.reconcile): the managers' ids, and the key only if callers are
                    # remembered at all.
                    ring_plan=[[m.id for m in step] for step in route.steps],
                    caller_key=who.key if inbound.sticky_days > 0 else None,
                )
            except DatabaseUnavailable as exc:
                log.warning("call %s refused: bridged's database is unavailable (%s)", call.id, exc)
                return await self._turn_away(call, who, Refusal.DATABASE_UNAVAILABLE, order_id)
            return None

        rung = " then ".join("+".join(m.id for m in step) for step in route.steps) or "nobody"
        log.info("call %s accepted: inbound, caller identified by %s; ringing %s", call.id, how, rung)
        return InboundPlan(
            write_row=write_row,
            route=route,
            order_id=order_id,
            label=label,
            caller_key=who.key,
            caller_ref=who.ref,
        )

    async def name_again(self, call_id: str, order_id: str) -> str:
        """The customer name the phones of an adopted inbound call showed, for the phones it rings next:
        bridged keeps no name, so the shop is asked again for the order, as for an adopted HTTP call
        (bridged.service.CallService.order_again), but only if the caller was identified by that order (the
        call's audit row says). A caller known by the manager who last talked to them was shown no name:
        they may not be the order's customer. Whoever is rung may see it (no manager's permission on the
        order is asked: the first phones showed it to them all). "" when it is not known now (the audit row
        or the order missing, either database away or slow): the adoption waits no longer than the shop's
        lookup may take (orders.timeout), and goes on with the label without the name."""
        try:
            async with asyncio.timeout(self.config.current.orders.timeout):
                if await self.store.audit.identified_by(call_id) != BY_ORDER:
                    return ""
                order = await self.directory.lookup(order_id)
        except (TimeoutError, DatabaseUnavailable, LookupFailed) as exc:
            log.warning("call %s: the caller's name not looked up again (%s); none shown", call_id, exc)
            return ""
        return "" if order is None else order.customer_name

    def _canary_called(self, call: Call, caller: InboundCaller, canary: Canary) -> CanaryPlan:
        """A call from outside to a canary number: the alarm. The caller is answered as a voicemail would
        (bridged.calls.steps), and only their keyed reference is kept, as for any inbound caller."""
        config = self.config.current
        assert config.inbound.secret is not None  # a canary matched under it
        who = identify(
            caller.number,
            caller.presentation,
            secret=config.inbound.secret,
            region=config.orders.default_region,
        )
        managers = self._canary_managers(canary)

        async def write_row() -> TurnedAway | None:
            details: dict[str, object] = {
                "direction": INBOUND,
                "canary": canary.id,
                "managers": managers,
                **({"team": canary.team} if canary.team else {}),
            }
            try:
                await self._insert_row(
                    call,
                    order_id=canary.order_id,
                    manager_id=canary.manager_id or (managers[0] if managers else None),
                    details=details,
                    caller_ref=who.ref,
                    canary=True,
                )
            except DatabaseUnavailable as exc:
                # The alarm is not lost: its audit row waits for the database; the caller is answered all
                # the same (turning them away would tell them this number is special).
                log.warning("call %s: canary call's row not written (%s); kept for later", call.id, exc)
            metrics.CANARY_CALLS.inc()
            await self.deferred.write(
                f"canary call {call.id} audit row",
                lambda: self.store.audit.add(
                    actor="customer",
                    action="canary.called",
                    outcome="alarm",
                    call_id=call.id,
                    order_id=canary.order_id,
                    details={**details, "caller_ref": who.ref},
                ),
            )
            self.alert(
                "canary.called",
                call.id,
                {
                    "call_id": call.id,
                    "canary_id": canary.id,
                    "order_id": canary.order_id,
                    "manager_ids": managers,
                    "team": canary.team,
                    "caller_ref": who.ref,
                    "at": datetime.now(UTC).isoformat(),
                },
            )
            return None

        # The canary's id and its managers: who leaked. Never the caller's number, nor the canary's.
        log.warning("call %s: a call to canary %s (planted for %s)", call.id, canary.id, ", ".join(managers))
        return CanaryPlan(
            write_row=write_row,
            manager=self.config.current.manager_by_id(canary.manager_id) if canary.manager_id else None,
            order_id=canary.order_id,
            label=self.engine.labeller.of_caller(canary.order_id, "", who.ref),
            caller_ref=who.ref,
        )

    async def _insert_row(
        self,
        call: Call,
        *,
        order_id: str | None,
        manager_id: str | None,
        details: dict[str, object],
        caller_ref: str | None,
        canary: bool = False,
        ring_plan: list[list[str]] | None = None,
        caller_key: str | None = None,
    ) -> None:
        """An inbound call's row and its audit row, while its first phones ring (or its greeting plays)."""
        await self.store.calls.insert_audited(
            call_id=call.id,
            order_id=order_id,
            manager_id=manager_id,
            direction=INBOUND,
            state=CallState.RINGING_MANAGER.value,
            manager_channel_id=None,
            customer_channel_id=call.customer_channel_id,
            ari_app=self.config.current.ari.app,
            actor="customer",
            details=details,
            caller_ref=caller_ref,
            node=call.node or None,  # a canary call's node too: a lost node ends its row
            canary=canary,
            ring_plan=ring_plan,
            caller_key=caller_key,
        )

    def _canary_managers(self, canary: Canary) -> list[str]:
        """The managers whose segment held the canary: its manager, or every manager of its team."""
        if canary.manager_id is not None:
            return [canary.manager_id]
        return [m.id for m in self.config.current.managers if canary.team and m.team == canary.team]

    async def _caller_order(self, call: Call, who: Caller) -> CallerOrder | None:
        if who.number is None:
            return None
        try:
            return await self.directory.reverse_lookup(who.number)
        except LookupFailed as exc:
            # The caller is still rung through: the one who last talked to them, else the fallback.
            log.warning("call %s: the shop's reverse lookup failed (%s); no order shown", call.id, exc)
            return None

    async def _sticky(self, call: Call, who: Caller) -> Sticky | None:
        days = self.config.current.inbound.sticky_days
        if who.key is None or days <= 0:
            return None
        try:
            return await self.store.sticky.last_talked(
                who.key, since=datetime.now(UTC) - timedelta(days=days)
            )
        except DatabaseUnavailable as exc:
            log.warning("call %s: who last talked to the caller is not known (%s)", call.id, exc)
            return None

    async def _turn_away(self, call: Call, who: Caller, reason: Refusal, order_id: str | None) -> TurnedAway:
        """An inbound call bridged does not take: its refused attempt's row (kept for later if the
        database is away), and what the caller hears."""
        await self.deferred.refused(
            f"refused inbound call {call.id}",
            reason,
            lambda at: self.store.calls.insert_refused(
                call_id=call.id,
                order_id=order_id,
                manager_id=None,
                direction=INBOUND,
                outcome=reason.value,
                at=at,
                actor="customer",
                details={"direction": INBOUND},
                caller_ref=who.ref,
            ),
        )
        log.info("call %s refused: inbound, %s", call.id, reason)
        return TurnedAway(refusal_prompt(self.config.current.prompts, reason))


def _identified_by(who: Caller, order: CallerOrder | None, sticky: Sticky | None) -> str:
    """How an inbound caller was told (the audit row's details, the log)."""
    if who.withheld:
        return "nothing (number withheld)"
    if order is not None:
        return BY_ORDER
    return "the manager who last talked to them" if sticky is not None else "nothing (no order)"
