"""The use case both triggers share: may this manager call this order's customer now?

The phone path (FastAGI) and the HTTP path ask the same :class:`CallService`; nothing about a call
is decided twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from .calls import CallEngine, CallState, Outcome, PendingCall, customer_leg_id, manager_leg_id, new_call_id
from .config import Config, Manager
from .orders import LookupFailed, OrderDirectory, Refusal, is_valid_code, may_call
from .redact import redact
from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    reason: Refusal
    call_id: str | None = None


def shed_share(oldest_wait: float, limit: float) -> float:
    """The share of new calls refused while the oldest ARI request has waited ``oldest_wait`` seconds.

    None up to half of ``ari.max_request_wait``, then growing in proportion, all of them from the limit
    on. An on/off switch at the limit refused in bursts: at the edge of capacity it refused up to 32% of
    the calls where the ramp refused 8-9%, and at twice the sustainable rate it completed somewhat fewer
    (bench/RESULTS.md). 0 turns the guard off."""
    if limit <= 0 or oldest_wait <= limit / 2:
        return 0.0
    return min(1.0, (oldest_wait - limit / 2) / (limit / 2))


class CallService:
    def __init__(
        self,
        config: Config,
        store: Store,
        directory: OrderDirectory,
        engine: CallEngine,
        *,
        is_connected: Callable[[], bool],
        random: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.engine = engine
        self.is_connected = is_connected
        self._random = random

    def overloaded(self) -> bool:
        """Asterisk is behind on bridged's ARI requests. A new call now could ring a customer and then
        leave them alone on the line when a request times out; refused, it costs Asterisk a FastAGI
        session and a 503 (no Stasis, no customer leg)."""
        share = shed_share(self.engine.ari.oldest_wait(), self.config.ari.max_request_wait)
        return share >= 1.0 or (share > 0.0 and self._random() < share)

    def manager_for_endpoint(self, endpoint: str) -> Manager | None:
        return self.config.manager_by_endpoint(endpoint)

    async def refuse_unknown_manager(self, endpoint: str) -> Refused:
        await self.store.audit(
            actor=f"endpoint:{endpoint}"[:80],
            action="call.request",
            outcome="refused",
            reason=Refusal.UNKNOWN_MANAGER.value,
        )
        log.info("call refused: endpoint %s is no manager", endpoint)
        return Refused(Refusal.UNKNOWN_MANAGER)

    async def abandoned_while_keying(self, manager: Manager) -> None:
        """The manager hung up while keying the order code in after ``*77``: an ordinary end.

        Audited as an attempt with outcome ``manager_abandoned``; no call row, as for a malformed
        code: no order was named (what was keyed so far is not known, and could have been anything).
        """
        await self.store.audit(
            actor=manager.id,
            action="call.request",
            outcome=Outcome.MANAGER_ABANDONED.value,
            reason="keying_code",
            details={"manager_id": manager.id, "direction": "phone"},
        )
        log.info("manager %s hung up while keying the order code in", manager.id)

    async def manager_reachable(self, manager: Manager) -> bool:
        """Whether the manager's phone can be rung: Asterisk knows the endpoint and it is not offline."""
        snapshot = await self.engine.ari.get_endpoint("PJSIP", manager.endpoint)
        return snapshot is not None and snapshot.get("state") != "offline"

    async def request(
        self,
        manager: Manager,
        code: str,
        *,
        direction: str,
        manager_channel_id: str | None,
        actor: str | None = None,
    ) -> PendingCall | Refused:
        """Check a request and, if it may go ahead, register the call for the engine.

        ``actor`` is who asked (the manager on the phone path, the API token on the HTTP path).
        """
        actor = actor or manager.id
        if not is_valid_code(self.config.orders, code):
            # The raw input is not stored: a manager could have typed anything, even a number.
            await self.store.audit(
                actor=actor,
                action="call.request",
                outcome="refused",
                reason=Refusal.INVALID_CODE.value,
                details={"manager_id": manager.id},
            )
            log.info("call refused for %s: malformed order code", manager.id)
            return Refused(Refusal.INVALID_CODE)
        if not self.is_connected():
            return await self._refuse(manager, code, Refusal.UNAVAILABLE, direction, actor)
        if self.overloaded():
            return await self._refuse(manager, code, Refusal.OVERLOADED, direction, actor)
        try:
            order = await self.directory.lookup(code)
        except LookupFailed as exc:
            log.warning("order lookup failed for order %s: %s", code, exc)
            return await self._refuse(manager, code, Refusal.LOOKUP_FAILED, direction, actor)
        if order is None:
            return await self._refuse(manager, code, Refusal.UNKNOWN_ORDER, direction, actor)
        if not may_call(self.config, manager, order):
            return await self._refuse(manager, code, Refusal.DENIED, direction, actor)
        if order.phone is None:
            # Dialling what is left of a value that is not a valid number reaches a stranger. The value
            # itself goes nowhere: not in the log, not in the audit row.
            return await self._refuse(manager, code, Refusal.INVALID_PHONE, direction, actor)
        call_id = new_call_id()
        await self.store.insert_call_audited(
            call_id=call_id,
            order_id=code,
            manager_id=manager.id,
            direction=direction,
            state=CallState.REQUESTED.value,
            # The phone's channel, or the one bridged will originate to the manager (HTTP).
            manager_channel_id=manager_channel_id or manager_leg_id(call_id),
            customer_channel_id=customer_leg_id(call_id),
            ari_app=self.config.ari.app,
            actor=actor,
            details={"manager_id": manager.id, "direction": direction},
        )
        pending = PendingCall(
            call_id=call_id,
            order=order,
            manager=manager,
            direction=direction,
            manager_channel_id=manager_channel_id,
            label=self.engine.labeller.label(order.id, order.customer_name),
        )
        self.engine.expect(pending)
        log.info("call %s accepted: manager %s order %s", call_id, manager.id, code)
        return pending

    async def _refuse(
        self, manager: Manager, code: str, reason: Refusal, direction: str, actor: str
    ) -> Refused:
        # A refused attempt on a well-formed order code is still a call attempt: it gets its row.
        # A code that did not resolve to an order is only what someone typed, and that may be a
        # customer's number (a manager probing): stored masked unless it is a known order.
        code = code if reason in (Refusal.DENIED, Refusal.INVALID_PHONE) else redact(code)
        call_id = new_call_id()
        await self.store.insert_call(
            call_id=call_id,
            order_id=code,
            manager_id=manager.id,
            direction=direction,
            state=CallState.REQUESTED.value,
            manager_channel_id=None,
        )
        await self.store.finish(call_id, outcome=reason.value, hangup_cause=None, ended_by=None)
        await self.store.audit(
            actor=actor,
            action="call.request",
            outcome="refused",
            reason=reason.value,
            call_id=call_id,
            order_id=code,
            details={"manager_id": manager.id, "direction": direction},
        )
        log.info("call %s refused for %s on order %s: %s", call_id, manager.id, code, reason)
        return Refused(reason, call_id)

    def prompt_for(self, reason: Refusal) -> str:
        prompts = self.config.prompts
        return {
            Refusal.UNKNOWN_MANAGER: prompts.unknown_manager,
            Refusal.INVALID_CODE: prompts.invalid_code,
            Refusal.UNKNOWN_ORDER: prompts.unknown_order,
            Refusal.DENIED: prompts.denied,
            Refusal.LOOKUP_FAILED: prompts.lookup_failed,
            Refusal.UNAVAILABLE: prompts.unavailable,
            Refusal.OVERLOADED: prompts.overloaded,
            Refusal.INVALID_PHONE: prompts.invalid_phone,
        }[reason]
