"""Customers calling the shop's number, end to end on the rig: the SIPp carrier calls in through
[from-carrier] -> [bridged-inbound], bridged rings SIPp manager phones, PostgreSQL holds the shop's orders.

Hostile as everywhere: the carrier puts the customer's number in From and P-Asserted-Identity (and
Remote-Party-ID, Diversion, History-Info, a mid-call UPDATE in the variants), the trunk trusts it, the
managers' phones take every identity header (send_pai, send_rpid, send_diversion, send_history_info).
Every case searches the managers' SIP traces, bridged's log, its database, the webhooks received and the
CDRs of the managers' legs (and of the caller's leg) for the caller's number.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridged.webhooks import SIGNATURE_HEADER, verify
from rig import NEVER_MS, SHOP_DIDS, Asterisk, Sipp

from .harness import (
    REPO_ROOT,
    Bridged,
    ManagerPhone,
    add_order,
    assert_not_leaked,
    customer_calls,
    hang_up_in_asterisk,
    invites,
    new_customer_number,
    new_order_id,
    phone_rings,
    wait_for,
)
from .test_http_calls import WEBHOOK_SECRET, WebhookReceiver

SECRET = "inbound-test-secret-0123456789abcdef"
# The shop keeps phones as free text; the reverse query normalises them in SQL (README, "Inbound calls"):
# digits only, and a Russian national "8..." read as "+7...".
REVERSE_QUERY = (
    "SELECT id::text AS order_id, customer_name, manager AS manager_id FROM orders"
    " WHERE (SELECT CASE WHEN d ~ '^8[0-9]{10}$' THEN '7' || substr(d, 2) ELSE d END"
    " FROM regexp_replace(customer_phone, '[^0-9]', '', 'g') AS d) = ltrim($1, '+')"
    " ORDER BY id DESC"
)
_ru = itertools.count(1)


def russian_number() -> str:
    """A distinctive Russian mobile number per test (+7 916 ...)."""
    return f"+7916{(next(_ru) * 7919 + 4242421) % 10**7:07d}"


def inbound_daemon(
    make_bridged: Any,
    asterisk: Asterisk,
    managers: tuple[str, ...] = ("anna", "boris"),
    *,
    fallback: tuple[int, ...] = (1,),
    webhook_url: str | None = None,
    offline: tuple[str, ...] = (),
    recording: bool = True,
    **inbound: Any,
) -> Bridged:
    """bridged taking the shop's numbers: ``fallback`` names managers by their index in ``managers``.
    [bridged-inbound] enters this daemon's application (BRIDGED_APP, as an admin sets it in [globals])."""

    def extra(phones: list[ManagerPhone]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "orders": {"default_region": "RU", "reverse_query": REVERSE_QUERY},
            "inbound": {
                "numbers": list(SHOP_DIDS),
                "fallback": [phones[i].id for i in fallback],
                "secret": SECRET,
                "ring_timeout": 5,
                **inbound,
            },
        }
        if webhook_url:
            config["webhook"] = {"url": webhook_url, "secret": WEBHOOK_SECRET, "timeout": 2}
        return config

    daemon = make_bridged(managers, extra=extra, offline=offline, recording=recording)
    asterisk.cli(f"dialplan set global BRIDGED_APP {daemon.app}")
    return daemon


def inbound_rows(daemon: Bridged) -> list[dict[str, Any]]:
    out = daemon.sql(
        "SELECT coalesce(json_agg(c ORDER BY requested_at), '[]') FROM"
        " (SELECT *, extract(epoch FROM ended_at - answered_at) AS duration FROM calls"
        f" WHERE direction = 'inbound' AND ari_app = '{daemon.app}') c"
    )
    return json.loads(out.strip() or "[]")


def ended_row(daemon: Bridged, count: int = 1) -> dict[str, Any]:
    """The ``count``-th inbound call's row once it has ended (bridged's database, as an operator reads it)."""
    rows = wait_for(
        lambda: (r := inbound_rows(daemon)) and len(r) >= count and r[count - 1]["state"] == "ended" and r,
        30,
        "the inbound call's row ended",
    )
    return rows[count - 1]


