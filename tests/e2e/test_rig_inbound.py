"""The rig's inbound-call parts work on their own (no bridged): the SIPp carrier calls the shop's side
(carrier_inbound.xml) into the rig's test extensions ([rig-inbound] in rig/asterisk.py), and a manager's
phone is rung (manager_ring.xml) by a plain Dial() or by ARI.

The identity checks pin down what Asterisk 22 makes of the carrier's headers (docs/asterisk.md, "Inbound
calls"): bridged's inbound path rests on them.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from rig import (
    NEVER_MS,
    SHOP_DIDS,
    Asterisk,
    Sipp,
    call_in,
    manager_endpoint_conf,
    offline_manager_endpoint_conf,
    ring_phone,
)

from .harness import new_customer_number, number_leaks, wait_for


def _identity_seen(asterisk: Asterisk, mark: int) -> dict[str, str]:
    """What the [rig-inbound] context logged about the one call since ``mark`` (an offset in the log)."""
    text = asterisk.log_text()[mark:]
    return {m[1]: m[2] for m in re.finditer(r"app_verbose\.c: RIG-INBOUND \S+ ([a-z-]+)=(.*)$", text, re.M)}


def _call(number: str, exten: str, trace_dir: Path, rig_alloc, **keys) -> Sipp:
    carrier = call_in(number, exten, trace_dir=trace_dir, rtp_port=rig_alloc.rtp_port(), timeout_s=20, **keys)
    assert carrier.wait(timeout=30) == 0, carrier.describe()
    return carrier


def _first_lines(sipp: Sipp, direction: str) -> list[str]:
    return [m.first_line for m in sipp.parsed() if m.direction == direction]


def _manager(asterisk: Asterisk, rig_alloc, unique_name) -> tuple[str, int]:
    name, port = unique_name("inb"), rig_alloc.sip_port()
    asterisk.add_endpoints(name, manager_endpoint_conf(name, port))
    return name, port


@pytest.mark.parametrize(
    ("identity", "headers", "seen"),
    [
        ("pai", ["P-Asserted-Identity"], {"redirecting-from": "", "redirecting-count": "0"}),
        (
            "rpid",
            ["P-Asserted-Identity", "Remote-Party-ID", "Diversion"],
            {"redirecting-from": "{number}", "redirecting-reason": "cfu", "redirecting-count": "1"},
        ),
        (
            "history",
            ["P-Asserted-Identity", "History-Info"],
            {"redirecting-from": "{number}", "redirecting-reason": "cfu", "redirecting-count": "1"},
        ),
    ],
)
def test_the_carrier_calls_in_and_asterisk_reads_the_callers_number(
    asterisk: Asterisk, trace_dir: Path, rig_alloc, identity: str, headers: list[str], seen: dict[str, str]
) -> None:
    """The number in From and P-Asserted-Identity becomes the channel's caller id; Diversion, and
    History-Info when there is no Diversion, become its redirecting party (the trunk trusts the carrier)."""
    number = new_customer_number()
    mark = len(asterisk.log_text())
    carrier = _call(number, "rig-answer", trace_dir, rig_alloc, identity=identity, hold_ms=1000)

    invite = next(m for m in carrier.sent() if m.method == "INVITE")
    assert number in invite.header("From")[0]
    for name in headers:
        assert any(number in value for value in invite.header(name)), (name, invite.text)
    assert _first_lines(carrier, "received")[-2:] == ["SIP/2.0 200 OK", "SIP/2.0 200 OK"]  # INVITE, BYE
    assert _first_lines(carrier, "sent")[-1].startswith("BYE ")

    found = wait_for(
        lambda: _identity_seen(asterisk, mark).get("redirecting-count"), 5, "the rig's log lines"
    )
    assert found
    identity_seen = _identity_seen(asterisk, mark)
    assert identity_seen["caller"] == f'"{number}" <{number}>'
    assert identity_seen["pres"] == "allowed_not_screened"
    for key, value in seen.items():
        assert identity_seen[key] == value.format(number=number), (key, identity_seen)


def test_a_withheld_number_is_still_on_the_channel_when_the_trunk_trusts_the_carrier(
    asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """From: Anonymous, Privacy: id and the real number in P-Asserted-Identity: with trust_id_inbound=yes
    the caller id holds the number, presentation prohibited; with no, the From's "Anonymous" <anonymous>
    with presentation *allowed*. A withheld caller is recognised by either."""
    number = new_customer_number()
    mark = len(asterisk.log_text())
    carrier = _call(number, "rig-answer", trace_dir, rig_alloc, identity="anonymous", hold_ms=500)
    invite = next(m for m in carrier.sent() if m.method == "INVITE")
    assert invite.header("Privacy") == ["id"]
    assert "anonymous.invalid" in invite.header("From")[0]
    wait_for(lambda: _identity_seen(asterisk, mark).get("redirecting-count"), 5, "the rig's log lines")
    assert _identity_seen(asterisk, mark)["caller"] == f'"" <{number}>'
    assert _identity_seen(asterisk, mark)["pres"] == "prohib_not_screened"

    asterisk.configure_carrier(trust_id_inbound="no")
    try:
        mark = len(asterisk.log_text())
        _call(number, "rig-answer", trace_dir, rig_alloc, identity="anonymous", hold_ms=500, name="untrusted")
        wait_for(lambda: _identity_seen(asterisk, mark).get("redirecting-count"), 5, "the rig's log lines")
        assert _identity_seen(asterisk, mark)["caller"] == '"Anonymous" <anonymous>'
        assert _identity_seen(asterisk, mark)["pres"] == "allowed_not_screened"
    finally:
        asterisk.configure_carrier()
    assert "trust_id_inbound                   : true" in asterisk.cli("pjsip show endpoint carrier")


@pytest.mark.parametrize("code", [486, 480, 603, 404])
def test_a_refused_inbound_call_is_acked(asterisk: Asterisk, trace_dir: Path, rig_alloc, code: int) -> None:
    carrier = _call(new_customer_number(), f"rig-reject-{code}", trace_dir, rig_alloc)
    received = _first_lines(carrier, "received")
    assert received[-1].startswith(f"SIP/2.0 {code} "), received
    assert _first_lines(carrier, "sent")[-1].startswith("ACK sip:rig-reject-")


@pytest.mark.parametrize("exten", ["rig-ring", "rig-progress"])
def test_the_caller_hangs_up_while_it_rings(
    asterisk: Asterisk, trace_dir: Path, rig_alloc, exten: str
) -> None:
    carrier = _call(new_customer_number(), exten, trace_dir, rig_alloc, cancel_ms=1000)
    provisional = "SIP/2.0 180 Ringing" if exten == "rig-ring" else "SIP/2.0 183 Session Progress"
    received = _first_lines(carrier, "received")
    assert provisional in received
    assert received[-2:] == ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"], received
    sent = _first_lines(carrier, "sent")
    assert sent[-2].startswith("CANCEL sip:") and sent[-1].startswith("ACK sip:"), sent


def test_asterisk_hangs_up_an_answered_inbound_call(asterisk: Asterisk, trace_dir: Path, rig_alloc) -> None:
    carrier = _call(new_customer_number(), "rig-answer-hangup", trace_dir, rig_alloc, hold_ms=10000)
    assert _first_lines(carrier, "received")[-1].startswith("BYE sip:")
    assert _first_lines(carrier, "sent")[-1] == "SIP/2.0 200 OK"


@pytest.mark.parametrize("method", ["UPDATE", "INVITE"])
def test_the_carrier_reasserts_the_number_mid_call(
    asterisk: Asterisk, trace_dir: Path, rig_alloc, method: str
) -> None:
    number = new_customer_number()
    carrier = _call(
        number, "rig-answer", trace_dir, rig_alloc, hold_ms=2000, update_ms=1000, update_method=method
    )
    update = [m for m in carrier.sent() if m.method == method][-1]
    assert update.first_line == f"{method} sip:127.0.0.1:5060 SIP/2.0"  # in the dialog: Asterisk's Contact
    assert update.header("P-Asserted-Identity") == [f'"Customer" <sip:{number}@127.0.0.2>']
    assert any(m.status == 200 and m.method == method for m in carrier.received())


@pytest.mark.parametrize(
    ("final", "ring_ms", "carrier_gets", "phone_sends"),
    [
        (200, 500, "SIP/2.0 200 OK", "SIP/2.0 200 OK"),
        (486, 500, "SIP/2.0 486 Busy Here", "SIP/2.0 486 Busy Here"),
        (200, NEVER_MS, "SIP/2.0 487 Request Terminated", "SIP/2.0 487 Request Terminated"),
    ],
)
def test_a_plain_dial_rings_the_managers_phone_and_leaks_the_number(
    asterisk: Asterisk,
    trace_dir: Path,
    rig_alloc,
    unique_name,
    final: int,
    ring_ms: int,
    carrier_gets: str,
    phone_sends: str,
) -> None:
    """manager_ring.xml answers, refuses or rings until the caller gives up. And the rig is hostile
    enough: a plain Dial() of the manager hands the phone the caller's number in From, P-Asserted-Identity,
    Remote-Party-ID, Diversion and History-Info (what bridged's inbound path must prevent)."""
    name, port = _manager(asterisk, rig_alloc, unique_name)
    phone = ring_phone(
        name, port, trace_dir=trace_dir, rtp_port=rig_alloc.rtp_port(), final=final, ring_ms=ring_ms
    )
    number = new_customer_number()
    cancel_ms = 2000 if ring_ms == NEVER_MS else 0
    carrier = _call(
        number, f"rig-dial-{name}", trace_dir, rig_alloc, identity="rpid", hold_ms=1000, cancel_ms=cancel_ms
    )
    assert phone.wait(timeout=20) == 0, phone.describe()

    assert carrier_gets in _first_lines(carrier, "received")
    assert phone_sends in _first_lines(phone, "sent")
    invite = next(m for m in phone.received() if m.method == "INVITE")
    for header in ("From", "P-Asserted-Identity", "Remote-Party-ID", "Diversion", "History-Info"):
        assert number_leaks(f"{header}: {' '.join(invite.header(header))}", number), (header, invite.text)
    if ring_ms == NEVER_MS:
        assert _first_lines(phone, "received")[-2].startswith("CANCEL sip:")


def test_an_unregistered_managers_phone_is_offline(
    asterisk: Asterisk, trace_dir: Path, rig_alloc, unique_name
) -> None:
    """An AOR without a contact, or a contact that does not answer OPTIONS (qualify): ARI says offline and a
    Dial() fails at once (the carrier gets 404). A static contact without qualify is always "online"."""
    absent, dead, live = unique_name("off"), unique_name("dead"), unique_name("live")
    asterisk.add_endpoints(
        absent,
        offline_manager_endpoint_conf(absent)
        + manager_endpoint_conf(dead, rig_alloc.sip_port(), qualify_frequency=1)
        + manager_endpoint_conf(live, rig_alloc.sip_port()),
    )
    assert asterisk.endpoint_state(f"PJSIP/{absent}") == "offline"
    assert asterisk.endpoint_state(f"PJSIP/{dead}") == "offline"
    assert asterisk.endpoint_state(f"PJSIP/{live}") == "online"  # nobody listens there either
    status, body = asterisk.ari("POST", "/channels", {"endpoint": f"PJSIP/{absent}", "app": "rig-nobody"})
    assert (status, body) == (500, {"error": "Allocation failed"})

    carrier = _call(new_customer_number(), f"rig-dial-{absent}", trace_dir, rig_alloc)
    assert _first_lines(carrier, "received")[-1] == "SIP/2.0 404 Not Found"


def test_a_ringing_phone_hung_up_as_answered_elsewhere_is_told_so(
    asterisk: Asterisk, trace_dir: Path, rig_alloc, unique_name
) -> None:
    """What the losers of a ring group see: ARI's hangup reason answered_elsewhere becomes a CANCEL with
    Reason: SIP;cause=200 (how a phone learns that the call was answered elsewhere)."""
    name, port = _manager(asterisk, rig_alloc, unique_name)
    phone = ring_phone(
        name, port, trace_dir=trace_dir, rtp_port=rig_alloc.rtp_port(), ring_ms=NEVER_MS, timeout_s=20
    )
    channel = f"rig-{name}-elsewhere"
    originate = {"endpoint": f"PJSIP/{name}", "app": "rig-nobody", "channelId": channel, "timeout": "10"}
    status, _ = asterisk.ari("POST", "/channels", originate)
    assert status == 200
    wait_for(lambda: any(m.method == "INVITE" for m in phone.received()), 10, "the phone being rung")
    time.sleep(0.3)  # let the 180 reach Asterisk
    assert asterisk.ari("DELETE", f"/channels/{channel}", {"reason": "answered_elsewhere"})[0] == 204
    assert phone.wait(timeout=20) == 0, phone.describe()
    cancel = next(m for m in phone.received() if m.method == "CANCEL" and m.is_request)
    assert 'SIP;cause=200;text="Call completed elsewhere"' in cancel.header("Reason")


def test_the_shops_numbers_go_to_bridged_inbound(asterisk: Asterisk) -> None:
    dialplan = asterisk.cli("dialplan show from-carrier")
    for did in SHOP_DIDS:
        assert re.search(rf"'{re.escape(did)}' =>\s+1\. Goto\(bridged-inbound,\$\{{EXTEN\}},1\)", dialplan), (
            dialplan
        )


def test_make_bridged_can_leave_a_manager_unregistered(make_bridged, asterisk: Asterisk) -> None:
    daemon = make_bridged(("anna", "boris"), offline=("boris",))
    anna, boris = daemon.managers
    assert asterisk.endpoint_state(f"PJSIP/{anna.endpoint}") == "online"
    assert asterisk.endpoint_state(f"PJSIP/{boris.endpoint}") == "offline"
