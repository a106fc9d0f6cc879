"""The webhook outbox shared by several daemons (issue 16): each due row is handed to one dispatcher at a
time, and one that died holding rows leaves them to the others once its claim runs out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bridged import db
from bridged.store import Store
from bridged.store.outbox import WebhookOutbox

HOUR = 3600.0


@pytest.fixture
async def other(dsn: str, store: Store) -> AsyncIterator[WebhookOutbox]:
    """The outbox as a second daemon sees it: a pool of its own on the same database."""
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        yield Store(pool).outbox
    finally:
        await pool.close()


async def _expire_claims(store: Store) -> None:
    """The lease run out (as it would after ``lease`` seconds): every row not done is due."""
    await store.pool.execute("UPDATE webhook_outbox SET next_attempt_at = now() - interval '1 second'")


async def test_dispatchers_claiming_at_once_are_each_handed_a_row_once(dsn: str, store: Store) -> None:
    # Without the claim (a plain SELECT of due rows) three dispatchers handed 40 rows 96-111 times.
    for n in range(40):
        await store.outbox.queue(f"c{n}", {"n": n})
    ids = {r["id"] for r in await store.pool.fetch("SELECT id FROM webhook_outbox")}
    others = [await db.create_pool(dsn, min_size=1, max_size=2) for _ in range(2)]
    try:
        handed: list[int] = []

        async def dispatcher(pool: db.Pool) -> None:
            outbox = Store(pool).outbox
            while due := await outbox.claim(3, lease=HOUR):
                for claimed in due:  # as the dispatcher does: delivered, then taken as such
                    handed.append(claimed.id)
                    await outbox.delivered(claimed.id)

        await asyncio.gather(dispatcher(store.pool), *(dispatcher(pool) for pool in others))
    finally:
        for pool in others:
            await pool.close()
    assert sorted(handed) == sorted(ids)


async def test_a_row_claimed_and_never_settled_comes_back_to_another_once_the_claim_runs_out(
    store: Store, other: WebhookOutbox
) -> None:
    await store.outbox.queue("c1", {"n": 1})
    [held] = await store.outbox.claim(10, lease=HOUR)  # this daemon then dies mid-delivery
    assert await other.claim(10, lease=HOUR) == []  # the claim holds: no second delivery meanwhile
    await _expire_claims(store)
    [again] = await other.claim(10, lease=HOUR)
    assert (again.id, again.payload, again.attempts) == (held.id, held.payload, 0)
    await other.delivered(again.id)
    await _expire_claims(store)
    assert await store.outbox.claim(10, lease=HOUR) == []


async def test_a_late_failure_leaves_the_row_to_its_new_claim(store: Store, other: WebhookOutbox) -> None:
    """A dispatcher whose claim ran out (stuck past it) and whose delivery then failed does not make the
    row due under its new holder, who would be delivering it at the same time as a third."""
    await store.outbox.queue("c1", {"n": 1})
    [late] = await store.outbox.claim(10, lease=HOUR)
    await _expire_claims(store)
    [current] = await other.claim(10, lease=HOUR)
    await store.outbox.failed(late, error="HTTP 500", retry_in=0.0)  # would be due at once
    assert await store.outbox.claim(10, lease=HOUR) == []
    row = await store.pool.fetchrow("SELECT attempts, last_error, next_attempt_at FROM webhook_outbox")
    assert row is not None
    assert (row["attempts"], row["last_error"], row["next_attempt_at"]) == (0, None, current.until)
    await other.failed(current, error="HTTP 503", retry_in=None)  # its holder's outcome is kept
    row = await store.pool.fetchrow("SELECT attempts, last_error, failed_at FROM webhook_outbox")
    assert row is not None
    assert (row["attempts"], row["last_error"]) == (1, "HTTP 503") and row["failed_at"] is not None


async def test_a_delivery_is_taken_once_however_many_report_it(store: Store, other: WebhookOutbox) -> None:
    await store.outbox.queue("c1", {"n": 1})
    [late] = await store.outbox.claim(10, lease=HOUR)
    await _expire_claims(store)
    [current] = await other.claim(10, lease=HOUR)
    await store.outbox.delivered(late.id)
    first = await store.pool.fetchrow("SELECT attempts, delivered_at FROM webhook_outbox")
    await other.failed(current, error="HTTP 500", retry_in=None)  # nor undone by the other's failure
    await other.delivered(current.id)
    row = await store.pool.fetchrow("SELECT attempts, delivered_at, failed_at FROM webhook_outbox")
    assert row is not None and first is not None
    assert (row["attempts"], row["delivered_at"], row["failed_at"]) == (1, first["delivered_at"], None)
