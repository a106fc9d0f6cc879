"""The use case both triggers share: may this manager call this order's customer now?

The phone path (FastAGI) and the HTTP path ask the same :class:`CallService`; nothing about a call
is decided twice.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .calls import CallEngine, CallState, PendingCall, customer_leg_id, manager_leg_id, new_call_id
from .config import Config, Manager
from .deferred import DeferredWrites
from .orders import LookupFailed, OrderDirectory, is_valid_code, may_call
from .outcomes import Outcome, Refusal
from .redact import redact
from .store import DatabaseUnavailable, Store

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
        # Rows about refused attempts that bridged's database did not take (it was away): written later.
        self.deferred = DeferredWrites()

    async def close(self) -> None:
        await self.deferred.close()

    async def audit_refusal(
        self,
        *,
        actor: str,
        reason: str,
        details: dict[str, object] | None = None,
        order_id: str | None = None,
    ) -> None:
        """The refused ``call.request`` audit row of an attempt that got no call row; kept and written
        later if bridged's database is away (the refusal itself stands either way)."""
        at = datetime.now(UTC)
        await self.deferred.write(
            f"refused call.request ({reason}) audit row",
            lambda: self.store.audit(
                actor=actor,
                action="call.request",
                outcome="refused",
                reason=reason,
                order_id=order_id,
                details=dict(details or {}),
                at=at,
            ),
        )

    def overloaded(self) -> bool:
        """Asterisk is behind on bridged's ARI requests. A new call now could ring a customer and then
        leave them alone on the line when a request times out; refused, it costs Asterisk a FastAGI
        session and a 503 (no Stasis, no customer leg)."""
        share = shed_share(self.engine.ari.oldest_wait(), self.config.ari.max_request_wait)
        return share >= 1.0 or (share > 0.0 and self._random() < share)

    def manager_for_endpoint(self, endpoint: str) -> Manager | None:
        return self.config.manager_by_endpoint(endpoint)

    async def refuse_unknown_manager(self, endpoint: str) -> Refused:
        await self.audit_refusal(actor=f"endpoint:{endpoint}"[:80], reason=Refusal.UNKNOWN_MANAGER.value)
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
        created_by: str | None = None,
    ) -> PendingCall | Refused:
        """Check a request and, if it may go ahead, register the call for the engine.

        ``actor`` is who asked (the manager on the phone path, the API token on the HTTP path);
        ``created_by`` the API client the call belongs to (None on the phone path).
        """
        actor = actor or manager.id
        refuse = functools.partial(
            self._refuse, manager, code, direction=direction, actor=actor, created_by=created_by
        )
        if not is_valid_code(self.config.orders, code):
            # The raw input is not stored: a manager could have typed anything, even a number.
            await self.audit_refusal(
                actor=actor, reason=Refusal.INVALID_CODE.value, details={"manager_id": manager.id}
            )
            log.info("call refused for %s: malformed order code", manager.id)
            return Refused(Refusal.INVALID_CODE)
        if not self.is_connected():
            return await refuse(Refusal.UNAVAILABLE)
        if self.overloaded():
            return await refuse(Refusal.OVERLOADED)
        try:
            order = await self.directory.lookup(code)
        except LookupFailed as exc:
            log.warning("order lookup failed for order %s: %s", code, exc)
            return await refuse(Refusal.LOOKUP_FAILED)
        if order is None:
            return await refuse(Refusal.UNKNOWN_ORDER)
        if not may_call(self.config, manager, order):
            return await refuse(Refusal.DENIED)
        if order.phone is None:
            # Dialling what is left of a value that is not a valid number reaches a stranger. The value
            # itself goes nowhere: not in the log, not in the audit row.
            return await refuse(Refusal.INVALID_PHONE)
        call_id = new_call_id()
        try:
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
                created_by=created_by,
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
        known_order = reason in (Refusal.DENIED, Refusal.INVALID_PHONE, Refusal.DATABASE_UNAVAILABLE)
        code = code if known_order else redact(code)
        call_id = new_call_id()
        at = datetime.now(UTC)
        await self.deferred.write(
            f"refused call {call_id} ({reason})",
            lambda: self.store.insert_refused_call(
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
