"""Dirty shop data on the real rig: names that are the customer's number, phone values that are no number,
a manager hanging up while keying the code in.

The manager endpoints are hostile (send_pai, send_rpid, send_connected_line, trust_id_outbound) and the
carrier answers with the customer's number in P-Asserted-Identity to a trunk that trusts it: whatever the
label carries shows up in the manager phone's SIPp trace.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from rig import Asterisk

from .harness import (
    add_order,
    ascii_digits,
    assert_not_leaked,
    call_cdrs,
    carrier,
    dial,
    invites,
    new_customer_number,
    new_order_id,
    wait_for,
)
from .test_http_calls import api_daemon, http, manager_phone, wait_state
from .test_masked_call import _prompt_played, _refused_call


def _fullwidth(text: str) -> str:
    return "".join(
        chr(ord(ch) + 0xFEE0) if ch.isascii() and (ch.isdigit() or ch == "+") else ch for ch in text
    )


# Names that ARE the customer's number (+4930xxxxxxxx from the harness), as customers type them.
DIRTY_NAMES = {
    "spaced": lambda n: f"{n[:3]} {n[3:5]} {n[5:9]}-{n[9:]}",  # +49 30 1234-5678
    "national": lambda n: f"0({n[3:5]}){n[5:]}",  # 0(30)12345678
    "sip_uri": lambda n: f"sip:{n}@evil.example",
    "fullwidth": lambda n: _fullwidth(f"{n[:3]}{n[3:5]}{n[5:]}"),  # ＋４９３０１２３４５６７８
}

_IDENTITY_HEADERS = re.compile(
    r"^(From|To|P-Asserted-Identity|Remote-Party-ID|Contact)\s*:(.*)$", re.M | re.I
)


def _shown_names(trace: str) -> set[str]:
    """Every display name in the identity headers of the messages in a SIPp trace."""
    return {name for _, value in _IDENTITY_HEADERS.findall(trace) for name in re.findall(r'"([^"]*)"', value)}


def _assert_number_nowhere(
    number: str, daemon, asterisk: Asterisk, call_id: str, trace: str, **more: str
) -> None:
    """Not in any SIP message the manager's phone received, bridged's log or database, or either leg's CDR."""
    assert_not_leaked(
        number,
        manager_sip_trace=trace,
        daemon_log=daemon.log_text(),
        daemon_database=daemon.dump_database(),
        asterisk_cdr=call_cdrs(asterisk, call_id),
        **more,
    )


def _assert_label_is_the_order_alone(trace: str, order: str) -> None:
    shown = _shown_names(trace)
    assert f"Order {order}" in shown, shown
    # No other name the phone was shown holds a digit: not even part of the number (e.g. "+49 5.").
    assert not [name for name in shown - {f"Order {order}"} if ascii_digits(name)], shown


