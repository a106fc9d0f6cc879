"""The ``audit`` table: who did what, when, with which outcome and why. Rows are only ever added."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .base import Aggregate, Page, Window, unavailable_as_one_type


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str
    call_id: str | None
    order_id: str | None
    outcome: str
    reason: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class AuditFilter:
    """The audit rows a page holds: each field given (not None) equals its column."""

    actor: str | None = None
    action: str | None = None
    call_id: str | None = None


@unavailable_as_one_type
class AuditTrail(Aggregate):
    async def add(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        reason: str | None = None,
        call_id: str | None = None,
        order_id: str | None = None,
        details: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """``at`` defaults to the database's now (a write retried later passes when it happened)."""
        await self.pool.execute(
            "INSERT INTO audit (at, actor, action, call_id, order_id, outcome, reason, details)"
            " VALUES (coalesce($8, now()), $1, $2, $3, $4, $5, $6, $7::jsonb)",
            actor,
            action,
            call_id,
            order_id,
            outcome,
            reason,
            json.dumps(details or {}),
            at,
        )

    async def identified_by(self, call_id: str) -> str | None:
        """How an inbound call's caller was told, as the call's accepted ``call.request`` row says
        (bridged.inbound): read only by a daemon adopting the call (bridged.calls.reconcile). None: no such
        row, or it does not say."""
        found = await self.pool.fetchval(
            "SELECT details->>'identified_by' FROM audit"
            " WHERE call_id = $1 AND action = 'call.request' AND outcome = 'accepted' ORDER BY id LIMIT 1",
            call_id,
        )
        return None if found is None else str(found)

    async def page(self, window: Window, only: AuditFilter) -> list[AuditRow]:
        """The window's rows that ``only`` lets through, newest first (by ``at``, then id)."""
        query = (
            Page("SELECT id, at, actor, action, call_id, order_id, outcome, reason, details FROM audit", "at")
            .where("actor = {}", only.actor)
            .where("action = {}", only.action)
            .where("call_id = {}", only.call_id)
        )
        rows = await self.pool.fetch(query.sql(window), *query.args)
        out: list[AuditRow] = []
        for r in rows:
            values = dict(r)
            details = values.pop("details")
            parsed = json.loads(details) if isinstance(details, str) else details
            out.append(AuditRow(**values, details=parsed))
        return out
