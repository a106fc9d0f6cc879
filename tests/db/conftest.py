"""bridged's own database on a real PostgreSQL: the rig's throwaway cluster (the session's, shared with
tests/e2e), a fresh database per test, migrated as the daemon migrates it.

Run as the end-to-end tests are, as root inside a private network namespace (the cluster listens on a
fixed port): ``unshare -n -- sh -c 'ip link set lo up && exec python -m pytest -q tests/db'``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from bridged import db
from bridged.store import Store
from rig import Postgres

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Postgres:
    if os.geteuid() != 0:
        pytest.skip("tests/db run as the e2e tests do: as root in a private network namespace")
    found: Postgres = request.getfixturevalue("postgres")
    return found


@pytest.fixture
def dsn(cluster: Postgres) -> Iterator[str]:
    """The DSN of an empty database of its own."""
    name = f"bridged_db_{os.getpid()}_{next(_databases)}"
    cluster.create_database(name)
    try:
        yield cluster.dsn(name)
    finally:
        cluster.drop_database(name)


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    """A Store on a database of its own, migrated to the current schema."""
    pool = await db.create_pool(dsn, min_size=1, max_size=4, check_client=True)
    try:
        await db.migrate(pool)
        yield Store(pool)
    finally:
        await pool.close()
