"""Canary orders and per-manager limits on the rig (issue 14).

A canary is a number the shop owns (rig.CANARY_DIDS, routed to [bridged-inbound] like the shop's numbers)
planted as a fake customer's phone in one manager's segment. A SIPp carrier calling it from outside is the
alarm; a manager calling the canary order hears an unanswered customer and the carrier sees nothing. A
manager keying unknown codes in a row is refused ``rate_limited`` and the shop told once.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bridged.webhooks import SIGNATURE_HEADER, verify
from rig import CANARY_DIDS, SHOP_DIDS, Asterisk, Sipp

from .harness import (
    Bridged,
    ManagerPhone,
    _merge,
    add_order,
    assert_not_leaked,
    carrier,
    customer_calls,
    dial,
    invites,
    new_customer_number,
    new_order_id,
    wait_for,
)
from .test_http_calls import TOKENS, WEBHOOK_SECRET, WebhookReceiver, http, token_config

SECRET = "canary-test-secret-0123456789abcdef"


def canary_daemon(
    make_bridged: Any, hook: WebhookReceiver, managers: tuple[str, ...], **options: Any
) -> Bridged:
    limits = options.pop("limits", {})

    def extra(phones: list[ManagerPhone]) -> dict[str, Any]:
        return {
            "inbound": {"numbers": [SHOP_DIDS[0]], "fallback": [phones[0].id], "secret": SECRET},
            "api": {"tokens": token_config(phones[0].id)},
            "webhook": {"url": hook.url, "secret": WEBHOOK_SECRET, "timeout": 2},
            "canaries": {"ring_seconds": 2, "max_record_seconds": 3},
            "limits": limits,
        }

    daemon: Bridged = make_bridged(managers, extra=extra, **options)
    # [bridged-inbound] enters this daemon's application (as an admin sets BRIDGED_APP in [globals]).
    daemon.asterisk.cli(f"dialplan set global BRIDGED_APP {daemon.app}")
    return daemon


def register_canary(daemon: Bridged, canary_id: str, number: str, manager: ManagerPhone, order: str) -> None:
    status, body, _ = http(
        daemon,
        "POST",
        "/v1/canaries",
        {"id": canary_id, "number": number, "manager_id": manager.id, "order_id": order},
        token=TOKENS["admin"],
    )
    assert status == 201, body
    assert body["number_last_digits"] == number[-2:] and number not in json.dumps(body)


def webhooks_of(hook: WebhookReceiver, kind: str) -> list[tuple[dict[str, str], bytes]]:
    return [(h, b) for h, b in hook.received if json.loads(b)["type"] == kind]


def audit_actions(daemon: Bridged, action: str, canary: str) -> list[dict[str, Any]]:
    """The audit rows of ``action`` about canary ``canary`` (the session's database is shared)."""
    out = daemon.sql(
        "SELECT coalesce(json_agg(a ORDER BY id), '[]') FROM audit a"
        f" WHERE action = '{action}' AND details->>'canary' = '{canary}'"
    )
    return json.loads(out.strip() or "[]")


def first_lines(sipp: Sipp) -> list[str]:
    """What a phone received, as status lines and request methods (no Via branches, tags or times)."""
    return [m.first_line.split(" sip:")[0] for m in sipp.received()]


# -- a call from outside to a canary number --------------------------------------------------------------


def test_a_call_to_a_canary_number_is_answered_recorded_and_names_the_manager_it_was_planted_for(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    with WebhookReceiver(rig_alloc.sip_port() + 20000) as hook:
        daemon = canary_daemon(make_bridged, hook, ("anna", "boris"))
        anna, boris = daemon.managers
        order = new_order_id()
        register_canary(daemon, "canary-boris", CANARY_DIDS[0], boris, order)
        status, listed, _ = http(daemon, "GET", "/v1/canaries", token=TOKENS["ops"])
        assert status == 403, listed  # admins only
        status, listed, _ = http(daemon, "GET", "/v1/canaries", token=TOKENS["admin"])
        assert "canary-boris" in [c["id"] for c in listed["canaries"]]

        competitor = new_customer_number()
        caller = customer_calls(trace_dir, rig_alloc, competitor, did=CANARY_DIDS[0], identity="pai")
        assert caller.wait(timeout=40) == 0, caller.describe()
        received = first_lines(caller)
        # Ringing, then answered as a voicemail would answer, then hung up by bridged (the recording's cap).
        assert received.index("SIP/2.0 180 Ringing") < received.index("SIP/2.0 200 OK"), received
        assert "BYE" in received, received

        row = wait_for(
            lambda: [
                r
                for r in daemon.call_rows(boris.id)
                if r["direction"] == "inbound" and r["state"] == "ended" and r["recording_state"]
            ],
            30,
            "the canary call's row ended, its recording judged",
        )[0]
        assert (row["canary"], row["order_id"], row["outcome"], row["ended_by"]) == (
            True,
            order,
            "completed",
            "bridged",
        )
        assert re.fullmatch(r"[A-Z]{8}", row["caller_ref"]) and row["recording_state"] == "complete"
        wait_for((asterisk.recordings_dir / f"{row['recording_name']}.wav").exists, 10, "the recording")
        [alarm] = audit_actions(daemon, "canary.called", "canary-boris")
        assert (alarm["call_id"], alarm["details"]["managers"], alarm["details"]["caller_ref"]) == (
            row["id"],
            [boris.id],
            row["caller_ref"],
        )
        called = wait_for(lambda: webhooks_of(hook, "canary.called"), 15, "the canary.called webhook")
        # The canary call is told by canary.called only: no call.state_changed about it.
        assert not [
            b
            for _, b in hook.received
            if json.loads(b)["data"].get("call_id") == row["id"]
            and json.loads(b)["type"] == "call.state_changed"
        ]
    [(headers, body)] = called
    assert verify(WEBHOOK_SECRET, headers[SIGNATURE_HEADER], body)
    data = json.loads(body)["data"]
    assert (data["canary_id"], data["manager_ids"], data["order_id"], data["call_id"]) == (
        "canary-boris",
        [boris.id],
        order,
        row["id"],
    )
    # The manager-bound token of the manager the canary was planted for cannot see the alarm, though the
    # row names that manager (their own calls are theirs to read).
    daemon.extra["api"] = {"tokens": token_config(boris.id)}
    daemon.config_path.write_text(yaml.safe_dump(_merge(daemon.config(), daemon.extra)))
    before = daemon.log_text().count("reload: applied")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.log_text().count("reload: applied") > before, 10, "the reload")
    status, _, _ = http(daemon, "GET", f"/v1/calls/{row['id']}", token=TOKENS["manager"])
    assert status == 404
    metrics = daemon_metrics(daemon)
    assert "bridged_canary_calls_total 1" in metrics
    # Neither the caller's number nor the canary's own is anywhere bridged writes.
    everything = daemon.dump_database() + daemon.sql("SELECT coalesce(json_agg(c), '[]') FROM canaries c")
    for number in (competitor, CANARY_DIDS[0]):
        assert_not_leaked(
            number, daemon_log=daemon.log_text(), daemon_database=everything, webhooks=repr(hook.received)
        )


def daemon_metrics(daemon: Bridged) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=5) as response:
        return response.read().decode()


