"""The retention pass's rows purge on PostgreSQL (bridged.retention.Retention.purge_rows): rows past their
keeping go, in batches; rows within it, and deliveries still due however old, stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridged.retention import OUTBOX_KEEP_DAYS, Retention
from bridged.store import Store

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
