"""bridged.db.Pool on a real PostgreSQL: single statements on connections kept out of asyncpg's pool, and
everything asyncpg's pool did still done (a server that dropped a connection, a cancelled statement, a
transaction beside kept connections, the pool's close)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bridged import db


async def test_a_kept_connection_whose_backend_was_terminated_is_replaced(dsn: str) -> None:
    pool = await db.create_pool(dsn, min_size=1, max_size=4)
    try:
        first = await pool.fetchval("SELECT pg_backend_pid()")
        # Terminated from another session, as a restarting server or an administrator does.
        async with pool.acquire() as other:
            assert await other.fetchval("SELECT pg_terminate_backend($1)", first)
        await asyncio.sleep(0.2)  # the FATAL and the close reach the client
        # Without the check at the take, the statement would run on the dead connection and raise.
        second = await pool.fetchval("SELECT pg_backend_pid()")
        assert second != first
        assert await pool.fetchval("SELECT pg_backend_pid()") == second  # kept again
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_a_transaction_gets_a_connection_while_others_are_kept(dsn: str) -> None:
    """``keep`` stays below ``max_size``: a caller of ``acquire`` never waits on kept connections."""
    for max_size in (1, 2, 3):
        pool = await db.create_pool(dsn, min_size=1, max_size=max_size)
        try:
            # Kept connections that were all of the pool would leave these waiting for ever.
            async with asyncio.timeout(5):
                await asyncio.gather(*(pool.fetchval("SELECT pg_sleep(0.05)") for _ in range(max_size + 2)))
                async with pool.acquire() as conn, conn.transaction():
                    assert await conn.fetchval("SELECT 1") == 1
        finally:
            await asyncio.wait_for(pool.close(), 10)


async def test_a_cancelled_statement_gives_its_connection_back(dsn: str) -> None:
    """A statement cancelled mid-way (a caller's timeout) neither keeps its connection nor leaks it: the
    pool's close, which waits for every connection, returns."""
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.execute("SELECT pg_sleep(5)")
        assert await pool.fetchval("SELECT 2") == 2
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_a_failed_statement_leaves_the_pool_usable(dsn: str) -> None:
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        await pool.execute("CREATE TABLE t (id int PRIMARY KEY)")
        await pool.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(Exception, match="duplicate key"):
            await pool.execute("INSERT INTO t VALUES (1)")
        assert await pool.fetch("SELECT id FROM t") == [(1,)]
        row = await pool.fetchrow("SELECT count(*) AS n FROM t")
        assert row is not None and row["n"] == 1
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_a_kept_connection_goes_back_to_the_pool_for_its_recycling(dsn: str) -> None:
    """asyncpg replaces a connection that ran ``max_queries`` when it is released: a kept one is released
    after ``recycle_after`` statements, so it is replaced too (kept for ever, the same backend would serve
    every statement)."""
    inner = await asyncpg.create_pool(dsn, min_size=1, max_size=2, max_queries=3, reset=db.release_as_is)
    pool = db.Pool(inner, keep=1, recycle_after=3)
    try:
        pids = [await pool.fetchval("SELECT pg_backend_pid()") for _ in range(10)]
        assert len(set(pids)) >= 3, pids
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_an_idle_kept_connection_is_closed_as_the_pool_closes_idle_ones(dsn: str) -> None:
    """The shop's pool has ``min_size`` 0: with no calls its connections close. A kept connection goes back
    to asyncpg's pool after ``idle_seconds`` unused, and asyncpg's idle close applies to it."""
    name = "kept-idle-test"
    inner = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=2,
        max_inactive_connection_lifetime=0.3,
        reset=db.release_as_is,
        server_settings={"application_name": name},
    )
    pool = db.Pool(inner, keep=1, idle_seconds=0.2)
    observer = await asyncpg.connect(dsn)
    try:
        count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        assert await pool.fetchval("SELECT 1") == 1
        assert await observer.fetchval(count, name) == 1  # kept
        left = []
        for _ in range(50):  # up to 5 s: the sweep (0.2 s), then asyncpg's idle close (0.3 s)
            left.append(await observer.fetchval(count, name))
            if not left[-1]:
                break
            await asyncio.sleep(0.1)
        assert left[-1] == 0, left
        assert await pool.fetchval("SELECT 2") == 2  # and the pool opens one again when needed
    finally:
        await observer.close()
        await asyncio.wait_for(pool.close(), 10)
