"""Migrations run while the other daemon serves calls (a rolling upgrade): an index build on a table
calls write holds none of their writes, one interrupted is built again at the next start, and a daemon
waiting for its peer's migration does not deadlock the peer's build.

Each test starts from a database at 0011 (before the index migrations) and holds a call's insert into
manager_attempts open, so that 0012's build waits for it: the moment a plain ``CREATE INDEX`` holds every
later write too. What the tests look at is who waits for a lock (``pg_stat_activity``), never how long.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import asyncpg
import pytest

from bridged import db

BEFORE_INDEXES = [m for m in db.migrations() if m.version <= 11]
INSERT_ATTEMPT = (
    "INSERT INTO manager_attempts (manager_id, at, outcome, code_length, code_shape)"
    " VALUES ('anna', now(), 'unknown_order', 3, 'digits')"
)


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[db.Pool]:
    pool = await db.create_pool(dsn, min_size=1, max_size=4, check_client=True)
    try:
        await db.migrate(pool, BEFORE_INDEXES)
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def connect(dsn: str) -> AsyncIterator[Callable[[], Awaitable[asyncpg.Connection]]]:
    """Connections of their own (a call in progress, an observer), closed at the end."""
    opened: list[asyncpg.Connection] = []

    async def open_one() -> asyncpg.Connection:
        opened.append(await asyncpg.connect(dsn))
        return opened[-1]

    yield open_one
    for conn in opened:
        await conn.close()


async def _until(observer: asyncpg.Connection, query: str, *args: Any) -> Any:
    """``query``'s value once it is not null: a state reached, polled (a bound against a hang, not a time
    asserted)."""
    for _ in range(2000):
        found = await observer.fetchval(query, *args)
        if found is not None:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"never reached: {query}")


# The backend building an index, once it waits for a lock (the call's open insert).
_BUILDER_WAITING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND query LIKE '%CREATE INDEX%' AND wait_event_type = 'Lock'"
)


class Building(NamedTuple):
    """A call's insert into manager_attempts left open, and a migration whose first index build waits for it."""

    call: asyncpg.Connection
    observer: asyncpg.Connection
    migrating: asyncio.Task[int]
    builder: int  # the building backend's pid


async def _building(pool: db.Pool, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> Building:
    call = await connect()
    await call.execute("BEGIN")
    await call.execute(INSERT_ATTEMPT)
    observer = await connect()
    migrating = asyncio.create_task(db.migrate(pool))
    return Building(call, observer, migrating, await _until(observer, _BUILDER_WAITING))


async def _invalid_indexes(observer: asyncpg.Connection) -> list[str]:
    rows = await observer.fetch(
        "SELECT indexrelid::regclass::text AS name FROM pg_index WHERE NOT indisvalid ORDER BY 1"
    )
    return [r["name"] for r in rows]


async def _waited(observer: asyncpg.Connection, pid: int, statement: asyncio.Task[Any]) -> bool:
    """Whether ``statement`` (run by backend ``pid``) waits for a lock before it is done."""
    for _ in range(2000):
        if statement.done():
            return False
        if await observer.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            return True
        await asyncio.sleep(0.01)
    raise AssertionError("the statement neither finished nor waited for a lock")


async def test_an_index_build_holds_no_calls_insert(
    pool: db.Pool, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    call, observer, migrating, _ = await _building(pool, connect)
    # The next call's insert while the build waits. Behind a plain CREATE INDEX (its SHARE lock queued
    # after the open insert) it would wait for the whole build.
    other = await connect()
    inserting = asyncio.create_task(other.execute(INSERT_ATTEMPT))
    waited = await _waited(observer, other.get_server_pid(), inserting)
    await call.execute("COMMIT")
    await inserting
    assert await migrating == db.migrations()[-1].version
    assert not waited, "a call's insert waited for the index build"
    assert await _invalid_indexes(observer) == []
    assert await observer.fetchval("SELECT count(*) FROM manager_attempts") == 2


async def test_a_build_interrupted_is_built_again_at_the_next_start(
    pool: db.Pool, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    call, observer, migrating, builder = await _building(pool, connect)
    await observer.execute("SELECT pg_cancel_backend($1)", builder)  # as an admin's ^C, or a timeout
    with pytest.raises(asyncpg.QueryCanceledError):
        await migrating
    await call.execute("ROLLBACK")
    # What a cancelled CREATE INDEX CONCURRENTLY leaves: the index, INVALID (the writes keep it up to
    # date, no query reads it), and the migration not recorded.
    assert await _invalid_indexes(observer) == ["manager_attempts_counted_idx"]
    assert await observer.fetchval("SELECT max(version) FROM bridged_schema") == 11
    assert await db.migrate(pool) == db.migrations()[-1].version
    assert await _invalid_indexes(observer) == []
    indexes = await observer.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'manager_attempts' AND indexname LIKE '%_idx'"
    )
    assert {"manager_attempts_counted_idx", "manager_attempts_accepted_idx"} <= {
        r["indexname"] for r in indexes
    }


async def test_a_daemon_waiting_for_its_peers_migration_does_not_deadlock_it(
    pool: db.Pool, dsn: str, connect: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    # A CREATE INDEX CONCURRENTLY waits, before it ends, for every transaction older than its last
    # snapshot: a peer waiting in pg_advisory_lock is one, and it waits for the builder's lock.
    call, observer, first, builder = await _building(pool, connect)
    peer = await db.create_pool(dsn, min_size=1, max_size=2, check_client=True)
    try:
        second = asyncio.create_task(db.migrate(peer))
        await _until(
            observer,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid NOT IN ($1, pg_backend_pid())"
            " AND query LIKE '%advisory_lock(%'",
            builder,
        )
        await call.execute("COMMIT")
        newest = db.migrations()[-1].version
        assert await asyncio.gather(first, second) == [newest, newest]
    finally:
        await peer.close()
    assert await _invalid_indexes(observer) == []


async def test_a_migration_numbered_below_one_applied_is_applied_too(pool: db.Pool) -> None:
    # Two branches each add a migration; the database was migrated by a build with only the later one.
    known = db.migrations()
    assert await db.migrate(pool, [m for m in known if m.version != 12]) == known[-1].version
    assert await db.migrate(pool) == known[-1].version
    versions = await pool.fetch("SELECT version FROM bridged_schema ORDER BY version")
    assert [r["version"] for r in versions] == [m.version for m in known]
    # A database that holds one this bridged does not know was migrated by a newer one.
    with pytest.raises(db.SchemaTooNew, match="does not know 0012"):
        await db.migrate(pool, [m for m in known if m.version != 12])
