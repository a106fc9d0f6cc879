"""A DSN naming a PostgreSQL primary and its standby (README, "Availability and scaling"): asyncpg tries
the hosts in order and, with ``target_session_attrs=read-write``, skips a server that is read-only (a hot
standby, or one set ``default_transaction_read_only``). Checked here against the rig's cluster, as bridged
opens its pool (bridged.db.create_pool)."""

from __future__ import annotations

import asyncpg
import pytest

from bridged import db
from bridged.config import describe_dsn
from bridged.store import Store
from rig import Postgres


async def test_a_multi_host_dsn_skips_a_host_that_refuses(cluster: Postgres, store: Store) -> None:
    name = await store.pool.fetchval("SELECT current_database()")
    # Port 1: nothing listens (a primary that is down); the second host is the cluster.
    dsn = f"postgresql://postgres@127.0.0.1:1,127.0.0.1:{cluster.port}/{name}?target_session_attrs=read-write"
    pool = await db.create_pool(dsn, min_size=1, max_size=2, connect_timeout=5)
    try:
        assert await db.migrate(pool) > 0  # already migrated by the fixture: nothing to do, and no error
        assert await pool.fetchval("SELECT inet_server_port()") == cluster.port
    finally:
        await pool.close()
    assert describe_dsn(dsn) == f"postgres@127.0.0.1:1,127.0.0.1:{cluster.port}/{name}"


async def test_read_write_refuses_a_read_only_server(cluster: Postgres, store: Store) -> None:
    """The check that makes a promoted standby the one written to: a server that is read-only (as a hot
    standby is) is not used with ``target_session_attrs=read-write``."""
    name = await store.pool.fetchval("SELECT current_database()")
    cluster.execute("postgres", f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/{name}"
    with pytest.raises(asyncpg.TargetServerAttributeNotMatched):
        await db.create_pool(
            dsn + "?target_session_attrs=read-write", min_size=1, max_size=1, connect_timeout=5
        )
    pool = await db.create_pool(dsn + "?target_session_attrs=any", min_size=1, max_size=1, connect_timeout=5)
    try:
        assert await pool.fetchval("SHOW default_transaction_read_only") == "on"
    finally:
        await pool.close()
