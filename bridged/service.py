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
and every refusal is audited, logged and counted through bridged.refusals.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable

from . import limits
from .ari import AriError
from .ari.nodes import NodeView, on_node
from .budgets import Budgets
from .callers import InboundCaller
from .calls.engine import CallEngine
from .calls.model import (
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
from .canaries import Canary, CanaryRegistry, canary_touched
from .config import ConfigHolder, Manager
from .inbound import InboundDesk
from .orders import Order, OrderDirectory, is_valid_code, order_to_call
from .outcomes import PASSED_ON, Alert, NotStarted, Outcome, Refusal, Refused
from .refusals import Refusals, phone_details
from .store import Store
from .store.attempts import NewAttempt
from .store.base import OUTAGES, DatabaseUnavailable
from .store.deferred import DeferredWrites
from .tasks import Tasks

log = logging.getLogger(__name__)


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
        self.canaries = canaries if canaries is not None else CanaryRegistry(None)
        self.budgets = Budgets(config, store, self.deferred, self._alert)
        # What is written about an attempt that does not become a call here (refused, passed on).
        self.refusals = Refusals(store, self.deferred, self.budgets)
        self.inbound = InboundDesk(
            config,
            store,
            directory,
            engine,
            self.deferred,
            self.canaries,
            accepting_calls=accepting_calls,
            alert=self._alert,
        )
        engine.decide_inbound = self.take_inbound
        engine.order_again = self.order_again
        engine.name_again = self.inbound.name_again
        # Called with canary.called and abuse.suspected (the webhooks).
        self.alerts: list[Alert] = []
        # Writes off a call's path (a canary touch's audit row).
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
            return await self.refusals.refused_attempt(
                Refusal.UNAVAILABLE, actor=f"endpoint:{endpoint or '?'}"[:80]
            )
        with on_node(node):
            manager = self.config.current.manager_by_endpoint(endpoint)
            if manager is None:
                log.info("call refused: endpoint %s is no manager", endpoint or "?")
                return await self.refusals.refused_attempt(
                    Refusal.UNKNOWN_MANAGER, actor=f"endpoint:{endpoint or '?'}"[:80]
                )
            if not code:
                # Not worth the manager keying a code in that this daemon cannot act on: the dialplan
                # asks the next daemon (or plays the prompt) at once.
                if (cannot := self._cannot_take()) is not None:
                    log.info("call refused for %s before the code was keyed in: %s", manager.id, cannot)
                    return await self.refusals.refused_attempt(
                        cannot, actor=manager.id, details=phone_details(manager)
                    )
                keyed = await read_code()
                if keyed is None:
                    await self.refusals.abandoned_while_keying(manager)
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
        link says ``link:<manager>``). Returns the call once its manager leg rings."""
        actor = actor or api_actor(client)
        manager = self.config.current.manager_by_id(manager_id)
        if manager is None:
            log.info("call refused for %s: unknown manager", actor)
            return await self.refusals.refused_attempt(Refusal.UNKNOWN_MANAGER, actor=actor)
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
                return await self.refusals.refused_attempt(
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
        return await self.refusals.refused_attempt(
            Refusal.DATABASE_UNAVAILABLE, actor=actor or api_actor(client), details={"manager_id": manager_id}
        )

    async def take_inbound(self, call: Call, caller: InboundCaller) -> InboundPlan | CanaryPlan | TurnedAway:
        """A customer called ``caller.did``: who they are, whom to ring, the call's row (bridged.inbound)."""
        return await self.inbound.take(call, caller)

    def _alert(self, kind: str, about: str, data: dict[str, object]) -> None:
        for alert in self.alerts:
            try:
                alert(kind, about, data)
            except Exception:
                log.exception("%s not sent", kind)

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
        Asterisk node the call is placed on, then (HTTP path) the others the manager may be rung on.

        The steps, in this order: the order and the refusals (:meth:`_may_call`); the call as the engine
        will know it, its customer rung at once on the phone path (:meth:`_pending`); its row
        (:meth:`_insert`), written before the engine knows the call on the HTTP path and off the setup's
        critical path on the phone's (:meth:`_phone_row_behind`); a canary order's audit row."""
        refuse = functools.partial(
            self.refusals.refused_call, manager, code, direction=direction, actor=actor, created_by=created_by
        )
        found = await self._may_call(
            manager, code, refuse, actor=actor, overloaded=overloaded, others_follow=others_follow
        )
        if isinstance(found, Refused):
            return found
        nodes = nodes or (self.engine.nodes.current(),)
        config = self.config.current
        canary = self.canaries.of_order(found, config.orders, config.inbound.secret)
        phone = direction == "phone"
        # A phone's customer is rung now, while the FastAGI answer goes out (issue 19), unless bridged's
        # database was away lately: then the row comes first, and a call it does not take rings nobody.
        ring_now = phone and canary is None and not OUTAGES.seen_within(30.0)
        pending = await self._pending(
            found, manager, direction, manager_channel_id, nodes=nodes, canary=canary, ring_now=ring_now
        )
        # Recorded with the call's row, in its statement.
        accepted = self.budgets.attempt(manager, code, limits.ACCEPTED)
        insert = self._insert(
            pending, code, accepted, actor=actor, created_by=created_by, callback_of=callback_of
        )
        if not phone and not await self._row(insert, manager, code):
            return await refuse(Refusal.DATABASE_UNAVAILABLE)
        if not ring_now:
            self.engine.expect(pending)
        if phone:
            await self._phone_row_behind(pending, insert, refuse, code, accepted)
        if canary is not None:
            self._background.spawn(
                canary_touched(
                    self.deferred, self.store.audit, pending.call_id, manager.id, canary, pending.row_written
                ),
                name=f"canary-{pending.call_id}",
            )
        log.info("call %s accepted: manager %s order %s", pending.call_id, manager.id, code)
        return pending

    async def _may_call(
        self,
        manager: Manager,
        code: str,
        refuse: Callable[[Refusal], Awaitable[Refused]],
        *,
        actor: str,
        overloaded: bool | None,
        others_follow: bool,
    ) -> Order | Refused:
        """The order ``code`` names, if ``manager`` may call its customer now; else the refusal, audited
        and counted here (``others_follow``: what the dialplan takes to the next daemon is passed on).

        A budget gone past comes first, then a malformed code: what the lookup found then goes nowhere."""
        valid = is_valid_code(self.config.current.orders, code)
        exceeded, found = await self._budgets_and_order(manager, code, valid, overloaded)
        if exceeded is not None:
            return await self.budgets.rate_limited(manager, code, exceeded, refuse)
        if not valid:
            # The raw input is not stored: a manager could have typed anything, even a number.
            log.info("call refused for %s: malformed order code", manager.id)
            await self.budgets.attempted(manager, code, Refusal.INVALID_CODE.value)
            return await self.refusals.refused_attempt(
                Refusal.INVALID_CODE, actor=actor, details={"manager_id": manager.id}
            )
        assert found is not None
        if others_follow and found in PASSED_ON:
            assert isinstance(found, Refusal)
            return await self.refusals.passed_on(manager, found, actor=actor)
        if isinstance(found, Refusal):
            return await refuse(found)
        return found

    async def _budgets_and_order(
        self, manager: Manager, code: str, valid: bool, overloaded: bool | None
    ) -> tuple[limits.Exceeded | None, Order | Refusal | None]:
        """The budget ``manager`` would go past, if any, and (a ``valid`` code) the order or why not.

        Gathered only when a budget applies: with none, the lookup is awaited alone and no task is made."""
        if valid and self.budgets.apply_to(manager):
            # The budgets (bridged's database) and the order (the shop's) are independent: asked at once
            # (issue 19: a round trip less). Past a budget, what the lookup found goes nowhere.
            return await asyncio.gather(
                self.budgets.over(manager, code), self._order_for(manager, code, overloaded)
            )
        if valid:
            # No budget to check: the lookup awaited directly (no tasks, no loop iteration to start them).
            return None, await self._order_for(manager, code, overloaded)
        return await self.budgets.over(manager, code), None

    async def _pending(
        self,
        found: Order,
        manager: Manager,
        direction: str,
        manager_channel_id: str | None,
        *,
        nodes: tuple[str, ...],
        canary: Canary | None,
        ring_now: bool,
    ) -> PendingCall:
        """The accepted call as the engine will know it. ``ring_now`` (phone path): the engine rings its
        customer at once, and the label is made only once the originate's request went out, as nothing
        shows it before the FastAGI answer (issue 19)."""
        label = functools.partial(self.engine.labeller.label, found.id, found.customer_name)
        call_id = new_call_id()
        pending = PendingCall(
            call_id=call_id,
            order=found,
            manager=manager,
            direction=direction,
            manager_channel_id=manager_channel_id,
            label=self.engine.labeller.anonymous() if ring_now else label(),
            nodes=nodes,
            canary=canary is not None,
        )
        if ring_now:
            self.engine.expect(pending, ring_now=True)
            # One loop iteration: the originate task writes its request now, ahead of the label (nothing
            # shows it before the FastAGI answer) and the row's statement (issue 19: 0.35 ms on 2 cores).
            await asyncio.sleep(0)
            pending.labelled(label())
        return pending

    def _insert(
        self,
        pending: PendingCall,
        code: str,
        accepted: NewAttempt,
        *,
        actor: str,
        created_by: str | None,
        callback_of: str | None,
    ) -> Callable[[], Awaitable[None]]:
        """The accepted call's row and audit row, with its ``accepted`` attempt, in one statement: not yet
        written (the HTTP path writes it before the engine knows the call, the phone path behind it)."""
        call_id, manager, direction = pending.call_id, pending.manager, pending.direction
        return functools.partial(
            self.store.calls.insert_audited,
            call_id=call_id,
            order_id=code,
            manager_id=manager.id,
            direction=direction,
            # A phone's call rings the customer as soon as its channel enters Stasis: the row says so
            # from the start, and no UPDATE follows (a restart adopts or ends it alike).
            state=(CallState.RINGING_CUSTOMER if direction == "phone" else CallState.REQUESTED).value,
            # The phone's channel, or the one bridged will make to ring the manager (HTTP).
            manager_channel_id=pending.manager_channel_id or manager_leg_id(call_id),
            customer_channel_id=customer_leg_id(call_id),
            ari_app=self.config.current.ari.app,
            actor=actor,
            details={
                "manager_id": manager.id,
                "direction": direction,
                **({"callback_of": callback_of} if callback_of else {}),
            },
            created_by=created_by,
            node=pending.nodes[0],
            attempt=accepted,
        )

    async def _phone_row_behind(
        self,
        pending: PendingCall,
        insert: Callable[[], Awaitable[None]],
        refuse: Callable[[Refusal], Awaitable[Refused]],
        code: str,
        accepted: NewAttempt,
    ) -> None:
        """A phone call's row, set going once Asterisk took the customer's originate (if it was sent; not
        longer than EARLY_ANSWER_WAIT) and written in the background (:meth:`_phone_row`): the FastAGI
        answer does not wait for it."""
        if pending.early is not None and pending.early.originating is not None:
            # Asterisk takes the originate before the FastAGI answer, the row's insert and the
            # manager's dialplan compete with it for the machine (on 2 cores they doubled it). Not
            # longer than EARLY_ANSWER_WAIT: an Asterisk slow to answer ARI must not keep the phone
            # from its 180 (the call in Stasis acts on the originate's end, whenever it comes).
            await asyncio.wait([pending.early.originating], timeout=EARLY_ANSWER_WAIT)
        # Written off the setup's critical path, after the originate went out; the call goes on in
        # Stasis once it is written (bridged.calls.steps.ring_customer).
        pending.row_being_written(
            asyncio.ensure_future(self._phone_row(insert, refuse, pending.manager, code, accepted))
        )

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
        accepted: NewAttempt,
    ) -> bool:
        """A phone call's row, written in the background; not taken: the refusal's row (the call in
        Stasis then plays the manager prompts.unavailable and never dials the customer).

        The accepted attempt went with the row: kept for later, as it was when it had a write of its own
        (a phone's call counts as accepted, then as refused: the budgets saw both before)."""
        if await self._row(insert, manager, code):
            return True
        await self.budgets.keep(accepted, try_now=False)
        await refuse(Refusal.DATABASE_UNAVAILABLE)
        return False

    async def order_again(self, call: Call) -> tuple[Order, bool] | Refusal:
        """An HTTP call adopted while its manager's phone rang, now answered: its order as the shop has it
        now (the customer's number is kept nowhere), if the manager may still call it, and whether it is a
        canary order (never dialled). Else why not (logged), decided as for a new call."""
        config = self.config.current
        if call.manager is None:  # removed from the config since the call was placed
            found: Order | Refusal = Refusal.UNKNOWN_MANAGER
        elif call.order_id is None:
            found = Refusal.UNKNOWN_ORDER
        else:
            found = await order_to_call(self.directory, config, call.manager, call.order_id)
        if isinstance(found, Refusal):
            log.warning("call %s: the adopted call's order cannot be called: %s", call.id, found.value)
            return found
        return found, self.canaries.of_order(found, config.orders, config.inbound.secret) is not None

    async def _order_for(self, manager: Manager, code: str, overloaded: bool | None) -> Order | Refusal:
        """The order, if a call to its customer may go ahead now; else why not."""
        if not self.accepting_calls():
            return Refusal.UNAVAILABLE
        if self._overloaded() if overloaded is None else overloaded:
            return Refusal.OVERLOADED
        return await order_to_call(self.directory, self.config.current, manager, code)

    def _cannot_take(self) -> Refusal | None:
        """Why this daemon cannot take a call on the current node now, if it cannot."""
        if not self.accepting_calls():
            return Refusal.UNAVAILABLE
        return Refusal.OVERLOADED if self._overloaded() else None

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


# How long the FastAGI answer waits for Asterisk to take a customer's originate (about 1 ms as a rule).
EARLY_ANSWER_WAIT = 0.2


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
