"""One contract, two stores: what the engine and the service rely on from ``store.calls`` and
``store.audit``, checked against the unit tests' FakeStore and against the real SQL on PostgreSQL.

The unit tests of the engine and the service run on FakeStore; these tests are why that is enough: every
guard the fake keeps (an ended row is never revived, an end is audited once, a refused attempt's row,
the rows a daemon adopts) is the real store's too.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridged.config import Budget
from bridged.limits import Keyed, Tally
from bridged.store import Store
from bridged.store.attempts import NewAttempt
from bridged.store.audit import AuditFilter
from bridged.store.base import Window
from tests.unit.fakes import FakeStore

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ONE_EACH = Budget(calls=1, distinct_orders=1, refused_in_a_row=1)
AUDIT_KEYS = ("actor", "action", "outcome", "reason", "call_id", "order_id", "details")


@pytest.fixture(params=["fake", "postgres"])
def calls_store(request: pytest.FixtureRequest) -> Store | FakeStore:
    if request.param == "fake":
        return FakeStore()
    found: Store = request.getfixturevalue("store")
    return found


async def audits(store: Store | FakeStore) -> list[dict[str, Any]]:
    """Every audit row, oldest first, as the fake keeps them (without the time)."""
    if isinstance(store, FakeStore):
        return [{k: a[k] for k in AUDIT_KEYS} for a in store.audits]
    rows = await store.audit.page(Window(limit=1000), AuditFilter())
    return [{k: getattr(r, k) for k in AUDIT_KEYS} for r in reversed(rows)]


async def _accept(store: Store | FakeStore, call_id: str = "c1", **extra: Any) -> None:
    await store.calls.insert_audited(
        call_id=call_id,
        order_id="123",
        manager_id="anna",
        direction=extra.pop("direction", "phone"),
        state="requested",
        manager_channel_id=f"{call_id}-m",
        customer_channel_id=f"{call_id}-customer",
        ari_app=extra.pop("ari_app", "bridged"),
        actor=extra.pop("actor", "anna"),
        details=extra.pop("details", {"manager_id": "anna", "direction": "phone"}),
        **extra,
    )


async def test_an_accepted_call_has_its_row_and_one_accepted_audit_row(
    calls_store: Store | FakeStore,
) -> None:
    await _accept(calls_store, created_by="shop-1", actor="token:shop-1", direction="api")
    row = await calls_store.calls.get("c1")
    assert row is not None
    assert (row.state, row.order_id, row.manager_id, row.direction) == ("requested", "123", "anna", "api")
    assert (row.manager_channel_id, row.customer_channel_id, row.created_by) == (
        "c1-m",
        "c1-customer",
        "shop-1",
    )
    assert (row.outcome, row.answered_at, row.ended_at, row.recording_name) == (None, None, None, None)
    assert await audits(calls_store) == [
        {
            "actor": "token:shop-1",
            "action": "call.request",
            "outcome": "accepted",
            "reason": None,
            "call_id": "c1",
            "order_id": "123",
            "details": {"manager_id": "anna", "direction": "phone"},
        }
    ]
    assert await calls_store.calls.get("nope") is None


async def test_an_accepted_calls_attempt_is_recorded_with_its_row(calls_store: Store | FakeStore) -> None:
    """The budgets' record of an accepted attempt goes in the row's statement (issue 19): it is in the
    manager's window as a record of its own was, with the time it was made; a row without one (an
    inbound call) records none."""
    at = datetime.now(UTC) - timedelta(seconds=5)
    attempt = NewAttempt("anna", "accepted", "123", Keyed(3, "well_formed"), at)
    await _accept(calls_store, attempt=attempt)
    await _accept(calls_store, "c2")
    _, counted = await calls_store.attempts.window("anna", 60, ONE_EACH, "123")
    assert counted == Tally(
        calls=1,
        distinct_orders=1,
        refused_in_a_row=0,
        calls_frees=at,
        orders_frees=at,
        run_frees=None,
        code_seen=True,
    )
    if isinstance(calls_store, Store):
        rows = await calls_store.pool.fetch(
            "SELECT manager_id, code_length, code_shape FROM manager_attempts"
        )
        assert [tuple(r) for r in rows] == [("anna", 3, "well_formed")]
    assert await calls_store.calls.get("c1") is not None and len(await audits(calls_store)) == 2


async def test_an_ended_row_is_never_revived_and_its_end_is_audited_once(
    calls_store: Store | FakeStore,
) -> None:
    await _accept(calls_store)
    await calls_store.calls.set_state("c1", "ringing_customer")
    ended_at = AT + timedelta(seconds=70)
    end: dict[str, Any] = {"hangup_cause": 16, "actor": "anna", "order_id": "123"}
    await calls_store.calls.finish_audited(
        "c1", outcome="completed", ended_by="manager", ended_at=ended_at, **end
    )
    # Writes retried late (bridged's database was away) and a second end: none of them change the row.
    await calls_store.calls.set_state("c1", "bridged")
    await calls_store.calls.mark_bridged("c1", answered_at=AT, bridge_id="b", recording_name="bridged-c1")
    await calls_store.calls.finish("c1", outcome="failed", hangup_cause=None, ended_by="unknown")
    await calls_store.calls.finish_audited("c1", outcome="cancelled", ended_by="api", **end)
    row = await calls_store.calls.get("c1")
    assert row is not None
    assert (row.state, row.outcome, row.ended_by, row.hangup_cause) == ("ended", "completed", "manager", 16)
    assert (row.ended_at, row.answered_at, row.bridge_id, row.recording_name) == (ended_at, None, None, None)
    ends = [a for a in await audits(calls_store) if a["action"] == "call.end"]
    assert ends == [
        {
            "actor": "anna",
            "action": "call.end",
            "outcome": "completed",
            "reason": "manager",
            "call_id": "c1",
            "order_id": "123",
            "details": {},
        }
    ]


async def test_the_window_counts_the_attempts_the_budgets_count(calls_store: Store | FakeStore) -> None:
    """Not the refusals past a budget (rate_limited) nor bridged's own (overloaded, lookup_failed), even
    naming an order: they change no count and break no run, and a manager past a budget adds them by the
    thousand (tests/db/test_attempts.py). Each budget's slot frees when its ``limit``-th newest leaves."""
    now = datetime.now(UTC)
    made = [
        ("anna", "accepted", "123", 50),
        ("anna", "rate_limited", "5", 40),
        ("anna", "denied", "7", 30),
        ("anna", "overloaded", "6", 25),
        ("anna", "lookup_failed", None, 20),
        ("boris", "accepted", "8", 15),
        ("anna", "unknown_order", None, 10),
        ("anna", "accepted", "9", 7200),  # before the window
    ]
    for manager_id, outcome, order_id, seconds_ago in made:
        at = now - timedelta(seconds=seconds_ago)
        await calls_store.attempts.record(NewAttempt(manager_id, outcome, order_id, Keyed(3, "digits"), at))
    budget = Budget(calls=1, distinct_orders=2, refused_in_a_row=2)
    _, counted = await calls_store.attempts.window("anna", 3600, budget, "8")
    assert counted == Tally(
        calls=1,
        distinct_orders=2,
        refused_in_a_row=2,
        calls_frees=now - timedelta(seconds=50),
        orders_frees=now - timedelta(seconds=50),
        run_frees=now - timedelta(seconds=30),
        code_seen=False,
    )
    _, counted = await calls_store.attempts.window("anna", 3600, ONE_EACH, "7")
    assert (counted.orders_frees, counted.run_frees, counted.code_seen) == (
        now - timedelta(seconds=30),
        now - timedelta(seconds=10),
        True,
    )


