"""The ``inbound_sticky`` table: who last talked to an inbound caller, by the caller's keyed hash.

The key is an HMAC-SHA256 of the caller's number under ``inbound.secret`` (bridged.callers), never the
number and never an unkeyed hash of it. A row older than ``inbound.sticky_days`` is of no use: the
write that remembers a caller deletes those in the same statement, so the table holds no more than the
window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .base import Aggregate, unavailable_as_one_type


@dataclass(frozen=True)
class Sticky:
    manager_id: str
    order_id: str | None
    last_at: datetime


@unavailable_as_one_type
class StickyCallers(Aggregate):
    async def last_talked(self, caller_key: str, *, since: datetime) -> Sticky | None:
        """The manager who last talked to the caller, if that was at or after ``since``."""
        row = await self.pool.fetchrow(
            "SELECT manager_id, order_id, last_at FROM inbound_sticky"
            " WHERE caller_key = $1 AND last_at >= $2",
            caller_key,
            since,
        )
        return None if row is None else Sticky(row["manager_id"], row["order_id"], row["last_at"])

    async def remember(
        self, caller_key: str, *, manager_id: str, order_id: str | None, at: datetime, forget_before: datetime
    ) -> None:
        """``manager_id`` talked to the caller at ``at`` (a retried write keeps an older ``at`` from
        overwriting a newer one); rows last written before ``forget_before`` go."""
        await self.pool.execute(
            "WITH gone AS (DELETE FROM inbound_sticky WHERE last_at < $5 AND caller_key <> $1)"
            " INSERT INTO inbound_sticky (caller_key, manager_id, order_id, last_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (caller_key) DO UPDATE SET manager_id = EXCLUDED.manager_id,"
            " order_id = EXCLUDED.order_id, last_at = EXCLUDED.last_at"
            " WHERE inbound_sticky.last_at <= EXCLUDED.last_at",
            caller_key,
            manager_id,
            order_id,
            at,
            forget_before,
        )
