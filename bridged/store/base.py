"""What every aggregate of bridged's own database shares: one exception for an outage, and keyset pages.

Each aggregate (calls, audit, idempotency keys, webhook outbox, settings) is one class holding its own
hand-written ``$n`` SQL with explicit column lists; this module has what they have in common.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import asyncpg

from ..db import Pool


class Outages:
    """When bridged's own database was last found away, for what would act before it writes: a phone's
    customer is rung ahead of the call's row only while the database has been answering."""

    def __init__(self) -> None:
        self.last = -math.inf

    def seen(self) -> None:
        self.last = time.monotonic()

    def seen_within(self, seconds: float) -> bool:
        return time.monotonic() - self.last < seconds


# One per process, as the database is: marked by every DatabaseUnavailable, wherever it is raised.
OUTAGES = Outages()


class DatabaseUnavailable(Exception):
    """bridged's own database did not answer: down, refusing connections, restarting, out of
    connections. The message is the underlying exception's type only (its text may quote values)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        OUTAGES.seen()


# What PostgreSQL being away (or the way to it) looks like through asyncpg. Anything else (a constraint,
# a bad value) is a bug to see, not an outage to wait out.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: the connection broke
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    # 55000 at connect: the database does not accept connections now (ALLOW_CONNECTIONS false)
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    # A pooled connection whose backend was terminated mid-operation: asyncpg finds its protocol still busy
    # ("cannot switch to state 12; another operation (2) is in progress"). Seen on the rig, a POST /v1/calls
    # answered 500 instead of 503 while the database was taken away (test_http_hostile).
    asyncpg.exceptions.InternalClientError,
)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _translated(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc

    return wrapper


def unavailable_as_one_type(cls: type[T]) -> type[T]:
    """Class decorator: every public coroutine method raises DatabaseUnavailable for an outage, so callers
    catch one type, in one place, whatever asyncpg raised."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _translated(member))
    return cls


def batch_delete(table: str, where: str) -> str:
    """The statement ``Aggregate._delete_in_batches`` runs: ``$1`` the time, ``$2`` the batch."""
    return f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} LIMIT $2)"


class Aggregate:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def _delete_in_batches(self, table: str, where: str, before: datetime, batch: int) -> int:
        """Delete ``table``'s rows matching ``where`` (``$1`` the time ``before``), ``batch`` rows a
        statement, each its own transaction: no lock held long on a table daemons write all the time.
        The number deleted."""
        statement = batch_delete(table, where)
        deleted = 0
        while True:
            status = await self.pool.execute(statement, before, batch)
            count = int(status.split()[-1])  # "DELETE n"
            deleted += count
            if count < batch:
                return deleted


@dataclass(frozen=True)
class Window:
    """Which rows of a listing one page holds, newest first: those whose time is at or after ``since`` and
    before ``until``, past the row ``before`` (the ``(time, id)`` of the previous page's last row), at most
    ``limit`` of them. Read from the request once (bridged.api.cursors.Listing), taken as it is by every
    aggregate's ``page``."""

    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, Any] | None = None
    limit: int = 50


class Page:
    """A filtered listing, newest first, one page (a :class:`Window`) at a time.

    Keyset pagination: the next page starts after the ``(time, id)`` of the previous page's last row
    (``before``), so a row written meanwhile neither shifts a page nor appears twice, and each page costs
    an index range scan however deep it is (``(time DESC, id DESC)`` indexes: migrations 0001, 0003).
    ``where(clause, value)`` adds ``clause`` with ``{}`` standing for the value's ``$n``.
    """

    def __init__(self, select: str, time_column: str) -> None:
        self._select = select
        self._time = time_column
        self._where: list[str] = []
        self.args: list[Any] = []

    def _arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def where(self, clause: str, value: Any = None) -> Page:
        """Add a condition; with a ``value`` other than None, ``{}`` in it is that value's ``$n``. A
        condition whose value is None is left out (an absent filter)."""
        if "{}" not in clause:
            self._where.append(clause)
        elif value is not None:
            self._where.append(clause.format(self._arg(value)))
        return self

    def sql(self, window: Window) -> str:
        """The statement for one page; its arguments are then :attr:`args`."""
        self.where(f"{self._time} >= {{}}", window.since).where(f"{self._time} < {{}}", window.until)
        if window.before is not None:
            at, row_id = window.before
            self._where.append(f"({self._time}, id) < ({self._arg(at)}, {self._arg(row_id)})")
        where = " WHERE " + " AND ".join(self._where) if self._where else ""
        return f"{self._select}{where} ORDER BY {self._time} DESC, id DESC LIMIT {self._arg(window.limit)}"
