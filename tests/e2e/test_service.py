"""bridged as a production service, on the real rig: health and metrics, sd_notify, SIGHUP reload,
SIGTERM drain, JSON logs without phone numbers, and Asterisk restarted under a running daemon.

The Asterisk restart test stops and starts the session's shared Asterisk in place: it stays last in
this module and leaves Asterisk as fresh as a new session (every per-test endpoint is re-added by the
test that needs it).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bridged import dialplan
from rig import Asterisk, Sipp
from rig.asterisk import manager_endpoint_conf
from rig.sipp import parse_trace

from .harness import (  # noqa: F401 - fixtures
    CARRIER,
    Bridged,
    ManagerPhone,
    add_order,
    assert_not_leaked,
    carrier,
    dial,
    invites,
    new_customer_number,
    new_order_id,
    no_carrier_invite,
    wait_for,
)


def get(daemon: Bridged, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def health(daemon: Bridged) -> tuple[int, dict[str, Any]]:
    status, body = get(daemon, "/healthz")
    return status, json.loads(body)


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value.replace("+Inf", "inf"))
    return out


def ended_rows(daemon: Bridged, manager: ManagerPhone) -> list[dict[str, Any]]:
    return [r for r in daemon.call_rows(manager.id) if r["state"] == "ended"]


def rows_in(daemon: Bridged, manager: ManagerPhone, state: str) -> list[dict[str, Any]]:
    return [r for r in daemon.call_rows(manager.id) if r["state"] == state]


def carrier_for(trace_dir: Path, rig_alloc, *, calls: int, hold_ms: int = 60000, ring_ms: int = 300) -> Sipp:
    """One carrier SIPp answering ``calls`` customer legs (one carrier port for the whole rig)."""
    sipp = Sipp.start(
        "carrier_answer",
        local_ip=CARRIER[0],
        local_port=CARRIER[1],
        keys={"hold_ms": str(hold_ms), "ring_ms": str(ring_ms)},
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        calls=calls,
        timeout_s=120,
        name="carrier",
    )
    sipp.wait_listening()
    return sipp


def write_config(
    daemon: Bridged, managers: list[ManagerPhone] | None = None, *, raw: str | None = None
) -> None:
    """Rewrite the daemon's config file as an admin would before ``systemctl reload``."""
    if raw is not None:
        daemon.config_path.write_text(raw)
        return
    data = daemon.config()  # what the harness generated (no ``extra`` in the tests that reload)
    data["managers"] = [
        {"id": m.id, "name": m.id.title(), "endpoint": m.endpoint, "team": "t"} for m in (managers or [])
    ]
    daemon.config_path.write_text(yaml.safe_dump(data))


def log_count(daemon: Bridged, text: str) -> int:
    return daemon.log_text().count(text)


def sighup_and_wait(daemon: Bridged, marker: str) -> None:
    before = log_count(daemon, marker)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log_count(daemon, marker) > before, 10, f"log line {marker!r}")


def _prompt_played(asterisk: Asterisk, endpoint: str, sound: str) -> bool:
    pattern = re.compile(rf"PJSIP/{re.escape(endpoint)}-\w+.*{re.escape(sound)}")
    return any(pattern.search(line) for line in asterisk.log_text().splitlines())


# -- health, metrics, JSON logs ---------------------------------------------------------------------