async def test_a_bridged_call_and_its_recording_state_also_after_its_end(
    calls_store: Store | FakeStore,
) -> None:
    await _accept(calls_store)
    await calls_store.calls.mark_bridged(
        "c1", answered_at=AT, bridge_id="c1-bridge", recording_name="bridged-c1"
    )
    row = await calls_store.calls.get("c1")
    assert row is not None
    assert (row.state, row.answered_at, row.bridge_id, row.recording_name) == (
        "bridged",
        AT,
        "c1-bridge",
        "bridged-c1",
    )
    await calls_store.calls.finish("c1", outcome="completed", hangup_cause=16, ended_by="customer")
    # The recording's end is judged when Asterisk reports it, which may be after the call's.
    await calls_store.calls.set_recording_state("c1", "truncated")
    row = await calls_store.calls.get("c1")
    assert row is not None and (row.state, row.recording_state) == ("ended", "truncated")
    assert row.ended_at is not None and row.recording_usable and row.recording_available


async def test_a_refused_attempt_is_one_ended_row_and_one_refused_audit_row_even_when_retried(
    calls_store: Store | FakeStore,
) -> None:
    refused: dict[str, Any] = {
        "call_id": "r1",
        "order_id": "999",
        "manager_id": "anna",
        "direction": "api",
        "outcome": "unknown_order",
        "at": AT,
        "actor": "token:shop-1",
        "details": {"manager_id": "anna", "direction": "api"},
        "created_by": "shop-1",
    }
    await calls_store.calls.insert_refused(**refused)
    await calls_store.calls.insert_refused(**refused)  # a retry of a write that had gone through
    row = await calls_store.calls.get("r1")
    assert row is not None
    assert (row.state, row.outcome, row.requested_at, row.ended_at) == ("ended", "unknown_order", AT, AT)
    assert (row.direction, row.created_by, row.manager_channel_id) == ("api", "shop-1", None)
    assert await audits(calls_store) == [
        {
            "actor": "token:shop-1",
            "action": "call.request",
            "outcome": "refused",
            "reason": "unknown_order",
            "call_id": "r1",
            "order_id": "999",
            "details": {"manager_id": "anna", "direction": "api"},
        }
    ]


