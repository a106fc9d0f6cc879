"""Per-manager budgets: what a harvest looks like, stopped before it goes far.

A manager (or whoever holds their phone or token) may, within ``limits.window`` seconds, have so many calls
accepted, try so many different orders, and be refused so many times in a row in the ways probing is
refused (an unknown order, another manager's order, a malformed code, an order without a valid number).
Past a budget the attempt is refused ``rate_limited`` until the window frees a slot: a sliding window over
the attempts the database keeps (``manager_attempts``), so the limits hold across a restart and across
daemons sharing the database. One query per attempt reads what the budgets need of the window
(:class:`Tally`, bridged.store.attempts); :func:`decide` decides from it.

What is kept of an attempt is its outcome, the order when the code named a known one, and the code's
length and shape (:func:`code_shape`): never the digits, which could be a customer's number typed in place
of a code. That is what ops see of probing (``GET /v1/probing``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from .config import Budget

ACCEPTED = "accepted"
RATE_LIMITED = "rate_limited"
# The refusals a manager probing for customers gets; other refusals (bridged or the shop's database away,
# overload) are bridged's, and neither count nor break a run.
PROBING = frozenset({"unknown_order", "denied", "invalid_code", "invalid_phone"})
# The outcomes :func:`verdict` counts: those of every other attempt change none of its counts.
COUNTED = frozenset({ACCEPTED}) | PROBING
# Refusals whose code named an order the shop knows: the order is kept with the attempt.
KNOWN_ORDER = frozenset({ACCEPTED, "denied", "invalid_phone"})

# Shapes of what was keyed in as an order code (the digits themselves are never kept).
WELL_FORMED = "well_formed"
PHONE_LIKE = "phone_like"
DIGITS = "digits"
OTHER = "other"
SHAPES = (WELL_FORMED, PHONE_LIKE, DIGITS, OTHER)
# Seven digits or more, with an optional '+' and separators: a number typed where a code goes.
_PHONE_LIKE = re.compile(r"\+?[0-9][0-9 ()./-]{5,}[0-9]")
# Codes longer than this are counted as this long (a length is all that is kept).
MAX_CODE_LENGTH = 64


class Keyed(NamedTuple):
    """What a manager keyed in, as kept for ops: its length and shape class, never the code itself."""

    length: int
    shape: str


def code_shape(code: str, pattern: str) -> Keyed:
    length = min(len(code), MAX_CODE_LENGTH)
    if re.fullmatch(pattern, code):
        return Keyed(length, WELL_FORMED)
    if _PHONE_LIKE.fullmatch(code) and sum(ch.isdigit() for ch in code) >= 7:
        return Keyed(length, PHONE_LIKE)
    if code.isascii() and code.isdigit():
        return Keyed(length, DIGITS)
    return Keyed(length, OTHER)


@dataclass(frozen=True)
class Attempt:
    """One attempt of the window, as the database returns it."""

    at: datetime
    outcome: str
    order_id: str | None


@dataclass(frozen=True)
class Exceeded:
    """A budget that the next attempt would go past: which, the counts, and when a slot frees."""

    budget: str
    limit: int
    count: int
    # Seconds until the window frees a slot for every budget exceeded (at least 1).
    retry_after: int
    counts: dict[str, int]


# A count is read up to the larger of its budget and this many: enough for every verdict, and exact in an
# alert up to it, however many attempts a manager piles up (the read stays bounded by the budgets).
COUNTS_READ = 5000


def read_up_to(limit: int | None) -> int:
    """How many attempts of a count are read: its budget, and at least :data:`COUNTS_READ`."""
    return max(limit or 0, COUNTS_READ)


@dataclass(frozen=True)
class Tally:
    """What the budgets need of a manager's window: its counts, and for each budget the time whose leaving
    frees a slot (the ``limit``-th newest: of the accepted calls, of the orders' last attempts, of the
    run; None when fewer or the budget is off). :func:`tally` makes it of the attempts; the database
    reads it as such (bridged.store.attempts), a number of rows bounded by the budgets."""

    # Accepted attempts and the refused run, each counted up to ``read_up_to`` its budget.
    calls: int
    distinct_orders: int
    refused_in_a_row: int
    calls_frees: datetime | None
    orders_frees: datetime | None
    run_frees: datetime | None
    # Whether the code tried names an order of the window (calling it again adds no distinct order).
    code_seen: bool


def _nth_newest(times: Sequence[datetime], limit: int | None) -> datetime | None:
    """The ``limit``-th newest of ``times`` (ascending), None when fewer or no budget."""
    if limit is None or limit <= 0 or len(times) < limit:
        return None
    return times[len(times) - limit]


def tally(
    attempts: Sequence[Attempt], *, now: datetime, window: timedelta, budget: Budget, code: str
) -> Tally:
    """The :class:`Tally` of ``attempts`` (any order; those outside the window and the refused
    ``rate_limited`` ones are not counted)."""
    since = now - window
    rows = sorted((a for a in attempts if a.at > since and a.outcome != RATE_LIMITED), key=lambda a: a.at)
    accepted = [a.at for a in rows if a.outcome == ACCEPTED]
    last_seen: dict[str, datetime] = {}
    for a in rows:
        if a.order_id is not None:
            last_seen[a.order_id] = a.at
    run: list[datetime] = []
    for a in rows:
        if a.outcome == ACCEPTED:
            run = []
        elif a.outcome in PROBING:
            run.append(a.at)
    return Tally(
        calls=min(len(accepted), read_up_to(budget.calls)),
        distinct_orders=len(last_seen),
        refused_in_a_row=min(len(run), read_up_to(budget.refused_in_a_row)),
        calls_frees=_nth_newest(accepted, budget.calls),
        orders_frees=_nth_newest(sorted(last_seen.values()), budget.distinct_orders),
        run_frees=_nth_newest(run, budget.refused_in_a_row),
        code_seen=code in last_seen,
    )


def _frees_in(frees: datetime | None, limit: int, now: datetime, window: timedelta) -> float:
    """Seconds until fewer than ``limit`` remain in the window, ``frees`` the ``limit``-th newest."""
    if limit <= 0:
        return window.total_seconds()
    return 0.0 if frees is None else (frees + window - now).total_seconds()


def decide(counted: Tally, *, now: datetime, window: timedelta, budget: Budget) -> Exceeded | None:
    """Whether one more attempt goes past ``budget``, given the :class:`Tally` of the manager's window
    (made for the code tried)."""
    counts = {
        "calls": counted.calls,
        "distinct_orders": counted.distinct_orders,
        "refused_in_a_row": counted.refused_in_a_row,
    }
    over: list[tuple[str, int, float]] = []
    limit = budget.refused_in_a_row
    if limit is not None and counted.refused_in_a_row >= limit:
        over.append(("refused_in_a_row", limit, _frees_in(counted.run_frees, limit, now, window)))
    limit = budget.calls
    if limit is not None and counted.calls >= limit:
        over.append(("calls", limit, _frees_in(counted.calls_frees, limit, now, window)))
    # An order already called in the window is no new one: calling it again stays within the budget.
    limit = budget.distinct_orders
    if limit is not None and not counted.code_seen and counted.distinct_orders >= limit:
        over.append(("distinct_orders", limit, _frees_in(counted.orders_frees, limit, now, window)))
    if not over:
        return None
    name, limit_of_first, _ = over[0]
    wait = max(seconds for _, _, seconds in over)
    return Exceeded(
        budget=name,
        limit=limit_of_first,
        count=counts[name],
        retry_after=max(1, math.ceil(wait)),
        counts=counts,
    )


def verdict(
    attempts: Sequence[Attempt], *, now: datetime, window: timedelta, budget: Budget, code: str
) -> Exceeded | None:
    """Whether one more attempt on ``code`` goes past ``budget``, given the manager's ``attempts``
    (any order; those outside the window and the refused ``rate_limited`` ones are not counted): the
    reference of what the database's read of a :class:`Tally` decides."""
    counted = tally(attempts, now=now, window=window, budget=budget, code=code)
    return decide(counted, now=now, window=window, budget=budget)
