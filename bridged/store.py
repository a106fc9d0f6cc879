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

    # -- Idempotency-Key (HTTP POST /v1/calls) --------------------------------------------------

    async def claim_idempotency_key(
        self, principal: str, key: str, request_hash: str, *, keep_hours: int
    ) -> tuple[bool, str | None, int | None, Any]:
        """Claim ``key`` for a new request, or return the earlier one.

        Returns ``(claimed, request_hash, status, response)``: claimed is True when this request is
        the first with the key; otherwise the stored hash and response (status None while the first
        request is still being handled).
        """
        async with self.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
                keep_hours,
            )
            inserted = await conn.fetchval(
                "INSERT INTO idempotency_keys (principal, key, request_hash) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING true",
                principal,
                key,
                request_hash,
            )
            if inserted:
                return True, None, None, None
            row = await conn.fetchrow(
                "SELECT request_hash, status, response FROM idempotency_keys"
                " WHERE principal = $1 AND key = $2",
                principal,
                key,
            )
        if row is None:  # expired between the two statements
            return True, None, None, None
        response = json.loads(row["response"]) if row["response"] is not None else None
        return False, row["request_hash"], row["status"], response

    async def store_idempotent_response(self, principal: str, key: str, status: int, response: Any) -> None:
        await self.pool.execute(
            "UPDATE idempotency_keys SET status = $3, response = $4::jsonb WHERE principal = $1 AND key = $2",
            principal,
            key,
            status,
            json.dumps(response),
        )

    async def release_idempotency_key(self, principal: str, key: str) -> None:
        await self.pool.execute(
            "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND status IS NULL",
            principal,
            key,
        )

    # -- webhook outbox -------------------------------------------------------------------------

    async def queue_webhook(self, call_id: str, payload: dict[str, Any]) -> None:
        await self.pool.execute(
            "INSERT INTO webhook_outbox (call_id, payload) VALUES ($1, $2::jsonb)",
            call_id,
            json.dumps(payload),
        )

    async def due_webhooks(self, limit: int) -> list[tuple[int, str, int]]:
        """Due deliveries as (id, payload JSON text, attempts so far), oldest first."""
        rows = await self.pool.fetch(
            "SELECT id, payload::text AS payload, attempts FROM webhook_outbox"
            " WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()"
            " ORDER BY next_attempt_at, id LIMIT $1",
            limit,
        )
        return [(r["id"], r["payload"], r["attempts"]) for r in rows]

    async def webhook_delivered(self, outbox_id: int) -> None:
        await self.pool.execute(
            "UPDATE webhook_outbox SET delivered_at = now(), attempts = attempts + 1 WHERE id = $1", outbox_id
        )

    async def webhook_failed(self, outbox_id: int, *, error: str, retry_in: float | None) -> None:
        """Record a failed attempt; ``retry_in`` None gives up on this delivery."""
        await self.pool.execute(
            "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = $2,"
            " next_attempt_at = now() + make_interval(secs => $3),"
            " failed_at = CASE WHEN $4 THEN now() ELSE NULL END WHERE id = $1",
            outbox_id,
            error[:200],
            retry_in or 0.0,
            retry_in is None,
        )
