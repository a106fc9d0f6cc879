"""The daemon's own PostgreSQL: pool and numbered migrations.

Migrations are ``migrations/NNNN_name.sql``, applied in order of their numbers, each recorded in
``bridged_schema`` once it has all run. A migration runs in one transaction, unless its first line is
``NO_TRANSACTION``: then its statements run one at a time outside any (``CREATE INDEX CONCURRENTLY``, which
lets the other daemon go on writing the table while the index is built, refuses to run inside one). A
database holding a migration this code does not know (migrated by a newer bridged) is refused rather
than guessed at.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed 64-bit number: serialises migrations when several daemons start at once.
_MIGRATION_LOCK = 0x62726964676564
# How often a daemon whose peer is migrating tries the lock again. Polled, not waited for in
# pg_advisory_lock: a statement waiting there holds a snapshot, and CREATE INDEX CONCURRENTLY waits for
# every older snapshot to end, so the peer's build would wait for the waiter, which waits for the build
# (PostgreSQL's deadlock detector then aborts one of them).
LOCK_POLL_SECONDS = 0.5

# First line of a migration whose statements run one at a time outside a transaction. Each of its
# statements ends with ``;`` at the end of a line (and no other line ends with one), and each may run
# again: it may have been interrupted after some of them ran (a killed daemon, a cancelled
# ``CREATE INDEX CONCURRENTLY``, which leaves an INVALID index behind), and then runs again whole at the
# next start. So an index is built by ``DROP INDEX CONCURRENTLY IF EXISTS`` and ``CREATE INDEX
# CONCURRENTLY``, never ``IF NOT EXISTS`` (which would keep an INVALID index).
NO_TRANSACTION = "-- bridged: no transaction"


class SchemaTooNew(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def in_transaction(self) -> bool:
        return not self.sql.startswith(NO_TRANSACTION)

    def statements(self) -> list[str]:
        """The statements of a ``NO_TRANSACTION`` migration, each with the comment lines above it."""
        found: list[str] = []
        lines: list[str] = []
        for line in self.sql.splitlines():
            lines.append(line)
            if not line.lstrip().startswith("--") and line.rstrip().endswith(";"):
                found.append("\n".join(lines))
                lines = []
        if any(line.strip() and not line.lstrip().startswith("--") for line in lines):
            raise RuntimeError(
                f"migration {self.version:04d}: a statement does not end with ';' at a line's end"
            )
        return found


def migrations() -> list[Migration]:
    """The shipped migrations in order. Numbers need not be contiguous (two branches may each add one), but
    each is used once."""
    found: list[Migration] = []
    for entry in resources.files("bridged.migrations").iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for before, after in zip(found, found[1:], strict=False):
        if before.version == after.version:
            raise RuntimeError(f"two migrations numbered {after.version:04d}")
    for migration in found:
        if not migration.in_transaction:
            migration.statements()  # raises on a statement it cannot tell apart
    return found


async def migrate(pool: Pool, known: list[Migration] | None = None) -> int:
    """Bring the schema up to date with ``known`` (the shipped migrations); return the newest version.

    A migration is applied if ``bridged_schema`` does not record it, whatever the newest recorded one:
    a migration numbered below one already applied (merged later than it) is applied too."""
    known = migrations() if known is None else known
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bridged_schema ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        while True:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK):
                break
            await asyncio.sleep(LOCK_POLL_SECONDS)
        try:
            applied = {r["version"] for r in await conn.fetch("SELECT version FROM bridged_schema")}
            unknown = sorted(applied - {m.version for m in known})
            if unknown:
                newest = known[-1].version if known else 0
                raise SchemaTooNew(
                    f"database schema is at version {max(applied)}, this bridged knows only {newest}"
                    f" (it does not know {', '.join(f'{v:04d}' for v in unknown)})"
                )
            for migration in known:
                if migration.version not in applied:
                    await _apply(conn, migration)
            return known[-1].version if known else 0
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    record = "INSERT INTO bridged_schema (version, name) VALUES ($1, $2)"
    if migration.in_transaction:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(record, migration.version, migration.name)
    else:
        for statement in migration.statements():
            await conn.execute(statement)
        # Recorded only once every statement ran: one interrupted runs again whole.
        await conn.execute(record, migration.version, migration.name)
    log.info("schema migrated to %04d_%s", migration.version, migration.name)


async def release_as_is(conn: asyncpg.Connection) -> None:
    """Pool ``reset``: nothing beyond what asyncpg always does on release (drop listeners, roll back
    an open transaction).

    asyncpg's default reset sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL`` on every release: one more round trip for every statement run through the pool, half the
    round trips a call made to PostgreSQL before this (see bench/RESULTS.md). bridged never leaves
    session state behind on a pooled connection: no ``LISTEN`` or cursors, the one advisory lock (the
    migration's) is released in a ``finally`` on the same connection, and the one ``SET`` (``CheckClient``,
    made as the connection opens) is meant to last as long as the connection, which ``RESET ALL`` would undo.
    """


# Connections kept out of the pool for single statements: about what a busy daemon runs at once.
KEPT_CONNECTIONS = 2
# A kept connection goes back to asyncpg's pool after this many statements, so that its max_queries
# (50,000) still replaces long-lived connections; once in a thousand statements costs nothing measurable.
RECYCLE_AFTER = 1000
# ... and after this long unused, so that asyncpg's idle close (5 minutes, down to min_size) still applies.
IDLE_SECONDS = 60.0


class Pool:
    """asyncpg's pool, with a cheaper way for a single statement: run on a connection kept out of it.

    Each statement through ``asyncpg.Pool.execute`` costs as much client CPU in the pool's acquire and
    release as in the statement itself (a proxy, a future, a timer, a shielded task: 130-200 µs per
    statement against 65-115 µs on a connection already held, measured on the bench's 2-core machine for
    issue 19), and a call makes four or five. Up to ``keep`` connections taken for a statement are kept
    for the next one instead of going back; everything else (``acquire`` for a transaction, a statement
    when none is kept) is asyncpg's pool as it was. A kept connection that closed meanwhile (the server
    went away) goes back to the pool, which reconnects, as its own acquire would; one that raised (or
    was cancelled) goes back to the pool too, which resets or drops it. ``keep`` is below ``max_size``,
    so a caller waiting in ``acquire`` always has a connection that will be released. What asyncpg's pool
    does to connections it holds still happens to kept ones: a kept connection goes back to it after
    ``recycle_after`` statements (where asyncpg replaces one that ran ``max_queries``) and once it has been
    idle for ``idle_seconds`` (where asyncpg closes idle ones, down to ``min_size``: the shop's pool has 0).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        keep: int,
        recycle_after: int = RECYCLE_AFTER,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.pool = pool
        self._keep = keep
        self._recycle_after = recycle_after
        self._idle_seconds = idle_seconds
        # Kept connections: [connection, statements run since it left asyncpg's pool, last use (loop time)].
        self._kept: list[list[Any]] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._returning: set[asyncio.Task[None]] = set()
        self._closing = False

    def acquire(self) -> Any:
        """asyncpg's ``Pool.acquire()`` (``async with pool.acquire() as conn``)."""
        return self.pool.acquire()

    async def execute(self, query: str, *args: Any) -> str:
        return await self._run(_EXECUTE, query, args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._run(_FETCH, query, args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._run(_FETCHROW, query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run(_FETCHVAL, query, args)

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        conn, runs = await self._take()
        try:
            result = await getattr(conn, method)(query, *args)
        except BaseException:
            await self.pool.release(conn)
            raise
        if self._closing or len(self._kept) >= self._keep or runs + 1 >= self._recycle_after:
            await self.pool.release(conn)
        else:
            loop = asyncio.get_running_loop()
            self._kept.append([conn, runs + 1, loop.time()])
            if self._sweep is None:
                self._sweep = loop.call_later(self._idle_seconds, self._return_idle)
        return result

    async def _take(self) -> tuple[asyncpg.Connection, int]:
        while self._kept:
            conn, runs, _ = self._kept.pop()
            if _open(conn):
                return conn, runs
            await self.pool.release(conn)  # nothing to do if asyncpg's cleanup gave it back already
        return await self.pool.acquire(), 0

    def _return_idle(self) -> None:
        """Kept connections unused for ``idle_seconds`` go back to asyncpg's pool (a timer armed while any is
        kept: nothing per statement)."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        idle = [kept for kept in self._kept if now - kept[2] >= self._idle_seconds]
        self._kept = [kept for kept in self._kept if now - kept[2] < self._idle_seconds]
        for conn, _, _ in idle:
            task = loop.create_task(self.pool.release(conn))
            self._returning.add(task)
            task.add_done_callback(self._returning.discard)
        if self._kept:
            self._sweep = loop.call_later(self._idle_seconds, self._return_idle)

    async def close(self) -> None:
        """The kept connections back, then asyncpg's close (it waits for every connection's release)."""
        self._closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._kept:
            await self.pool.release(self._kept.pop()[0])
        await asyncio.gather(*self._returning, return_exceptions=True)
        await self.pool.close()


def _open(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        # Closed, and given back to the pool by asyncpg's own cleanup (its proxy is detached).
        return False


_EXECUTE, _FETCH, _FETCHROW, _FETCHVAL = "execute", "fetch", "fetchrow", "fetchval"


# How often a backend running one of bridged's statements looks whether bridged is still there. A check
# is a poll of the socket, made only while a statement runs (nothing on an idle connection, nothing added to
# a call's statements), so it may be frequent; a second bounds how long a dead daemon's statement can still
# commit: systemd starts the successor 2 s after the death (RestartSec), and its start-up reconcile comes
# later still.
CLIENT_CHECK_INTERVAL = "1s"


class CheckClient:
    """Pool ``init`` for bridged's own database: set ``client_connection_check_interval`` on each new
    connection.

    A backend learns that its client died only when it next reads from the socket, after its statement.
    A statement of a daemon that was SIGKILLed (a call's insert waiting on a lock) would otherwise go on
    and commit after the death: a row the successor's start-up reconcile did not see, left open, or one
    for a call the successor hung up as a stray. With the check the backend aborts the statement, lock
    waits included (checked on PostgreSQL 15), within ``CLIENT_CHECK_INTERVAL`` of the death.

    The setting exists from PostgreSQL 14 on, and only where the server's platform can poll for a closed
    socket (Linux); elsewhere it is refused. Not in the startup packet: a PostgreSQL 13 refuses a
    connection that names a parameter it does not know. So it is a ``SET`` once per connection, skipped on
    an older server; either way without it the daemon runs as before, the race open, said once at info.
    """

    def __init__(self) -> None:
        self._said_unsupported = False

    async def __call__(self, conn: asyncpg.Connection) -> None:
        version = conn.get_server_version()
        if version.major < 14:
            self._unsupported(f"PostgreSQL {version.major} has no client_connection_check_interval")
            return
        try:
            await conn.execute(f"SET client_connection_check_interval = '{CLIENT_CHECK_INTERVAL}'")
        except asyncpg.PostgresError as exc:
            # E.g. "client_connection_check_interval must be set to 0 on this platform".
            self._unsupported(f"the server refused client_connection_check_interval: {exc}")

    def _unsupported(self, reason: str) -> None:
        if not self._said_unsupported:
            self._said_unsupported = True
            log.info(
                "%s; a statement of a daemon that died may still commit after its death (needs 14+ on Linux)",
                reason,
            )


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, connect_timeout: float = 10.0, check_client: bool = False
) -> Pool:
    """asyncpg's pool wrapped in ``Pool``. ``check_client`` (bridged's own database): each connection
    gets ``CheckClient``; the shop's database, read with single SELECTs that a dead daemon leaves nothing
    behind by, is left as it is."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        reset=release_as_is,
        init=CheckClient() if check_client else None,
    )
    return Pool(pool, keep=min(KEPT_CONNECTIONS, max_size - 1))