async def test_open_calls_are_this_apps_unended_rows_oldest_first(calls_store: Store | FakeStore) -> None:
    for call_id, app in (("a1", "bridged"), ("b1", "another"), ("a2", "bridged"), ("a3", "bridged")):
        await _accept(calls_store, call_id, ari_app=app)
    await calls_store.calls.finish("a2", outcome="completed", hangup_cause=None, ended_by="manager")
    found = await calls_store.calls.open_calls("bridged")
    assert [r.id for r in found] == ["a1", "a3"]
    assert [r.id for r in await calls_store.calls.open_calls("another")] == ["b1"]


async def test_how_an_inbound_caller_was_identified_is_read_from_the_calls_accepted_audit_row(
    calls_store: Store | FakeStore,
) -> None:
    """What a daemon adopting an inbound call reads (bridged.inbound.InboundDesk.name_again): the accepted
    ``call.request`` row's ``identified_by``, no other row's, and None when there is none."""
    inbound = {"direction": "inbound", "identified_by": "their order"}
    await _accept(calls_store, "i1", direction="inbound", actor="customer", details=inbound)
    await calls_store.audit.add(
        actor="bridged:second",
        action="call.adopt",
        outcome="adopted",
        call_id="i1",
        details={"identified_by": "the manager who last talked to them"},
    )
    await calls_store.calls.insert_refused(
        call_id="i2",
        order_id="123",
        manager_id=None,
        direction="inbound",
        outcome="database_unavailable",
        at=AT,
        actor="customer",
        details=inbound,
    )
    await _accept(calls_store, "c1")
    assert await calls_store.audit.identified_by("i1") == "their order"
    assert await calls_store.audit.identified_by("i2") is None  # refused: never adopted
    assert await calls_store.audit.identified_by("c1") is None  # an outbound call's row does not say
    assert await calls_store.audit.identified_by("nope") is None


