"""The budgets' window read on PostgreSQL (bridged.store.attempts): the limits.Tally it reads decides as
bridged.limits.verdict of all the manager's attempts does, however many refusals the manager piled up,
and each of its parts is read on an index, without going through those."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridged.budgets import Budgets
from bridged.config import Budget, ConfigHolder, Manager
from bridged.limits import (
    COUNTED,
    COUNTS_READ,
    KNOWN_ORDER,
    RATE_LIMITED,
    Attempt,
    Keyed,
    decide,
    tally,
    verdict,
)
from bridged.store import Store
from bridged.store.attempts import _WINDOW, NewAttempt, _window_args
from bridged.store.deferred import DeferredWrites
from tests.unit.fakes import make_config

HOUR = 3600


async def _attempts(
    store: Store, outcome: str, count: int, minutes_ago: int, manager_id: str = "anna"
) -> None:
    """``count`` attempts of the manager, a millisecond apart from ``minutes_ago`` on."""
    await store.pool.execute(
        "INSERT INTO manager_attempts (manager_id, at, outcome, order_id, code_length, code_shape)"
        " SELECT $4, now() - make_interval(mins => $3) + n * interval '1 millisecond', $1,"
        " CASE WHEN $1 = 'accepted' THEN n::text END, 3, 'well_formed' FROM generate_series(1, $2) n",
        outcome,
        count,
        minutes_ago,
        manager_id,
    )


async def test_rate_limited_refusals_past_the_window_rows_leave_the_calls_counted(store: Store) -> None:
    """A manager past their calls budget who keeps dialling (an auto-dialer) is refused rate_limited, a row
    each. With the window read up to 5,000 of all rows, 5,010 of those pushed the 3 calls out of the
    read: the verdict was None, calls let through again (checked on the read before migration 0012)."""
    budgets = _budgets(store, Budget(calls=3, distinct_orders=None, refused_in_a_row=None))
    await _attempts(store, "accepted", 3, minutes_ago=50)
    over = await budgets.over(ANNA, "9")
    assert over is not None and (over.budget, over.count) == ("calls", 3)
    await _attempts(store, "rate_limited", COUNTS_READ + 10, minutes_ago=40)
    over = await budgets.over(ANNA, "9")
    assert over is not None and (over.budget, over.count) == ("calls", 3)


async def _plan(store: Store, budget: Budget, code: str) -> str:
    rows = await store.pool.fetch("EXPLAIN ANALYZE " + _WINDOW, *_window_args("anna", HOUR, budget, code))
    return "\n".join(r[0] for r in rows)


async def test_each_part_of_the_window_is_read_on_its_index(store: Store) -> None:
    """The read's plan: the accepted calls on migration 0013's partial index, the run on 0012's (from the
    last call on), the orders on 0013's other: none goes through the rate_limited refusals nor the
    unknown orders. Without 0013 the accepted and the orders were each read on a sequential scan of the
    table, 50,005 rows removed by the filter (18.7 ms, against 0.34 ms with it)."""
    await _attempts(store, "accepted", 60, minutes_ago=50)
    await _attempts(store, "rate_limited", 20_000, minutes_ago=40)
    await _attempts(store, "unknown_order", 20_000, minutes_ago=55)
    await _attempts(store, "unknown_order", 5, minutes_ago=30)
    for n in range(20):
        await _attempts(store, "denied", 500, minutes_ago=30, manager_id=f"m{n}")
    await store.pool.execute("ANALYZE manager_attempts")
    plan = await _plan(store, Budget(calls=60, distinct_orders=40, refused_in_a_row=10), "9")
    for index in ("accepted_idx", "counted_idx", "orders_idx"):
        assert f"manager_attempts_{index}" in plan, plan
    assert "Rows Removed" not in plan and "Seq Scan" not in plan, plan


def _budgets(store: Store, budget: Budget) -> Budgets:
    config = make_config()
    limits = replace(config.limits, window=HOUR, default=budget, managers=())
    return Budgets(ConfigHolder(replace(config, limits=limits)), store, DeferredWrites(), lambda *_: None)


ANNA = Manager("anna", "Anna", "PJSIP/anna")


async def _denied(store: Store, order_id: str, count: int, minutes_ago: int) -> None:
    """``count`` refusals ``denied`` of one order (another manager's), a millisecond apart."""
    await store.pool.execute(
        "INSERT INTO manager_attempts (manager_id, at, outcome, order_id, code_length, code_shape)"
        " SELECT 'anna', now() - make_interval(mins => $3) + n * interval '1 millisecond', 'denied', $1,"
        " 3, 'well_formed' FROM generate_series(1, $2) n",
        order_id,
        count,
        minutes_ago,
    )


async def test_calls_stay_counted_under_more_probing_refusals_than_the_window_rows(store: Store) -> None:
    """With refused_in_a_row off, a manager trying unknown orders adds a counted row each, without end:
    past 5,000 of them (the rows the read took) the three calls went unread and the calls budget let a fourth through."""
    await _attempts(store, "accepted", 3, minutes_ago=50)
    await _attempts(store, "unknown_order", COUNTS_READ + 10, minutes_ago=40)
    over = await _budgets(store, Budget(calls=3, distinct_orders=None, refused_in_a_row=None)).over(ANNA, "9")
    assert over is not None and (over.budget, over.count) == ("calls", 3)


async def test_orders_stay_counted_under_one_denied_order_tried_again_and_again(store: Store) -> None:
    """One order denied again and again adds no distinct order but a counted row each: past 5,000
    of them the orders called before went unread and the distinct_orders budget let a new one through."""
    await _attempts(store, "accepted", 2, minutes_ago=50)
    await _denied(store, "777", COUNTS_READ + 10, minutes_ago=40)
    budget = Budget(calls=None, distinct_orders=3, refused_in_a_row=None)
    over = await _budgets(store, budget).over(ANNA, "9")
    assert over is not None and (over.budget, over.count) == ("distinct_orders", 3)
    assert await _budgets(store, budget).over(ANNA, "777") is None  # an order of the window is no new one


async def test_a_run_longer_than_the_window_rows_is_counted_whole(store: Store) -> None:
    """A budget set high (the file allows 1,000,000): a run past 5,000 was counted 5,000."""
    await _attempts(store, "accepted", 1, minutes_ago=50)
    await _attempts(store, "unknown_order", COUNTS_READ + 6, minutes_ago=40)
    budget = Budget(calls=None, distinct_orders=None, refused_in_a_row=COUNTS_READ + 5)
    over = await _budgets(store, budget).over(ANNA, "9")
    # Counted up to the budget: the read goes no further.
    assert over is not None and (over.budget, over.count) == ("refused_in_a_row", COUNTS_READ + 5)


_OUTCOMES = sorted(COUNTED | {RATE_LIMITED, "overloaded"})
_ORDERS = ("1", "2", "3", "4")
_LIMITS = st.none() | st.integers(min_value=0, max_value=5)


@st.composite
def _histories(draw: st.DrawFn) -> list[tuple[int, str, str | None]]:
    """Attempts as (milliseconds ago, outcome, order), each at a time of its own (the order of two at the
    same time is none), some before the window; an order only where bridged records one."""
    ages = draw(st.lists(st.integers(min_value=1, max_value=5_000_000), max_size=25, unique=True))
    history = []
    for age in ages:
        outcome = draw(st.sampled_from(_OUTCOMES))
        order_id = draw(st.sampled_from(_ORDERS)) if outcome in KNOWN_ORDER else None
        history.append((age, outcome, order_id))
    return history


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    history=_histories(),
    budget=st.builds(Budget, calls=_LIMITS, distinct_orders=_LIMITS, refused_in_a_row=_LIMITS),
    code=st.sampled_from(_ORDERS),
)
async def test_the_read_decides_as_the_verdict_of_all_attempts(
    store: Store, history: list[tuple[int, str, str | None]], budget: Budget, code: str
) -> None:
    """Generated histories written to PostgreSQL: the Tally read decides as limits.verdict of every
    attempt, counts and Retry-After included (a window of an hour, attempts up to 83 minutes old)."""
    await store.pool.execute("DELETE FROM manager_attempts")
    base = datetime.now(UTC)
    attempts = [
        Attempt(base - timedelta(milliseconds=age), outcome, order) for age, outcome, order in history
    ]
    for attempt in attempts:
        keyed = Keyed(1, "digits")
        await store.attempts.record(NewAttempt("anna", attempt.outcome, attempt.order_id, keyed, attempt.at))
    await store.attempts.record(NewAttempt("boris", "accepted", code, Keyed(1, "digits"), base))
    now, counted = await store.attempts.window("anna", HOUR, budget, code)
    window = timedelta(seconds=HOUR)
    assert counted == tally(attempts, now=now, window=window, budget=budget, code=code)
    expected = verdict(attempts, now=now, window=window, budget=budget, code=code)
    assert decide(counted, now=now, window=window, budget=budget) == expected