@pytest.mark.parametrize("shape", DIRTY_NAMES.values(), ids=DIRTY_NAMES.keys())
def test_a_name_that_is_the_number_never_reaches_the_manager(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc, shape
) -> None:
    daemon = make_bridged(("anna",))
    anna = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, shape(number), anna.id)

    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)
    phone = dial(anna, trace_dir, f"*77{order}", hold_ms=3000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)
    # The call went ahead: the customer was dialled and bridged.
    assert invites(customer.messages()), "carrier received no INVITE"
    row = wait_for(lambda: [r for r in daemon.call_rows(anna.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert row["outcome"] == "completed", row

    manager_trace = phone.messages()
    _assert_label_is_the_order_alone(manager_trace, order)
    _assert_number_nowhere(number, daemon, asterisk, row["id"], manager_trace)


def test_a_name_that_is_the_number_never_reaches_the_manager_over_http(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = api_daemon(make_bridged, "boris")
    boris = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    # The number with a name after it: the name survives, the number does not.
    add_order(daemon.postgres, order, number, f"{DIRTY_NAMES['national'](number)} Olga Smirnova", boris.id)
    phone = manager_phone(boris, trace_dir, hold_ms=60000)
    customer = carrier(trace_dir, rig_alloc, hold_ms=3000)

    status, call, _ = http(daemon, "POST", "/v1/calls", {"order_id": order, "manager_id": boris.id})
    assert status == 202, call
    ended = wait_state(daemon, call["id"], "ended", timeout=40)
    assert ended["outcome"] == "completed", ended
    assert customer.wait(timeout=10) == 0, customer.describe()
    assert phone.wait(timeout=10) == 0, phone.describe()

    manager_trace = phone.messages()
    # The manager's phone rang with the label as the caller: the order and the name, no digit of the number.
    from_line = re.search(r"^From:.*$", invites(manager_trace)[0], re.M)
    assert from_line and f'"Order {order} Olga S."' in from_line[0], from_line
    shown = _shown_names(manager_trace)
    assert not [name for name in shown if ascii_digits(name.replace(order, ""))], shown
    _assert_number_nowhere(
        number, daemon, asterisk, call["id"], manager_trace, http_response=json.dumps(ended)
    )


# Phone values that are not a valid number; dialling what is left of them would reach a stranger.
MALFORMED_PHONES = {
    "at_host": lambda n: f"{n}@evil.example",
    "sixty_digits": lambda n: (n.lstrip("+") * 6)[:60],
    "no_country_code": lambda n: n[3:],  # 30xxxxxxxx and no orders.default_region configured
    "letters": lambda n: f"{n} ext. 12",
}


def test_phone_values_that_are_no_number_are_refused_with_a_prompt_and_never_dialled(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = make_bridged(("carla",))
    carla = daemon.managers[0]
    cases = []
    for kind, shape in MALFORMED_PHONES.items():
        order, number = new_order_id(), new_customer_number()
        add_order(daemon.postgres, order, shape(number), "Petr Ivanov", carla.id)
        # The manager hears the prompt and is hung up; the carrier gets no INVITE (_refused_call checks).
        phone = _refused_call(daemon, carla, f"*77{order}", trace_dir / kind, rig_alloc)
        cases.append((order, number, phone))
    assert wait_for(
        lambda: _prompt_played(asterisk, carla.endpoint, "cannot-complete-as-dialed"),
        5,
        "invalid_phone prompt",
    )
    # Each attempt: a row with the order (a known order) and the outcome, an audit row, a metric.
    rows = daemon.call_rows(carla.id)
    assert [(r["order_id"], r["state"], r["outcome"]) for r in rows] == [
        (order, "ended", "invalid_phone") for order, _, _ in cases
    ]
    audit = [(a["action"], a["outcome"], a["reason"], a["order_id"]) for a in daemon.audit_rows(carla.id)]
    assert audit == [("call.request", "refused", "invalid_phone", order) for order, _, _ in cases]
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=5) as resp:
        metrics_text = resp.read().decode()
    assert 'bridged_calls_refused_total{reason="invalid_phone"} 4' in metrics_text
    # The phone values went nowhere: not the log, not the database, not the manager's phone.
    for _, number, phone in cases:
        assert_not_leaked(
            number,
            manager_sip_trace=phone.messages(),
            daemon_log=daemon.log_text(),
            daemon_database=daemon.dump_database(),
        )
    assert "evil.example" not in daemon.log_text() + daemon.dump_database()


def test_an_invalid_phone_over_http_is_422_and_nobody_rings(make_bridged, trace_dir: Path, rig_alloc) -> None:
    daemon = api_daemon(make_bridged, "dora")
    dora = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, f"{number}@evil.example", "Anna O.", dora.id)
    phone = manager_phone(dora, trace_dir, hold_ms=5000, timeout_s=20)
    customer = carrier(trace_dir, rig_alloc, hold_ms=3000, timeout_s=20)

    status, body, _ = http(daemon, "POST", "/v1/calls", {"order_id": order, "manager_id": dora.id})
    assert status == 422, body
    assert body["error"]["id"] == "invalid_phone"
    [row] = daemon.call_rows(dora.id)
    assert (row["order_id"], row["outcome"], row["direction"]) == (order, "invalid_phone", "api")
    phone.stop()
    customer.stop()
    assert not invites(phone.messages()), "the manager's phone rang for a call that cannot be made"
    assert not invites(customer.messages()), "a customer leg was dialled"
    assert_not_leaked(number, daemon_log=daemon.log_text(), daemon_database=daemon.dump_database())


def test_manager_hanging_up_while_keying_the_code_is_manager_abandoned(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = make_bridged(("egor",))
    egor = daemon.managers[0]
    customer = carrier(trace_dir, rig_alloc, hold_ms=3000, timeout_s=30)
    # *77 without a code: Asterisk answers and plays the enter-the-code prompt (FastAGI GET DATA);
    # the phone hangs up 1.5 s in, while the prompt is still playing.
    phone = dial(egor, trace_dir, "*77", dtmf="", hold_ms=1500, timeout_s=30)
    assert phone.wait(timeout=30) == 0, phone.describe()
    assert re.search(r"^BYE sip:", phone.messages(), re.M), phone.messages()[-500:]
    audit = wait_for(lambda: daemon.audit_rows(egor.id), 10, "the attempt's audit row")
    assert [(a["action"], a["outcome"], a["reason"]) for a in audit] == [
        ("call.request", "manager_abandoned", "keying_code")
    ]
    assert daemon.call_rows(egor.id) == []  # no order was named
    log = daemon.log_text()
    assert "hung up while keying the order code in" in log
    assert " ERROR " not in log and "Traceback" not in log, log[-2000:]
    customer.stop()
    assert not invites(customer.messages())
    assert daemon.alive()