async def test_audit_rows_keep_their_own_time_when_given(calls_store: Store | FakeStore) -> None:
    await calls_store.audit.add(
        actor="anna", action="call.request", outcome="refused", reason="invalid_code", at=AT
    )
    await calls_store.audit.add(
        actor="token:x", action="api.denied", outcome="forbidden", details={"role": "shop"}
    )
    assert await audits(calls_store) == [
        dict.fromkeys(AUDIT_KEYS)
        | {
            "actor": "anna",
            "action": "call.request",
            "outcome": "refused",
            "reason": "invalid_code",
            "details": {},
        },
        dict.fromkeys(AUDIT_KEYS)
        | {"actor": "token:x", "action": "api.denied", "outcome": "forbidden", "details": {"role": "shop"}},
    ]
    if isinstance(calls_store, Store):
        oldest = (await calls_store.audit.page(Window(limit=10), AuditFilter()))[-1]
        assert oldest.at == AT


def test_the_rows_both_stores_give_are_the_same_type() -> None:
    fake = FakeStore()
    row = fake.add_row(id="x")
    from bridged.store.calls import CallRow

    assert set(row) == {f.name for f in dataclasses.fields(CallRow)}


# -- signed call links: claimed once, settled or released, found by capability -----------------------


async def _claim(store: Store | FakeStore, key: str = "k1", cap: str = "cap1") -> Any:
    return await store.links.claim(
        key, order_id="123", manager_id="anna", expires_at=AT + timedelta(days=3650), capability_hash=cap
    )


async def test_a_link_is_claimed_once_and_answers_with_its_first_answer(
    calls_store: Store | FakeStore,
) -> None:
    assert await _claim(calls_store) is None
    in_progress = await _claim(calls_store)
    assert (in_progress.status, in_progress.call_id, in_progress.order_id) == (None, None, "123")
    assert await calls_store.links.by_capability("cap1") is not None
    await calls_store.links.settle("k1", status=202, response={"call_id": "c9"}, call_id="c9")
    again = await _claim(calls_store)
    assert (again.status, again.call_id, again.response, again.manager_id) == (
        202,
        "c9",
        {"call_id": "c9"},
        "anna",
    )
    found = await calls_store.links.by_capability("cap1")
    assert found is not None and found.call_id == "c9"
    assert await calls_store.links.by_capability("cap2") is None
    # A settled link is not released: its call stands.
    await calls_store.links.release("k1")
    kept = await calls_store.links.find("k1")
    assert kept is not None and kept.call_id == "c9"


async def test_a_released_link_may_be_claimed_again(calls_store: Store | FakeStore) -> None:
    assert await _claim(calls_store) is None
    await calls_store.links.release("k1")
    assert await calls_store.links.find("k1") is None
    assert await _claim(calls_store) is None
    await calls_store.links.settle(
        "k1", status=403, response={"error": {"id": "order_not_allowed"}}, call_id=None
    )
    refused = await _claim(calls_store)
    assert (refused.status, refused.call_id, refused.response) == (
        403,
        None,
        {"error": {"id": "order_not_allowed"}},
    )


# -- inbound calls ---------------------------------------------------------------------------------------


async def test_an_inbound_call_may_name_no_order_and_no_manager_until_one_answers(
    calls_store: Store | FakeStore,
) -> None:
    await calls_store.calls.insert_audited(
        call_id="in1",
        order_id=None,
        manager_id=None,
        direction="inbound",
        state="requested",
        manager_channel_id=None,
        customer_channel_id="1764413784.12",
        ari_app="bridged",
        actor="customer",
        details={"direction": "inbound"},
        caller_ref="KXMRTPAW",
    )
    row = await calls_store.calls.get("in1")
    assert row is not None
    assert (row.direction, row.order_id, row.manager_id, row.caller_ref) == (
        "inbound",
        None,
        None,
        "KXMRTPAW",
    )
    await calls_store.calls.set_manager("in1", manager_id="boris", manager_channel_id="in1-m2")
    row = await calls_store.calls.get("in1")
    assert row is not None and (row.manager_id, row.manager_channel_id) == ("boris", "in1-m2")
    await calls_store.calls.finish("in1", outcome="completed", hangup_cause=16, ended_by="customer")
    # An ended row is never revived, by this write either.
    await calls_store.calls.set_manager("in1", manager_id="anna", manager_channel_id="x")
    row = await calls_store.calls.get("in1")
    assert row is not None and row.manager_id == "boris"


