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

from . import metrics, routing
from .callers import Caller, InboundCaller, identify, is_shop_number
from .calls.engine import CallEngine
from .calls.model import (
    INBOUND,
    Call,
    CallState,
    InboundPlan,
    ManagerLegFailed,
    PendingCall,
    TurnedAway,
    customer_leg_id,
    manager_leg_id,
    new_call_id,
)
from .config import ConfigHolder, Manager
from .orders import CallerOrder, LookupFailed, Order, OrderDirectory, is_valid_code, may_call
from .outcomes import Outcome, Refusal, refusal_prompt
from .redact import redact
from .store import Store
from .store.base import DatabaseUnavailable
from .store.callers import Sticky
from .store.deferred import DeferredWrites

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    reason: Refusal
    call_id: str | None = None  # the refused attempt's row, when it has one


@dataclass(frozen=True)
class NotStarted:
    """An HTTP call that ended before it began: its manager leg could not be originated."""

    outcome: Outcome
    call_id: str


# The phone path's way to ask the manager for the order code: the code, or None if they hung up.
ReadCode = Callable[[], Awaitable[str | None]]


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
    ) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.engine = engine
        # Connected to Asterisk and not draining (SIGTERM): new calls are taken.
        self.accepting_calls = accepting_calls
        self._random = random
        # Rows about refused attempts that bridged's database did not take (it was away): written later.
        self.deferred = DeferredWrites()
        engine.decide_inbound = self.take_inbound

    async def close(self) -> None:
        await self.deferred.close()

    # -- the triggers ------------------------------------------------------------------------------

    async def place_from_phone(
        self, endpoint: str, code: str, channel_id: str | None, *, read_code: ReadCode
    ) -> PendingCall | Refused | None:
        """``*77<code>`` from the phone of ``endpoint`` (``code`` empty: ``read_code`` asks for it).

        A :class:`PendingCall` waits for ``channel_id`` to enter Stasis; None: the manager hung up while
        keying the code in (nothing is left to answer)."""
        manager = self.config.current.manager_by_endpoint(endpoint)
        if manager is None:
            log.info("call refused: endpoint %s is no manager", endpoint or "?")
            return await self._refused_attempt(
                Refusal.UNKNOWN_MANAGER, actor=f"endpoint:{endpoint or '?'}"[:80]
            )
        if not code:
            keyed = await read_code()
            if keyed is None:
                await self._abandoned_while_keying(manager)
                return None
            code = keyed
        return await self._decide(
            manager, code, direction="phone", manager_channel_id=channel_id, actor=manager.id
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
        overloaded = self._overloaded()
        # Before anyone is dialled: a phone that is not registered would only ring into the void. (Not
        # while Asterisk is away or behind: the decision below refuses the call, with its row, without
        # another ARI request.)
        if self.accepting_calls() and not overloaded and not await self._manager_reachable(manager):
            log.info("call refused for %s: manager %s's phone is not registered", actor, manager.id)
            return await self._refused_attempt(
                Refusal.MANAGER_NOT_REGISTERED, actor=actor, details={"manager_id": manager.id}
            )
        decided = await self._decide(
            manager,
            order_id,
            direction="api",
            manager_channel_id=None,
            actor=actor,
            created_by=client,
            overloaded=overloaded,
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

    async def take_inbound(self, call: Call, caller: InboundCaller) -> InboundPlan | TurnedAway:
        """A customer called ``caller.did``: who they are (their order, the manager who last talked to
        them), whom to ring in which order, what the managers' phones show, and the call's row (written
        by the plan's ``write_row`` while the first phones ring: refused there if bridged's database is
        away). The caller's number is read here and goes no further than the shop's reverse lookup."""
        config = self.config.current
        inbound = config.inbound
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
        callback_of: str | None = None,
    ) -> PendingCall | Refused:
        """May ``manager`` call the customer of order ``code`` now? If so, the call's row is written and
        the call is registered with the engine.

        ``actor`` is who asked (the manager on the phone path, the API token on the HTTP path);
        ``created_by`` the API client the call belongs to (None on the phone path)."""
        if not is_valid_code(self.config.current.orders, code):
            # The raw input is not stored: a manager could have typed anything, even a number.
            log.info("call refused for %s: malformed order code", manager.id)
            return await self._refused_attempt(
                Refusal.INVALID_CODE, actor=actor, details={"manager_id": manager.id}
            )
        refuse = functools.partial(
            self._refuse, manager, code, direction=direction, actor=actor, created_by=created_by
        )
        found = await self._order_for(manager, code, overloaded)
        if isinstance(found, Refusal):
            return await refuse(found)
        call_id = new_call_id()
        phone = direction == "phone"
        insert = functools.partial(
            self.store.calls.insert_audited,
            call_id=call_id,
            order_id=code,
            manager_id=manager.id,
            direction=direction,
            # A phone's call rings the customer as soon as its channel enters Stasis: the row says so
            # from the start, and no UPDATE follows (a restart adopts or ends it alike).
            state=(CallState.RINGING_CUSTOMER if phone else CallState.REQUESTED).value,
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
        )
        row_written: asyncio.Future[bool] | None = None
        if phone:
            # Written while the FastAGI answer goes out and the channel enters Stasis, off the setup's
            # critical path; the customer's originate waits for it (bridged.calls.steps.ring_customer).
            row_written = asyncio.ensure_future(self._phone_row(insert, refuse, manager, code))
        elif not await self._row(insert, manager, code):
            return await refuse(Refusal.DATABASE_UNAVAILABLE)
        pending = PendingCall(
            call_id=call_id,
            order=found,
            manager=manager,
            direction=direction,
            manager_channel_id=manager_channel_id,
            label=self.engine.labeller.label(found.id, found.customer_name),
            row_written=row_written,
        )
        self.engine.expect(pending)
        log.info("call %s accepted: manager %s order %s", call_id, manager.id, code)
        return pending

    async def _row(self, insert: Callable[[], Awaitable[None]], manager: Manager, code: str) -> bool:
        """The accepted call's row and its audit row; False if bridged's database did not take them.

        No row, no call: a call bridged cannot record is not placed (a restart could not adopt it)."""
        try:
            await insert()
        except DatabaseUnavailable as exc:
            log.warning(
                "call for %s on order %s refused: bridged's database is unavailable (%s)",
                manager.id,
                code,
                exc,
            )
            return False
        return True

    async def _phone_row(
        self,
        insert: Callable[[], Awaitable[None]],
        refuse: Callable[[Refusal], Awaitable[Refused]],
        manager: Manager,
        code: str,
    ) -> bool:
        """A phone call's row, written in the background; not taken: the refusal's row (the call in
        Stasis then plays the manager prompts.unavailable and never dials the customer)."""
        if await self._row(insert, manager, code):
            return True
        await refuse(Refusal.DATABASE_UNAVAILABLE)
        return False

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

    def _overloaded(self) -> bool:
        """Asterisk is behind on bridged's ARI requests. A new call now could ring a customer and then
        leave them alone on the line when a request times out; refused, it costs Asterisk a FastAGI
        session and a 503 (no Stasis, no customer leg)."""
        share = shed_share(self.engine.ari.oldest_wait(), self.config.current.ari.max_request_wait)
        return share >= 1.0 or (share > 0.0 and self._random() < share)

    async def _manager_reachable(self, manager: Manager) -> bool:
        """Whether the manager's phone can be rung: Asterisk knows the endpoint and it is not offline."""
        snapshot = await self.engine.ari.get_endpoint("PJSIP", manager.endpoint)
        return snapshot is not None and snapshot.get("state") != "offline"

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
        code = code if known_order else redact(code)
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


def api_actor(client: str) -> str:
    """Who asked, in audit rows, for an API client (a token's name)."""
    return f"token:{client}"
