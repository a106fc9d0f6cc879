"""bridged's own database away: one exception type for any outage (Store), and the rows of refused
attempts kept and written once it is back (DeferredWrites, CallService)."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from bridged import metrics
from bridged.calls.legs import media
from bridged.calls.model import PendingCall
from bridged.outcomes import Refusal
from bridged.service import Refused
from bridged.store import Store
from bridged.store.audit import AuditTrail
from bridged.store.base import DatabaseUnavailable
from bridged.store.calls import CallRows
from bridged.store.deferred import DeferredWrites
from bridged.store.idempotency import IdempotencyKeys
from bridged.store.outbox import WebhookOutbox
from bridged.store.settings import Settings

from .fakes import DownStore, FakePool, playback_finished, stasis_start, wait_until
from .test_service import _env, _no_code

OUTAGES = [
    ConnectionRefusedError(111, "Connect call failed"),
    TimeoutError(),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError('database "bridged" is not accepting connections'),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
]


@pytest.mark.parametrize("error", OUTAGES, ids=lambda e: type(e).__name__)
async def test_every_outage_is_database_unavailable(error: BaseException) -> None:
    store = Store(FakePool(error=error))  # type: ignore[arg-type]
    with pytest.raises(DatabaseUnavailable) as raised:
        await store.calls.get("c1")
    assert str(raised.value) == type(error).__name__  # the type only: the text may quote values
    with pytest.raises(DatabaseUnavailable):
        await store.audit.add(actor="a", action="b", outcome="c")
    with pytest.raises(DatabaseUnavailable):
        await store.settings.get("k")


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        ValueError("a bug"),
        asyncpg.exceptions.DataError("x"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_other_errors_are_not_mistaken_for_an_outage(error: BaseException) -> None:
    with pytest.raises(type(error)):
        await Store(FakePool(error=error)).calls.get("c1")  # type: ignore[arg-type]


@pytest.mark.parametrize("aggregate", [CallRows, AuditTrail, IdempotencyKeys, WebhookOutbox, Settings])
def test_every_public_store_method_translates(aggregate: type) -> None:
    methods = [
        m for n, m in vars(aggregate).items() if not n.startswith("_") and inspect.iscoroutinefunction(m)
    ]
    assert methods
    for member in methods:
        assert hasattr(member, "__wrapped__"), member.__name__
    # And the store holds one of each.
    no_pool = Store(None)  # type: ignore[arg-type]  # never queried: only its parts' types count
    assert {type(a) for a in vars(no_pool).values()} >= {aggregate}


# -- DeferredWrites ---------------------------------------------------------------------------------


class Table:
    """Rows written through a database that can be away."""

    def __init__(self) -> None:
        self.down = True
        self.rows: list[str] = []

    def writer(self, row: str) -> Any:
        async def write() -> None:
            if self.down:
                raise DatabaseUnavailable("OSError")
            self.rows.append(row)

        return write


async def test_writes_are_kept_while_the_database_is_away_and_written_in_order_once_back() -> None:
    table = Table()
    deferred = DeferredWrites(delays=(0.01,) * 3)
    assert await deferred.write("a", table.writer("a")) is False
    assert await deferred.write("b", table.writer("b")) is False
    assert await deferred.write("c", table.writer("c"), try_now=False) is False
    assert deferred.pending == 3 and table.rows == []
    table.down = False
    await wait_until(lambda: deferred.pending == 0)
    assert table.rows == ["a", "b", "c"]
    assert await deferred.write("d", table.writer("d")) is True
    await deferred.close()


async def test_a_write_that_goes_through_flushes_the_kept_ones_without_waiting_for_the_next_retry() -> None:
    table = Table()
    deferred = DeferredWrites(delays=(3600.0,))
    await deferred.write("a", table.writer("a"))
    table.down = False
    assert await deferred.write("b", table.writer("b")) is True  # not held up behind "a"
    await wait_until(lambda: deferred.pending == 0)  # long before the hour the retry would wait
    assert table.rows == ["b", "a"]
    await deferred.close()


async def test_beyond_the_limit_a_write_is_lost_and_counted() -> None:
    table = Table()
    deferred = DeferredWrites(limit=2, delays=(60.0,))
    lost = metrics.DEFERRED_WRITES_LOST.value()
    for row in "abc":
        await deferred.write(row, table.writer(row))
    assert deferred.pending == 2
    assert metrics.DEFERRED_WRITES_LOST.value() == lost + 1
    table.down = False
    await deferred.close()  # the last try writes what was kept
    assert table.rows == ["a", "b"]


async def test_a_write_the_database_refuses_for_good_does_not_hold_up_the_others() -> None:
    table = Table()
    deferred = DeferredWrites(delays=(0.01,) * 3)

    async def broken() -> None:
        if table.down:
            raise DatabaseUnavailable("OSError")
        raise asyncpg.exceptions.UniqueViolationError("duplicate key")

    await deferred.write("broken", broken)
    await deferred.write("a", table.writer("a"))
    table.down = False
    await wait_until(lambda: deferred.pending == 0)
    assert table.rows == ["a"]
    await deferred.close()


async def test_a_stamped_write_kept_for_later_says_when_it_happened_not_when_it_got_through() -> None:
    deferred = DeferredWrites(delays=(0.01,) * 50)
    down, stamps = True, []

    async def write(at: datetime) -> None:
        if down:
            raise DatabaseUnavailable("OSError")
        stamps.append((at, datetime.now(UTC)))

    before = datetime.now(UTC)
    await deferred.write_stamped("a", write)
    after = datetime.now(UTC)
    await asyncio.sleep(0.03)  # retries while the database is still away
    down = False
    await wait_until(lambda: deferred.pending == 0)
    [(at, written)] = stamps
    assert before <= at <= after < written
    await deferred.close()


async def test_a_refusal_found_with_the_database_away_is_kept_without_trying_it_again() -> None:
    deferred = DeferredWrites(delays=(3600.0,))
    tried: list[datetime] = []

    async def insert(at: datetime) -> None:
        tried.append(at)

    refused = metrics.CALLS_REFUSED.value(Refusal.DATABASE_UNAVAILABLE.value)
    await deferred.refused("refused call c-1", Refusal.DATABASE_UNAVAILABLE, insert)
    assert (tried, deferred.pending) == ([], 1)
    assert metrics.CALLS_REFUSED.value(Refusal.DATABASE_UNAVAILABLE.value) == refused + 1
    await deferred.refused("refused call c-2", Refusal.UNKNOWN_ORDER, insert)  # tried at once
    await wait_until(lambda: deferred.pending == 0)  # its success flushed the kept one
    assert len(tried) == 2
    await deferred.close()


async def test_stopping_with_the_database_still_away_counts_what_is_lost() -> None:
    table = Table()
    deferred = DeferredWrites(delays=(60.0,))
    lost = metrics.DEFERRED_WRITES_LOST.value()
    await deferred.write("a", table.writer("a"))
    await deferred.write("b", table.writer("b"))
    await deferred.close()
    assert metrics.DEFERRED_WRITES_LOST.value() == lost + 2
    assert deferred.pending == 0


# -- CallService with the database away -------------------------------------------------------------


def _use_deferred(env: Any, deferred: DeferredWrites) -> None:
    """The service's deferred writes, and its parts' (budgets, refusals, inbound calls): the same object."""
    for part in (env.service, env.service.budgets, env.service.refusals, env.service.inbound):
        part.deferred = deferred


def _down_env() -> Any:
    # The DownStore is given to every part as it is made: patched in afterwards, a part that keeps its own
    # reference (the engine's, in engine.rows) would go on writing to a healthy store.
    env = _env(store=DownStore())
    _use_deferred(env, DeferredWrites(delays=(0.01,) * 5))
    return env


async def test_a_call_whose_row_cannot_be_written_is_refused_and_its_row_written_later() -> None:
    env = _down_env()
    env.store.down = True
    before = datetime.now(UTC)
    refused = metrics.CALLS_REFUSED.value(Refusal.DATABASE_UNAVAILABLE.value)
    # The row is written while the FastAGI answer goes out (issue 19); the refusal comes once the
    # manager's channel is in Stasis, before the customer is dialled.
    pending = await env.service.place_from_phone("anna", "123", "m-1", read_code=_no_code)
    assert isinstance(pending, PendingCall)
    env.engine.on_event(stasis_start("m-1", ["order", pending.call_id], state="Ring"))
    ari = env.engine.ari
    await wait_until(lambda: ari.named("play"), what="the manager's prompt")
    assert [kw["media"] for kw in ari.named("play")] == [media(env.config.prompts.unavailable)]
    # No row, no call: the customer is never dialled.
    assert ari.named("originate_to_dialplan") == []
    assert metrics.CALLS_REFUSED.value(Refusal.DATABASE_UNAVAILABLE.value) == refused + 1
    # The budgets' window read (the attempt goes on without it), the call's own row once, and the
    # refusal's row not tried again at once ("record": the attempt as the budgets count it, kept for
    # later too, written in the background whenever it comes).
    assert [name for name in env.store.refused if name != "record"] == ["window", "insert_audited"]
    assert env.store.rows == {}
    env.store.down = False
    await wait_until(lambda: env.store.rows)
    [row] = env.store.rows.values()
    assert (row["outcome"], row["order_id"], row["state"]) == ("database_unavailable", "123", "ended")
    assert before <= row["requested_at"] <= datetime.now(UTC)  # when it happened, not when written
    [entry] = env.store.audits
    assert (entry["outcome"], entry["reason"], entry["at"]) == (
        "refused",
        "database_unavailable",
        row["requested_at"],
    )
    # The live call wrote nothing of its own (its row is the refusal's).
    env.engine.on_event(playback_finished(ari.named("play")[0]["playback_id"], "m-1"))
    await wait_until(lambda: "m-1" in ari.hung_up(), what="the manager hung up after the prompt")
    await asyncio.sleep(0.05)
    assert len(env.store.rows) == 1
    assert [name for name in env.store.refused if name != "record"] == ["window", "insert_audited"]
    await env.engine.shutdown()


@pytest.mark.parametrize(("code", "reason"), [("999", Refusal.UNKNOWN_ORDER), ("12a", Refusal.INVALID_CODE)])
async def test_a_refusal_while_the_database_is_away_keeps_its_reason_and_its_row(
    code: str, reason: Refusal
) -> None:
    env = _down_env()
    env.store.down = True
    result = await env.service.place_from_phone("anna", code, "m-1", read_code=_no_code)
    assert isinstance(result, Refused) and result.reason is reason  # the manager hears the real reason
    env.store.down = False
    await wait_until(lambda: env.store.audits)
    assert [(a["reason"], a["actor"]) for a in env.store.audits] == [(reason.value, "anna")]
    await env.engine.shutdown()


async def test_an_unknown_endpoint_while_the_database_is_away() -> None:
    env = _down_env()
    env.store.down = True
    refused = await env.service.place_from_phone("mallory", "123", "m-1", read_code=_no_code)
    assert isinstance(refused, Refused) and refused.reason is Refusal.UNKNOWN_MANAGER
    env.store.down = False
    await wait_until(lambda: env.store.audits)
    assert env.store.audits[0]["actor"] == "endpoint:mallory"
    await env.engine.shutdown()


async def test_close_gives_kept_rows_a_last_try() -> None:
    env = _down_env()
    _use_deferred(env, DeferredWrites(delays=(60.0,)))
    env.store.down = True
    await env.service.place_from_phone("anna", "999", "m-1", read_code=_no_code)
    env.store.down = False
    await env.service.close()
    assert [r["outcome"] for r in env.store.rows.values()] == ["unknown_order"]
    await asyncio.sleep(0)
    await env.engine.shutdown()


async def test_the_attempts_of_a_phone_call_whose_row_was_not_taken_are_written_later() -> None:
    """The budgets' record of the accepted attempt goes with the call's row (issue 19): a row the database
    did not take leaves it kept for later, with the refusal's own, as when it was a write of its own."""
    env = _down_env()
    env.store.down = True
    before = datetime.now(UTC)
    pending = await env.service.place_from_phone("anna", "123", "m-1", read_code=_no_code)
    assert isinstance(pending, PendingCall)
    env.engine.on_event(stasis_start("m-1", ["order", pending.call_id], state="Ring"))
    await wait_until(lambda: env.engine.ari.named("play"), what="the manager's prompt")
    env.store.down = False
    await wait_until(lambda: len(env.store.attempts.rows) == 2, what="the kept attempts")
    rows = env.store.attempts.rows
    assert sorted((r["outcome"], r["order_id"] or "") for r in rows) == [
        ("accepted", "123"),
        ("database_unavailable", ""),
    ]
    assert all(before <= r["at"] <= datetime.now(UTC) for r in rows)
    await env.engine.shutdown()


async def test_an_accepted_phone_call_records_one_attempt() -> None:
    env = _down_env()
    pending = await env.service.place_from_phone("anna", "123", "m-1", read_code=_no_code)
    assert isinstance(pending, PendingCall)
    await wait_until(lambda: env.store.rows, what="the call's row")
    await asyncio.sleep(0.05)
    assert [(r["outcome"], r["order_id"]) for r in env.store.attempts.rows] == [("accepted", "123")]
    await env.engine.shutdown()
