"""The masked call by order code, end to end: SIPp phones and carrier, Asterisk 22, PostgreSQL, bridged.

The manager endpoints are hostile (send_pai, send_rpid, trust_id_outbound) and the carrier trunk trusts the
carrier's identity headers (trust_id_inbound) while the carrier answers with the customer's number in
P-Asserted-Identity and Remote-Party-ID: bridged has to keep the number away from the manager anyway.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from rig import Asterisk, Sipp
from rig.asterisk import manager_endpoint_conf
from rig.sipp import parse_trace

from .harness import (  # noqa: F401 - fixtures
    BRIDGED_DB,
    SHOP_NUMBER_DIGITS,
    Bridged,
    ManagerPhone,
    add_order,
    assert_not_leaked,
    call_cdrs,
    carrier,
    dial,
    hang_up_in_asterisk,
    invites,
    new_customer_number,
    new_order_id,
    no_carrier_invite,
    sox_rms,
    wait_for,
)

# -- the call ---------------------------------------------------------------------------------------


def test_dialled_code_reaches_customer_and_never_leaks_the_number(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = make_bridged(("anna",))
    anna = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Ivan Petrov", anna.id)

    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)
    phone = dial(anna, trace_dir, f"*77{order}", hold_ms=5000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)

    # The carrier was asked for the order's number, with the shop's caller id.
    carrier_trace = customer.messages()
    received = invites(carrier_trace)
    assert received, "carrier received no INVITE"
    first = received[0]
    assert re.search(rf"^INVITE sip:{re.escape(number)}@", first, re.M), first[:300]
    from_line = re.search(r"^From:.*$", first, re.M)
    assert from_line and SHOP_NUMBER_DIGITS in re.sub(r"\D", "", from_line[0]), first[:400]

    # The manager's phone got the order label and never the number, although the carrier's 200 OK
    # carried it in P-Asserted-Identity and Remote-Party-ID to a trunk that trusts them.
    manager_trace = phone.messages()
    assert f"Order {order}" in manager_trace, "the manager's phone was never shown the order label"
    assert "P-Asserted-Identity" in carrier_trace and number.lstrip("+") in re.sub(
        r"[^\d]", "", carrier_trace
    )
    assert_not_leaked(
        number,
        manager_sip_trace=manager_trace,
        daemon_log=daemon.log_text(),
        daemon_database=daemon.dump_database(),
    )

    # The row: completed, ended by the manager, with a duration and a recording with sound in it.
    rows = wait_for(lambda: [r for r in daemon.call_rows(anna.id) if r["state"] == "ended"], 10, "ended row")
    row = rows[-1]
    assert row["outcome"] == "completed", row
    assert row["ended_by"] == "manager", row
    assert row["duration"] and row["duration"] > 1, row
    assert row["recording_name"] and number.lstrip("+") not in row["recording_name"]
    recording = asterisk.recordings_dir / f"{row['recording_name']}.wav"
    wait_for(recording.exists, 10, "recording file")
    assert recording.stat().st_size > 44 * 10, recording.stat().st_size
    assert sox_rms(recording) > 0.01
    (trace_dir / "recording.wav").write_bytes(recording.read_bytes())
    # Asterisk reported the recording's end with the bridge's, as long as the call: complete.
    judged = wait_for(
        lambda: [r for r in daemon.call_rows(anna.id) if r["id"] == row["id"] and r["recording_state"]],
        10,
        "the recording judged",
    )
    assert judged[0]["recording_state"] == "complete", judged

    # The audit trail: the request and the end of this call, one row each.
    trail = [
        (a["action"], a["outcome"], a["reason"])
        for a in daemon.audit_rows(anna.id)
        if a["call_id"] == row["id"]
    ]
    assert trail == [("call.request", "accepted", None), ("call.end", "completed", "manager")], trail

    # Both legs and the bridge are gone.
    wait_for(lambda: not json.loads(asterisk.ari_get("/channels")), 5, "no channels left")
    assert not [b for b in json.loads(asterisk.ari_get("/bridges")) if row["id"] in b["id"]]

    # Asterisk's CDRs of both legs hold no number: the carrier's PAI had put it into the customer
    # channel's caller id, and bridged put the label back.
    assert_not_leaked(number, asterisk_cdr=call_cdrs(asterisk, row["id"]))


def test_customer_hangs_up_first(make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc) -> None:
    daemon = make_bridged(("boris",))
    boris = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Olga Smirnova", boris.id)

    customer = carrier(trace_dir, rig_alloc, hold_ms=3000)
    phone = dial(boris, trace_dir, f"*77{order}", hold_ms=40000)
    assert customer.wait(timeout=60) == 0, customer.describe()
    # The manager's phone is hung up by bridged (it would otherwise hold for 40 s).
    assert phone.wait(timeout=15) == 0, phone.describe()
    assert re.search(r"^BYE sip:", phone.messages(), re.M), "manager never received BYE"
    row = wait_for(lambda: [r for r in daemon.call_rows(boris.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert (row["outcome"], row["ended_by"]) == ("completed", "customer"), row
    assert row["duration"] and row["duration"] > 1
    wait_for(lambda: not json.loads(asterisk.ari_get("/channels")), 5, "no channels left")
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


def _bridged_call(
    daemon: Bridged, trace_dir: Path, rig_alloc, *, hold_ms: tuple[int, int], timeout_s: int
) -> tuple[str, str, Sipp, Sipp]:
    """A call from the daemon's first manager to a new order's customer, once bridged: the order, the
    customer's number, the carrier's SIPp and the phone's (each holding the call for ``hold_ms``: the
    carrier's, the phone's)."""
    manager = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Maria Popova", manager.id)
    customer = carrier(trace_dir, rig_alloc, hold_ms=hold_ms[0], timeout_s=timeout_s)
    phone = dial(manager, trace_dir, f"*77{order}", hold_ms=hold_ms[1], timeout_s=timeout_s)
    wait_for(lambda: [r for r in daemon.call_rows(manager.id) if r["state"] == "bridged"], 20, "bridged row")
    return order, number, customer, phone


@pytest.mark.parametrize(
    ("leg", "how"), [("customer", "ari"), ("customer", "cli"), ("manager", "cli")], ids=lambda v: v
)
def test_a_bridged_leg_hung_up_in_asterisk_ends_the_call_by_asterisk(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc, leg: str, how: str
) -> None:
    """Another ARI client's DELETE /channels/{id}, or an administrator's ``channel request hangup``, is a
    soft hangup request in Asterisk 22: ChannelHangupRequest with soft true and, as its cause, the flag
    AST_SOFTHANGUP_EXPLICIT (32), not a Q.850 cause. The call ends at once, the other phone is sent BYE, and
    the row says that it was completed, ended by ``asterisk`` (neither phone hung up), without a cause
    (Asterisk gives 16 with the leg's ChannelDestroyed, after the call's end: as after a phone's BYE).
    Checked to fail before the change: ``ended_by`` was the leg's side; before an earlier one, the cause 32."""
    daemon = make_bridged(("boris",))
    boris = daemon.managers[0]
    order, number, customer, phone = _bridged_call(
        daemon, trace_dir, rig_alloc, hold_ms=(30000, 30000), timeout_s=60
    )

    def ours(state: str) -> list[dict]:
        return [r for r in daemon.call_rows(boris.id) if r["order_id"] == order and r["state"] == state]

    [row] = ours("bridged")
    # A conversation of a moment: its recording's end says 0 s (whole seconds), its file holds the audio.
    time.sleep(0.3)
    hang_up_in_asterisk(asterisk, row[f"{leg}_channel_id"], how)
    assert customer.wait(timeout=15) == 0, customer.describe()
    assert phone.wait(timeout=15) == 0, phone.describe()
    [row] = wait_for(lambda: ours("ended"), 10, "ended row")
    assert (row["outcome"], row["ended_by"], row["hangup_cause"]) == ("completed", "asterisk", None), row
    assert row["duration"] and row["duration"] > 0 and row["recording_name"], row
    # The other side was hung up by bridged (BYE), the leg cut off by Asterisk (BYE too).
    for sipp in (phone, customer):
        assert re.search(r"^BYE sip:", sipp.messages(), re.M), sipp.describe()
    wait_for(lambda: not json.loads(asterisk.ari_get("/channels")), 5, "no channels left")
    judged = wait_for(
        lambda: [r for r in daemon.call_rows(boris.id) if r["id"] == row["id"] and r["recording_state"]],
        10,
        "the recording judged",
    )
    assert judged[0]["recording_state"] == "complete", judged
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


@pytest.mark.parametrize("leg", ["customer", "manager"])
def test_a_leg_hung_up_in_asterisk_while_the_customer_rings_cancels_the_call(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc, leg: str
) -> None:
    """``channel request hangup`` while the customer rings, on the customer's leg (rung from the dialplan:
    a soft request, Dial NOANSWER, ChannelDestroyed cause 0 "Unknown") or on the manager's phone's channel:
    the call is cancelled at once by ``asterisk``, without a cause, and the other leg stops ringing.
    Checked to fail before the change: the customer's leg gave ``customer_no_answer`` with cause 0, ended
    by ``bridged`` after the manager heard the no-answer prompt; the manager's, ``manager_abandoned`` by
    ``manager``."""
    daemon = make_bridged(("lena",), ring_timeout=60)
    lena = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Anna Karenina", lena.id)
    customer = carrier(trace_dir, rig_alloc, "carrier_noanswer", timeout_s=40)
    phone = dial(lena, trace_dir, f"*77{order}", hold_ms=30000, timeout_s=40)

    def ours(state: str) -> list[dict]:
        return [r for r in daemon.call_rows(lena.id) if r["order_id"] == order and r["state"] == state]

    [row] = wait_for(lambda: ours("ringing_customer"), 20, "the customer ringing")
    wait_for(lambda: re.search(r"^SIP/2.0 180 ", customer.messages(), re.M), 10, "the carrier's 180")
    hang_up_in_asterisk(asterisk, row[f"{leg}_channel_id"])
    [row] = wait_for(lambda: ours("ended"), 10, "ended row")
    assert (row["outcome"], row["ended_by"], row["hangup_cause"]) == ("cancelled", "asterisk", None), row
    assert row["answered_at"] is None and row["recording_name"] is None, row
    assert phone.wait(timeout=15) == 0, phone.describe()
    assert customer.wait(timeout=15) == 0, customer.describe()
    assert re.search(r"^CANCEL sip:", customer.messages(), re.M), "the customer leg was not cancelled"
    # No prompt: the manager's phone was never answered (a prompt is played once it is).
    assert _invite_ok(phone.messages(), "received") is None, phone.messages()[-1500:]
    wait_for(lambda: not json.loads(asterisk.ari_get("/channels")), 5, "no channels left")
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


def test_star77_then_dtmf_order_code(make_bridged, trace_dir: Path, rig_alloc) -> None:
    daemon = make_bridged(("carla",))
    carla = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Petr Ivanov", carla.id)

    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)
    phone = dial(carla, trace_dir, "*77", dtmf=f"{order}#", hold_ms=6000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)
    received = invites(customer.messages())
    assert received and re.search(rf"^INVITE sip:{re.escape(number)}@", received[0], re.M)
    row = wait_for(lambda: [r for r in daemon.call_rows(carla.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert row["order_id"] == order and row["outcome"] == "completed", row
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


@pytest.mark.parametrize(
    "keyed", [False, True], ids=["cancel-while-the-phone-rings", "bye-after-keying-the-code"]
)
def test_manager_giving_up_while_the_customer_rings_cancels_the_customer_leg(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc, keyed: bool
) -> None:
    """The customer's phone stops ringing as soon as the manager gives up, not at the ring timeout."""
    daemon = make_bridged(("lena",), ring_timeout=60)
    lena = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Anna Karenina", lena.id)
    # Rings until cancelled; gives up long before the 60 s ring timeout would cancel it.
    customer = carrier(trace_dir, rig_alloc, "carrier_noanswer", timeout_s=25)
    if keyed:
        # *77 (answered), the code keyed in, 2 s of ringback tone, then the manager hangs up (BYE).
        phone = dial(lena, trace_dir, "*77", dtmf=f"{order}#", hold_ms=2000, timeout_s=40)
    else:
        # *77<order>: the phone hears ringback (180) and cancels 2 s later (CANCEL).
        phone = dial(lena, trace_dir, f"*77{order}", scenario="manager_cancel", timeout_s=40)
    assert phone.wait(timeout=40) == 0, phone.describe()
    assert customer.wait(timeout=20) == 0, customer.describe()
    assert re.search(rf"^INVITE sip:{re.escape(number)}@", customer.messages(), re.M)
    assert re.search(r"^CANCEL sip:", customer.messages(), re.M), "the customer leg was not cancelled"
    row = wait_for(lambda: [r for r in daemon.call_rows(lena.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert (row["outcome"], row["ended_by"], row["answered_at"]) == ("manager_abandoned", "manager", None), (
        row
    )
    wait_for(lambda: not json.loads(asterisk.ari_get("/channels")), 5, "no channels left")
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


ANNOUNCEMENT = "conf-now-recording"  # about 2.3 s in the chroot's core sounds


def _invite_ok(trace: str, direction: str) -> datetime | None:
    """When the 200 OK to the INVITE was sent or received in a SIPp trace."""
    for message in parse_trace(trace):
        if message.direction == direction and message.status == 200 and message.method == "INVITE":
            return datetime.strptime(message.timestamp, "%Y-%m-%d %H:%M:%S.%f")
    return None


def test_recording_announcement_is_played_to_the_customer_before_the_manager_is_connected(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = make_bridged(("olga",), announcement=ANNOUNCEMENT)
    olga = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Ivan Petrov", olga.id)
    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)
    phone = dial(olga, trace_dir, f"*77{order}", hold_ms=3000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)
    answered = _invite_ok(customer.messages(), "sent")
    connected = _invite_ok(phone.messages(), "received")
    assert answered and connected, "no 200 OK on one side"
    # The manager's phone is answered only once the customer has heard the announcement out.
    assert (connected - answered).total_seconds() > 1.8, (answered, connected)
    assert _prompt_played(asterisk, "carrier", ANNOUNCEMENT), "announcement not played to the customer"
    assert not _prompt_played(asterisk, olga.endpoint, ANNOUNCEMENT), "the manager heard the announcement"
    row = wait_for(lambda: [r for r in daemon.call_rows(olga.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert (row["outcome"], row["ended_by"]) == ("completed", "manager"), row
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


def test_customer_hanging_up_during_the_announcement_ends_the_managers_call_unconnected(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = make_bridged(("pavel",), announcement=ANNOUNCEMENT)
    pavel = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Ivan Petrov", pavel.id)
    # The customer answers and hangs up 0.5 s into the 2.3 s announcement.
    customer = carrier(trace_dir, rig_alloc, hold_ms=500)
    phone = dial(pavel, trace_dir, f"*77{order}", hold_ms=20000, timeout_s=40)
    assert phone.wait(timeout=30) == 0, phone.describe()
    assert customer.wait(timeout=20) == 0, customer.describe()
    assert _invite_ok(phone.messages(), "received") is None, "the manager was answered into an empty call"
    row = wait_for(lambda: [r for r in daemon.call_rows(pavel.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert (row["outcome"], row["ended_by"]) == ("customer_abandoned", "customer"), row
    wait_for(lambda: not json.loads(asterisk.ari_get("/channels")), 5, "no channels left")
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


# -- refusals ---------------------------------------------------------------------------------------


def _refused_call(daemon: Bridged, manager: ManagerPhone, code: str, trace_dir: Path, rig_alloc) -> Sipp:
    customer = carrier(trace_dir, rig_alloc, hold_ms=5000, timeout_s=30)
    phone = dial(manager, trace_dir, code, hold_ms=20000, timeout_s=40)
    # The prompt is played, then Asterisk hangs up on the manager (well before the phone's own hold).
    assert phone.wait(timeout=30) == 0, phone.describe()
    assert re.search(r"^BYE sip:", phone.messages(), re.M), "manager was not hung up after the prompt"
    assert no_carrier_invite(customer), "a customer leg was dialled for a refused call"
    customer.stop()
    return phone


def _prompt_played(asterisk: Asterisk, endpoint: str, sound: str) -> bool:
    pattern = re.compile(rf"PJSIP/{re.escape(endpoint)}-\w+.*{re.escape(sound)}")
    return any(pattern.search(line) for line in asterisk.log_text().splitlines())


def test_policy_own_refuses_another_managers_order(make_bridged, asterisk, trace_dir, rig_alloc) -> None:
    daemon = make_bridged(("dora", "egor"))
    dora, egor = daemon.managers
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Anna Orlova", egor.id)

    phone = _refused_call(daemon, dora, f"*77{order}", trace_dir, rig_alloc)
    assert wait_for(
        lambda: _prompt_played(asterisk, dora.endpoint, "feature-not-avail-line"), 5, "denied prompt"
    )
    audit = daemon.audit_rows(dora.id)
    assert [(a["action"], a["outcome"], a["reason"], a["order_id"]) for a in audit] == [
        ("call.request", "refused", "denied", order)
    ]
    rows = daemon.call_rows(dora.id)
    assert [(r["order_id"], r["state"], r["outcome"]) for r in rows] == [(order, "ended", "denied")]
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


def test_unknown_and_malformed_codes_are_refused_and_the_next_call_works(
    make_bridged, asterisk, trace_dir, rig_alloc
) -> None:
    daemon = make_bridged(("fedor",))
    fedor = daemon.managers[0]
    missing = new_order_id()
    _refused_call(daemon, fedor, f"*77{missing}", trace_dir / "unknown", rig_alloc)
    assert wait_for(
        lambda: _prompt_played(asterisk, fedor.endpoint, "pbx-invalid"), 5, "unknown-order prompt"
    )
    _refused_call(daemon, fedor, "*7712AB", trace_dir / "malformed", rig_alloc)
    assert wait_for(lambda: _prompt_played(asterisk, fedor.endpoint, "invalid"), 5, "malformed prompt")
    # A manager keying in a customer's phone number instead of an order code: refused, and the
    # number typed is not kept anywhere an operator reads.
    probe = new_customer_number().lstrip("+")
    _refused_call(daemon, fedor, f"*77{probe}", trace_dir / "probe", rig_alloc)
    reasons = [(a["outcome"], a["reason"]) for a in daemon.audit_rows(fedor.id)]
    assert reasons == [
        ("refused", "unknown_order"),
        ("refused", "invalid_code"),
        ("refused", "unknown_order"),
    ]
    assert "12AB" not in daemon.dump_database()
    assert_not_leaked(probe, daemon_database=daemon.dump_database(), daemon_log=daemon.log_text())

    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Ilya Lebedev", fedor.id)
    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)
    phone = dial(fedor, trace_dir, f"*77{order}", hold_ms=3000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)
    assert invites(customer.messages()), "the next call did not reach the customer"
    assert daemon.alive()


def test_a_dialled_code_is_taken_whole_separators_and_quotes_included(
    make_bridged, asterisk, trace_dir, rig_alloc
) -> None:
    """AGI() splits its arguments at commas and strips quotes and backslashes: a code carried raw in
    them was cut (``*77<order>,1`` called ``<order>``, and its ``1`` posed as BRIDGED_MORE). The dialplan
    sends the code URI-encoded, so bridged sees what was dialled and refuses it as malformed."""
    daemon = make_bridged(("zoya",))
    zoya = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Zoya Petrova", zoya.id)
    # PJSIP decodes the request URI's user part: %22 is a quote, %20 a space, %5C a backslash.
    for name, code in (
        ("comma", f"*77{order},1"),
        ("quoted", f"*77%22{order}%22"),
        ("space", f"*77%20{order}"),
        ("backslash", f"*77{order[:1]}%5C{order[1:]}"),
    ):
        phone = _refused_call(daemon, zoya, code, trace_dir / name, rig_alloc)
        assert_not_leaked(number, manager_sip_trace=phone.messages())
    assert wait_for(lambda: _prompt_played(asterisk, zoya.endpoint, "invalid"), 5, "malformed prompt")
    assert [(a["outcome"], a["reason"]) for a in daemon.audit_rows(zoya.id)] == [
        ("refused", "invalid_code")
    ] * 4
    # The same order dialled plainly is called: the refusals above were the code's shape, not the order.
    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)
    phone = dial(zoya, trace_dir, f"*77{order}", hold_ms=3000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)
    assert invites(customer.messages()), "the plain code did not reach the customer"
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


def test_unreachable_order_database_gives_a_prompt(make_bridged, asterisk, trace_dir, rig_alloc) -> None:
    daemon = make_bridged(("gleb",), orders_dsn="postgresql://postgres@127.0.0.1:1/shop")
    gleb = daemon.managers[0]
    order = new_order_id()
    for attempt in ("first", "second"):
        _refused_call(daemon, gleb, f"*77{order}", trace_dir / attempt, rig_alloc)
    assert wait_for(
        lambda: _prompt_played(asterisk, gleb.endpoint, "sorry-youre-having-problems"), 5, "prompt"
    )
    reasons = [a["reason"] for a in daemon.audit_rows(gleb.id)]
    assert reasons == ["lookup_failed", "lookup_failed"], reasons
    assert daemon.alive() and daemon.healthy()


@pytest.mark.parametrize(
    ("scenario", "outcome", "prompt"),
    [
        ("carrier_busy", "customer_busy", "vm-isonphone"),
        ("carrier_noanswer", "customer_no_answer", "vm-nobodyavail"),
    ],
)
def test_customer_busy_or_not_answering(
    make_bridged, asterisk, trace_dir, rig_alloc, scenario: str, outcome: str, prompt: str
) -> None:
    daemon = make_bridged(("hanna",), ring_timeout=5)
    hanna = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Lev Tolstoy", hanna.id)
    customer = carrier(trace_dir, rig_alloc, scenario, timeout_s=40)
    phone = dial(hanna, trace_dir, f"*77{order}", hold_ms=30000, timeout_s=50)
    assert phone.wait(timeout=45) == 0, phone.describe()
    assert customer.wait(timeout=20) == 0, customer.describe()
    assert invites(customer.messages())
    assert wait_for(lambda: _prompt_played(asterisk, hanna.endpoint, prompt), 5, f"{prompt} prompt")
    row = wait_for(lambda: [r for r in daemon.call_rows(hanna.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert row["outcome"] == outcome, row
    assert row["answered_at"] is None
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


# -- restarts ---------------------------------------------------------------------------------------


def test_daemon_killed_while_bridged_call_goes_on_and_row_is_finalized(
    make_bridged, asterisk, trace_dir, rig_alloc
) -> None:
    daemon = make_bridged(("ivan",))
    ivan = daemon.managers[0]
    _, number, customer, phone = _bridged_call(
        daemon, trace_dir, rig_alloc, hold_ms=(60000, 12000), timeout_s=90
    )

    daemon.stop(signal.SIGKILL)
    assert not daemon.alive()
    # Asterisk keeps both legs in the (now unattended) application and the bridge.
    channels = json.loads(asterisk.ari_get("/channels"))
    assert len(channels) == 2, channels
    daemon.start()

    # The manager hangs up at the end of the hold: the restarted daemon ends the customer leg too.
    assert phone.wait(timeout=40) == 0, phone.describe()
    assert customer.wait(timeout=10) == 0, customer.describe()
    assert re.search(r"^BYE sip:", customer.messages(), re.M), "customer leg was not hung up"
    row = wait_for(lambda: [r for r in daemon.call_rows(ivan.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert (row["outcome"], row["ended_by"]) == ("completed", "manager"), row
    assert row["duration"] and row["duration"] > 5, row
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


# Any fixed 64-bit number: the advisory lock that holds back calls' inserts.
_INSERT_HOLD = 0x6531395F686F6C64


def test_a_daemon_killed_before_its_calls_row_is_written_leaves_no_customer_ringing(
    make_bridged, trace_dir, rig_alloc
) -> None:
    """Issue 19: the customer is rung at the decision and the call's row is written after. The row's
    insert is held back in its execution, the customer's phone rings, and the daemon is SIGKILLed: the
    leg, named after the call, is the trace. PostgreSQL ends the dead daemon's waiting insert (its
    connections check their client), so the row never commits, not even once the lock goes. The restarted
    daemon finds the customer's leg and the manager's channel in its application without a row and hangs
    both up, long before the trunk's ring timeout; no row is left open.

    Held in its execution, not at its parse: a trigger on calls waits for an advisory lock the test holds.
    That is how a call's insert waits behind a lock on a connection that ran it before (asyncpg's prepared
    statement: Bind, Execute and Sync sent at once, the row committed as soon as the wait ends, the daemon
    there or not). This daemon's first insert, not yet prepared, would wait in its Parse behind a locked
    table, and a dead client never sends the rest: no row, with or without the check."""
    daemon = make_bridged(("kira",), ring_timeout=90)
    kira = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Vera Pavlova", kira.id)
    pg = daemon.postgres
    pg.execute(
        BRIDGED_DB,
        "CREATE FUNCTION e2e_held_insert() RETURNS trigger LANGUAGE plpgsql AS"
        f" $$BEGIN PERFORM pg_advisory_xact_lock_shared({_INSERT_HOLD}); RETURN NEW; END$$;"
        "CREATE TRIGGER e2e_held_insert BEFORE INSERT ON calls FOR EACH ROW EXECUTE FUNCTION e2e_held_insert()",
    )
    # A session that holds calls' inserts (through the trigger) until it is terminated.
    locker = subprocess.Popen(
        [str(pg.bin_dir / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"]
        + ["-d", BRIDGED_DB, "-c", f"SELECT pg_advisory_lock({_INSERT_HOLD}); SELECT pg_sleep(120)"],
        env={**os.environ, "PGAPPNAME": "calls-locker"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    customer = carrier(trace_dir, rig_alloc, "carrier_noanswer", timeout_s=120)
    try:
        wait_for(
            lambda: pg.execute(
                "postgres",
                "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE a.application_name = 'calls-locker' AND l.granted AND l.locktype = 'advisory'",
            ),
            10,
            "the calls' inserts held",
        )
        phone = dial(kira, trace_dir, f"*77{order}", hold_ms=60000, timeout_s=120)
        wait_for(lambda: invites(customer.messages()), 10, "the customer's INVITE")
        assert daemon.call_rows(kira.id) == []  # rung before its row
        wait_for(
            lambda: pg.execute(
                "postgres",
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%INSERT INTO calls%'",
            ),
            10,
            "the call's insert waiting on the lock",
        )
        daemon.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        # The dead daemon's insert, still waiting for the lock, is ended by PostgreSQL itself: its
        # connections check their client (client_connection_check_interval), the lock still held.
        # Without that the backend waits on and commits the row once the lock goes.
        wait_for(
            lambda: (
                pg.execute(
                    "postgres",
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                    f"'{BRIDGED_DB}' AND application_name <> 'calls-locker' AND pid <> pg_backend_pid()",
                ).strip()
                == "0"
            ),
            15,
            "the dead daemon's backends ended",
        )
    finally:
        pg.execute(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'calls-locker'",
        )
        locker.wait(timeout=10)
        pg.execute(BRIDGED_DB, "DROP TRIGGER e2e_held_insert ON calls; DROP FUNCTION e2e_held_insert()")
    daemon.start()
    assert customer.wait(timeout=30) == 0, customer.describe()  # CANCEL received, answered
    assert time.monotonic() - killed_at < 30  # the reconcile, not the trunk's 90 s ring timeout
    assert phone.wait(timeout=30) is not None
    log_text = daemon.log_text()
    assert "belongs to no call; hanging it up" in log_text, log_text[-2000:]
    assert daemon.call_rows(kira.id) == []
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=log_text)


@pytest.mark.parametrize(
    ("recording", "method"),
    [(False, "UPDATE"), (True, "UPDATE"), (False, "INVITE")],
    ids=["two-party-bridge", "recorded-bridge", "re-invite"],
)
def test_carrier_identity_update_mid_call_never_reaches_the_manager(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc, recording: bool, method: str
) -> None:
    """A carrier re-asserting the customer's identity mid-call (an UPDATE or a re-INVITE with PAI/RPID,
    trusted by the trunk) becomes a connected-line update that crosses the bridge: the manager's side
    must keep the label.

    In a two-party bridge (recording off) the frame reaches the manager's channel, and only the
    CONNECTED_LINE_SEND_SUB interception keeps the number out (checked: without it this test fails).
    """
    daemon = make_bridged(("julia",), recording=recording)
    julia = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Nina Volkova", julia.id)

    scenario = {"UPDATE": "carrier_answer_update", "INVITE": "carrier_answer_reinvite"}[method]
    customer = carrier(trace_dir, rig_alloc, scenario, hold_ms=30000)
    phone = dial(julia, trace_dir, f"*77{order}", hold_ms=8000)

    def update_accepted() -> bool:
        return any(
            m.direction == "received" and m.status == 200 and m.method == method
            for m in parse_trace(customer.messages())
        )

    wait_for(update_accepted, 20, f"Asterisk accepting the carrier's identity {method}")
    time.sleep(0.5)  # let the connected-line frame cross the bridge before reading both sides
    channels = {c["id"]: c for c in json.loads(asterisk.ari_get("/channels"))}
    customer_id = next(cid for cid in channels if cid.endswith("-customer"))
    manager_id = next(cid for cid, c in channels.items() if c["name"].startswith(f"PJSIP/{julia.endpoint}-"))

    def variable(channel: str, name: str) -> str:
        return json.loads(asterisk.ari_get(f"/channels/{channel}/variable?variable={name}"))["value"]

    # The trunk trusted the UPDATE and put the number into the customer channel's caller id; bridged
    # saw it change and put the label back (else Asterisk would write the number into the leg's CDR).
    wait_for(
        lambda: "changed the customer leg's caller id" in daemon.log_text(), 10, "bridged seeing the change"
    )
    wait_for(lambda: variable(customer_id, "CALLERID(num)") == f"*77{order}", 5, "the label put back")
    # The manager's side only ever knew the order.
    assert variable(manager_id, "CONNECTEDLINE(num)") == f"*77{order}"
    assert variable(manager_id, "CONNECTEDLINE(name)").startswith(f"Order {order}")

    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())
    row = wait_for(lambda: [r for r in daemon.call_rows(julia.id) if r["state"] == "ended"], 10, "ended")[-1]
    assert_not_leaked(number, asterisk_cdr=call_cdrs(asterisk, row["id"]))


def test_a_manager_transfer_is_declined_and_the_call_stays_bridged(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """The manager's phone sends a blind transfer (REFER) mid-call; the endpoint allows transfers
    (allow_transfer defaults to yes). bridged has Asterisk hand the REFER over
    (PJSIP_TRANSFER_HANDLING()=ari-only) and declines it: the customer stays in the recorded bridge.

    Without the guard (checked by taking the dialplan line out) Asterisk performs the transfer itself
    and tells the phone it succeeded (NOTIFY with "SIP/2.0 200 OK"), and this test fails.
    """
    daemon = make_bridged(("tomas",))
    tomas = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Lev Orlov", tomas.id)

    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)
    phone = Sipp.start(
        "manager_refer",
        local_ip="127.0.0.1",
        local_port=tomas.sip_port,
        remote="127.0.0.1:5060",
        service=f"*77{order}",
        keys={"user": tomas.endpoint, "refer_to": f"*77{order}", "refer_after_ms": "2000", "hold_ms": "4000"},
        trace_dir=trace_dir,
        rtp_port=tomas.rtp_port,
        timeout_s=60,
        name=f"manager_{tomas.endpoint}",
    )
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)

    trace = phone.messages()
    assert re.search(r"^REFER sip:", trace, re.M), "the manager never sent REFER"
    # The REFER got an answer, and the transfer was reported as declined (a NOTIFY with 603).
    assert re.search(r"^SIP/2.0 (202|603)", trace, re.M), trace[-2000:]
    notifies = re.findall(r"^NOTIFY sip:.*?(?=^-{5}|\Z)", trace, re.M | re.S)
    assert any(re.search(r"^SIP/2.0 603", n, re.M) for n in notifies), trace[-3000:]

    # The customer stayed bridged until the manager hung up after the hold (not at the REFER).
    row = wait_for(lambda: [r for r in daemon.call_rows(tomas.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert (row["outcome"], row["ended_by"]) == ("completed", "manager"), row
    assert row["duration"] and row["duration"] > 5, row
    trail = [(a["action"], a["outcome"]) for a in daemon.audit_rows(tomas.id) if a["call_id"] == row["id"]]
    assert ("call.transfer", "refused") in trail, trail
    assert json.loads(asterisk.ari_get("/asterisk/info"))  # Asterisk lived through it
    wait_for(lambda: not json.loads(asterisk.ari_get("/channels")), 10, "no channels left")
    assert_not_leaked(number, manager_sip_trace=trace, daemon_log=daemon.log_text())


def _stub_agi_phone(asterisk: Asterisk, rig_alloc, unique_name, reply: str):
    """A manager phone whose endpoint asks a stub FastAGI server that answers ``reply`` like bridged.

    Returns (phone info, event set once asked, cleanup)."""
    asked = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def stub_agi() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as lines:
            while lines.readline() not in (b"", b"\n"):
                pass
            asked.set()
            conn.sendall(f"SET VARIABLE BRIDGED_REPLY {reply}\n".encode())
            lines.readline()

    threading.Thread(target=stub_agi, daemon=True).start()
    phone_info = ManagerPhone("nobody", unique_name("mgr"), rig_alloc.sip_port(), rig_alloc.rtp_port())
    asterisk.add_endpoints(
        f"test_{phone_info.endpoint}",
        manager_endpoint_conf(
            phone_info.endpoint, phone_info.sip_port, set_vars={"BRIDGED_AGI": f"agi://127.0.0.1:{port}"}
        ),
    )

    def cleanup() -> None:
        server.close()
        asterisk.remove_endpoints(f"test_{phone_info.endpoint}")

    return phone_info, asked, cleanup


def test_a_stasis_application_that_is_gone_gives_the_manager_a_prompt(
    asterisk: Asterisk, trace_dir: Path, rig_alloc, unique_name
) -> None:
    """The daemon answered over FastAGI, but its Stasis application is no longer registered when the
    channel gets there (the daemon restarted in between): Stasis() fails at once and the dialplan plays
    please-try-call-later, then hangs up. Before, the phone got a bare failure response."""
    # Answers like bridged, naming an application nobody registered.
    phone_info, asked, cleanup = _stub_agi_phone(
        asterisk, rig_alloc, unique_name, '"ok|en|bridged-nobody,order,x|\\"Order 1\\" <*771>"'
    )
    try:
        started = time.monotonic()
        phone = dial(phone_info, trace_dir, "*771", hold_ms=20000)
        assert phone.wait(timeout=40) == 0, phone.describe()
        elapsed = time.monotonic() - started
    finally:
        cleanup()
    assert asked.is_set()
    trace = phone.messages()
    # Answered (by Playback) and hung up by Asterisk once the prompt ended, long before the phone's hold.
    assert re.search(r"^SIP/2.0 200 OK\s*$(?:(?!^-{5}).)*^CSeq: 1 INVITE", trace, re.M | re.S), trace[-2000:]
    assert elapsed < 15, elapsed


def test_an_overloaded_daemon_rejects_a_ringing_phone_with_503_and_answers_nothing(
    asterisk: Asterisk, trace_dir: Path, rig_alloc, unique_name
) -> None:
    """bridged refuses new calls while Asterisk is behind on its ARI requests (unit-tested in
    test_service.py); its FastAGI answer is then "overloaded", and the dialplan rejects the phone's
    INVITE with 503 (cause 34) instead of answering it for a prompt."""
    phone_info, asked, cleanup = _stub_agi_phone(
        asterisk, rig_alloc, unique_name, '"overloaded|en|all-circuits-busy-now&please-try-call-later"'
    )
    try:
        phone = dial(phone_info, trace_dir, "*771", hold_ms=20000)
        phone.wait(timeout=40)
    finally:
        cleanup()
    assert asked.is_set()
    trace = phone.messages()
    assert re.search(r"^SIP/2.0 503 ", trace, re.M), trace[-2000:]
    assert not re.search(r"^SIP/2.0 200 OK\s*$(?:(?!^-{5}).)*^CSeq: 1 INVITE", trace, re.M | re.S)
