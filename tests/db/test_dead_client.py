"""A statement of a daemon that died must not commit after the death (bridged.db.CheckClient): the
backend of bridged's own pool aborts a statement whose client is gone, even one waiting on a lock, where
PostgreSQL would otherwise finish it and commit once the lock goes (the control, without the setting)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from bridged import db

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "dead-client"

# A client that opens a pool as bridged opens its own (check_client as given) and inserts into t as a
# call's row is inserted: a statement with parameters, on a connection that ran it before (asyncpg's
# prepared statement: Bind, Execute and Sync go at once, so the implicit transaction commits as soon as
# the statement ends, whether the client is still there or not). It is SIGKILLed while that insert waits
# on the test's lock. (An insert not yet prepared would wait in its Parse, and its client, dead, never
# sends the rest: no row. Only a statement already sent whole is the race.)
_CLIENT = """
import asyncio, sys
from bridged import db

async def main() -> None:
    pool = await db.create_pool(sys.argv[1], min_size=1, max_size=2, check_client=sys.argv[2] == "on")
    await pool.execute("INSERT INTO t VALUES ($1)", 0)
    print("prepared", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await pool.execute("INSERT INTO t VALUES ($1)", 1)

asyncio.run(main())
"""


async def test_the_own_pool_checks_its_client_and_the_shop_pool_does_not(dsn: str) -> None:
    for check_client, expected in ((True, db.CLIENT_CHECK_INTERVAL), (False, "0")):
        pool = await db.create_pool(dsn, min_size=1, max_size=3, check_client=check_client)
        try:
            # Each connection, the kept ones and a transaction's alike, and after the release too.
            for _ in range(2):
                values = await asyncio.gather(
                    *(pool.fetchval("SHOW client_connection_check_interval") for _ in range(3))
                )
                async with pool.acquire() as conn, conn.transaction():
                    values.append(await conn.fetchval("SHOW client_connection_check_interval"))
                assert values == [expected] * 4
        finally:
            await asyncio.wait_for(pool.close(), 10)


@pytest.mark.parametrize("check_client", [True, False], ids=["checked", "control-unchecked"])
async def test_a_dead_clients_insert_waiting_on_a_lock_never_commits(dsn: str, check_client: bool) -> None:
    # The locker holds its transaction open, and pg_stat_activity inside a transaction stays as first read:
    # the watcher looks from outside it.
    locker, watcher = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await locker.execute("CREATE TABLE t (id int PRIMARY KEY)")
        client = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", _CLIENT, f"{dsn}?application_name={APP_NAME}"),
            "on" if check_client else "off",
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert client.stdin is not None and client.stdout is not None
        try:
            assert await asyncio.wait_for(client.stdout.readline(), 15) == b"prepared\n"
            lock = locker.transaction()
            await lock.start()
            await locker.execute("LOCK TABLE t IN EXCLUSIVE MODE")
            client.stdin.write(b"insert\n")
            await client.stdin.drain()
            await _until(
                watcher,
                "wait_event_type = 'Lock' AND query = 'INSERT INTO t VALUES ($1)'",
                "the insert waiting",
            )
        finally:
            client.kill()
            await asyncio.wait_for(client.wait(), 10)
        if check_client:
            # Ended by PostgreSQL itself, the lock still held: its insert can no longer commit.
            await _until(watcher, None, "the dead client's backend ended", present=False)
        await lock.commit()
        if not check_client:
            # Nothing told the backend: the insert goes on once the lock goes, and commits.
            await _until(watcher, None, "the dead client's backend ended", present=False)
        rows = await locker.fetch("SELECT id FROM t")
        assert rows == ([(0,)] if check_client else [(0,), (1,)])
    finally:
        await locker.close()
        await watcher.close()


async def _until(conn: asyncpg.Connection, condition: str | None, what: str, *, present: bool = True) -> None:
    """Until the dead client's backend (``condition`` on it) is in pg_stat_activity, or no longer is."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    if condition:
        query += f" AND {condition}"
    deadline = time.monotonic() + 15
    while (await conn.fetchval(query, APP_NAME) > 0) != present:
        assert time.monotonic() < deadline, f"waited 15 s for {what}"
        await asyncio.sleep(0.05)
