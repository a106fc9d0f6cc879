"""The ``calls`` table: one row per call attempt, and the audit rows written in the same statement.

No customer phone number is ever stored here: the order id is the only link to the customer. A row that
has ended is never revived: every write but the recording's judgement and purge skips an ended row, so
a write retried late (bridged's database was away) cannot undo the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..ari import jsontext
from .attempts import NewAttempt, insert_attempt
from .base import Aggregate, Page, Window, unavailable_as_one_type

COLUMNS = (
    "id, order_id, manager_id, direction, state, outcome, hangup_cause, requested_at, answered_at, "
    "ended_at, recording_name, manager_channel_id, customer_channel_id, bridge_id, ended_by, recording_state,"
    " created_by, recording_purged_at, caller_ref, node, canary"
)
# What an open call's next daemon reads besides (bridged.calls.reconcile): an inbound call's ring plan and
# its caller's key, which nothing else reads.
_OPEN_COLUMNS = f"{COLUMNS}, ring_plan::text AS ring_plan, ring_rung, caller_key"
# As CallRow.recording_available: a recording that was purged, or failed (nothing in it), is no recording.
_RECORDING_AVAILABLE = (
    "recording_name IS NOT NULL AND recording_purged_at IS NULL AND recording_state IS DISTINCT FROM 'failed'"
)

# An ended call is adopted by no one: its caller's key goes (who talked to them is inbound_sticky's).
_FORGET_CALLER = "caller_key = NULL"


_CALL_ROW = (
    "c AS (INSERT INTO calls"
    " (id, order_id, manager_id, direction, state, manager_channel_id, ari_app, customer_channel_id,"
    " created_by, caller_ref, node, canary, ring_plan, ring_rung, caller_key)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $10, $11, $12, $13, $14, $15::jsonb, $16, $17)"
    " RETURNING id, order_id)"
)
_ACCEPTED_AUDIT = (
    " INSERT INTO audit (actor, action, call_id, order_id, outcome, details)"
    " SELECT $8, 'call.request', c.id, c.order_id, 'accepted', $9::jsonb FROM c"
)
_INSERT_AUDITED = f"WITH {_CALL_ROW}{_ACCEPTED_AUDIT}"
# PostgreSQL runs a data-modifying WITH whether or not the main statement reads it.
_INSERT_AUDITED_WITH_ATTEMPT = f"WITH {_CALL_ROW}, a AS ({insert_attempt(18)}){_ACCEPTED_AUDIT}"


@dataclass(frozen=True)
class CallRow:
    id: str
    # None only for an inbound call: a caller without an order; a missed call from them has no manager.
    order_id: str | None
    manager_id: str | None
    direction: str
    state: str
    requested_at: datetime
    # What a call gets as it goes on: none of it yet when it has just been placed.
    outcome: str | None = None
    hangup_cause: int | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    recording_name: str | None = None
    manager_channel_id: str | None = None
    customer_channel_id: str | None = None
    bridge_id: str | None = None
    ended_by: str | None = None
    # complete, truncated, failed or unknown (bridged.recording_state); None: not recorded or not known yet
    recording_state: str | None = None
    # The API client (token name) that placed the call; None for a call dialled from a phone.
    created_by: str | None = None
    recording_purged_at: datetime | None = None
    # An inbound caller without an order: letters derived from the keyed hash of their number.
    caller_ref: str | None = None
    # The Asterisk node the call's channels are on (``ari[].name``); None: the first node (rows written
    # before there was this column).
    node: str | None = None
    # An inbound call to a canary number (bridged.canaries): only ops and admins see it.
    canary: bool = False
    # An open inbound call (read by open_calls only): its ring plan, the JSON array of its steps' manager
    # ids (bridged.routing); how many of those steps have been rung; the caller's keyed hash (None:
    # withheld, or no caller is remembered). None on rows written before these columns.
    ring_plan: str | None = None
    ring_rung: int | None = None
    caller_key: str | None = None

    @property
    def recording_usable(self) -> bool:
        """A recording was made and something of it is there to listen to."""
        return self.recording_name is not None and self.recording_state != "failed"

    @property
    def recording_available(self) -> bool:
        """A recording usable and not purged by the retention."""
        return self.recording_usable and self.recording_purged_at is None

    @property
    def duration(self) -> float | None:
        """Seconds of conversation (answer to end)."""
        if self.answered_at is None or self.ended_at is None:
            return None
        return max(0.0, (self.ended_at - self.answered_at).total_seconds())


@dataclass(frozen=True)
class CallFilter:
    """The calls a page holds: each field given (not None) holds of them."""

    manager_id: str | None = None
    order_id: str | None = None
    outcome: str | None = None
    # A recording is available (CallRow.recording_available), or is not.
    has_recording: bool | None = None


@unavailable_as_one_type
class CallRows(Aggregate):
    # -- a call attempt's row, as the service decides it ------------------------------------------

    async def insert_audited(
        self,
        *,
        call_id: str,
        order_id: str | None,
        manager_id: str | None,
        direction: str,
        state: str,
        manager_channel_id: str | None,
        ari_app: str | None,
        actor: str,
        details: dict[str, Any],
        customer_channel_id: str | None = None,
        created_by: str | None = None,
        caller_ref: str | None = None,
        node: str | None = None,
        canary: bool = False,
        ring_plan: list[list[str]] | None = None,
        caller_key: str | None = None,
        attempt: NewAttempt | None = None,
    ) -> None:
        """The call row and its accepted ``call.request`` audit row, in one statement; with ``attempt``,
        the manager's attempt as the budgets count it too (one round trip less per call, issue 19). An
        inbound call's ``ring_plan`` is written with its first step rung."""
        await self.pool.execute(
            _INSERT_AUDITED if attempt is None else _INSERT_AUDITED_WITH_ATTEMPT,
            call_id,
            order_id,
            manager_id,
            direction,
            state,
            manager_channel_id,
            ari_app,
            actor,
            # orjson, as ARI's bodies (bridged.ari.jsontext): a statement of every call (issue 19).
            jsontext.dumps(details).decode(),
            customer_channel_id,
            created_by,
            caller_ref,
            node,
            canary,
            None if ring_plan is None else jsontext.dumps(ring_plan).decode(),
            None if ring_plan is None else min(len(ring_plan), 1),
            caller_key,
            *(() if attempt is None else attempt.args()),
        )

    async def insert_refused(
        self,
        *,
        call_id: str,
        order_id: str | None,
        manager_id: str | None,
        direction: str,
        outcome: str,
        at: datetime,
        actor: str,
        details: dict[str, Any],
        created_by: str | None = None,
        caller_ref: str | None = None,
    ) -> None:
        """A refused call attempt: its row, ended at once with ``outcome``, and its refused
        ``call.request`` audit row, both at ``at`` (when it was refused: a write retried once the database
        is back keeps the real time). One statement; a retry of one that did go through adds nothing."""
        await self.pool.execute(
            "WITH c AS (INSERT INTO calls (id, order_id, manager_id, direction, state, outcome,"
            " requested_at, ended_at, created_by, caller_ref)"
            " VALUES ($1, $2, $3, $4, 'ended', $5, $6, $6, $9, $10)"
            " ON CONFLICT (id) DO NOTHING RETURNING id, order_id)"
            " INSERT INTO audit (at, actor, action, call_id, order_id, outcome, reason, details)"
            " SELECT $6, $7, 'call.request', c.id, c.order_id, 'refused', $5, $8::jsonb FROM c",
            call_id,
            order_id,
            manager_id,
            direction,
            outcome,
            at,
            actor,
            json.dumps(details),
            created_by,
            caller_ref,
        )

    # -- a live call's row ------------------------------------------------------------------------

    async def set_state(self, call_id: str, state: str) -> None:
        await self.pool.execute(
            "UPDATE calls SET state = $2 WHERE id = $1 AND state <> 'ended'", call_id, state
        )

    async def set_node(self, call_id: str, node: str) -> None:
        """The call moved to another Asterisk node before any of its channels existed (its manager's phone
        could not be rung on the first one)."""
        await self.pool.execute(
            "UPDATE calls SET node = $2 WHERE id = $1 AND state <> 'ended'", call_id, node
        )

    async def set_ring_rung(self, call_id: str, rung: int) -> None:
        """An inbound call rang the next step of its plan: ``rung`` of them have been rung."""
        await self.pool.execute(
            "UPDATE calls SET ring_rung = $2 WHERE id = $1 AND state <> 'ended'", call_id, rung
        )

    async def set_manager(self, call_id: str, *, manager_id: str, manager_channel_id: str) -> None:
        """An inbound call was answered: by this manager, on this leg."""
        await self.pool.execute(
            "UPDATE calls SET manager_id = $2, manager_channel_id = $3 WHERE id = $1 AND state <> 'ended'",
            call_id,
            manager_id,
            manager_channel_id,
        )

    async def mark_bridged(
        self, call_id: str, *, answered_at: datetime, bridge_id: str, recording_name: str | None
    ) -> None:
        await self.pool.execute(
            "UPDATE calls SET state = 'bridged', answered_at = $2, bridge_id = $3, recording_name = $4"
            " WHERE id = $1 AND state <> 'ended'",
            call_id,
            answered_at,
            bridge_id,
            recording_name,
        )

    async def set_recording_state(self, call_id: str, state: str) -> None:
        # Also on an ended row: the recording's end is judged when Asterisk reports it, after the call.
        await self.pool.execute("UPDATE calls SET recording_state = $2 WHERE id = $1", call_id, state)

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
            f" ended_at = coalesce($5, now()), {_FORGET_CALLER} WHERE id = $1 AND state <> 'ended'",
            call_id,
            outcome,
            hangup_cause,
            ended_by,
            ended_at,
        )

    async def finish_audited(
        self,
        call_id: str,
        *,
        outcome: str,
        hangup_cause: int | None,
        ended_by: str | None,
        actor: str,
        order_id: str | None,
        ended_at: datetime | None = None,
    ) -> None:
        """End the row and write its ``call.end`` audit row, in one statement.

        Idempotent like :meth:`finish`: a call that has already ended (say, by a daemon that
        reconciled it after a restart) keeps its first ending and gets no second ``call.end`` row.
        ``ended_at`` defaults to the database's now (a retry passes when the call really ended).
        """
        await self.pool.execute(
            "WITH c AS (UPDATE calls SET state = 'ended', outcome = $2, hangup_cause = $3, ended_by = $4,"
            f" ended_at = coalesce($7, now()), {_FORGET_CALLER}"
            " WHERE id = $1 AND state <> 'ended' RETURNING id)"
            " INSERT INTO audit (actor, action, call_id, order_id, outcome, reason)"
            " SELECT $5, 'call.end', c.id, $6, $2, $4 FROM c",
            call_id,
            outcome,
            hangup_cause,
            ended_by,
            actor,
            order_id,
            ended_at,
        )

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, call_id: str) -> CallRow | None:
        row = await self.pool.fetchrow(f"SELECT {COLUMNS} FROM calls WHERE id = $1", call_id)
        return None if row is None else CallRow(**dict(row))

    async def open_calls(self, ari_app: str) -> list[CallRow]:
        """Calls of a daemon's Stasis application that have not ended (on every node)."""
        rows = await self.pool.fetch(
            f"SELECT {_OPEN_COLUMNS} FROM calls WHERE state <> 'ended' AND ari_app = $1"
            " ORDER BY requested_at",
            ari_app,
        )
        return [CallRow(**dict(r)) for r in rows]

    async def page(self, window: Window, only: CallFilter) -> list[CallRow]:
        """The window's rows that ``only`` lets through, newest first (by ``requested_at``, then id)."""
        query = (
            Page(f"SELECT {COLUMNS} FROM calls", "requested_at")
            .where("manager_id = {}", only.manager_id)
            .where("order_id = {}", only.order_id)
            .where("outcome = {}", only.outcome)
        )
        if only.has_recording is not None:
            query.where(_RECORDING_AVAILABLE if only.has_recording else f"NOT ({_RECORDING_AVAILABLE})")
        rows = await self.pool.fetch(query.sql(window), *query.args)
        return [CallRow(**dict(r)) for r in rows]

    # -- recordings past the retention ------------------------------------------------------------

    async def recordings_due(self, older_than: datetime, limit: int) -> list[tuple[str, str]]:
        """(call id, recording name) of ended calls requested before ``older_than``, recording kept."""
        rows = await self.pool.fetch(
            "SELECT id, recording_name FROM calls WHERE recording_name IS NOT NULL"
            " AND recording_purged_at IS NULL AND state = 'ended' AND requested_at < $1"
            " ORDER BY requested_at LIMIT $2",
            older_than,
            limit,
        )
        return [(r["id"], r["recording_name"]) for r in rows]

    async def mark_recording_purged(
        self, call_id: str, *, actor: str, details: dict[str, Any]
    ) -> datetime | None:
        """Mark the recording purged and audit it, in one transaction; None if it already was."""
        async with self.pool.acquire() as conn, conn.transaction():
            purged_at = await conn.fetchval(
                "UPDATE calls SET recording_purged_at = now() WHERE id = $1 AND recording_purged_at IS NULL"
                " RETURNING recording_purged_at",
                call_id,
            )
            if purged_at is None:
                return None
            await conn.execute(
                "INSERT INTO audit (actor, action, call_id, outcome, details)"
                " VALUES ($1, 'recording.purge', $2, 'purged', $3::jsonb)",
                actor,
                call_id,
                json.dumps(details),
            )
        return purged_at
