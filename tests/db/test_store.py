"""The store's SQL on PostgreSQL: pagination, idempotency keys, the webhook outbox, settings, the
recording purge. (What the engine and the service rely on is in test_contract.py, against the fake too.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from bridged.store import Store
from bridged.store.audit import AuditFilter
from bridged.store.base import Window
from bridged.store.calls import CallFilter
from bridged.store.settings import CURSOR_SECRET_KEY

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _refused(store: Store, call_id: str, at: datetime, **extra: Any) -> None:
    """A call row at a time of our choosing (a refused attempt's requested_at is when it was refused)."""
    await store.calls.insert_refused(
        call_id=call_id,
        order_id=extra.get("order_id", "123"),
        manager_id=extra.get("manager_id", "anna"),
        direction="phone",
        outcome=extra.get("outcome", "denied"),
        at=at,
        actor="anna",
        details={},
    )


async def _all_pages(store: Store, limit: int, **filters: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    before = None
    while True:
        rows = await store.calls.page(Window(before=before, limit=limit), CallFilter(**filters))
        if not rows:
            return pages
        pages.append([r.id for r in rows])
        before = (rows[-1].requested_at, rows[-1].id)


async def test_call_pages_are_newest_first_with_ties_broken_by_id_and_no_row_twice(store: Store) -> None:
    # Three rows share one time: the id orders them, and a page boundary among them loses none.
    times = {"a": AT, "b": AT, "c": AT, "d": AT - timedelta(minutes=1), "e": AT + timedelta(minutes=1)}
    for call_id, at in times.items():
        await _refused(store, call_id, at)
    assert await _all_pages(store, 2) == [["e", "c"], ["b", "a"], ["d"]]
    assert await _all_pages(store, 10) == [["e", "c", "b", "a", "d"]]
    assert await _all_pages(store, 1) == [["e"], ["c"], ["b"], ["a"], ["d"]]


async def test_call_page_filters_and_their_boundaries(store: Store) -> None:
    await _refused(store, "early", AT - timedelta(hours=1), manager_id="boris", outcome="unknown_order")
    await _refused(store, "at", AT, order_id="456")
    await _refused(store, "late", AT + timedelta(hours=1))
    ids = [
        [r.id for r in await store.calls.page(Window(since=AT), CallFilter())],
        [r.id for r in await store.calls.page(Window(until=AT), CallFilter())],
    ]
    assert ids == [["late", "at"], ["early"]]  # from is inclusive, to exclusive
    assert [r.id for r in await store.calls.page(Window(), CallFilter(manager_id="boris"))] == ["early"]
    assert [r.id for r in await store.calls.page(Window(), CallFilter(order_id="456"))] == ["at"]
    assert [r.id for r in await store.calls.page(Window(), CallFilter(outcome="unknown_order"))] == ["early"]
    assert [
        r.id for r in await store.calls.page(Window(), CallFilter(manager_id="boris", outcome="denied"))
    ] == []


async def _recorded(store: Store, call_id: str, recording_state: str | None = None) -> None:
    await store.calls.insert_audited(
        call_id=call_id,
        order_id="123",
        manager_id="anna",
        direction="phone",
        state="requested",
        manager_channel_id=f"{call_id}-m",
        ari_app="bridged",
        actor="anna",
        details={},
    )
    await store.calls.mark_bridged(
        call_id, answered_at=AT, bridge_id="b", recording_name=f"bridged-{call_id}"
    )
    await store.calls.finish(call_id, outcome="completed", hangup_cause=16, ended_by="manager")
    if recording_state is not None:
        await store.calls.set_recording_state(call_id, recording_state)


async def test_has_recording_means_a_recording_with_audio_that_was_not_purged(store: Store) -> None:
    await _recorded(store, "kept", "complete")
    await _recorded(store, "cut", "truncated")
    await _recorded(store, "failed", "failed")
    await _recorded(store, "purged", "complete")
    await store.calls.mark_recording_purged("purged", actor="retention", details={})
    await _refused(store, "none", AT)
    with_recording = {r.id for r in await store.calls.page(Window(), CallFilter(has_recording=True))}
    without = {r.id for r in await store.calls.page(Window(), CallFilter(has_recording=False))}
    assert with_recording == {"kept", "cut"}
    assert without == {"failed", "purged", "none"}
    rows = {r.id: r for r in await store.calls.page(Window(), CallFilter())}
    assert all(rows[i].recording_available for i in with_recording)
    assert not any(rows[i].recording_available for i in without)


async def test_audit_pages_are_newest_first_with_ties_broken_by_id(store: Store) -> None:
    for n, at in enumerate((AT, AT, AT - timedelta(seconds=1), AT + timedelta(seconds=1))):
        await store.audit.add(actor=f"a{n}", action="call.request", outcome="refused", at=at)
    pages: list[list[str]] = []
    before = None
    while rows := await store.audit.page(Window(before=before, limit=2), AuditFilter()):
        pages.append([r.actor for r in rows])
        before = (rows[-1].at, rows[-1].id)
    assert pages == [["a3", "a1"], ["a0", "a2"]]
    assert [
        r.actor
        for r in await store.audit.page(Window(since=AT, until=AT + timedelta(seconds=1)), AuditFilter())
    ] == [
        "a1",
        "a0",
    ]
    assert [r.actor for r in await store.audit.page(Window(), AuditFilter(actor="a2"))] == ["a2"]


async def test_idempotency_claim_replay_and_release(store: Store) -> None:
    keys = store.idempotency
    assert await keys.claim("shop-1", "k", "h1", keep_hours=24) == (True, None, None, None)
    # A retry while the first request is being handled, then after its answer was remembered.
    assert await keys.claim("shop-1", "k", "h1", keep_hours=24) == (False, "h1", None, None)
    await keys.remember("shop-1", "k", 202, {"id": "c1"})
    assert await keys.claim("shop-1", "k", "h1", keep_hours=24) == (False, "h1", 202, {"id": "c1"})
    await keys.release("shop-1", "k")  # an answered key is not released
    assert await keys.claim("shop-1", "k", "h2", keep_hours=24) == (False, "h1", 202, {"id": "c1"})
    # Keys are per token; a released key may be claimed again.
    assert await keys.claim("shop-2", "k", "h1", keep_hours=24) == (True, None, None, None)
    await keys.release("shop-2", "k")
    assert await keys.claim("shop-2", "k", "h3", keep_hours=24) == (True, None, None, None)


async def test_an_expired_idempotency_key_is_forgotten(store: Store) -> None:
    await store.idempotency.claim("shop-1", "k", "h1", keep_hours=24)
    await store.pool.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    assert await store.idempotency.claim("shop-1", "k", "h2", keep_hours=24) == (True, None, None, None)


async def test_the_outbox_claimed_delivered_failed_and_given_up(store: Store) -> None:
    outbox = store.outbox
    for call_id in ("c1", "c2", "c3"):
        await outbox.queue(call_id, {"call_id": call_id})
    due = await outbox.claim(10, lease=3600.0)
    assert [(json.loads(c.payload)["call_id"], c.attempts) for c in due] == [("c1", 0), ("c2", 0), ("c3", 0)]
    first, second, third = due
    await outbox.delivered(first.id)
    await outbox.failed(second, error="x" * 500, retry_in=3600.0)  # retried in an hour: not due now
    await outbox.failed(third, error="HTTP 500", retry_in=0.0)  # due again at once
    again = await outbox.claim(10, lease=3600.0)
    assert [(c.id, c.attempts) for c in again] == [(third.id, 1)]
    await outbox.failed(again[0], error="HTTP 500", retry_in=None)  # given up
    rows = {r["id"]: r for r in await store.pool.fetch("SELECT * FROM webhook_outbox")}
    assert rows[first.id]["delivered_at"] is not None and rows[first.id]["attempts"] == 1
    assert len(rows[second.id]["last_error"]) == 200 and rows[second.id]["failed_at"] is None
    assert rows[third.id]["failed_at"] is not None and rows[third.id]["attempts"] == 2
    # Claims and retries run out: only the row neither delivered nor given up is due again.
    await store.pool.execute("UPDATE webhook_outbox SET next_attempt_at = now() - interval '1 second'")
    assert [c.id for c in await outbox.claim(10, lease=3600.0)] == [second.id]
    assert await outbox.claim(10, lease=3600.0) == [] and await outbox.claim(0, lease=3600.0) == []


async def test_a_setting_and_its_audit_row_go_together(store: Store) -> None:
    settings = store.settings
    assert await settings.get("recording.retention_days") is None
    put = await settings.put("recording.retention_days", 30, actor="admin-1", audit_action="retention.change")
    found = await settings.get("recording.retention_days")
    assert found is not None and (found.value, found.updated_by, found.updated_at) == (
        30,
        "admin-1",
        put.updated_at,
    )
    await settings.put("recording.retention_days", None, actor="admin-2", audit_action="retention.change")
    again = await settings.get("recording.retention_days")
    assert again is not None and (again.value, again.updated_by) == (None, "admin-2")
    await settings.delete("recording.retention_days", actor="admin-1", audit_action="retention.change")
    assert await settings.get("recording.retention_days") is None
    trail = [
        (r.actor, r.outcome, r.details) for r in reversed(await store.audit.page(Window(), AuditFilter()))
    ]
    assert trail == [
        ("admin-1", "changed", {"key": "recording.retention_days", "value": 30}),
        ("admin-2", "changed", {"key": "recording.retention_days", "value": None}),
        ("admin-1", "reset", {"key": "recording.retention_days"}),
    ]


async def test_the_cursor_secret_is_made_once_and_kept(store: Store) -> None:
    secret = await store.settings.cursor_secret()
    assert len(secret) >= 32 and await store.settings.cursor_secret() == secret
    kept = await store.settings.get(CURSOR_SECRET_KEY)
    assert kept is not None and kept.value == secret


async def test_recordings_past_the_retention_are_purged_once_and_audited(store: Store) -> None:
    await _recorded(store, "old")
    await _recorded(store, "young")
    await store.pool.execute("UPDATE calls SET requested_at = $1 WHERE id = 'old'", AT - timedelta(days=40))
    await store.calls.insert_audited(
        call_id="live",
        order_id="1",
        manager_id="anna",
        direction="phone",
        state="bridged",
        manager_channel_id="m",
        ari_app="bridged",
        actor="anna",
        details={},
    )
    await store.calls.mark_bridged("live", answered_at=AT, bridge_id="b", recording_name="bridged-live")
    await store.pool.execute("UPDATE calls SET requested_at = $1 WHERE id = 'live'", AT - timedelta(days=40))
    cutoff = AT - timedelta(days=30)
    assert await store.calls.recordings_due(cutoff, 10) == [("old", "bridged-old")]  # not the live call's
    purged_at = await store.calls.mark_recording_purged(
        "old", actor="retention", details={"file_found": True}
    )
    assert purged_at is not None
    assert await store.calls.mark_recording_purged("old", actor="retention", details={}) is None
    assert await store.calls.recordings_due(cutoff, 10) == []
    row = await store.calls.get("old")
    assert row is not None and row.recording_purged_at == purged_at and not row.recording_available
    purges = [r for r in await store.audit.page(Window(), AuditFilter(action="recording.purge"))]
    assert [(r.actor, r.call_id, r.outcome, r.details) for r in purges] == [
        ("retention", "old", "purged", {"file_found": True})
    ]


async def test_a_row_left_refusing_by_an_older_bridged_is_ending_after_the_migration(cluster: Any) -> None:
    from bridged import db

    name = "bridged_db_migration_0007"
    cluster.drop_database(name)
    cluster.create_database(name)
    pool = await db.create_pool(cluster.dsn(name), min_size=1, max_size=2)
    try:
        older = [m for m in db.migrations() if m.version < 7]
        await pool.execute(
            "CREATE TABLE bridged_schema (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in older:
            await pool.execute(migration.sql)
            await pool.execute(
                "INSERT INTO bridged_schema (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        await pool.execute(
            "INSERT INTO calls (id, order_id, manager_id, direction, state) VALUES"
            " ('old', '1', 'anna', 'phone', 'refusing'), ('live', '2', 'anna', 'phone', 'bridged')"
        )
        assert await db.migrate(pool) >= 7
        states = dict(await pool.fetch("SELECT id, state FROM calls"))
        assert states == {"old": "ending", "live": "bridged"}
    finally:
        await pool.close()
        cluster.drop_database(name)


async def test_a_429_an_older_bridged_kept_for_a_key_or_a_link_is_freed_by_the_migration(
    cluster: Any,
) -> None:
    from bridged import db

    name = "bridged_db_migration_0016"
    cluster.drop_database(name)
    cluster.create_database(name)
    pool = await db.create_pool(cluster.dsn(name), min_size=1, max_size=2)
    try:
        await db.migrate(pool, [m for m in db.migrations() if m.version < 16])
        await pool.execute(
            "INSERT INTO idempotency_keys (principal, key, request_hash, status, response) VALUES"
            " ('shop-1', 'limited', 'h', 429, '{}'), ('shop-1', 'placed', 'h', 202, '{}'),"
            " ('shop-1', 'refused', 'h', 404, '{}'), ('shop-1', 'running', 'h', NULL, NULL)"
        )
        await pool.execute(
            "INSERT INTO call_links (sig_hash, order_id, manager_id, expires_at, capability_hash, status)"
            " VALUES ('limited', '1', 'anna', now(), 'c1', 429), ('refused', '1', 'anna', now(), 'c2', 403)"
        )
        await db.migrate(pool, [m for m in db.migrations() if m.version <= 16])  # 0017 frees the 404 too
        assert sorted(r["key"] for r in await pool.fetch("SELECT key FROM idempotency_keys")) == [
            "placed",
            "refused",
            "running",
        ]
        assert [r["sig_hash"] for r in await pool.fetch("SELECT sig_hash FROM call_links")] == ["refused"]
    finally:
        await pool.close()
        cluster.drop_database(name)


async def test_a_refusal_that_rang_nobody_an_older_bridged_kept_is_freed_by_the_migration(
    cluster: Any,
) -> None:
    """0017: of the answers an older bridged kept, only the call placed (2xx) or tried (409
    manager_unavailable, naming the call) stay; a key's or a link's other refusals are freed. 0018 gives
    a link's call tried its call_id."""
    from bridged import db

    name = "bridged_db_migration_0017"
    cluster.drop_database(name)
    cluster.create_database(name)
    pool = await db.create_pool(cluster.dsn(name), min_size=1, max_size=2)

    def error(error_id: str) -> str:
        return json.dumps({"error": {"id": error_id, "message": "m", "details": {"call_id": "c-1"}}})

    try:
        await db.migrate(pool, [m for m in db.migrations() if m.version < 17])
        keys = [
            ("shop-1", "not-registered", 409, error("manager_not_registered")),
            ("shop-1", "tried", 409, error("manager_unavailable")),
            ("shop-1", "unknown-order", 404, error("unknown_order")),
            ("shop-1", "denied", 403, error("order_not_allowed")),
            ("shop-1", "bad-phone", 422, error("invalid_phone")),
            ("shop-1", "placed", 202, json.dumps({"id": "c-2"})),
            ("shop-1", "running", None, None),
        ]
        for row in keys:
            await pool.execute(
                "INSERT INTO idempotency_keys (principal, key, request_hash, status, response)"
                " VALUES ($1, $2, 'h', $3, $4::jsonb)",
                *row,
            )
        for link in [
            ("not-registered", 409, error("manager_not_registered"), None),
            ("tried", 409, error("manager_unavailable"), None),
            ("denied", 403, error("order_not_allowed"), None),
            ("placed", 202, json.dumps({"call_id": "c-2"}), "c-2"),
            ("running", None, None, None),
        ]:
            await pool.execute(
                "INSERT INTO call_links (sig_hash, order_id, manager_id, expires_at, capability_hash,"
                " status, response, call_id) VALUES ($1, '1', 'anna', now(), $1, $2, $3::jsonb, $4)",
                *link,
            )
        await db.migrate(pool)
        assert sorted(r["key"] for r in await pool.fetch("SELECT key FROM idempotency_keys")) == [
            "placed",
            "running",
            "tried",
        ]
        # And 0018 names the link's call tried, as its kept answer does: opening the link again shows it.
        rows = await pool.fetch("SELECT sig_hash, call_id FROM call_links ORDER BY sig_hash")
        assert [tuple(r) for r in rows] == [("placed", "c-2"), ("running", None), ("tried", "c-1")]
    finally:
        await pool.close()
        cluster.drop_database(name)


async def test_link_rows_are_kept_until_expired_and_past_their_capability(store: Store) -> None:
    """A replay must never ring again: a link's row outlives the link, and the capability's 24 hours."""
    now = datetime.now(UTC)
    await store.links.claim(
        "old", order_id="1", manager_id="anna", expires_at=now - timedelta(hours=30), capability_hash="c-old"
    )
    await store.links.claim(
        "live",
        order_id="2",
        manager_id="anna",
        expires_at=now + timedelta(minutes=5),
        capability_hash="c-live",
    )
    await store.pool.execute("UPDATE call_links SET created_at = now() - interval '2 days'")
    # Not yet expired (however old its row): kept, so opening it again shows its call.
    await store.links.claim(
        "new", order_id="3", manager_id="anna", expires_at=now + timedelta(minutes=5), capability_hash="c-new"
    )
    assert await store.links.find("old") is None
    assert await store.links.find("live") is not None
    # Past 24 hours, a capability follows nothing.
    assert await store.links.by_capability("c-live") is None
    assert await store.links.by_capability("c-new") is not None


async def test_the_schema_keeps_outbound_calls_named_and_caller_references_letters_only(store: Store) -> None:
    """Only an inbound call may lack an order or a manager; a caller reference is letters, never digits;
    the sticky table holds 64-hex keys (a keyed hash), never a number."""
    base: dict[str, Any] = {
        "call_id": "x1",
        "direction": "phone",
        "state": "requested",
        "manager_channel_id": None,
        "ari_app": "bridged",
        "actor": "anna",
        "details": {},
    }
    with pytest.raises(asyncpg.CheckViolationError):
        await store.calls.insert_audited(order_id=None, manager_id="anna", **base)
    with pytest.raises(asyncpg.CheckViolationError):
        await store.calls.insert_audited(
            order_id=None, manager_id=None, caller_ref="+79161234567", **{**base, "direction": "inbound"}
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await store.sticky.remember(
            "79161234567",
            manager_id="anna",
            order_id=None,
            at=datetime.now(UTC),
            forget_before=datetime.now(UTC),
        )


async def test_an_inbound_calls_ring_plan_is_an_array_and_its_callers_key_goes_as_it_ends(
    store: Store,
) -> None:
    """The key a daemon adopting the call needs (to remember who talked to the caller) is a 64-hex keyed
    hash, never a number, and is kept only while the call is open, by either end's write."""
    base: dict[str, Any] = {
        "order_id": None,
        "manager_id": "anna",
        "direction": "inbound",
        "state": "ringing_manager",
        "manager_channel_id": None,
        "ari_app": "bridged",
        "actor": "customer",
        "details": {},
    }
    with pytest.raises(asyncpg.CheckViolationError):
        await store.calls.insert_audited(call_id="x1", caller_key="79161234567", **base)
    for call_id in ("k1", "k2"):
        await store.calls.insert_audited(call_id=call_id, caller_key="cd" * 32, ring_plan=[["anna"]], **base)
    with pytest.raises(asyncpg.CheckViolationError):
        await store.pool.execute("UPDATE calls SET ring_plan = '{\"anna\": 1}' WHERE id = 'k1'")
    await store.calls.finish("k1", outcome="missed", hangup_cause=16, ended_by="customer")
    await store.calls.finish_audited(
        "k2", outcome="completed", hangup_cause=16, ended_by="customer", actor="anna", order_id=None
    )
    rows = await store.pool.fetch("SELECT id, caller_key, ring_plan::text AS plan FROM calls ORDER BY id")
    assert [(r["id"], r["caller_key"], r["plan"]) for r in rows] == [
        ("k1", None, '[["anna"]]'),
        ("k2", None, '[["anna"]]'),
    ]
