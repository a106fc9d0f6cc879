"""The ``manager_attempts`` and ``limit_alerts`` tables: every call attempt a manager makes (what the
budgets of bridged.limits are counted on) and the last ``abuse.suspected`` alert per manager and budget.

An attempt keeps its outcome, the order only when the code named one the shop knows, and the code's length
and shape: never the digits typed (they could be a customer's number).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..limits import COUNTED, Attempt, Keyed
from .base import Aggregate, unavailable_as_one_type

# More rows than the budgets need (see ManagerAttempts.window): a window's counted attempts are read up to
# this many, newest first.
WINDOW_ROWS = 5000
# The outcomes read, written out in the statement: a parameter would hide from the planner that they
# are all rows of the partial index manager_attempts_counted_idx (outcome <> 'rate_limited').
_COUNTED_SQL = ", ".join(f"'{outcome}'" for outcome in sorted(COUNTED))
# $1 the manager, $2 the window's seconds, $3 WINDOW_ROWS; one row of now() even with no attempt.
_WINDOW = (
    "SELECT now() AS now, at, outcome, order_id FROM (SELECT at, outcome, order_id"
    " FROM manager_attempts WHERE manager_id = $1 AND at > now() - make_interval(secs => $2)"
    f" AND outcome IN ({_COUNTED_SQL})"
    " ORDER BY at DESC LIMIT $3) w RIGHT JOIN (SELECT 1) one ON true"
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


@unavailable_as_one_type
class ManagerAttempts(Aggregate):
    async def window(self, manager_id: str, seconds: int) -> tuple[datetime, list[Attempt]]:
        """The database's now and the manager's attempts of the last ``seconds`` that the budgets count
        (limits.COUNTED; one scan of the partial index, newest first, up to ``WINDOW_ROWS``).

        Not read: the ``rate_limited`` refusals a manager past a budget adds with every further attempt
        (an auto-dialer: thousands an hour), nor bridged's own refusals (overloaded, lookup_failed, ...).
        Read, they made each check go through all of them, and once ``WINDOW_ROWS`` of them were newer
        than the manager's calls those calls fell out of the read: the calls budget let calls through.

        The verdict is exact while the window holds at most ``WINDOW_ROWS`` counted attempts. With every
        budget on it holds at most ``calls`` accepted and ``(calls + 1) * refused_in_a_row`` probing
        refusals (a run is refused at ``refused_in_a_row``; only an accepted call starts another): 670
        with the defaults, give or take the attempts checked at the same moment (by several daemons). Not
        bounded: with ``refused_in_a_row`` off, a manager repeating unknown or denied orders (denied on
        one order adds no distinct order) adds counted rows without end, and past ``WINDOW_ROWS`` of them
        the oldest counted rows, calls included, go unread (counts come out low); the same with budgets
        set so high (the file allows 1,000,000) that the sum above passes ``WINDOW_ROWS``."""
        rows = await self.pool.fetch(_WINDOW, manager_id, float(seconds), WINDOW_ROWS)
        now: datetime = rows[0]["now"]
        return now, [Attempt(r["at"], r["outcome"], r["order_id"]) for r in rows if r["at"] is not None]

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
