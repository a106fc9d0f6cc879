"""The ``webhook_outbox`` table: every call state change, until the shop's webhook has taken it (or the
delivery was given up)."""

from __future__ import annotations

import json
from typing import Any

from .base import Aggregate, unavailable_as_one_type


@unavailable_as_one_type
class WebhookOutbox(Aggregate):
    async def queue(self, call_id: str, payload: dict[str, Any]) -> None:
        await self.pool.execute(
            "INSERT INTO webhook_outbox (call_id, payload) VALUES ($1, $2::jsonb)",
            call_id,
            json.dumps(payload),
        )

    async def due(self, limit: int) -> list[tuple[int, str, int]]:
        """Due deliveries as (id, payload JSON text, attempts so far), oldest first."""
        rows = await self.pool.fetch(
            "SELECT id, payload::text AS payload, attempts FROM webhook_outbox"
            " WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()"
            " ORDER BY next_attempt_at, id LIMIT $1",
            limit,
        )
        return [(r["id"], r["payload"], r["attempts"]) for r in rows]

    async def delivered(self, outbox_id: int) -> None:
        await self.pool.execute(
            "UPDATE webhook_outbox SET delivered_at = now(), attempts = attempts + 1 WHERE id = $1", outbox_id
        )

    async def failed(self, outbox_id: int, *, error: str, retry_in: float | None) -> None:
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