# -- a manager calling their own canary order --------------------------------------------------------------


def test_a_manager_calling_their_canary_order_hears_an_unanswered_customer_and_the_carrier_sees_nothing(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    with WebhookReceiver(rig_alloc.sip_port() + 20000) as hook:
        daemon = canary_daemon(make_bridged, hook, ("anna",), ring_timeout=5)
        anna = daemon.managers[0]
        plain_order, plain_number = new_order_id(), new_customer_number()
        canary_order = new_order_id()
        add_order(daemon.postgres, plain_order, plain_number, "Ivan Petrov", anna.id)
        add_order(daemon.postgres, canary_order, CANARY_DIDS[1], "Olga Smirnova", anna.id)
        register_canary(daemon, "canary-anna", CANARY_DIDS[1], anna, canary_order)

        # An ordinary customer who does not answer: the carrier rings for the trunk's ring timeout.
        unanswered = carrier(trace_dir / "plain", rig_alloc, "carrier_noanswer", timeout_s=40)
        plain = dial(anna, trace_dir / "plain", f"*77{plain_order}", hold_ms=30000, timeout_s=50)
        assert plain.wait(timeout=45) == 0, plain.describe()
        unanswered.wait(timeout=20)
        assert invites(unanswered.messages())

        # The canary order: the same for anna's phone; the carrier is listening and gets nothing.
        listening = carrier(trace_dir / "canary", rig_alloc, timeout_s=40)
        touched = dial(anna, trace_dir / "canary", f"*77{canary_order}", hold_ms=30000, timeout_s=50)
        assert touched.wait(timeout=45) == 0, touched.describe()
        assert not invites(listening.messages()), "the carrier was dialled for a canary order"
        listening.stop()

        assert first_lines(touched) == first_lines(plain), (first_lines(touched), first_lines(plain))
        rows = wait_for(
            lambda: (
                (r := [x for x in daemon.call_rows(anna.id) if x["state"] == "ended"]) and len(r) == 2 and r
            ),
            20,
            "both rows ended",
        )
        shown = ("state", "outcome", "hangup_cause", "ended_by", "answered_at", "canary", "direction")
        assert [{k: r[k] for k in shown} for r in rows][0] == [{k: r[k] for k in shown} for r in rows][1]
        assert rows[1]["outcome"] == "customer_no_answer"
        prompts = [
            line
            for line in asterisk.log_text().splitlines()
            if anna.endpoint in line and "vm-nobodyavail" in line
        ]
        assert len(prompts) >= 2, "the no-answer prompt was not played both times"
        # Seen by anna's own token as any unanswered call.
        status, seen, _ = http(daemon, "GET", f"/v1/calls/{rows[1]['id']}", token=TOKENS["manager"])
        assert status == 200 and seen["outcome"] == "customer_no_answer"
        [touch] = audit_actions(daemon, "canary.touched", "canary-anna")
        assert (touch["actor"], touch["call_id"], touch["details"]["canary"]) == (
            anna.id,
            rows[1]["id"],
            "canary-anna",
        )
        assert not audit_actions(daemon, "canary.called", "canary-anna") and not webhooks_of(
            hook, "canary.called"
        )
    ring_seconds = [_ring_seconds(s) for s in (plain, touched)]
    print(
        f"seconds from the INVITE to the answer for the prompt: plain {ring_seconds[0]}, canary {ring_seconds[1]}"
    )


def _ring_seconds(phone: Sipp) -> float | None:
    """From the phone's INVITE to the 200 OK it received (the prompt's answer), by the trace's times."""
    sent = [m for m in phone.sent() if m.method == "INVITE" and m.is_request]
    answered = [m for m in phone.received() if m.first_line == "SIP/2.0 200 OK" and m.method == "INVITE"]
    if not sent or not answered:
        return None
    when = [datetime.strptime(m.timestamp, "%Y-%m-%d %H:%M:%S.%f") for m in (sent[0], answered[0])]
    return round((when[1] - when[0]).total_seconds(), 2)


# -- budgets ----------------------------------------------------------------------------------------------


def test_ten_unknown_codes_in_a_row_are_rate_limited_with_one_alert_until_the_window_frees(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    with WebhookReceiver(rig_alloc.sip_port() + 20000) as hook:
        daemon = canary_daemon(make_bridged, hook, ("anna", "boris"))
        anna, boris = daemon.managers
        # The phone path: ten unknown codes, each its own prompt.
        for attempt in range(10):
            phone = dial(anna, trace_dir / f"probe{attempt}", f"*77{9000000 + attempt}", hold_ms=20000)
            assert phone.wait(timeout=30) == 0, phone.describe()
        limited = dial(anna, trace_dir / "limited", "*771234", hold_ms=20000)
        assert limited.wait(timeout=30) == 0, limited.describe()
        assert wait_for(
            lambda: any(
                anna.endpoint in line and "simul-call-limit-reached" in line
                for line in asterisk.log_text().splitlines()
            ),
            5,
            "the rate_limited prompt",
        )
        again = dial(anna, trace_dir / "again", "*771235", hold_ms=20000)
        assert again.wait(timeout=30) == 0, again.describe()
        reasons = [a["reason"] for a in daemon.audit_rows(anna.id) if a["action"] == "call.request"]
        assert reasons == ["unknown_order"] * 10 + ["rate_limited"] * 2, reasons

        # The HTTP path, for boris: 429 with the seconds until the window frees a slot.
        for attempt in range(10):
            status, body, _ = http(
                daemon, "POST", "/v1/calls", {"order_id": str(8000 + attempt), "manager_id": boris.id}
            )
            assert (status, body["error"]["id"]) == (404, "unknown_order")
        for _ in range(2):
            status, body, headers = http(
                daemon, "POST", "/v1/calls", {"order_id": "8100", "manager_id": boris.id}
            )
            assert (status, body["error"]["id"]) == (429, "rate_limited"), body
            assert 3500 <= int(headers["Retry-After"]) <= 3600, headers

        alerts = wait_for(
            lambda: (a := webhooks_of(hook, "abuse.suspected")) and len(a) >= 2 and a, 15, "abuse.suspected"
        )
        assert len(alerts) == 2  # one per manager and budget, not one per attempt
        by_manager = {json.loads(b)["data"]["manager_id"]: (h, b) for h, b in alerts}
        for manager in (anna, boris):
            headers, body = by_manager[manager.id]
            assert verify(WEBHOOK_SECRET, headers[SIGNATURE_HEADER], body)
            data = json.loads(body)["data"]
            assert (data["budget"], data["count"], data["limit"], data["window_seconds"]) == (
                "refused_in_a_row",
                10,
                10,
                3600,
            )
        # What ops see of the probing: counts, lengths, shapes, never the digits.
        status, probing, _ = http(daemon, "GET", f"/v1/probing?manager={anna.id}", token=TOKENS["ops"])
        assert status == 200
        [seen] = probing["managers"]
        shapes = {(a["outcome"], a["code_shape"], a["code_length"]): a["count"] for a in seen["attempts"]}
        assert shapes[("unknown_order", "well_formed", 7)] == 10, shapes
        assert "9000000" not in json.dumps(probing)

        # The window moves on (the attempts' times moved back past it): anna calls again.
        daemon.sql(f"UPDATE manager_attempts SET at = at - interval '2 hours' WHERE manager_id = '{anna.id}'")
        order, number = new_order_id(), new_customer_number()
        add_order(daemon.postgres, order, number, "Ivan Petrov", anna.id)
        customer = carrier(trace_dir / "after", rig_alloc, hold_ms=2000)
        phone = dial(anna, trace_dir / "after", f"*77{order}", hold_ms=3000)
        assert phone.wait(timeout=40) == 0, phone.describe()
        customer.wait(timeout=20)
        assert invites(customer.messages()), "the call after the window did not reach the customer"
        assert 'bridged_rate_limited_total{budget="refused_in_a_row"} 4' in daemon_metrics(daemon)
        assert len(webhooks_of(hook, "abuse.suspected")) == 2
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=daemon.log_text())


def test_a_budget_change_holds_after_sighup_without_dropping_a_call(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    with WebhookReceiver(rig_alloc.sip_port() + 20000) as hook:
        daemon = canary_daemon(make_bridged, hook, ("anna", "boris"))
        anna, boris = daemon.managers
        order, number = new_order_id(), new_customer_number()
        add_order(daemon.postgres, order, number, "Olga Smirnova", anna.id)
        customer = carrier(trace_dir, rig_alloc, hold_ms=40000, timeout_s=90)
        talking = dial(anna, trace_dir / "anna", f"*77{order}", hold_ms=15000, timeout_s=60)
        wait_for(
            lambda: [r for r in daemon.call_rows(anna.id) if r["state"] == "bridged"], 20, "anna bridged"
        )

        # Boris may now be refused only once in a row.
        daemon.extra["limits"] = {"managers": {boris.id: {"refused_in_a_row": 1}}}
        daemon.config_path.write_text(yaml.safe_dump(_merge(daemon.config(), daemon.extra)))
        before = daemon.log_text().count("reload: applied")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.log_text().count("reload: applied") > before, 10, "the reload")
        codes = []
        for code in ("7000001", "7000002"):
            status, body, _ = http(daemon, "POST", "/v1/calls", {"order_id": code, "manager_id": boris.id})
            codes.append((status, body["error"]["id"]))
        assert codes == [(404, "unknown_order"), (429, "rate_limited")], codes

        assert talking.wait(timeout=40) == 0, talking.describe()
        customer.wait(timeout=20)
        [row] = [r for r in daemon.call_rows(anna.id) if r["order_id"] == order]
        wait_for(lambda: daemon.call_rows(anna.id)[0]["state"] == "ended", 10, "anna's call ended")
        row = daemon.call_rows(anna.id)[0]
        assert (row["outcome"], row["ended_by"]) == ("completed", "manager"), row
        assert row["duration"] and row["duration"] > 10, row
    assert_not_leaked(number, manager_sip_trace=talking.messages(), daemon_log=daemon.log_text())
