"""The daemon's own PostgreSQL: pool and numbered migrations.

Migrations are ``migrations/NNNN_name.sql``, applied in order, one transaction each, recorded in
``bridged_schema``. A database whose schema is newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed 64-bit number: serialises migrations when several daemons start at once.
_MIGRATION_LOCK = 0x62726964676564


class SchemaTooNew(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("bridged.migrations").iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migration numbers must be contiguous: missing {expected:04d}")
    return found


async def migrate(pool: asyncpg.Pool) -> int:
    """Bring the schema up to date; return the resulting version."""
    known = migrations()
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bridged_schema ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM bridged_schema")
            if current > len(known):
                raise SchemaTooNew(
                    f"database schema is at version {current}, this bridged knows only {len(known)}"
                )
            for migration in known[current:]:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO bridged_schema (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                log.info("schema migrated to %04d_%s", migration.version, migration.name)
            return len(known)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def release_as_is(conn: asyncpg.Connection) -> None:
    """Pool ``reset``: nothing beyond what asyncpg always does on release (drop listeners, roll back
    an open transaction).

    asyncpg's default reset sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL`` on every release: one more round trip for every statement run through the pool, half the
    round trips a call made to PostgreSQL before this (see bench/RESULTS.md). bridged never leaves
    session state behind on a pooled connection: no ``SET``, ``LISTEN`` or cursors, and the one
    advisory lock (the migration's) is released in a ``finally`` on the same connection.
    """


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, connect_timeout: float = 10.0
) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, timeout=connect_timeout, reset=release_as_is
    )
