"""The ``webhook_outbox`` table: every call state change, until the shop's webhook has taken it (or the
delivery was given up).

Several daemons share the table (issue 16). A due row is claimed, not just read: :meth:`WebhookOutbox.claim`
moves its ``next_attempt_at`` past a lease in the statement that picks it, skipping rows another dispatcher
is claiming at that moment, so each due row goes to one dispatcher. One that dies before it writes the
outcome leaves the row to come due again when the lease ends: delivered at least once, never by two
dispatchers at once.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

from .base import Aggregate, unavailable_as_one_type

# The deliveries the retention purge deletes: done before $1. The expression is the one
# webhook_outbox_done_idx indexes, written the same, or the planner does not use it.
DONE_BEFORE = "coalesce(delivered_at, failed_at) < $1"


class Claimed(NamedTuple):
    """A delivery handed to one dispatcher until ``until`` (what :meth:`WebhookOutbox.failed` is given
    back: a later claim of the row, once this one ran out, is not undone by this one's outcome)."""

    id: int
    payload: str  # the event's JSON text, sent as it is
    attempts: int  # attempts made so far
    until: datetime


@unavailable_as_one_type
class WebhookOutbox(Aggregate):
    async def queue(self, call_id: str, payload: dict[str, Any]) -> None:
        await self.pool.execute(
            "INSERT INTO webhook_outbox (call_id, payload) VALUES ($1, $2::jsonb)",
            call_id,
            json.dumps(payload),
        )

    async def claim(self, limit: int, *, lease: float) -> list[Claimed]:
        """Up to ``limit`` due deliveries, oldest first, each handed to this caller alone for ``lease``
        seconds (then due again unless :meth:`delivered` or :meth:`failed` said otherwise)."""
        rows = await self.pool.fetch(
            "WITH due AS (SELECT id, next_attempt_at FROM webhook_outbox"
            " WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()"
            " ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " UPDATE webhook_outbox o SET next_attempt_at = now() + make_interval(secs => $2) FROM due"
            " WHERE o.id = due.id"
            " RETURNING o.id, o.payload::text AS payload, o.attempts, o.next_attempt_at AS until,"
            " due.next_attempt_at AS was_due",
            limit,
            lease,
        )
        rows = sorted(rows, key=lambda r: (r["was_due"], r["id"]))  # RETURNING keeps no order
        return [Claimed(r["id"], r["payload"], r["attempts"], r["until"]) for r in rows]

    async def delivered(self, outbox_id: int) -> None:
        """The shop took it: done, whoever holds the claim now (a second delivery already under way
        cannot be called back; it finds the row delivered and leaves it)."""
        await self.pool.execute(
            "UPDATE webhook_outbox SET delivered_at = now(), attempts = attempts + 1"
            " WHERE id = $1 AND delivered_at IS NULL",
            outbox_id,
        )

    async def failed(self, claimed: Claimed, *, error: str, retry_in: float | None) -> None:
        """Record a failed attempt; ``retry_in`` None gives up on this delivery. Nothing if the claim ran
        out and the row was claimed again (its new holder decides when it is next due) or delivered."""
        await self.pool.execute(
            "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = $2,"
            " next_attempt_at = now() + make_interval(secs => $3),"
            " failed_at = CASE WHEN $4 THEN now() ELSE NULL END"
            " WHERE id = $1 AND next_attempt_at = $5 AND delivered_at IS NULL",
            claimed.id,
            error[:200],
            retry_in or 0.0,
            retry_in is None,
            claimed.until,
        )

    async def purge(self, before: datetime, batch: int) -> int:
        """Delete the deliveries done (delivered, or given up) before ``before``, ``batch`` a statement:
        the number deleted. A row still due stays however old it is. Found by webhook_outbox_done_idx
        (migration 0015): without it each pass read the whole table (a month of deliveries, the first
        pass every delivery ever made) to find one day's."""
        return await self._delete_in_batches("webhook_outbox", DONE_BEFORE, before, batch)
