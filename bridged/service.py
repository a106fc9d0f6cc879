"""The one place that decides whether a call goes ahead: one entry per trigger.

- :meth:`CallService.place_from_phone`: a manager dialled ``*77<order>`` (FastAGI, bridged.agi);
- :meth:`CallService.place_from_api`: a shop's backend asked for a call (``POST /v1/calls``), or a manager
  opened a signed link (``/c``, bridged.callpage);
- :meth:`CallService.end_from_api`: a shop's backend ends one (``DELETE /v1/calls/{id}``);
- :meth:`CallService.take_inbound`: a customer called the shop's number (the call engine asks, from the
  caller's StasisStart): who is calling, without keeping their number, and whom to ring.

Each answers in domain terms (a call, or a :class:`Refused` with its :class:`~bridged.outcomes.Refusal`);
the FastAGI handler and the HTTP handlers only translate the answer (bridged.outcomes says into what).
"Manager unknown", "phone not registered", overload and policy are decided here, once for both paths,
and every refusal is audited, logged and counted here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from . import limits, metrics, routing
from .ari import AriError
from .ari.nodes import on_node
from .callers import Caller, InboundCaller, identify, is_shop_number
from .calls.engine import CallEngine
from .calls.model import (
    INBOUND,
    Call,
    CallState,
    CanaryPlan,
    InboundPlan,
    ManagerLegFailed,
    PendingCall,
    TurnedAway,
    customer_leg_id,
    manager_leg_id,
    new_call_id,
)
from .canaries import Canary, CanaryRegistry, e164_of, e164_of_order_phone
from .config import ConfigHolder, Manager
from .orders import CallerOrder, LookupFailed, Order, OrderDirectory, is_valid_code, may_call
from .outcomes import Outcome, Refusal, refusal_prompt
from .redact import redact
from .store import Store
from .store.base import DatabaseUnavailable
from .store.callers import Sticky
from .store.deferred import DeferredWrites
from .tasks import Tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    reason: Refusal
    call_id: str | None = None  # the refused attempt's row, when it has one
    # Seconds until trying again makes sense (rate_limited: until the window frees a slot).
    retry_after: int | None = None


# What the service tells the shop besides calls' state changes (bridged.webhooks publish_event): the event
# type, what the event is about (an id for the outbox) and its data. No number in any of them.
Alert = Callable[[str, str, dict[str, object]], None]


@dataclass(frozen=True)
class NotStarted:
    """An HTTP call that ended before it began: its manager leg could not be originated."""

    outcome: Outcome
    call_id: str


# The phone path's way to ask the manager for the order code: the code, or None if they hung up.
ReadCode = Callable[[], Awaitable[str | None]]

# A daemon's own state, not a decision on the call: another daemon may take it (dialplan/bridged.conf).
PASSED_ON = frozenset({Refusal.UNAVAILABLE, Refusal.OVERLOADED})


class NodeView(Protocol):
    """What the service needs to know about the Asterisk nodes (bridged.serving.Serving)."""

    def of_channel(self, uniqueid: str | None) -> str | None:
        """The node a channel is on, by its unique id (None: not known)."""
        ...

    def connected(self, node: str) -> bool:
        """Whether this daemon serves calls on ``node`` now (its websocket is up)."""
        ...


class CallService:
    def __init__(
        self,
        config: ConfigHolder,
        store: Store,
        directory: OrderDirectory,
        engine: CallEngine,
        *,
        accepting_calls: Callable[[], bool],
        random: Callable[[], float] = random.random,
        nodes: NodeView | None = None,
        canaries: CanaryRegistry | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.engine = engine
        # Connected to Asterisk (the node of the call being decided) and not draining (SIGTERM): new
        # calls are taken.
        self.accepting_calls = accepting_calls
        # Several Asterisk nodes: which one a phone's channel is on, which ones are served now. None: one
        # node, served while accepting_calls says so.
        self.nodes = nodes
        self._random = random
        # Rows about refused attempts that bridged's database did not take (it was away): written later.
        self.deferred = DeferredWrites()
        engine.decide_inbound = self.take_inbound
        self.canaries = canaries if canaries is not None else CanaryRegistry(None)
        # Called with canary.called and abuse.suspected (the webhooks).
        self.alerts: list[Alert] = []
        # Writes off a call's path (an accepted attempt's record, a canary touch's audit row).
        self._background = Tasks()

    async def close(self) -> None:
        await self._background.wait()
        await self.deferred.close()

    # -- the triggers ------------------------------------------------------------------------------

    async def place_from_phone(
        self,
        endpoint: str,
        code: str,
        channel_id: str | None,
        *,
        read_code: ReadCode,
        others_follow: bool = False,
    ) -> PendingCall | Refused | None:
        """``*77<code>`` from the phone of ``endpoint`` (``code`` empty: ``read_code`` asks for it).

        A :class:`PendingCall` waits for ``channel_id`` to enter Stasis; None: the manager hung up while
        keying the code in (nothing is left to answer). ``others_follow``: the dialplan asks another daemon
        if this one is unavailable or overloaded (it then leaves the call's row to that one)."""
        node = self._node_of(channel_id)
        if node is None:
            # Several nodes and a unique id that names none of them: asterisk.conf systemname unset or
            # the same on two nodes (README, "Availability and scaling").
            log.error("call refused: the Asterisk node of channel %s is not known", channel_id or "?")
            return await self._refused_attempt(Refusal.UNAVAILABLE, actor=f"endpoint:{endpoint or '?'}"[:80])
        with on_node(node):
            manager = self.config.current.manager_by_endpoint(endpoint)
            if manager is None:
                log.info("call refused: endpoint %s is no manager", endpoint or "?")
                return await self._refused_attempt(
                    Refusal.UNKNOWN_MANAGER, actor=f"endpoint:{endpoint or '?'}"[:80]
                )
            if not code:
                # Not worth the manager keying a code in that this daemon cannot act on: the dialplan
                # asks the next daemon (or plays the prompt) at once.
                if (cannot := self._cannot_take()) is not None:
                    log.info("call refused for %s before the code was keyed in: %s", manager.id, cannot)
                    return await self._refused_attempt(cannot, actor=manager.id, details=_phone(manager))
                keyed = await read_code()
                if keyed is None:
                    await self._abandoned_while_keying(manager)
                    return None
                code = keyed
            return await self._decide(
                manager,
                code,
                direction="phone",
                manager_channel_id=channel_id,
                actor=manager.id,
                nodes=(node,),
                others_follow=others_follow,
            )

    async def place_from_api(
        self,
        client: str,
        manager_id: str,
        order_id: str,
        *,
        actor: str | None = None,
        callback_of: str | None = None,
    ) -> Call | Refused | NotStarted:
        """A call asked for by API client ``client``: rings the manager, and the customer once they answer
        (``callback_of``: the missed inbound call it calls back, for the audit trail).

        ``actor`` names who asked in the audit trail (default: the token, ``token:<client>``; a signed
        link says ``link:<manager>``). Returns the call once its manager leg has been originated."""
        actor = actor or api_actor(client)
        manager = self.config.current.manager_by_id(manager_id)
        if manager is None:
            log.info("call refused for %s: unknown manager", actor)
            return await self._refused_attempt(Refusal.UNKNOWN_MANAGER, actor=actor)
        served = self._served_nodes()
        with on_node(served[0] if served else None):
            overloaded = self._overloaded()
            accepting = self.accepting_calls()
        nodes = served[:1]
        # Before anyone is dialled: a phone that is not registered would only ring into the void. (Not
        # while Asterisk is away or behind: the decision below refuses the call, with its row, without
        # another ARI request.) With several nodes: rung where it is registered.
        if accepting and not overloaded:
            nodes = await self._nodes_reaching(manager, served)
            if not nodes:
                log.info("call refused for %s: manager %s's phone is not registered", actor, manager.id)
                return await self._refused_attempt(
                    Refusal.MANAGER_NOT_REGISTERED, actor=actor, details={"manager_id": manager.id}
                )
        with on_node(nodes[0] if nodes else None):
            decided = await self._decide(
                manager,
                order_id,
                direction="api",
                manager_channel_id=None,
                actor=actor,
                created_by=client,
                overloaded=overloaded,
                nodes=tuple(nodes),
                callback_of=callback_of,
            )
        if isinstance(decided, Refused):
            return decided
        try:
            return await self.engine.start_api_call(decided)
        except ManagerLegFailed:
            return NotStarted(Outcome.MANAGER_UNAVAILABLE, decided.call_id)

    async def end_from_api(self, client: str, call_id: str, *, actor: str | None = None) -> bool:
        """End a live call on request; False if this daemon has no such live call."""
        if not self.engine.terminate(call_id):
            return False
        actor = actor or api_actor(client)
        await self.deferred.write(
            f"call {call_id} end request audit row",
            lambda: self.store.audit.add(
                actor=actor, action="call.end_requested", outcome="accepted", call_id=call_id
            ),
        )
        return True

    async def refuse_unrecorded(self, client: str, manager_id: str, *, actor: str | None = None) -> Refused:
        """A request whose Idempotency-Key (or signed link) could not be recorded (bridged's database is
        away): refused, as any attempt bridged cannot keep a record of (a retry could otherwise ring
        twice)."""
        log.warning("call request by %s refused: bridged's database is unavailable", client)
        return await self._refused_attempt(
            Refusal.DATABASE_UNAVAILABLE, actor=actor or api_actor(client), details={"manager_id": manager_id}
        )

    async def take_inbound(self, call: Call, caller: InboundCaller) -> InboundPlan | CanaryPlan | TurnedAway:
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
                await self.store.calls.insert_audited(
                    call_id=call.id,
                    order_id=order_id,
                    manager_id=route.first.id if route.first else None,
                    direction=INBOUND,
                    state=CallState.RINGING_MANAGER.value,
                    manager_channel_id=None,
                    customer_channel_id=call.customer_channel_id,
                    ari_app=config.ari.app,
                    actor="customer",
                    details={"direction": INBOUND, "identified_by": how},
                    caller_ref=who.ref,
                    node=call.node or None,
                )
            except DatabaseUnavailable as exc:
                log.warning("call %s refused: bridged's database is unavailable (%s)", call.id, exc)
                return await self._turn_away(call, who, Refusal.DATABASE_UNAVAILABLE, order_id)
            return None

        rung = " then ".join("+".join(m.id for m in step) for step in route.steps) or "nobody"
        log.info("call %s accepted: inbound, caller identified by %s; ringing %s", call.id, how, rung)
        return InboundPlan(
            write_row=write_row,
            steps=route.steps,
            manager=route.first,
            order_id=order_id,
            label=label,
            caller_key=who.key,
            caller_ref=who.ref,
        )

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
                await self.store.calls.insert_audited(
                    call_id=call.id,
                    order_id=canary.order_id,
                    manager_id=canary.manager_id or (managers[0] if managers else None),
                    direction=INBOUND,
                    state=CallState.RINGING_MANAGER.value,
                    manager_channel_id=None,
                    customer_channel_id=call.customer_channel_id,
                    ari_app=config.ari.app,
                    actor="customer",
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
            self._alert(
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

    def _canary_managers(self, canary: Canary) -> list[str]:
        """The managers whose segment held the canary: its manager, or every manager of its team."""
        if canary.manager_id is not None:
            return [canary.manager_id]
        return [m.id for m in self.config.current.managers if canary.team and m.team == canary.team]

    def _alert(self, kind: str, about: str, data: dict[str, object]) -> None:
        for alert in self.alerts:
            try:
                alert(kind, about, data)
            except Exception:
                log.exception("%s not sent", kind)

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
        metrics.CALLS_REFUSED.inc(reason.value)
        at = datetime.now(UTC)
        await self.deferred.write(
            f"refused inbound call {call.id} ({reason})",
            lambda: self.store.calls.insert_refused(
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
            try_now=reason is not Refusal.DATABASE_UNAVAILABLE,
        )
        log.info("call %s refused: inbound, %s", call.id, reason)
        return TurnedAway(refusal_prompt(self.config.current.prompts, reason))

    # -- deciding ----------------------------------------------------------------------------------

    async def _decide(
        self,
        manager: Manager,
        code: str,
        *,
        direction: str,
        manager_channel_id: str | None,
        actor: str,
        created_by: str | None = None,
        overloaded: bool | None = None,
        nodes: tuple[str, ...] = (),
        others_follow: bool = False,
        callback_of: str | None = None,
    ) -> PendingCall | Refused:
        """May ``manager`` call the customer of order ``code`` now? If so, the call's row is written and
        the call is registered with the engine.

        ``actor`` is who asked (the manager on the phone path, the API token on the HTTP path);
        ``created_by`` the API client the call belongs to (None on the phone path). ``nodes``: the
        Asterisk node the call is placed on, then (HTTP path) the others the manager may be rung on."""
        refuse = functools.partial(
            self._refuse, manager, code, direction=direction, actor=actor, created_by=created_by
        )
        exceeded = await self._over_budget(manager, code)
        if exceeded is not None:
            return await self._rate_limited(manager, code, exceeded, refuse)
        if not is_valid_code(self.config.current.orders, code):
            # The raw input is not stored: a manager could have typed anything, even a number.
            log.info("call refused for %s: malformed order code", manager.id)
            await self._attempted(manager, code, Refusal.INVALID_CODE.value)
            return await self._refused_attempt(
                Refusal.INVALID_CODE, actor=actor, details={"manager_id": manager.id}
            )
        found = await self._order_for(manager, code, overloaded)
        if others_follow and found in PASSED_ON:
            assert isinstance(found, Refusal)
            return await self._passed_on(manager, found, actor=actor)
        if isinstance(found, Refusal):
            return await refuse(found)
        nodes = nodes or (self.engine.nodes.current(),)
        canary = self._canary_of(found)
        call_id = new_call_id()
        try:
            await self.store.calls.insert_audited(
                call_id=call_id,
                order_id=code,
                manager_id=manager.id,
                direction=direction,
                state=CallState.REQUESTED.value,
                # The phone's channel, or the one bridged will originate to the manager (HTTP).
                manager_channel_id=manager_channel_id or manager_leg_id(call_id),
                customer_channel_id=customer_leg_id(call_id),
                ari_app=self.config.current.ari.app,
                actor=actor,
                details={
                    "manager_id": manager.id,
                    "direction": direction,
                    **({"callback_of": callback_of} if callback_of else {}),
                },
                created_by=created_by,
                node=nodes[0],
            )
        except DatabaseUnavailable as exc:
            # No row, no call: a call bridged cannot record is not placed (a restart could not adopt it).
            log.warning(
                "call for %s on order %s refused: bridged's database is unavailable (%s)",
                manager.id,
                code,
                exc,
            )
            return await refuse(Refusal.DATABASE_UNAVAILABLE)
        pending = PendingCall(
            call_id=call_id,
            order=found,
            manager=manager,
            direction=direction,
            manager_channel_id=manager_channel_id,
            label=self.engine.labeller.label(found.id, found.customer_name),
            nodes=nodes,
            canary=canary is not None,
        )
        self.engine.expect(pending)
        self._background.spawn(self._attempted(manager, code, limits.ACCEPTED), name=f"attempt-{call_id}")
        if canary is not None:
            self._background.spawn(self._canary_touched(call_id, manager, canary), name=f"canary-{call_id}")
        log.info("call %s accepted: manager %s order %s", call_id, manager.id, code)
        return pending

    async def _order_for(self, manager: Manager, code: str, overloaded: bool | None) -> Order | Refusal:
        """The order, if a call to its customer may go ahead now; else why not."""
        if not self.accepting_calls():
            return Refusal.UNAVAILABLE
        if self._overloaded() if overloaded is None else overloaded:
            return Refusal.OVERLOADED
        try:
            order = await self.directory.lookup(code)
        except LookupFailed as exc:
            log.warning("order lookup failed for order %s: %s", code, exc)
            return Refusal.LOOKUP_FAILED
        if order is None:
            return Refusal.UNKNOWN_ORDER
        if not may_call(self.config.current, manager, order):
            return Refusal.DENIED
        if order.phone is None:
            # Dialling what is left of a value that is not a valid number reaches a stranger. The value
            # itself goes nowhere: not in the log, not in the audit row.
            return Refusal.INVALID_PHONE
        return order

    def _cannot_take(self) -> Refusal | None:
        """Why this daemon cannot take a call on the current node now, if it cannot."""
        if not self.accepting_calls():
            return Refusal.UNAVAILABLE
        return Refusal.OVERLOADED if self._overloaded() else None

    def _canary_of(self, order: Order) -> Canary | None:
        """The canary whose number is the order's phone, if any (compared in E.164, by keyed hash)."""
        if order.phone is None or not len(self.canaries):
            return None
        orders = self.config.current.orders
        e164 = e164_of_order_phone(order.phone, orders.dial_format, orders.default_region)
        return self.canaries.match(self.config.current.inbound.secret, e164)

    async def _canary_touched(self, call_id: str, manager: Manager, canary: Canary) -> None:
        """A manager called a canary order: no alarm (the shop planted it in their segment, calling it is
        their work), but admins see it in the audit trail. The call itself rings out as an unanswered
        customer would, without dialling the carrier (bridged.calls.steps)."""
        metrics.CANARY_TOUCHES.inc()
        log.info("call %s: manager %s called a canary order; the carrier is not dialled", call_id, manager.id)
        await self.deferred.write(
            f"call {call_id} canary touch audit row",
            lambda: self.store.audit.add(
                actor=manager.id,
                action="canary.touched",
                outcome="not_dialled",
                call_id=call_id,
                order_id=canary.order_id,
                details={"canary": canary.id, "manager_id": manager.id},
            ),
        )

    # -- budgets -----------------------------------------------------------------------------------

    async def _over_budget(self, manager: Manager, code: str) -> limits.Exceeded | None:
        """Whether one more attempt by ``manager`` goes past a budget (one indexed query). If bridged's
        database is away the attempt goes on: it is refused at its row's write anyway."""
        config = self.config.current.limits
        budget = config.budget(manager.id)
        if budget.calls is None and budget.distinct_orders is None and budget.refused_in_a_row is None:
            return None
        try:
            now, attempts = await self.store.attempts.window(manager.id, config.window)
        except DatabaseUnavailable as exc:
            log.warning("budgets of %s not checked: bridged's database is unavailable (%s)", manager.id, exc)
            return None
        return limits.verdict(
            attempts, now=now, window=timedelta(seconds=config.window), budget=budget, code=code
        )

    async def _rate_limited(
        self,
        manager: Manager,
        code: str,
        exceeded: limits.Exceeded,
        refuse: Callable[..., Awaitable[Refused]],
    ) -> Refused:
        """Past a budget: refused, with its row and audit row (as every refusal), the attempt kept (not
        counted), a metric, and ``abuse.suspected`` once per window per manager and budget."""
        metrics.RATE_LIMITED.inc(exceeded.budget)
        window = self.config.current.limits.window
        log.warning(
            "call refused for %s: past the %s budget (%d of %d in %d s)",
            manager.id,
            exceeded.budget,
            exceeded.count,
            exceeded.limit,
            window,
        )
        refused: Refused = await refuse(Refusal.RATE_LIMITED)
        await self._attempted(manager, code, limits.RATE_LIMITED)
        data: dict[str, object] = {
            "manager_id": manager.id,
            "budget": exceeded.budget,
            "limit": exceeded.limit,
            "count": exceeded.count,
            "counts": exceeded.counts,
            "window_seconds": window,
            "retry_after": exceeded.retry_after,
        }
        try:
            due = await self.store.attempts.alert_due(manager.id, exceeded.budget, window)
        except DatabaseUnavailable:
            due = False
        if due:
            await self.deferred.write(
                f"abuse.suspected audit row of {manager.id}",
                lambda: self.store.audit.add(
                    actor=manager.id,
                    action="abuse.suspected",
                    outcome="alerted",
                    reason=exceeded.budget,
                    call_id=refused.call_id,
                    details=data,
                ),
            )
            self._alert("abuse.suspected", refused.call_id or f"manager:{manager.id}", data)
        return Refused(refused.reason, refused.call_id, retry_after=exceeded.retry_after)

    async def _attempted(self, manager: Manager, code: str, outcome: str, *, try_now: bool = True) -> None:
        """The attempt as the budgets count it: never the code itself unless it named a known order."""
        length, shape = limits.code_shape(code, self.config.current.orders.code_pattern)
        order_id = code if outcome in limits.KNOWN_ORDER else None
        at = datetime.now(UTC)
        await self.deferred.write(
            f"attempt of {manager.id} ({outcome})",
            lambda: self.store.attempts.record(
                manager_id=manager.id,
                outcome=outcome,
                order_id=order_id,
                code_length=length,
                code_shape=shape,
                at=at,
            ),
            try_now=try_now,
        )

    def _overloaded(self) -> bool:
        """Asterisk is behind on bridged's ARI requests. A new call now could ring a customer and then
        leave them alone on the line when a request times out; refused, it costs Asterisk a FastAGI
        session and a 503 (no Stasis, no customer leg)."""
        share = shed_share(self.engine.ari.oldest_wait(), self.config.current.ari.max_request_wait)
        return share >= 1.0 or (share > 0.0 and self._random() < share)

    def _node_of(self, channel_id: str | None) -> str | None:
        """The node a phone's channel is on (the first with one node; None: not known)."""
        if self.nodes is None or not self.engine.nodes.several:
            return self.engine.nodes.first
        return self.nodes.of_channel(channel_id)

    def _served_nodes(self) -> list[str]:
        """The nodes this daemon serves calls on now, in the config's order."""
        if self.nodes is None or not self.engine.nodes.several:
            return [self.engine.nodes.first]
        return [node for node in self.engine.nodes.names if self.nodes.connected(node)]

    async def _nodes_reaching(self, manager: Manager, nodes: list[str]) -> list[str]:
        """Of ``nodes``, those where the manager's phone can be rung: Asterisk knows the endpoint and it is
        not offline, where it is online first (a phone registers on one node: the others know the
        endpoint without a contact)."""

        async def state(node: str) -> str | None:
            with on_node(node):
                try:
                    snapshot = await self.engine.ari.get_endpoint("PJSIP", manager.endpoint)
                except AriError as exc:
                    log.warning("manager %s's phone not checked on node %s: %s", manager.id, node, exc)
                    return None
            return None if snapshot is None else str(snapshot.get("state"))

        if len(nodes) == 1:  # one node: an error here is the caller's to see, as before
            with on_node(nodes[0]):
                snapshot = await self.engine.ari.get_endpoint("PJSIP", manager.endpoint)
            return nodes if snapshot is not None and snapshot.get("state") != "offline" else []
        states = await asyncio.gather(*(state(node) for node in nodes))
        online = [node for node, st in zip(nodes, states, strict=True) if st == "online"]
        other = [
            node for node, st in zip(nodes, states, strict=True) if st not in (None, "online", "offline")
        ]
        return online + other

    # -- what is written about an attempt ----------------------------------------------------------

    async def _abandoned_while_keying(self, manager: Manager) -> None:
        """The manager hung up while keying the order code in after ``*77``: an ordinary end.

        Audited as an attempt with outcome ``manager_abandoned``; no call row, as for a malformed
        code: no order was named (what was keyed so far is not known, and could have been anything).
        """
        await self.store.audit.add(
            actor=manager.id,
            action="call.request",
            outcome=Outcome.MANAGER_ABANDONED.value,
            reason="keying_code",
            details={"manager_id": manager.id, "direction": "phone"},
        )
        log.info("manager %s hung up while keying the order code in", manager.id)

    async def _passed_on(self, manager: Manager, reason: Refusal, *, actor: str) -> Refused:
        """A phone call this daemon cannot take now, which the dialplan takes to the next daemon: audited
        here (refused, passed on), its call row written by the daemon that takes it."""
        metrics.CALLS_PASSED_ON.inc(reason.value)
        log.info("call for %s passed on to the next daemon: %s", manager.id, reason)
        at = datetime.now(UTC)
        await self.deferred.write(
            f"passed-on call.request ({reason}) audit row",
            lambda: self.store.audit.add(
                actor=actor,
                action="call.request",
                outcome="passed_on",
                reason=reason.value,
                details=_phone(manager),
                at=at,
            ),
        )
        return Refused(reason)

    async def _refused_attempt(
        self, reason: Refusal, *, actor: str, details: dict[str, object] | None = None
    ) -> Refused:
        """An attempt refused before it named an order: its refused ``call.request`` audit row and no call
        row; kept and written later if bridged's database is away (the refusal itself stands either way)."""
        metrics.CALLS_REFUSED.inc(reason.value)
        at = datetime.now(UTC)
        await self.deferred.write(
            f"refused call.request ({reason}) audit row",
            lambda: self.store.audit.add(
                actor=actor,
                action="call.request",
                outcome="refused",
                reason=reason.value,
                details=dict(details or {}),
                at=at,
            ),
        )
        return Refused(reason)

    async def _refuse(
        self,
        manager: Manager,
        code: str,
        reason: Refusal,
        *,
        direction: str,
        actor: str,
        created_by: str | None,
    ) -> Refused:
        # A refused attempt on a well-formed order code is still a call attempt: it gets its row.
        # A code that did not resolve to an order is only what someone typed, and that may be a
        # customer's number (a manager probing): stored masked unless it is a known order.
        metrics.CALLS_REFUSED.inc(reason.value)
        known_order = reason in (Refusal.DENIED, Refusal.INVALID_PHONE, Refusal.DATABASE_UNAVAILABLE)
        raw_code, code = code, code if known_order else redact(code)
        call_id = new_call_id()
        at = datetime.now(UTC)
        await self.deferred.write(
            f"refused call {call_id} ({reason})",
            lambda: self.store.calls.insert_refused(
                call_id=call_id,
                order_id=code,
                manager_id=manager.id,
                direction=direction,
                outcome=reason.value,
                at=at,
                actor=actor,
                details={"manager_id": manager.id, "direction": direction},
                created_by=created_by,
            ),
            # The database was found away a moment ago: keep the row without waiting on it again.
            try_now=reason is not Refusal.DATABASE_UNAVAILABLE,
        )
        if reason is not Refusal.RATE_LIMITED:  # kept by _rate_limited, after this row
            await self._attempted(
                manager, raw_code, reason.value, try_now=reason is not Refusal.DATABASE_UNAVAILABLE
            )
        log.info("call %s refused for %s on order %s: %s", call_id, manager.id, code, reason)
        return Refused(reason, call_id)


def _identified_by(who: Caller, order: CallerOrder | None, sticky: Sticky | None) -> str:
    """How an inbound caller was told (the audit row's details, the log)."""
    if who.withheld:
        return "nothing (number withheld)"
    if order is not None:
        return "their order"
    return "the manager who last talked to them" if sticky is not None else "nothing (no order)"


def shed_share(oldest_wait: float, limit: float) -> float:
    """The share of new calls refused while the oldest ARI request has waited ``oldest_wait`` seconds.

    None up to half of ``ari.max_request_wait``, then growing in proportion, all of them from the limit
    on. An on/off switch at the limit refused in bursts: at the edge of capacity it refused up to 32% of
    the calls where the ramp refused 8-9%, and at twice the sustainable rate it completed somewhat fewer
    (bench/RESULTS.md). 0 turns the guard off."""
    if limit <= 0 or oldest_wait <= limit / 2:
        return 0.0
    return min(1.0, (oldest_wait - limit / 2) / (limit / 2))


def _phone(manager: Manager) -> dict[str, object]:
    return {"manager_id": manager.id, "direction": "phone"}


def api_actor(client: str) -> str:
    """Who asked, in audit rows, for an API client (a token's name)."""
    return f"token:{client}"