async def test_an_open_inbound_calls_ring_plan_and_callers_key_are_read_back_by_its_adopter(
    calls_store: Store | FakeStore,
) -> None:
    key = "ab" * 32
    plan = [["anna"], ["boris", "carol"]]
    await _accept(calls_store, "in2", direction="inbound", ring_plan=plan, caller_key=key)
    await _accept(calls_store, "c3")  # no plan: none read back
    rows = {r.id: r for r in await calls_store.calls.open_calls("bridged")}
    assert rows["in2"].ring_plan is not None and json.loads(rows["in2"].ring_plan) == plan
    assert (rows["in2"].ring_rung, rows["in2"].caller_key) == (1, key)  # written as its first step rings
    assert (rows["c3"].ring_plan, rows["c3"].ring_rung, rows["c3"].caller_key) == (None, None, None)
    await calls_store.calls.set_ring_rung("in2", 2)
    [row] = [r for r in await calls_store.calls.open_calls("bridged") if r.id == "in2"]
    assert row.ring_rung == 2
    await calls_store.calls.finish("in2", outcome="missed", hangup_cause=16, ended_by="customer")
    await calls_store.calls.set_ring_rung("in2", 3)  # an ended row is never revived, by this write either
    assert [r.id for r in await calls_store.calls.open_calls("bridged")] == ["c3"]


async def test_a_refused_inbound_attempt_keeps_its_reference(calls_store: Store | FakeStore) -> None:
    await calls_store.calls.insert_refused(
        call_id="in2",
        order_id=None,
        manager_id=None,
        direction="inbound",
        outcome="unavailable",
        at=AT,
        actor="customer",
        details={"direction": "inbound"},
        caller_ref="ABCDEFGH",
    )
    row = await calls_store.calls.get("in2")
    assert row is not None and (row.state, row.outcome, row.caller_ref) == (
        "ended",
        "unavailable",
        "ABCDEFGH",
    )


KEY = "ab" * 32
OTHER = "cd" * 32


async def test_who_last_talked_to_a_caller_is_kept_within_the_window(calls_store: Store | FakeStore) -> None:
    sticky = calls_store.sticky
    assert await sticky.last_talked(KEY, since=AT - timedelta(days=30)) is None
    await sticky.remember(
        KEY, manager_id="anna", order_id="123", at=AT, forget_before=AT - timedelta(days=30)
    )
    found = await sticky.last_talked(KEY, since=AT - timedelta(days=30))
    assert found is not None and (found.manager_id, found.order_id, found.last_at) == ("anna", "123", AT)
    assert await sticky.last_talked(KEY, since=AT + timedelta(seconds=1)) is None  # past the window
    # A later talk replaces it; a retried older write does not.
    later = AT + timedelta(hours=1)
    await sticky.remember(KEY, manager_id="boris", order_id=None, at=later, forget_before=AT)
    await sticky.remember(KEY, manager_id="anna", order_id="123", at=AT, forget_before=AT)
    found = await sticky.last_talked(KEY, since=AT)
    assert found is not None and (found.manager_id, found.order_id, found.last_at) == ("boris", None, later)


async def test_remembering_a_caller_forgets_those_past_the_window(calls_store: Store | FakeStore) -> None:
    sticky = calls_store.sticky
    await sticky.remember(
        OTHER, manager_id="anna", order_id=None, at=AT, forget_before=AT - timedelta(days=1)
    )
    much_later = AT + timedelta(days=40)
    await sticky.remember(
        KEY, manager_id="boris", order_id=None, at=much_later, forget_before=much_later - timedelta(days=30)
    )
    assert await sticky.last_talked(OTHER, since=datetime(1970, 1, 1, tzinfo=UTC)) is None
    assert await sticky.last_talked(KEY, since=AT) is not None
