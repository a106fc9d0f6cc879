"""The ``idempotency_keys`` table: the first answer to a ``POST /v1/calls`` per (token, Idempotency-Key)."""

from __future__ import annotations

import json
from typing import Any

from .base import Aggregate, unavailable_as_one_type


@unavailable_as_one_type
class IdempotencyKeys(Aggregate):
    async def claim(
        self, principal: str, key: str, request_hash: str, *, keep_hours: int
    ) -> tuple[bool, str | None, int | None, Any]:
        """Claim ``key`` for a new request, or return the earlier one.

        Returns ``(claimed, request_hash, status, response)``: claimed is True when this request is
        the first with the key; otherwise the stored hash and response (status None while the first
        request is still being handled). Keys older than ``keep_hours`` are forgotten first.
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

    async def remember(self, principal: str, key: str, status: int, response: Any) -> None:
        """The answer the first request got, for the retries."""
        await self.pool.execute(
            "UPDATE idempotency_keys SET status = $3, response = $4::jsonb WHERE principal = $1 AND key = $2",
            principal,
            key,
            status,
            json.dumps(response),
        )

    async def release(self, principal: str, key: str) -> None:
        """The first request got no answer worth remembering: a retry may try again."""
        await self.pool.execute(
            "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND status IS NULL",
            principal,
            key,
        )