def call_cdrs(asterisk: Asterisk, row: dict[str, Any]) -> str:
    """The CDR lines of an inbound call, once Asterisk has written them: the caller's leg's (its Asterisk
    unique id), which names the manager's leg that answered as its destination (dstchannel), and any line
    of that channel's own.

    A manager's leg is made in the application and dialled: Asterisk 22 writes no line of its own for it
    (a dialled channel's CDR without a party B is discarded; an originated one had its line:
    docs/asterisk.md). A leg rung but never answered has none either (cdr.conf: unanswered = no), so a
    missed call has the caller's only."""
    answered = row["answered_at"] is not None
    cdr_file = asterisk.base / "log" / "cdr-csv" / "Master.csv"

    def rows() -> list[list[str]]:
        # errors="replace": a carrier's display name may hold bytes that are not UTF-8.
        text = cdr_file.read_text(errors="replace") if cdr_file.exists() else ""
        return list(csv.reader(io.StringIO(text)))

    def callers() -> list[list[str]]:
        # channel (5) and dstchannel (6): the caller's line names the manager's channel once answered.
        found = [r for r in rows() if row["customer_channel_id"] in r]
        return found if found and (not answered or all(len(r) > 6 and r[6] for r in found)) else []

    found = wait_for(callers, 10, f"the CDRs of call {row['id']}")
    managers = {r[6] for r in found if len(r) > 6 and r[6]}
    lines = [r for r in rows() if r in found or (len(r) > 6 and r[5] in managers) or row["id"] in ",".join(r)]
    return "\n".join(",".join(r) for r in lines)


def received_invite(phone: Sipp) -> str:
    found = invites(phone.messages())
    assert found, "the manager's phone received no INVITE"
    return found[0]


def assert_nothing_leaked(number: str, daemon: Bridged, *phones: Sipp, **more: str) -> None:
    assert_not_leaked(
        number,
        daemon_log=daemon.log_text(),
        daemon_database=daemon.dump_database()
        + daemon.sql("SELECT coalesce(json_agg(s), '[]') FROM inbound_sticky s"),
        **{f"sip_trace_{i}": phone.messages() for i, phone in enumerate(phones)},
        **more,
    )


# -- a known customer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("identity", ["pai", "rpid", "history"])
def test_a_customer_reaches_their_orders_manager_who_sees_the_order_label_and_never_the_number(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc, identity: str
) -> None:
    daemon = inbound_daemon(make_bridged, asterisk)
    anna, boris = daemon.managers
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Ivan Petrov", anna.id)

    phone = phone_rings(anna, trace_dir, ring_ms=500, hold_ms=3000)
    customer = customer_calls(trace_dir, rig_alloc, number, identity=identity, hold_ms=30000)
    assert phone.wait(timeout=40) == 0, phone.describe()
    assert customer.wait(timeout=40) == 0, customer.describe()

    # The carrier's INVITE carried the number in every header of the variant; the manager's phone was
    # shown the order label in From, P-Asserted-Identity and Remote-Party-ID, and no Diversion.
    invite = received_invite(phone)
    for header in ("From", "P-Asserted-Identity", "Remote-Party-ID"):
        value = re.search(rf"^{header}:.*$", invite, re.M)
        assert value and f'"Order {order} Ivan P." <sip:*77{order}@' in value[0], (header, invite[:600])
    assert not re.search(r"^Diversion:", invite, re.M)
    # The caller heard ringing (and nothing of bridged emptying the redirecting party: no 181), was
    # answered once anna answered, and hung up by Asterisk.
    received = [m.first_line for m in customer.received()]
    assert "SIP/2.0 180 Ringing" in received and "SIP/2.0 200 OK" in received
    assert not [line for line in received if line.startswith("SIP/2.0 181")], received
    assert any(line.startswith("BYE ") for line in received)

    row = ended_row(daemon)
    assert (row["direction"], row["order_id"], row["manager_id"], row["outcome"], row["ended_by"]) == (
        "inbound",
        order,
        anna.id,
        "completed",
        "manager",
    )
    assert row["caller_ref"] and re.fullmatch(r"[A-Z]{8}", row["caller_ref"])
    assert row["duration"] and row["duration"] > 1 and row["recording_name"] == f"bridged-{row['id']}"
    wait_for((asterisk.recordings_dir / f"{row['recording_name']}.wav").exists, 10, "the recording")
    assert_nothing_leaked(number, daemon, phone, cdrs=call_cdrs(asterisk, row))
    assert f"Order {order}" in call_cdrs(asterisk, row)  # the caller's leg ended with the label


