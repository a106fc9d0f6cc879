"""The ``manager_attempts`` and ``limit_alerts`` tables: every call attempt a manager makes (what the
budgets of bridged.limits are counted on) and the last ``abuse.suspected`` alert per manager and budget.

An attempt keeps its outcome, the order only when the code named one the shop knows, and the code's length
and shape: never the digits typed (they could be a customer's number).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from ..config import Budget
from ..limits import COUNTED, PROBING, Keyed, Tally, read_up_to
from .base import Aggregate, unavailable_as_one_type


def _listed(outcomes: frozenset[str]) -> str:
    """Outcomes written out in the statement: a parameter would hide from the planner that they are all
    rows of the partial index manager_attempts_counted_idx (outcome <> 'rate_limited')."""
    return ", ".join(f"'{outcome}'" for outcome in sorted(outcomes))


def _nth_newest(part: str, column: str, limit: str) -> str:
    """The ``limit``-th newest ``column`` of ``part`` (NULL when fewer, or the limit NULL or under 1)."""
    return (
        f"(SELECT {column} FROM {part} WHERE {limit} > 0 ORDER BY {column} DESC"
        f" OFFSET greatest({limit} - 1, 0) LIMIT 1)"
    )


_IN_WINDOW = "manager_id = $1 AND at > now() - make_interval(secs => $2)"
# What the budgets need of a manager's window (a limits.Tally), each part bounded by its budget, in one
# statement. $1 the manager, $2 the window's seconds; $3 the calls budget and $4 how many accepted are
# read; $5 the distinct_orders budget and $6 the code tried; $7 the refused_in_a_row budget and $8 how
# many of the run are read (limits.read_up_to). The parts:
# - accepted: the newest accepted calls (partial index manager_attempts_accepted_idx, migration 0013);
# - run: the probing refusals since the newest of those (manager_attempts_counted_idx, from that time
#   on: every row of it is one of the run but bridged's own refusals);
# - orders: each order's last attempt, grouped in the database (manager_attempts_orders_idx: rows that
#   name an order; one denied order tried again and again is gone through, but never sent).
_WINDOW = (
    "WITH accepted AS (SELECT at FROM manager_attempts"
    f" WHERE {_IN_WINDOW} AND outcome = 'accepted' ORDER BY at DESC LIMIT $4),"
    " run AS (SELECT at FROM manager_attempts"
    f" WHERE {_IN_WINDOW} AND outcome IN ({_listed(PROBING)})"
    " AND at > coalesce((SELECT max(at) FROM accepted), '-infinity') ORDER BY at DESC LIMIT $8),"
    " orders AS (SELECT order_id, max(at) AS at FROM manager_attempts"
    f" WHERE {_IN_WINDOW} AND order_id IS NOT NULL AND outcome IN ({_listed(COUNTED)})"
    " GROUP BY order_id)"
    " SELECT now() AS now,"
    " (SELECT count(*) FROM accepted) AS calls,"
    " (SELECT count(*) FROM orders) AS distinct_orders,"
    " (SELECT count(*) FROM run) AS refused_in_a_row,"
    f" {_nth_newest('accepted', 'at', '$3::int')} AS calls_frees,"
    f" {_nth_newest('orders', 'at', '$5::int')} AS orders_frees,"
    f" {_nth_newest('run', 'at', '$7::int')} AS run_frees,"
    " (SELECT coalesce(bool_or(order_id = $6), false) FROM orders) AS code_seen"
)


@dataclass(frozen=True)
class ProbingRow:
    """A manager's refused attempts of one shape and length since a time (``GET /v1/probing``)."""

    manager_id: str
    outcome: str
    code_shape: str
    code_length: int
    count: int
    last_at: datetime


@dataclass(frozen=True)
class NewAttempt:
    """An attempt as it is recorded: alone (:meth:`ManagerAttempts.record`), or in the statement of the
    accepted call's row (:meth:`bridged.store.calls.CallRows.insert_audited`)."""

    manager_id: str
    outcome: str
    order_id: str | None
    keyed: Keyed
    # When it happened (a write retried later keeps it).
    at: datetime

    def args(self) -> tuple[object, ...]:
        """The values of :func:`insert_attempt`'s parameters, in order."""
        return (self.manager_id, self.at, self.outcome, self.order_id, self.keyed.length, self.keyed.shape)