def test_healthz_metrics_and_json_logs_after_real_calls(make_bridged, trace_dir: Path, rig_alloc) -> None:
    daemon = make_bridged(("anna",), extra={"logging": {"json": True}})
    anna = daemon.managers[0]
    status, body = health(daemon)
    assert status == 200, body
    assert body == {
        "status": "ok",
        "ari": "connected",
        "dialplan": "current",
        "database": "ok",
        "draining": False,
        "active_calls": 0,
    }

    numbers = []
    customer = carrier_for(trace_dir, rig_alloc, calls=2, hold_ms=30000)
    for attempt in range(2):
        order, number = new_order_id(), new_customer_number()
        numbers.append(number)
        add_order(daemon.postgres, order, number, "Ivan Petrov", anna.id)
        phone = dial(anna, trace_dir / f"call{attempt}", f"*77{order}", hold_ms=2000)
        assert phone.wait(timeout=60) == 0, phone.describe()
        wait_for(lambda n=attempt + 1: len(ended_rows(daemon, anna)) == n, 10, "ended row")
    customer.stop()
    # A refusal counts too (unknown order: no carrier INVITE).
    refused = dial(anna, trace_dir / "refused", f"*77{new_order_id()}", hold_ms=10000, timeout_s=40)
    assert refused.wait(timeout=30) == 0, refused.describe()
    assert [r["outcome"] for r in ended_rows(daemon, anna)] == ["completed", "completed", "unknown_order"]

    status, text = get(daemon, "/metrics")
    assert status == 200
    values = samples(text)
    assert values['bridged_calls_ended_total{outcome="completed"}'] == 2
    assert values["bridged_calls_bridged_total"] == 2
    assert values["bridged_calls_started_total"] == 2
    assert values['bridged_calls_refused_total{reason="unknown_order"}'] == 1
    assert values["bridged_call_setup_seconds_count"] == 2
    assert values['bridged_call_setup_seconds_bucket{le="+Inf"}'] == 2
    assert values["bridged_active_calls"] == 0
    assert values["bridged_ari_connected"] == 1
    assert values["bridged_ari_connects_total"] == 1
    assert values["bridged_order_lookup_errors_total"] == 0

    # One JSON object per line, and the customers' numbers appear in none of the daemon's output.
    output = daemon.log_text()
    lines = output.splitlines()
    assert len(lines) > 20
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(entry), line
    assert any("bridged" in json.loads(line)["msg"] for line in lines)
    for number in numbers:
        assert_not_leaked(number, daemon_output=output, metrics=text, healthz=json.dumps(health(daemon)[1]))
        # digits only, the whole number too
        assert re.sub(r"\D", "", number) not in re.sub(r"\D", "", output)


def test_healthz_is_503_when_the_database_is_gone(make_bridged, shop) -> None:
    daemon = make_bridged(("anna",))
    assert health(daemon)[0] == 200
    # Kill the daemon's database connections and refuse new ones: what a PostgreSQL outage looks like.
    shop.execute("postgres", "ALTER DATABASE bridged WITH ALLOW_CONNECTIONS false")
    try:
        shop.execute(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'bridged'",
        )
        status, body = wait_for(lambda: (h := health(daemon))[0] == 503 and h, 10, "healthz 503")
        assert body["database"] == "unreachable" and body["ari"] == "connected", body
    finally:
        shop.execute("postgres", "ALTER DATABASE bridged WITH ALLOW_CONNECTIONS true")
    wait_for(lambda: health(daemon)[0] == 200, 10, "healthz back to 200")
    assert daemon.alive()


def test_the_database_going_away_mid_call_cuts_nothing_and_the_row_catches_up(
    make_bridged, shop, trace_dir: Path, rig_alloc
) -> None:
    """bridged's PostgreSQL goes away while the customer rings: the call is still bridged and recorded,
    the manager talks for 5 s and hangs up, and once the database is back the row is bridged, then
    ended, with the times the call really had."""
    daemon = make_bridged(("nina",))
    nina = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Olga S.", nina.id)
    customer = carrier_for(trace_dir, rig_alloc, calls=1, ring_ms=3000, hold_ms=60000)
    phone = dial(nina, trace_dir, f"*77{order}", hold_ms=5000, timeout_s=60)
    wait_for(lambda: rows_in(daemon, nina, "ringing_customer"), 20, "customer ringing")
    shop.execute("postgres", "ALTER DATABASE bridged WITH ALLOW_CONNECTIONS false")
    try:
        shop.execute(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'bridged'",
        )
        # The customer answers during the outage, the two talk, the manager hangs up.
        assert phone.wait(timeout=30) == 0, phone.describe()
        assert customer.wait(timeout=10) == 0, customer.describe()
        assert re.search(r"^BYE sip:", customer.messages(), re.M), "customer leg was not hung up"
        assert any(m.status == 200 and m.method == "INVITE" for m in parse_trace(phone.messages()))
        time.sleep(2)  # the outage goes on: the first retries fail too
    finally:
        shop.execute("postgres", "ALTER DATABASE bridged WITH ALLOW_CONNECTIONS true")
    row = wait_for(lambda: ended_rows(daemon, nina), 30, "row ended once the database is back")[-1]
    assert (row["outcome"], row["ended_by"]) == ("completed", "manager"), row
    assert row["recording_name"] and row["answered_at"], row
    # 5 s of talk, not the 2 s more the database was away.
    assert 4 < row["duration"] < 6.5, row
    log_text = daemon.log_text()
    assert "bridged not written" in log_text and "row written on retry" in log_text
    assert daemon.alive()
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=log_text)


