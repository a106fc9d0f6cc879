"""The ``settings`` table: values changed at run time (key -> JSON value); a change is never unaudited."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .base import Aggregate, unavailable_as_one_type

CURSOR_SECRET_KEY = "api.cursor_secret"


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    updated_at: datetime
    updated_by: str


@unavailable_as_one_type
class Settings(Aggregate):
    async def get(self, key: str) -> Setting | None:
        row = await self.pool.fetchrow(
            "SELECT value, updated_at, updated_by FROM settings WHERE key = $1", key
        )
        if row is None:
            return None
        return Setting(key, json.loads(row["value"]), row["updated_at"], row["updated_by"])

    async def put(self, key: str, value: Any, *, actor: str, audit_action: str) -> Setting:
        """Store the setting and its audit row in one transaction."""
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

    async def delete(self, key: str, *, actor: str, audit_action: str) -> None:
        """Back to the default (the config's), audited in the same transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM settings WHERE key = $1", key)
            await conn.execute(
                "INSERT INTO audit (actor, action, outcome, details) VALUES ($1, $2, 'reset', $3::jsonb)",
                actor,
                audit_action,
                json.dumps({"key": key}),
            )

    async def cursor_secret(self) -> str:
        """The secret the API signs its pagination cursors with: made once, kept here, so cursors outlive a
        restart and hold across daemons sharing this database."""
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
