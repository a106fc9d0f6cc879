"""Per-manager budgets as the service applies them (bridged.limits decides over the attempts): the check
before each decision, the refusal past a budget with its alert, and each attempt as the budgets count it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from . import limits, metrics
from .config import ConfigHolder, Manager
from .outcomes import Refusal
from .store import Store
from .store.attempts import NewAttempt
from .store.base import DatabaseUnavailable
from .store.deferred import DeferredWrites

if TYPE_CHECKING:
    from .outcomes import Refused

log = logging.getLogger(__name__)


class Budgets:
    def __init__(
        self,
        config: ConfigHolder,
        store: Store,
        deferred: DeferredWrites,
        alert: Callable[[str, str, dict[str, object]], None],
    ) -> None:
        self.config = config
        self.store = store
        self.deferred = deferred
        self.alert = alert

    def apply_to(self, manager: Manager) -> bool:
        """Whether any budget limits ``manager`` (none: :meth:`over` reads nothing)."""
        budget = self.config.current.limits.budget(manager.id)
        return not (
            budget.calls is None and budget.distinct_orders is None and budget.refused_in_a_row is None
        )

    async def over(self, manager: Manager, code: str) -> limits.Exceeded | None:
        """Whether one more attempt by ``manager`` goes past a budget (one statement, reading rows bounded
        by the budgets). If bridged's database is away the attempt goes on: it is refused at its row's
        write anyway."""
        if not self.apply_to(manager):
            return None
        config = self.config.current.limits
        budget = config.budget(manager.id)
        try:
            now, counted = await self.store.attempts.window(manager.id, config.window, budget, code)
        except DatabaseUnavailable as exc:
            log.warning("budgets of %s not checked: bridged's database is unavailable (%s)", manager.id, exc)
            return None
        return limits.decide(counted, now=now, window=timedelta(seconds=config.window), budget=budget)

    async def rate_limited(
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
        await self.attempted(manager, code, limits.RATE_LIMITED)
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
            self.alert("abuse.suspected", refused.call_id or f"manager:{manager.id}", data)
        return replace(refused, retry_after=exceeded.retry_after)

    def attempt(self, manager: Manager, code: str, outcome: str) -> NewAttempt:
        """The attempt as the budgets count it, now: never the code itself unless it named a known
        order."""
        return NewAttempt(
            manager_id=manager.id,
            outcome=outcome,
            order_id=code if outcome in limits.KNOWN_ORDER else None,
            keyed=limits.code_shape(code, self.config.current.orders.code_pattern),
            at=datetime.now(UTC),
        )

    async def attempted(self, manager: Manager, code: str, outcome: str, *, try_now: bool = True) -> None:
        """The attempt recorded now, or kept for later if bridged's database is away."""
        await self.keep(self.attempt(manager, code, outcome), try_now=try_now)

    async def keep(self, attempt: NewAttempt, *, try_now: bool = True) -> None:
        """:meth:`attempted` of an attempt made earlier (``try_now`` False: the database was found away a
        moment ago; kept without waiting on it again)."""
        await self.deferred.write(
            f"attempt of {attempt.manager_id} ({attempt.outcome})",
            lambda: self.store.attempts.record(attempt),
            try_now=try_now,
        )
