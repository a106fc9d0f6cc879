"""The schema migrations shipped with the package: numbered 0001.. without gaps or duplicates; the client
check set on each connection to bridged's own database, and left out where the server has none."""

from __future__ import annotations

import logging
from typing import cast

import asyncpg
import pytest
from asyncpg.types import ServerVersion

from bridged import db


def test_migrations_are_numbered_without_gaps_or_duplicates() -> None:
    found = db.migrations()  # raises on a gap or a duplicate number
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert len({m.name for m in found}) == len(found)


class _Conn:
    """Enough of an asyncpg connection for ``CheckClient``: a server version, and ``execute`` that
    records the statement or raises as the server would."""

    def __init__(self, major: int, refusal: asyncpg.PostgresError | None = None) -> None:
        self.version = ServerVersion(major, 0, 0, "final", 0)
        self.refusal = refusal
        self.statements: list[str] = []

    def get_server_version(self) -> ServerVersion:
        return self.version

    async def execute(self, query: str) -> str:
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