def insert_attempt(first: int) -> str:
    """The INSERT of a :class:`NewAttempt`, its parameters numbered from ``$first``."""
    values = ", ".join(f"${n}" for n in range(first, first + 6))
    return (
        "INSERT INTO manager_attempts (manager_id, at, outcome, order_id, code_length, code_shape)"
        f" VALUES ({values})"
    )


_INSERT = insert_attempt(1)


def _window_args(manager_id: str, seconds: int, budget: Budget, code: str) -> tuple[object, ...]:
    """The values of ``_WINDOW``'s parameters, in order."""
    calls, orders, run = budget.calls, budget.distinct_orders, budget.refused_in_a_row
    return (manager_id, float(seconds), calls, read_up_to(calls), orders, code, run, read_up_to(run))


_TALLY = [field.name for field in fields(Tally)]


@unavailable_as_one_type
class ManagerAttempts(Aggregate):
    async def window(
        self, manager_id: str, seconds: int, budget: Budget, code: str
    ) -> tuple[datetime, Tally]:
        """The database's now and what ``budget`` needs of the manager's attempts of the last ``seconds``
        to judge one more on ``code`` (a limits.Tally; ``limits.verdict`` of all those attempts decides
        the same), in one statement whose every part reads rows bounded by its budget.

        Not read: the ``rate_limited`` refusals a manager past a budget adds with every further attempt
        (an auto-dialer: thousands an hour), nor bridged's own refusals (overloaded, lookup_failed, ...).
        Read from all of a window's attempts newest first, up to 5,000, the rows a manager piled up
        (refusals past a budget; or, with ``refused_in_a_row`` off or budgets set high, unknown or
        denied orders tried again and again) pushed the calls and orders out of the read: counts came
        out low and a budget let calls through."""
        row = await self.pool.fetchrow(_WINDOW, *_window_args(manager_id, seconds, budget, code))
        assert row is not None  # one row, whatever the window holds
        now: datetime = row["now"]
        return now, Tally(**{name: row[name] for name in _TALLY})

    async def record(self, attempt: NewAttempt) -> None:
        await self.pool.execute(_INSERT, *attempt.args())

    async def alert_due(self, manager_id: str, budget: str, seconds: int) -> bool:
        """Whether an ``abuse.suspected`` for this manager and budget is due (none in the last ``seconds``);
        if so it is taken as sent. One statement: of daemons asking at once, one gets True."""
        sent = await self.pool.fetchval(
            "INSERT INTO limit_alerts (manager_id, budget, sent_at) VALUES ($1, $2, now())"
            " ON CONFLICT (manager_id, budget) DO UPDATE SET sent_at = now()"
            " WHERE limit_alerts.sent_at <= now() - make_interval(secs => $3) RETURNING sent_at",
            manager_id,
            budget,
            float(seconds),
        )
        return sent is not None

    async def purge(self, before: datetime, batch: int) -> int:
        """Delete the attempts made before ``before`` (on manager_attempts_at_idx), ``batch`` a
        statement, and the alerts sent before it: the number of attempts deleted. The caller keeps them
        past the budgets' window (and an alert past the window that paces alerts)."""
        deleted = await self._delete_in_batches("manager_attempts", "at < $1", before, batch)
        await self.pool.execute("DELETE FROM limit_alerts WHERE sent_at < $1", before)
        return deleted

    async def probing(self, *, since: datetime, manager_id: str | None = None) -> list[ProbingRow]:
        """Refused attempts since ``since`` by manager, outcome, shape and length (most first)."""
        rows = await self.pool.fetch(
            "SELECT manager_id, outcome, code_shape, code_length, count(*) AS count, max(at) AS last_at"
            " FROM manager_attempts WHERE at >= $1 AND outcome <> 'accepted'"
            " AND ($2::text IS NULL OR manager_id = $2)"
            " GROUP BY manager_id, outcome, code_shape, code_length"
            " ORDER BY manager_id, count(*) DESC, outcome, code_shape, code_length LIMIT 1000",
            since,
            manager_id,
        )
        return [ProbingRow(**dict(r)) for r in rows]