def test_a_phone_call_while_the_database_is_down_hears_a_prompt_and_its_row_comes_later(
    make_bridged, asterisk, shop, trace_dir: Path, rig_alloc
) -> None:
    """bridged's PostgreSQL is away when a manager dials an order: no call is placed (a call without its
    row could not be adopted after a restart), the manager hears prompts.unavailable, the refusal is
    counted, and its row is written once the database is back."""
    daemon = make_bridged(("wanda",))
    wanda = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Olga S.", wanda.id)
    customer = carrier_for(trace_dir, rig_alloc, calls=1)
    shop.execute("postgres", "ALTER DATABASE bridged WITH ALLOW_CONNECTIONS false")
    try:
        shop.execute(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'bridged'",
        )
        phone = dial(wanda, trace_dir, f"*77{order}", hold_ms=20000, timeout_s=40)
        assert phone.wait(timeout=30) == 0, phone.describe()
        assert wait_for(
            lambda: _prompt_played(asterisk, wanda.endpoint, "please-try-call-later"), 5, "the prompt"
        )
        assert no_carrier_invite(customer), "the customer was dialled"
        status, text = get(daemon, "/metrics")
        assert samples(text)['bridged_calls_refused_total{reason="database_unavailable"}'] == 1
    finally:
        shop.execute("postgres", "ALTER DATABASE bridged WITH ALLOW_CONNECTIONS true")
        customer.stop()
    row = wait_for(
        lambda: daemon.call_rows(wanda.id), 30, "the refused call's row once the database is back"
    )[0]
    assert (row["outcome"], row["direction"], row["order_id"], row["created_by"]) == (
        "database_unavailable",
        "phone",
        order,
        None,
    )
    assert [(a["outcome"], a["reason"]) for a in daemon.audit_rows(wanda.id)] == [
        ("refused", "database_unavailable")
    ]
    log_text = daemon.log_text()
    assert "FastAGI handler failed" not in log_text and daemon.alive()
    assert_not_leaked(number, manager_sip_trace=phone.messages(), daemon_log=log_text)


# -- systemd notify protocol -------------------------------------------------------------------------


