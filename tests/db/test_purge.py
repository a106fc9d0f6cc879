"""The retention pass's rows purge on PostgreSQL (bridged.retention.Retention.purge_rows): rows past their
keeping go, in batches; rows within it, and deliveries still due however old, stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridged.retention import OUTBOX_KEEP_DAYS, ROWS_BATCH, Retention
from bridged.store import Store
from bridged.store.base import batch_delete
from bridged.store.outbox import DONE_BEFORE

DAY = timedelta(days=1)


async def test_attempts_and_alerts_past_keep_days_go_and_those_within_stay(store: Store) -> None:
    now = datetime.now(UTC)
    for days in (400, 120, 91, 91, 91, 89, 1):
        await store.pool.execute(
            "INSERT INTO manager_attempts (manager_id, at, outcome, code_length, code_shape)"
            " VALUES ('anna', $1, 'unknown_order', 3, 'digits')",
            now - days * DAY,
        )
    await store.pool.execute(
        "INSERT INTO limit_alerts (manager_id, budget, sent_at) VALUES ('anna', 'calls', $1),"
        " ('anna', 'distinct_orders', $2)",
        now - 100 * DAY,
        now - 2 * DAY,
    )
    # Two a statement: the five past 90 days take three statements, all go.
    assert await store.attempts.purge(now - 90 * DAY, 2) == 5
    kept = await store.pool.fetch("SELECT at FROM manager_attempts ORDER BY at")
    assert [r["at"] for r in kept] == [now - 89 * DAY, now - DAY]
    alerts = await store.pool.fetch("SELECT budget FROM limit_alerts")
    assert [r["budget"] for r in alerts] == ["distinct_orders"]


async def test_deliveries_done_long_ago_go_and_those_due_stay_however_old(store: Store) -> None:
    now = datetime.now(UTC)
    done = OUTBOX_KEEP_DAYS * DAY
    rows = [
        ("delivered long ago", now - done - 3 * DAY, now - done - DAY, None),
        ("given up long ago", now - done - 3 * DAY, None, now - done - DAY),
        ("delivered lately", now - done - 3 * DAY, now - done + DAY, None),
        ("given up lately", now - 2 * DAY, None, now - DAY),
        ("still due", now - 400 * DAY, None, None),
    ]
    for call_id, created_at, delivered_at, failed_at in rows:
        await store.pool.execute(
            "INSERT INTO webhook_outbox (call_id, payload, created_at, delivered_at, failed_at)"
            " VALUES ($1, '{}', $2, $3, $4)",
            call_id,
            created_at,
            delivered_at,
            failed_at,
        )
    retention = Retention(store, None, lambda: None, lambda: 90)  # type: ignore[arg-type]
    assert await retention.purge_rows() == (0, 2)
    kept = await store.pool.fetch("SELECT call_id FROM webhook_outbox ORDER BY id")
    assert [r["call_id"] for r in kept] == ["delivered lately", "given up lately", "still due"]


async def test_the_deliveries_purge_finds_its_rows_by_index(store: Store) -> None:
    # A month of deliveries (the table between two passes) and the few past keeping: the purge finds
    # those through webhook_outbox_done_idx. Sequential scans off, so that the plan on a table this small
    # is the one a large table gets; without the index the only plan left is still a Seq Scan.
    now = datetime.now(UTC)
    horizon = now - OUTBOX_KEEP_DAYS * DAY
    await store.pool.execute(
        "INSERT INTO webhook_outbox (call_id, payload, delivered_at, failed_at)"
        " SELECT 'c' || i, '{}', CASE WHEN i % 50 <> 0 THEN $1::timestamptz - i * interval '2 minutes' END,"
        " CASE WHEN i % 50 = 0 THEN $1::timestamptz - i * interval '2 minutes' END"
        " FROM generate_series(1, 22000) AS i",
        now,
    )
    await store.pool.execute("ANALYZE webhook_outbox")
    old = await store.pool.fetchval("SELECT count(*) FROM webhook_outbox WHERE " + DONE_BEFORE, horizon)
    assert 0 < old < 1000  # a few past the horizon among many within it
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetch("EXPLAIN " + batch_delete("webhook_outbox", DONE_BEFORE), horizon, ROWS_BATCH)
    text = "\n".join(r[0] for r in plan)
    assert "Index Scan using webhook_outbox_done_idx" in text, text
    assert "Seq Scan" not in text, text
