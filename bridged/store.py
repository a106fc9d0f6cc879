"""Every SQL statement the daemon runs on its own database, in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

CALL_COLUMNS = (
    "id, order_id, manager_id, direction, state, outcome, hangup_cause, requested_at, answered_at, "
    "ended_at, recording_name, manager_channel_id, customer_channel_id, bridge_id, ended_by"
)


@dataclass(frozen=True)
class CallRow:
    id: str
    order_id: str
    manager_id: str
    direction: str
    state: str
    outcome: str | None
    hangup_cause: int | None
    requested_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    recording_name: str | None
    manager_channel_id: str | None
    customer_channel_id: str | None
    bridge_id: str | None
    ended_by: str | None

    @property
    def duration(self) -> float | None:
        """Seconds of conversation (answer to end)."""
        if self.answered_at is None or self.ended_at is None:
            return None
        return max(0.0, (self.ended_at - self.answered_at).total_seconds())


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def insert_call(
        self,
        *,
        call_id: str,
        order_id: str,
        manager_id: str,
        direction: str,
        state: str,
        manager_channel_id: str | None,
    ) -> None:
        await self.pool.execute(
            "INSERT INTO calls (id, order_id, manager_id, direction, state, manager_channel_id)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            call_id,
            order_id,
            manager_id,
            direction,
            state,
            manager_channel_id,
        )

    async def set_state(self, call_id: str, state: str) -> None:
        await self.pool.execute("UPDATE calls SET state = $2 WHERE id = $1", call_id, state)

    async def set_channels(
        self, call_id: str, *, manager_channel_id: str | None = None, customer_channel_id: str | None = None
    ) -> None:
        await self.pool.execute(
            "UPDATE calls SET manager_channel_id = coalesce($2, manager_channel_id),"
            " customer_channel_id = coalesce($3, customer_channel_id) WHERE id = $1",
            call_id,
            manager_channel_id,
            customer_channel_id,
        )

    async def mark_bridged(
        self, call_id: str, *, answered_at: datetime, bridge_id: str, recording_name: str | None
    ) -> None:
        await self.pool.execute(
            "UPDATE calls SET state = 'bridged', answered_at = $2, bridge_id = $3, recording_name = $4"
            " WHERE id = $1",
            call_id,
            answered_at,
            bridge_id,
            recording_name,
        )

    async def finish(
        self,
        call_id: str,
        *,
        outcome: str,
        hangup_cause: int | None,
        ended_by: str | None,
        ended_at: datetime | None = None,
    ) -> None:
        # Idempotent: a call finalized once (e.g. before a restart) keeps its first ending.
        await self.pool.execute(
            "UPDATE calls SET state = 'ended', outcome = $2, hangup_cause = $3, ended_by = $4,"
            " ended_at = coalesce($5, now()) WHERE id = $1 AND state <> 'ended'",
            call_id,
            outcome,
            hangup_cause,
            ended_by,
            ended_at,
        )

    async def get_call(self, call_id: str) -> CallRow | None:
        row = await self.pool.fetchrow(f"SELECT {CALL_COLUMNS} FROM calls WHERE id = $1", call_id)
        return None if row is None else CallRow(**dict(row))

    async def open_calls(self) -> list[CallRow]:
        rows = await self.pool.fetch(
            f"SELECT {CALL_COLUMNS} FROM calls WHERE state <> 'ended' ORDER BY requested_at"
        )
        return [CallRow(**dict(r)) for r in rows]

    async def audit(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        reason: str | None = None,
        call_id: str | None = None,
        order_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        await self.pool.execute(
            "INSERT INTO audit (actor, action, call_id, order_id, outcome, reason, details)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
            actor,
            action,
            call_id,
            order_id,
            outcome,
            reason,
            json.dumps(details or {}),
        )
