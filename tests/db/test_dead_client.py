"""A statement of a daemon that died must not commit after the death (bridged.db.CheckClient): the
backend of bridged's own pool aborts a statement whose client is gone, even one waiting on a lock, where
PostgreSQL would otherwise finish it and commit once the lock goes (the control, without the setting)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from bridged import db

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "dead-client"

# A client that opens a pool as bridged opens its own (check_client as given), then inserts into t and
# waits for the statement's end; it is SIGKILLed while the insert waits on the test's lock.
_CLIENT = """
import asyncio, sys
from bridged import db

async def main() -> None:
    pool = await db.create_pool(sys.argv[1], min_size=1, max_size=2, check_client=sys.argv[2] == "on")
    await pool.execute("INSERT INTO t VALUES (1)")

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
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE t IN EXCLUSIVE MODE")
        client = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", _CLIENT, f"{dsn}?application_name={APP_NAME}"),
            "on" if check_client else "off",
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            await _until(
                watcher, "wait_event_type = 'Lock' AND query LIKE 'INSERT INTO t%'", "the insert waiting"
            )
        finally:
            client.send_signal(signal.SIGKILL)
            await asyncio.wait_for(client.wait(), 10)
        if check_client:
            # Ended by PostgreSQL itself, the lock still held: its insert can no longer commit.
            await _until(watcher, None, "the dead client's backend ended", present=False)
        await lock.commit()
        if not check_client:
            # Nothing told the backend: the insert goes on once the lock goes, and commits.
            await _until(watcher, None, "the dead client's backend ended", present=False)
        rows = await locker.fetch("SELECT id FROM t")
        assert rows == ([] if check_client else [(1,)])
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
