"""The schema migrations shipped with the package: numbered without duplicates, those run outside a
transaction split into statements that may run again; the client
check set on each connection to bridged's own database, and left out where the server has none."""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import asyncpg
import pytest
from asyncpg.types import ServerVersion

from bridged import db


def test_migrations_are_numbered_without_duplicates() -> None:
    found = db.migrations()  # raises on a duplicate number
    assert [m.version for m in found] == sorted({m.version for m in found})
    assert len({m.name for m in found}) == len(found)


def test_a_migration_outside_a_transaction_runs_statement_by_statement() -> None:
    sql = (
        f"{db.NO_TRANSACTION}\n-- why; said here\nDROP INDEX CONCURRENTLY IF EXISTS a_idx;\n"
        "CREATE INDEX CONCURRENTLY a_idx ON t (x)\n    WHERE y;\n-- the end\n"
    )
    migration = db.Migration(14, "a", sql)
    assert not migration.in_transaction
    assert migration.statements() == [
        f"{db.NO_TRANSACTION}\n-- why; said here\nDROP INDEX CONCURRENTLY IF EXISTS a_idx;",
        "CREATE INDEX CONCURRENTLY a_idx ON t (x)\n    WHERE y;",
    ]
    assert db.Migration(1, "b", "-- plain\nCREATE TABLE t (x int);").in_transaction
    with pytest.raises(RuntimeError, match="0014"):
        db.Migration(14, "a", f"{db.NO_TRANSACTION}\nCREATE INDEX CONCURRENTLY a_idx ON t (x)").statements()


_BUILD = re.compile(r"^CREATE (UNIQUE )?INDEX CONCURRENTLY (\w+) ", re.MULTILINE)


def test_each_concurrent_build_drops_what_an_interrupted_one_left() -> None:
    # A cancelled CREATE INDEX CONCURRENTLY leaves its index INVALID; the migration, not recorded, runs
    # again whole at the next start and must build it again rather than stop at "already exists".
    for migration in db.migrations():
        if migration.in_transaction:
            assert "CONCURRENTLY" not in migration.sql, migration.name  # refused in a transaction
            continue
        statements = migration.statements()
        for before, statement in zip(["", *statements], statements, strict=False):
            for build in _BUILD.finditer(statement):
                assert f"DROP INDEX CONCURRENTLY IF EXISTS {build[2]};" in before, migration.name
        for statement in statements:  # one statement each: several would run as one transaction
            code = [line for line in statement.splitlines() if not line.lstrip().startswith("--")]
            assert "\n".join(code).count(";") == 1, (migration.name, statement)


class _Conn:
    """Enough of an asyncpg connection for ``CheckClient``: a server version, and ``execute`` that
    records the statement or raises as the server would."""

    def __init__(self, major: int, refusal: asyncpg.PostgresError | None = None) -> None:
        self.version = ServerVersion(major, 0, 0, "final", 0)
        self.refusal = refusal
        self.statements: list[str] = []

    def get_server_version(self) -> ServerVersion:
        return self.version

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109 - asyncpg's
        self.statements.append(query)
        if self.refusal is not None:
            raise self.refusal
        return "SET"


async def test_check_client_sets_the_interval_on_postgresql_14_and_later() -> None:
    check = db.CheckClient()
    for major in (14, 15, 17):
        conn = _Conn(major)
        await check(cast(asyncpg.Connection, conn))
        assert conn.statements == [f"SET client_connection_check_interval = '{db.CLIENT_CHECK_INTERVAL}'"]


async def test_check_client_leaves_an_older_or_refusing_server_alone_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridged.db")
    old = db.CheckClient()
    for _ in range(3):  # a connection each: the pool's reconnects
        conn = _Conn(13)
        await old(cast(asyncpg.Connection, conn))  # no statement a PostgreSQL 13 would refuse
        assert conn.statements == []
    refusal = asyncpg.InvalidParameterValueError(
        "client_connection_check_interval must be set to 0 on this platform"
    )
    refusing = db.CheckClient()
    for _ in range(3):
        await refusing(cast(asyncpg.Connection, _Conn(15, refusal)))  # no exception: the connection is used
    said = [r.getMessage() for r in caplog.records if r.name == "bridged.db"]
    assert len(said) == 2, said
    assert said[0].startswith("PostgreSQL 13 has no client_connection_check_interval;"), said
    assert "must be set to 0 on this platform" in said[1], said
    assert all(r.levelno == logging.INFO for r in caplog.records)
