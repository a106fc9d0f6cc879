"""What is written about a call attempt that does not become a call here, for bridged.service: refused
(before or after it named an order), passed on to the next daemon, or abandoned while the code was keyed in.

Each is audited, logged and counted here, once for the phone path and the HTTP path; a row bridged's
database does not take (it is away) is kept and written later, at the time it happened (DeferredWrites).
The refusal itself stands either way. The rows of an accepted call are the service's (``_insert``).
"""

from __future__ import annotations

import logging

from . import metrics
from .budgets import Budgets
from .calls.model import new_call_id
from .config import Manager
from .outcomes import Outcome, Refusal, Refused
from .redact import redact
from .store import Store
from .store.deferred import DeferredWrites

# The service's logger: these lines are its decisions, and they read as they did before they moved here.
log = logging.getLogger("bridged.service")


class Refusals:
    def __init__(self, store: Store, deferred: DeferredWrites, budgets: Budgets) -> None:
        self.store = store
        # The service's: rows about refused attempts that bridged's database did not take, written later.
        self.deferred = deferred
        self.budgets = budgets

    async def abandoned_while_keying(self, manager: Manager) -> None:
        """The manager hung up while keying the order code in after ``*77``: an ordinary end.

        Audited as an attempt with outcome ``manager_abandoned``; no call row, as for a malformed
        code: no order was named (what was keyed so far is not known, and could have been anything).
        """
        await self.store.audit.add(
            actor=manager.id,
            action="call.request",
            outcome=Outcome.MANAGER_ABANDONED.value,
            reason="keying_code",
            details=phone_details(manager),
        )
        log.info("manager %s hung up while keying the order code in", manager.id)

    async def passed_on(self, manager: Manager, reason: Refusal, *, actor: str) -> Refused:
        """A phone call this daemon cannot take now, which the dialplan takes to the next daemon: audited
        here (refused, passed on), its call row written by the daemon that takes it."""
        metrics.CALLS_PASSED_ON.inc(reason.value)
        log.info("call for %s passed on to the next daemon: %s", manager.id, reason)
        await self._request_audited(reason, "passed_on", actor=actor, details=phone_details(manager))
        return Refused(reason)

    async def refused_attempt(
        self, reason: Refusal, *, actor: str, details: dict[str, object] | None = None
    ) -> Refused:
        """An attempt refused before it named an order: its refused ``call.request`` audit row and no call
        row; kept and written later if bridged's database is away (the refusal itself stands either way)."""
        metrics.CALLS_REFUSED.inc(reason.value)
        await self._request_audited(reason, "refused", actor=actor, details=dict(details or {}))
        return Refused(reason)

    async def _request_audited(
        self, reason: Refusal, outcome: str, *, actor: str, details: dict[str, object]
    ) -> None:
        """The ``call.request`` audit row of an attempt that got no call row here (refused, or passed on
        to the next daemon); kept and written later if bridged's database is away, at the time it
        happened."""
        await self.deferred.write_stamped(
            f"{outcome.replace('_', '-')} call.request ({reason}) audit row",
            lambda at: self.store.audit.add(
                actor=actor,
                action="call.request",
                outcome=outcome,
                reason=reason.value,
                details=details,
                at=at,
            ),
        )

    async def refused_call(
        self,
        manager: Manager,
        code: str,
        reason: Refusal,
        *,
        direction: str,
        actor: str,
        created_by: str | None,
    ) -> Refused:
        """An attempt refused once it named an order code: its refused call row, and the attempt as the
        budgets count it."""
        # A refused attempt on a well-formed order code is still a call attempt: it gets its row.
        # A code that did not resolve to an order is only what someone typed, and that may be a
        # customer's number (a manager probing): stored masked unless it is a known order.
        known_order = reason in (Refusal.DENIED, Refusal.INVALID_PHONE, Refusal.DATABASE_UNAVAILABLE)
        raw_code, code = code, code if known_order else redact(code)
        call_id = new_call_id()
        await self.deferred.refused(
            f"refused call {call_id}",
            reason,
            lambda at: self.store.calls.insert_refused(
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
        )
        if reason is not Refusal.RATE_LIMITED:  # kept by Budgets.rate_limited, after this row
            await self.budgets.attempted(
                manager, raw_code, reason.value, try_now=reason is not Refusal.DATABASE_UNAVAILABLE
            )
        log.info("call %s refused for %s on order %s: %s", call_id, manager.id, code, reason)
        return Refused(reason, call_id)


def phone_details(manager: Manager) -> dict[str, object]:
    """The details of a phone path's audit row: the manager, and that it came from their phone."""
    return {"manager_id": manager.id, "direction": "phone"}