def test_sd_notify_ready_watchdog_reload_and_stopping(make_bridged, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(15)
    # What systemd passes to a Type=notify unit with WatchdogSec=2.
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    received: list[str] = []

    def until(field: str) -> None:
        while field not in received:
            received.extend(sock.recv(4096).decode().split("\n"))

    try:
        daemon = make_bridged(("anna",))
        until("READY=1")
        # The migrations ran with the start timeout extended (a long index build is not killed).
        assert "STATUS=migrating the database" in received
        assert received.index("EXTEND_TIMEOUT_USEC=60000000") < received.index("READY=1")
        # READY only once the database and ARI are up: /healthz says so too.
        assert health(daemon)[0] == 200
        until("WATCHDOG=1")
        received.clear()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        until("RELOADING=1")
        until("READY=1")
        received.clear()
        daemon.proc.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert daemon.proc.wait(timeout=30) == 0
    finally:
        sock.close()
    assert "SIGTERM: stopping" in daemon.log_text()


# -- the dialplan's version -------------------------------------------------------------------------


def test_a_dialplan_older_than_the_daemon_takes_no_call_until_it_is_reloaded(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """An upgrade whose dialplan/bridged.conf was not copied to Asterisk: the daemon would ring customers
    into [bridged-customer], which is not there, and they would be hung up as they answered. It takes no
    call instead (the manager hears the unavailable prompt, the carrier gets no INVITE) and says why,
    until the dialplan is the one it needs."""
    # What an Asterisk running the dialplan of the release before says (it sets no version, or another).
    assert (
        asterisk.ari("POST", "/asterisk/variable", {"variable": dialplan.VERSION_VARIABLE, "value": "1"})[0]
        == 204
    )
    try:
        # Started: it says what is wrong (its /healthz is 503 meanwhile, below).
        daemon = make_bridged(("anna",), ready=lambda d: "Asterisk's dialplan is version '1'" in d.log_text())
        anna = daemon.managers[0]
        order, number = new_order_id(), new_customer_number()
        add_order(daemon.postgres, order, number, "Olga Smirnova", anna.id)
        customer = carrier_for(trace_dir, rig_alloc, calls=1)
        refused = dial(anna, trace_dir / "anna1", f"*77{order}", hold_ms=5000, timeout_s=40)
        assert refused.wait(timeout=30) == 0, refused.describe()
        assert wait_for(lambda: _prompt_played(asterisk, anna.endpoint, "try-call-later"), 5, "the prompt")
        assert no_carrier_invite(customer)
        assert [a["reason"] for a in daemon.audit_rows(anna.id)] == ["unavailable"]
        # A load balancer sends the shop's HTTP calls elsewhere meanwhile.
        status, body = health(daemon)
        assert (status, body["status"], body["dialplan"], body["ari"]) == (
            503,
            "unavailable",
            "outdated",
            "connected",
        )
    finally:
        asterisk.ari(
            "POST", "/asterisk/variable", {"variable": dialplan.VERSION_VARIABLE, "value": dialplan.VERSION}
        )
    # The admin copied the file and reloaded the dialplan: the daemon finds it within 10 s.
    assert wait_for(lambda: "calls are taken again" in daemon.log_text(), 15, "the dialplan read again")
    status, body = health(daemon)
    assert (status, body["dialplan"]) == (200, "current")
    phone = dial(anna, trace_dir / "anna2", f"*77{order}", hold_ms=2000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    row = wait_for(lambda: ended_rows(daemon, anna), 10, "anna's row")[-1]
    assert row["outcome"] == "completed", row
    customer.stop()
    assert_not_leaked(number, daemon_log=daemon.log_text(), manager_trace=phone.messages())


# -- SIGHUP ------------------------------------------------------------------------------------------


def test_sighup_reloads_managers_without_dropping_a_call(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = make_bridged(("anna", "boris"))
    anna, boris = daemon.managers
    order_a, number_a = new_order_id(), new_customer_number()
    order_b, number_b = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order_a, number_a, "Olga Smirnova", anna.id)
    add_order(daemon.postgres, order_b, number_b, "Petr Ivanov", boris.id)
    customer = carrier_for(trace_dir, rig_alloc, calls=2)

    # Anna talks for 40 s, through all three reloads below.
    long_call = dial(anna, trace_dir / "anna", f"*77{order_a}", hold_ms=40000, timeout_s=120)
    wait_for(lambda: rows_in(daemon, anna, "bridged"), 20, "anna's call bridged")

    # Boris leaves: his next call is refused as an unknown phone; Anna's call goes on.
    write_config(daemon, [anna])
    sighup_and_wait(daemon, "reload: applied")
    refused = dial(boris, trace_dir / "boris1", f"*77{order_b}", hold_ms=20000, timeout_s=40)
    assert refused.wait(timeout=30) == 0, refused.describe()
    assert wait_for(lambda: _prompt_played(asterisk, boris.endpoint, "ss-noservice"), 5, "no-service prompt")
    assert [a["reason"] for a in daemon.audit_rows(f"endpoint:{boris.endpoint}")] == ["unknown_manager"]

    # A broken file is logged and ignored: the running config stays.
    write_config(daemon, raw="managers: [")
    sighup_and_wait(daemon, "keeping the running config")
    assert daemon.alive()

    # Boris is back.
    write_config(daemon, [anna, boris])
    sighup_and_wait(daemon, "reload: applied")
    phone = dial(boris, trace_dir / "boris2", f"*77{order_b}", hold_ms=2000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    row_b = wait_for(lambda: ended_rows(daemon, boris), 10, "boris's row")[-1]
    assert row_b["outcome"] == "completed", row_b

    # Anna's call was never dropped: she hangs up herself at the end of her 40 s.
    assert long_call.wait(timeout=90) == 0, long_call.describe()
    row_a = wait_for(lambda: ended_rows(daemon, anna), 15, "anna's row")[-1]
    assert (row_a["outcome"], row_a["ended_by"]) == ("completed", "manager"), row_a
    assert row_a["duration"] > 35, row_a
    customer.stop()
    assert_not_leaked(number_a, daemon_log=daemon.log_text(), manager_trace=long_call.messages())
    assert_not_leaked(number_b, daemon_log=daemon.log_text(), manager_trace=phone.messages())


# -- SIGTERM -----------------------------------------------------------------------------------------


def test_sigterm_drains_then_exits_leaving_bridged_calls_up(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """SIGTERM while a customer is ringing: new calls are refused, the ringing call is bridged, the
    daemon exits 0, the bridged call goes on without it and the next start finalizes its row."""
    daemon = make_bridged(("carla", "dora"))
    carla, dora = daemon.managers
    order, number = new_order_id(), new_customer_number()
    other = new_order_id()
    add_order(daemon.postgres, order, number, "Maria Popova", carla.id)
    add_order(daemon.postgres, other, new_customer_number(), "Lev Tolstoy", dora.id)
    # The customer rings for 10 s: long enough to send SIGTERM and try another call meanwhile.
    customer = carrier_for(trace_dir, rig_alloc, calls=1, ring_ms=10000, hold_ms=90000)
    phone = dial(carla, trace_dir / "carla", f"*77{order}", hold_ms=25000, timeout_s=120)
    wait_for(lambda: rows_in(daemon, carla, "ringing_customer"), 20, "customer ringing")

    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    status, body = wait_for(lambda: (h := health(daemon))[1]["draining"] and h, 5, "draining healthz")
    assert status == 503 and body["status"] == "unavailable", body

    # A new call while draining: refused with the "try later" prompt, no customer dialled.
    refused = dial(dora, trace_dir / "dora", f"*77{other}", hold_ms=20000, timeout_s=40)
    assert refused.wait(timeout=30) == 0, refused.describe()
    assert [(a["outcome"], a["reason"]) for a in daemon.audit_rows(dora.id)] == [("refused", "unavailable")]
    assert len(invites(customer.messages())) == 1

    # The ringing call is bridged, then the daemon exits on its own, cleanly.
    assert daemon.proc.wait(timeout=40) == 0, daemon.log_text()[-2000:]
    assert [r["state"] for r in daemon.call_rows(carla.id)] == ["bridged"]
    log = daemon.log_text()
    assert "SIGTERM: draining; waiting for 1 calls being set up" in log
    assert "SIGTERM: stopping; 1 bridged calls stay up" in log
    channels = json.loads(asterisk.ari_get("/channels"))
    assert len(channels) == 2, channels

    # Restart: the call is adopted; Carla hangs up at the end of her hold; the row is finalized.
    daemon.start()
    assert phone.wait(timeout=60) == 0, phone.describe()
    row = wait_for(lambda: ended_rows(daemon, carla), 15, "ended row")[-1]
    assert (row["outcome"], row["ended_by"]) == ("completed", "manager"), row
    customer.wait(timeout=15)
    assert re.search(r"^BYE sip:", customer.messages(), re.M), "customer leg was not hung up"
    assert_not_leaked(number, manager_trace=phone.messages(), daemon_log=daemon.log_text())


def test_sigterm_with_nothing_being_set_up_exits_at_once(make_bridged) -> None:
    daemon = make_bridged(("egor",))
    assert daemon.stop(signal.SIGTERM, timeout=10) == 0
    assert "SIGTERM: stopping; 0 bridged calls stay up" in daemon.log_text()


# -- Asterisk restarted under bridged (keep last: it restarts the shared Asterisk) -------------------


def test_asterisk_restart_ends_dead_calls_and_the_next_call_works(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = make_bridged(("fedor",))
    fedor = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Anna Orlova", fedor.id)
    customer = carrier_for(trace_dir / "before", rig_alloc, calls=1, hold_ms=90000)
    phone = dial(fedor, trace_dir / "before", f"*77{order}", hold_ms=90000, timeout_s=120)
    wait_for(lambda: rows_in(daemon, fedor, "bridged"), 20, "bridged row")

    asterisk.stop()
    asterisk.start()
    # A fresh start rewrites Asterisk's config: put this test's manager endpoint back.
    asterisk.add_endpoints(
        f"test_{fedor.endpoint}",
        manager_endpoint_conf(fedor.endpoint, fedor.sip_port, set_vars={"BRIDGED_AGI": daemon.agi_url}),
    )
    phone.stop()
    customer.stop()

    # bridged reconnects, ends the call that died with Asterisk, and is healthy again.
    row = wait_for(lambda: ended_rows(daemon, fedor), 30, "dead call's row ended")[-1]
    assert row["outcome"] == "completed" and row["answered_at"] is not None, row
    wait_for(lambda: health(daemon)[0] == 200, 30, "healthz 200 after reconnect")
    assert samples(get(daemon, "/metrics")[1])["bridged_ari_connects_total"] >= 2
    assert daemon.alive()

    order2, number2 = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order2, number2, "Ilya Lebedev", fedor.id)
    customer2 = carrier_for(trace_dir / "after", rig_alloc, calls=1, hold_ms=30000)
    phone2 = dial(fedor, trace_dir / "after", f"*77{order2}", hold_ms=2000)
    assert phone2.wait(timeout=60) == 0, phone2.describe()
    customer2.stop()
    assert re.search(rf"^INVITE sip:{re.escape(number2)}@", customer2.messages(), re.M)
    rows = wait_for(lambda: len(ended_rows(daemon, fedor)) == 2 and ended_rows(daemon, fedor), 15, "2 rows")
    assert rows[-1]["outcome"] == "completed", rows[-1]
    assert "ARI websocket connected" in daemon.log_text()
    for n in (number, number2):
        assert_not_leaked(n, daemon_log=daemon.log_text())