def test_a_display_name_that_holds_the_number_and_bytes_that_are_not_utf8_reaches_nobody(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """A carrier's display name is hostile input: here the customer's number written with spaces, Cyrillic,
    and a byte that is not UTF-8 (0xFF), in From and P-Asserted-Identity. The call still reaches the
    order's manager, who is shown the order label; the name is in no SIP message the phone got, nor in
    bridged's log, database or the call's CDRs."""
    daemon = inbound_daemon(make_bridged, asterisk)
    anna = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Ivan Petrov", anna.id)
    spaced = f"{number[:3]} {number[3:5]} {number[5:9]} {number[9:]}"
    name = f"Иван {spaced} \udcff"  # the lone surrogate goes out as the raw byte 0xFF

    phone, customer = _answered_call(daemon, anna, trace_dir, rig_alloc, number, caller_name=name)
    # The carrier really sent the raw byte (SIPp's own trace of its INVITE).
    assert "Иван ".encode() + spaced.encode() + b" \xff" in customer.message_file.read_bytes()
    assert f'"Order {order} Ivan P."' in received_invite(phone)
    assert "Иван" not in phone.messages() and "\ufffd" not in phone.messages()
    row = ended_row(daemon)
    assert (row["order_id"], row["manager_id"], row["outcome"]) == (order, anna.id, "completed")
    cdrs = call_cdrs(asterisk, row)
    assert_nothing_leaked(number, daemon, phone, cdrs=cdrs)
    assert_nothing_leaked(spaced, daemon, phone, cdrs=cdrs)


def test_the_carriers_identity_update_mid_call_never_reaches_the_manager_nor_the_cdrs(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """2 s into the call the carrier re-asserts the number (P-Asserted-Identity and Remote-Party-ID in an
    UPDATE, with a new display name so that Asterisk acts on it): the manager's phone gets the label in
    any identity update, and the caller's leg is relabelled, so its CDR ends with the label too.

    Not recorded: the recorder makes the bridge a three-party softmix one, which passes no connected-line
    update at all; a two-party bridge does, and that is the one CONNECTED_LINE_SEND_SUB has to guard."""
    daemon = inbound_daemon(make_bridged, asterisk, recording=False)
    anna = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Ivan Petrov", anna.id)
    phone = phone_rings(anna, trace_dir, ring_ms=300, hold_ms=5000)
    customer = customer_calls(trace_dir, rig_alloc, number, identity="rpid", update_ms=2000)
    assert phone.wait(timeout=40) == 0, phone.describe()
    assert customer.wait(timeout=40) == 0, customer.describe()
    update = [m for m in customer.sent() if m.method == "UPDATE"]
    assert update and number in update[0].header("P-Asserted-Identity")[0]
    assert any(m.status == 200 and m.method == "UPDATE" for m in customer.received())
    row = ended_row(daemon)
    assert row["outcome"] == "completed"
    assert_nothing_leaked(number, daemon, phone, cdrs=call_cdrs(asterisk, row))
    assert "the trunk changed the customer leg's caller id" in daemon.log_text()


# -- who rings, and when nobody answers ----------------------------------------------------------------


def test_a_busy_manager_and_an_unregistered_one_pass_the_call_on_to_the_next_in_the_team(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """anna (the order's manager) answers 486, boris (her team) is not registered and is skipped without
    ringing, carol (her team too) answers."""
    daemon = inbound_daemon(
        make_bridged, asterisk, ("anna", "boris", "carol"), fallback=(2,), offline=("boris",)
    )
    anna, boris, carol = daemon.managers
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Olga Smirnova", anna.id)
    busy = phone_rings(anna, trace_dir, final=486, ring_ms=300)
    taking = phone_rings(carol, trace_dir, ring_ms=300, hold_ms=2000)
    customer = customer_calls(trace_dir, rig_alloc, number, identity="pai")
    for sipp in (busy, taking, customer):
        assert sipp.wait(timeout=40) == 0, sipp.describe()
    assert "SIP/2.0 486 Busy Here" in [m.first_line for m in busy.sent()]
    assert f'"Order {order} Olga S."' in received_invite(taking)
    row = ended_row(daemon)
    assert (row["manager_id"], row["outcome"]) == (carol.id, "completed")
    log = daemon.log_text()
    assert f"manager {anna.id} did not answer (cause 17)" in log
    assert f"manager {boris.id}'s phone cannot be rung" in log
    assert_nothing_leaked(number, daemon, busy, taking, cdrs=call_cdrs(asterisk, row))


def test_a_phone_cut_off_in_asterisk_while_it_rings_passes_the_call_on_to_the_next_in_the_team(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """An administrator's ``channel request hangup`` on anna's ringing phone (measured: soft request 32,
    then the leg destroyed with 16; anna gets CANCEL with Q.850 cause 16): her phone stops ringing, the
    caller still waits, and carol (her team) is rung and takes the call, as after a decline. (No change:
    this pins it; ending the call would drop a customer still on the line.)"""
    daemon = inbound_daemon(make_bridged, asterisk, ("anna", "carol"), fallback=(1,), ring_timeout=30)
    anna, carol = daemon.managers
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Olga Smirnova", anna.id)
    ringing = phone_rings(anna, trace_dir, ring_ms=NEVER_MS)
    taking = phone_rings(carol, trace_dir, ring_ms=300, hold_ms=1500)
    customer = customer_calls(trace_dir, rig_alloc, number)
    wait_for(lambda: "SIP/2.0 180 " in ringing.messages(), 15, "anna's phone ringing")
    channels = json.loads(asterisk.ari_get("/channels"))
    [leg] = [c["id"] for c in channels if c["name"].startswith(f"PJSIP/{anna.endpoint}-")]
    hang_up_in_asterisk(asterisk, leg)
    for sipp in (ringing, taking, customer):
        assert sipp.wait(timeout=40) == 0, sipp.describe()
    cancel = next(m for m in ringing.received() if m.method == "CANCEL" and m.is_request)
    assert "Q.850;cause=16" in cancel.header("Reason")
    row = ended_row(daemon)
    assert (row["manager_id"], row["outcome"], row["ended_by"]) == (carol.id, "completed", "manager")
    assert f"manager {anna.id} did not answer (cause 16)" in daemon.log_text()
    assert_nothing_leaked(number, daemon, ringing, taking, cdrs=call_cdrs(asterisk, row))


def test_nobody_answering_ends_missed_with_a_prompt_and_a_signed_call_missed_webhook(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """anna rings out (inbound.ring_timeout), her team-mate boris declines, the fallback carol rings out:
    the caller is answered with the missed prompt and hung up; call.missed names the order."""
    with WebhookReceiver(rig_alloc.sip_port() + 20000) as hook:
        daemon = inbound_daemon(
            make_bridged, asterisk, ("anna", "boris", "carol"), fallback=(2,), webhook_url=hook.url
        )
        anna, boris, carol = daemon.managers
        order, number = new_order_id(), new_customer_number()
        add_order(daemon.postgres, order, number, "Ivan Petrov", anna.id)
        phones = [
            phone_rings(anna, trace_dir, ring_ms=NEVER_MS),
            phone_rings(boris, trace_dir, final=603, ring_ms=300),
            phone_rings(carol, trace_dir, ring_ms=NEVER_MS),
        ]
        customer = customer_calls(trace_dir, rig_alloc, number, identity="rpid", hold_ms=30000)
        for sipp in (*phones, customer):
            assert sipp.wait(timeout=60) == 0, sipp.describe()
        # The phones that rang out were cancelled by Asterisk at the ring timeout (Q.850 19).
        for rung_out in (phones[0], phones[2]):
            cancel = [m for m in rung_out.received() if m.method == "CANCEL" and m.is_request]
            assert cancel and "cause=19" in " ".join(cancel[0].header("Reason")), rung_out.describe()
        # The caller was answered for the prompt and hung up by Asterisk.
        received = [m.first_line for m in customer.received()]
        assert "SIP/2.0 200 OK" in received and any(line.startswith("BYE ") for line in received)
        row = ended_row(daemon)
        assert (row["outcome"], row["order_id"], row["manager_id"], row["answered_at"]) == (
            "missed",
            order,
            anna.id,
            None,
        )
        missed = wait_for(
            lambda: [(h, b) for h, b in hook.received if json.loads(b)["type"] == "call.missed"],
            15,
            "the call.missed webhook",
        )
    [(headers, body)] = missed
    assert verify(WEBHOOK_SECRET, headers[SIGNATURE_HEADER], body)
    assert headers["X-Bridged-Event"] == "call.missed"
    data = json.loads(body)["data"]
    assert (data["call_id"], data["order_id"], data["manager_id"], data["outcome"], data["direction"]) == (
        row["id"],
        order,
        anna.id,
        "missed",
        "inbound",
    )
    assert_nothing_leaked(
        number, daemon, *phones, cdrs=call_cdrs(asterisk, row), webhooks=repr(hook.received)
    )


def test_the_caller_hanging_up_while_a_ring_group_rings_stops_every_phone_and_is_missed(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = inbound_daemon(
        make_bridged, asterisk, ("anna", "boris", "carol"), fallback=(1, 2), ring_group="simultaneous"
    )
    phones = [phone_rings(m, trace_dir, ring_ms=NEVER_MS) for m in daemon.managers[1:]]
    number = new_customer_number()  # no order: straight to the fallback, both at once
    customer = customer_calls(trace_dir, rig_alloc, number, cancel_ms=2500)
    for sipp in (*phones, customer):
        assert sipp.wait(timeout=40) == 0, sipp.describe()
    assert [m.first_line for m in customer.received()][-1] == "SIP/2.0 487 Request Terminated"
    for phone in phones:
        assert any(m.method == "CANCEL" and m.is_request for m in phone.received()), phone.describe()
    row = ended_row(daemon)
    assert (row["outcome"], row["ended_by"], row["order_id"], row["manager_id"]) == (
        "missed",
        "customer",
        None,
        None,
    )
    assert_nothing_leaked(number, daemon, *phones)


def test_in_a_ring_group_the_first_to_answer_takes_the_call_and_the_others_are_told(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = inbound_daemon(
        make_bridged, asterisk, ("anna", "boris", "carol"), fallback=(1, 2), ring_group="simultaneous"
    )
    _, boris, carol = daemon.managers
    losing = phone_rings(boris, trace_dir, ring_ms=NEVER_MS)
    taking = phone_rings(carol, trace_dir, ring_ms=1000, hold_ms=1500)
    number = new_customer_number()
    customer = customer_calls(trace_dir, rig_alloc, number)
    for sipp in (losing, taking, customer):
        assert sipp.wait(timeout=40) == 0, sipp.describe()
    cancel = next(m for m in losing.received() if m.method == "CANCEL" and m.is_request)
    assert 'SIP;cause=200;text="Call completed elsewhere"' in cancel.header("Reason")
    row = ended_row(daemon)
    assert (row["manager_id"], row["outcome"]) == (carol.id, "completed")
    assert_nothing_leaked(number, daemon, losing, taking, cdrs=call_cdrs(asterisk, row))


# -- who is calling --------------------------------------------------------------------------------------


def _answered_call(
    daemon: Bridged, manager: ManagerPhone, trace_dir: Path, rig_alloc: Any, number: str, **calling: Any
) -> tuple[Sipp, Sipp]:
    phone = phone_rings(manager, trace_dir, ring_ms=300, hold_ms=1500)
    customer = customer_calls(trace_dir, rig_alloc, number, **calling)
    for sipp in (phone, customer):
        assert sipp.wait(timeout=40) == 0, sipp.describe()
    return phone, customer


def test_an_unknown_caller_reaches_the_fallback_as_customer_ref_the_same_ref_each_time(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = inbound_daemon(make_bridged, asterisk)
    boris = daemon.managers[1]
    number = new_customer_number()
    first, _ = _answered_call(daemon, boris, trace_dir, rig_alloc, number)
    row = ended_row(daemon)
    ref = row["caller_ref"]
    assert re.fullmatch(r"[A-Z]{8}", ref) and row["order_id"] is None and row["manager_id"] == boris.id
    assert f'"Customer {ref}" <sip:*77@' in received_invite(first)
    second, _ = _answered_call(daemon, boris, trace_dir, rig_alloc, number)
    assert ended_row(daemon, 2)["caller_ref"] == ref
    assert f'"Customer {ref}" <sip:*77@' in received_invite(second)
    assert_nothing_leaked(number, daemon, first, second, cdrs=call_cdrs(asterisk, ended_row(daemon, 2)))


def test_a_withheld_number_is_shown_as_anonymous(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """From: Anonymous, Privacy: id, and the real number in P-Asserted-Identity, which the trusting trunk
    keeps on the channel (presentation prohibited): the caller is not looked up, not remembered."""
    daemon = inbound_daemon(make_bridged, asterisk)
    anna, boris = daemon.managers
    number = new_customer_number()
    add_order(daemon.postgres, new_order_id(), number, "Ivan Petrov", anna.id)  # never looked up
    phone, _ = _answered_call(daemon, boris, trace_dir, rig_alloc, number, identity="anonymous")
    assert '"Anonymous" <sip:anonymous@' in received_invite(phone)
    row = ended_row(daemon)
    assert (row["order_id"], row["caller_ref"], row["manager_id"]) == (None, None, boris.id)
    assert_nothing_leaked(number, daemon, phone, cdrs=call_cdrs(asterisk, row))


@pytest.mark.parametrize(
    ("stored", "sent"),
    [("8 (916) {a}-{b}-{c}", "+7916{a}{b}{c}"), ("+7 916 {a} {b} {c}", "8916{a}{b}{c}")],
    ids=["shop-national-carrier-e164", "shop-e164-carrier-national"],
)
def test_the_same_customer_whichever_way_the_shop_and_the_carrier_write_the_number(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc, stored: str, sent: str
) -> None:
    daemon = inbound_daemon(make_bridged, asterisk)
    anna = daemon.managers[0]
    digits = russian_number()[-7:]
    parts = {"a": digits[:3], "b": digits[3:5], "c": digits[5:]}
    order = new_order_id()
    add_order(daemon.postgres, order, stored.format(**parts), "Ivan Petrov", anna.id)
    phone, _ = _answered_call(daemon, anna, trace_dir, rig_alloc, sent.format(**parts))
    assert f'"Order {order} Ivan P."' in received_invite(phone)
    assert ended_row(daemon)["order_id"] == order
    assert_nothing_leaked(sent.format(**parts), daemon, phone)


def test_the_manager_who_last_talked_to_the_caller_comes_first_within_sticky_days_and_not_after(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = inbound_daemon(make_bridged, asterisk, ring_team=False, sticky_days=30)
    anna, boris = daemon.managers
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Ivan Petrov", anna.id)
    # 1: anna (the order's) is busy, boris (the fallback) talks to the caller.
    busy = phone_rings(anna, trace_dir, final=486, ring_ms=200)
    _answered_call(daemon, boris, trace_dir, rig_alloc, number)
    busy.wait(timeout=10)
    assert ended_row(daemon)["manager_id"] == boris.id
    [sticky] = json.loads(
        daemon.sql(f"SELECT json_agg(s) FROM inbound_sticky s WHERE manager_id = '{boris.id}'")
    )
    assert re.fullmatch(r"[0-9a-f]{64}", sticky["caller_key"]) and sticky["order_id"] == order
    # 2: boris first, although anna's phone would answer.
    waiting = phone_rings(anna, trace_dir, ring_ms=200, hold_ms=1500)
    second, _ = _answered_call(daemon, boris, trace_dir, rig_alloc, number)
    assert ended_row(daemon, 2)["manager_id"] == boris.id
    waiting.stop()
    assert not invites(waiting.messages())
    # 3: 31 days later (the row's time set back), anna first again.
    daemon.sql(
        f"UPDATE inbound_sticky SET last_at = now() - interval '31 days' WHERE manager_id = '{boris.id}'"
    )
    third, _ = _answered_call(daemon, anna, trace_dir, rig_alloc, number)
    assert ended_row(daemon, 3)["manager_id"] == anna.id
    assert_nothing_leaked(number, daemon, second, third)


def test_with_the_shops_database_down_the_fallback_sees_a_neutral_label_never_the_number(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc, shop
) -> None:
    daemon = make_bridged(
        ("anna", "boris"),
        orders_dsn=shop.dsn("shop").replace(str(shop.port), "9"),  # nobody listens there
        extra=lambda phones: {
            "orders": {"default_region": "RU", "reverse_query": REVERSE_QUERY},
            "inbound": {"numbers": list(SHOP_DIDS), "fallback": [phones[1].id], "secret": SECRET},
        },
    )
    asterisk.cli(f"dialplan set global BRIDGED_APP {daemon.app}")
    anna, boris = daemon.managers
    number = new_customer_number()
    add_order(daemon.postgres, new_order_id(), number, "Ivan Petrov", anna.id)
    phone, _ = _answered_call(daemon, boris, trace_dir, rig_alloc, number)
    row = ended_row(daemon)
    assert f'"Customer {row["caller_ref"]}" <sip:*77@' in received_invite(phone)
    assert "the shop's reverse lookup failed" in daemon.log_text()
    assert_nothing_leaked(number, daemon, phone, cdrs=call_cdrs(asterisk, row))


# -- check-config against the shop's database ------------------------------------------------------------


def test_check_config_asks_the_shops_database_whether_the_queries_return_their_columns(
    shop, tmp_path: Path
) -> None:
    config: dict[str, Any] = {
        "ari": {"url": "http://127.0.0.1:8088/ari", "username": "u", "password": "a-real-password"},
        "database": {"dsn": shop.dsn("bridged")},
        "orders": {
            "dsn": shop.dsn("shop"),
            "query": "SELECT customer_phone AS phone, customer_name, manager AS manager_id"
            " FROM orders WHERE id = CAST($1::text AS bigint)",
            "reverse_query": REVERSE_QUERY,
        },
        "managers": [{"id": "anna", "endpoint": "anna"}],
        "policy": "own",
        "trunk": {"dial": "PJSIP/{number}@carrier", "caller_id": "Shop <100>"},
    }

    def check(orders: dict[str, str]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "bridged.yaml"
        path.write_text(yaml.safe_dump({**config, "orders": {**config["orders"], **orders}}))
        return subprocess.run(
            [sys.executable, "-m", "bridged", "check-config", "--config", str(path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )

    good = check({})
    assert good.returncode == 0, good.stderr
    assert "the shop's queries return the columns bridged reads" in good.stdout
    bad = check(
        {
            "reverse_query": "SELECT id AS order_id, customer_name FROM orders WHERE customer_phone = $1",
            "query": "SELECT customer_phone AS phone, customer_name, manager AS manager_id FROM orders"
            " WHERE id = $1",
        }
    )
    assert bad.returncode == 2, bad.stdout
    assert bad.stderr.splitlines()[1:] == [
        "  orders.query: takes $1 as int8; bridged passes text (cast: $1::text)",
        "  orders.reverse_query: returns order_id, customer_name; it must return order_id, customer_name,"
        " manager_id",
    ]
    broken = check({"reverse_query": "SELECT nope FROM orders WHERE customer_phone = $1"})
    assert broken.returncode == 2
    assert "orders.reverse_query: the shop's database refuses it: UndefinedColumnError" in broken.stderr
