"""Every SQL statement the daemon runs on its own database, in one place."""

from __future__ import annotations

import functools
import inspect
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import asyncpg

CALL_COLUMNS = (
    "id, order_id, manager_id, direction, state, outcome, hangup_cause, requested_at, answered_at, "
    "ended_at, recording_name, manager_channel_id, customer_channel_id, bridge_id, ended_by, recording_state,"
    " created_by"
)


class DatabaseUnavailable(Exception):
    """bridged's own database did not answer: down, refusing connections, restarting, out of
    connections. The message is the underlying exception's type only (its text may quote values)."""


# What PostgreSQL being away (or the way to it) looks like through asyncpg. Anything else (a constraint,
# a bad value) is a bug to see, not an outage to wait out.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: the connection broke
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    # 55000 at connect: the database does not accept connections now (ALLOW_CONNECTIONS false)
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)

P = ParamSpec("P")
R = TypeVar("R")


def _translated(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc

    return wrapper


def _unavailable_as_one_type(cls: type[Any]) -> type[Any]:
    """Class decorator: every public coroutine method raises DatabaseUnavailable for an outage, so callers
    catch one type, in one place, whatever asyncpg raised."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _translated(member))
    return cls


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
    # complete, truncated, failed or unknown (bridged.recording_state); None: not recorded or not known yet
    recording_state: str | None = None

    @property
    def recording_usable(self) -> bool:
        """A recording was made and something of it is there to listen to."""
        return self.recording_name is not None and self.recording_state != "failed"

    # The API client (token name) that placed the call; None for a call dialled from a phone.
    created_by: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds of conversation (answer to end)."""
        if self.answered_at is None or self.ended_at is None:
            return None
        return max(0.0, (self.ended_at - self.answered_at).total_seconds())


def _filter_builder() -> tuple[list[str], list[Any], Callable[[Any], str]]:
    """WHERE clauses and their arguments for a filtered listing: ``arg(v)`` returns the next ``$n``."""
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    return where, args, arg


CURSOR_SECRET_KEY = "api.cursor_secret"


@_unavailable_as_one_type
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
        ari_app: str | None = None,
    ) -> None:
        await self.pool.execute(
            "INSERT INTO calls (id, order_id, manager_id, direction, state, manager_channel_id, ari_app)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            call_id,
            order_id,
            manager_id,
            direction,
            state,
            manager_channel_id,
            ari_app,
        )

    async def set_state(self, call_id: str, state: str) -> None:
        # Never back from ended: a write retried late (bridged's database was away) must not revive a row.
        await self.pool.execute(
            "UPDATE calls SET state = $2 WHERE id = $1 AND state <> 'ended'", call_id, state
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
            " ended_at = coalesce($5, now()) WHERE id = $1 AND state <> 'ended'",
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
            " ended_at = coalesce($7, now()) WHERE id = $1 AND state <> 'ended' RETURNING id)"
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

    async def get_call(self, call_id: str) -> CallRow | None:
        row = await self.pool.fetchrow(f"SELECT {CALL_COLUMNS} FROM calls WHERE id = $1", call_id)
        return None if row is None else CallRow(**dict(row))

    async def open_calls(self, ari_app: str) -> list[CallRow]:
        """Calls of this daemon's Stasis application that have not ended."""
        rows = await self.pool.fetch(
            f"SELECT {CALL_COLUMNS} FROM calls WHERE state <> 'ended' AND ari_app = $1 ORDER BY requested_at",
            ari_app,
        )
        return [CallRow(**dict(r)) for r in rows]

    async def insert_call_audited(
        self,
        *,
        call_id: str,
        order_id: str,
        manager_id: str,
        direction: str,
        state: str,
        manager_channel_id: str | None,
        ari_app: str | None,
        actor: str,
        details: dict[str, Any],
        customer_channel_id: str | None = None,
        created_by: str | None = None,
    ) -> None:
        """The call row and its accepted ``call.request`` audit row, in one statement."""
        await self.pool.execute(
            "WITH c AS (INSERT INTO calls"
            " (id, order_id, manager_id, direction, state, manager_channel_id, ari_app, customer_channel_id,"
            " created_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $10, $11) RETURNING id, order_id)"
            " INSERT INTO audit (actor, action, call_id, order_id, outcome, details)"
            " SELECT $8, 'call.request', c.id, c.order_id, 'accepted', $9::jsonb FROM c",
            call_id,
            order_id,
            manager_id,
            direction,
            state,
            manager_channel_id,
            ari_app,
            actor,
            json.dumps(details),
            customer_channel_id,
            created_by,
        )

    async def insert_refused_call(
        self,
        *,
        call_id: str,
        order_id: str,
        manager_id: str,
        direction: str,
        outcome: str,
        at: datetime,
        actor: str,
        details: dict[str, Any],
        created_by: str | None = None,
    ) -> None:
        """A refused call attempt: its row, ended at once with ``outcome``, and its refused
        ``call.request`` audit row, both at ``at`` (when it was refused: a write retried once the database
        is back keeps the real time). One statement; a retry of one that did go through adds nothing."""
        await self.pool.execute(
            "WITH c AS (INSERT INTO calls (id, order_id, manager_id, direction, state, outcome,"
            " requested_at, ended_at, created_by) VALUES ($1, $2, $3, $4, 'ended', $5, $6, $6, $9)"
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
        )

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

    async def cursor_secret(self) -> str:
        """The secret the API signs its pagination cursors with: made once, kept in ``settings``, so
        cursors outlive a restart and hold across daemons sharing this database."""
        for _ in range(2):
            value = await self.pool.fetchval(
                "WITH made AS (INSERT INTO settings (key, value, updated_by)"
                " VALUES ($1, to_jsonb($2::text), 'bridged') ON CONFLICT (key) DO NOTHING RETURNING value)"
                " SELECT value FROM made UNION ALL SELECT value FROM settings WHERE key = $1 LIMIT 1",
                CURSOR_SECRET_KEY,
                secrets.token_hex(32),
            )
            # None: another daemon made it in the same instant, after this statement's snapshot.
            if value is not None:
                secret = json.loads(value)
                if isinstance(secret, str) and len(secret) >= 32:
                    return secret
                raise ValueError(f"settings {CURSOR_SECRET_KEY} holds no usable secret")
        raise ValueError(f"settings {CURSOR_SECRET_KEY} could not be read")

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

    # -- ops review (issue 4): call history, audit trail, settings, retention -------------------------

    async def list_calls(
        self,
        *,
        manager_id: str | None = None,
        order_id: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        has_recording: bool | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[ReviewCallRow]:
        """Newest first; ``before`` is the (requested_at, id) of the last row of the previous page."""
        where, args, arg = _filter_builder()
        if manager_id is not None:
            where.append(f"manager_id = {arg(manager_id)}")
        if order_id is not None:
            where.append(f"order_id = {arg(order_id)}")
        if outcome is not None:
            where.append(f"outcome = {arg(outcome)}")
        if since is not None:
            where.append(f"requested_at >= {arg(since)}")
        if until is not None:
            where.append(f"requested_at < {arg(until)}")
        # As ReviewCallRow.recording_available: a failed recording (nothing in it) is no recording.
        available = (
            "recording_name IS NOT NULL AND recording_purged_at IS NULL"
            " AND recording_state IS DISTINCT FROM 'failed'"
        )
        if has_recording is True:
            where.append(available)
        elif has_recording is False:
            where.append(f"NOT ({available})")
        if before is not None:
            where.append(f"(requested_at, id) < ({arg(before[0])}, {arg(before[1])})")
        sql = (
            f"SELECT {REVIEW_CALL_COLUMNS} FROM calls"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY requested_at DESC, id DESC LIMIT {arg(limit)}"
        )
        rows = await self.pool.fetch(sql, *args)
        return [ReviewCallRow(**dict(r)) for r in rows]

    async def get_review_call(self, call_id: str) -> ReviewCallRow | None:
        row = await self.pool.fetchrow(f"SELECT {REVIEW_CALL_COLUMNS} FROM calls WHERE id = $1", call_id)
        return None if row is None else ReviewCallRow(**dict(row))

    async def list_audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        call_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: tuple[datetime, int] | None = None,
        limit: int = 50,
    ) -> list[AuditRow]:
        where, args, arg = _filter_builder()
        if actor is not None:
            where.append(f"actor = {arg(actor)}")
        if action is not None:
            where.append(f"action = {arg(action)}")
        if call_id is not None:
            where.append(f"call_id = {arg(call_id)}")
        if since is not None:
            where.append(f"at >= {arg(since)}")
        if until is not None:
            where.append(f"at < {arg(until)}")
        if before is not None:
            where.append(f"(at, id) < ({arg(before[0])}, {arg(before[1])})")
        sql = (
            "SELECT id, at, actor, action, call_id, order_id, outcome, reason, details FROM audit"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY at DESC, id DESC LIMIT {arg(limit)}"
        )
        rows = await self.pool.fetch(sql, *args)
        out: list[AuditRow] = []
        for r in rows:
            values = dict(r)
            details = values.pop("details")
            parsed = json.loads(details) if isinstance(details, str) else details
            out.append(AuditRow(**values, details=parsed))
        return out

    async def get_setting(self, key: str) -> Setting | None:
        row = await self.pool.fetchrow(
            "SELECT value, updated_at, updated_by FROM settings WHERE key = $1", key
        )
        if row is None:
            return None
        return Setting(key, json.loads(row["value"]), row["updated_at"], row["updated_by"])

    async def put_setting(self, key: str, value: Any, *, actor: str, audit_action: str) -> Setting:
        """Store the setting and its audit row in one transaction: a change is never unaudited."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO settings (key, value, updated_by) VALUES ($1, $2::jsonb, $3)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(),"
                " updated_by = EXCLUDED.updated_by RETURNING updated_at",
                key,
                json.dumps(value),
                actor,
            )
            await conn.execute(
                "INSERT INTO audit (actor, action, outcome, details) VALUES ($1, $2, 'changed', $3::jsonb)",
                actor,
                audit_action,
                json.dumps({"key": key, "value": value}),
            )
        return Setting(key, value, row["updated_at"], actor)

    async def delete_setting(self, key: str, *, actor: str, audit_action: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM settings WHERE key = $1", key)
            await conn.execute(
                "INSERT INTO audit (actor, action, outcome, details) VALUES ($1, $2, 'reset', $3::jsonb)",
                actor,
                audit_action,
                json.dumps({"key": key}),
            )

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


REVIEW_CALL_COLUMNS = (
    "id, order_id, manager_id, direction, state, outcome, hangup_cause, requested_at, answered_at, "
    "ended_at, ended_by, recording_name, recording_purged_at, recording_state"
)


@dataclass(frozen=True)
class ReviewCallRow:
    """A call as ops review shows it: no channel or bridge ids, never a number (none is stored)."""

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
    ended_by: str | None
    recording_name: str | None
    recording_purged_at: datetime | None
    recording_state: str | None = None

    @property
    def recording_available(self) -> bool:
        return (
            self.recording_name is not None
            and self.recording_purged_at is None
            and self.recording_state != "failed"
        )


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
class Setting:
    key: str
    value: Any
    updated_at: datetime
    updated_by: str
