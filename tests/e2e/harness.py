"""bridged as a real subprocess on the rig, plus the shop's orders and the checks the tests share."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rig import SHOP_DIDS, Asterisk, Postgres, Sipp, call_in, ring_phone

REPO_ROOT = Path(__file__).resolve().parents[2]
SHOP_DB = "shop"
BRIDGED_DB = "bridged"
SHOP_CALLER_ID = '"Test Shop" <+15550100>'
SHOP_NUMBER_DIGITS = "15550100"

_ports = itertools.count(4600)
# Every daemon started, in order: tests/e2e/conftest.py ends the calls a test's daemons leave behind.
STARTED_DAEMONS: list[Bridged] = []
_numbers = itertools.count(1)
_orders = itertools.count(1000)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# The predicate is called without arguments. Callable[..., Any]: loops bind their variables as defaults
# (lambda n=i: ...), which mypy cannot check against Callable[[], Any] ("Cannot infer type of lambda").
def wait_for(predicate: Callable[..., Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def new_customer_number() -> str:
    """A distinctive E.164 number per test (a digit run that appears nowhere else)."""
    n = next(_numbers)
    return f"+4930{(n * 7919 + 5318008) % 10**8:08d}"


def new_order_id() -> str:
    return str(next(_orders) * 10 + int(time.time()) % 7)


def ascii_digits(text: str) -> str:
    """The decimal digits of ``text`` in any script (fullwidth, Arabic-Indic, ...), as ASCII digits."""
    return "".join(str(unicodedata.decimal(ch)) for ch in text if unicodedata.decimal(ch, None) is not None)


def number_leaks(text: str, number: str) -> list[str]:
    """Lines of ``text`` that carry the number in any formatting and any script's digits (digits only
    are compared).

    The national significant part (without the country code) is enough to identify a customer, so
    that is what is searched for.
    """
    needle = ascii_digits(number)[-9:]
    return [line for line in text.splitlines() if needle in ascii_digits(line)]


def setup_shop(postgres: Postgres) -> None:
    for name in (SHOP_DB, BRIDGED_DB):
        postgres.execute("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        postgres.create_database(name)
    postgres.execute(
        SHOP_DB,
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_phone text, customer_name text, manager text)",
    )


def add_order(postgres: Postgres, order_id: str, phone: str, name: str, manager: str | None) -> None:
    manager_sql = "NULL" if manager is None else f"'{manager}'"
    postgres.execute(
        SHOP_DB,
        f"INSERT INTO orders VALUES ({int(order_id)}, '{phone}', '{name}', {manager_sql})",
    )


@dataclass
class ManagerPhone:
    id: str
    endpoint: str
    sip_port: int
    rtp_port: int


@dataclass
class Bridged:
    """One bridged daemon: its own Stasis app, FastAGI port and HTTP port, a config written here."""

    asterisk: Asterisk
    postgres: Postgres
    workdir: Path
    managers: list[ManagerPhone]
    policy: str = "own"
    orders_dsn: str | None = None
    recording: bool = True
    announcement: str | None = None
    ring_timeout: int = 30
    teams: dict[str, str] = field(default_factory=dict)
    # Merged over the generated config (nested mappings merge, other values replace).
    extra: dict[str, Any] = field(default_factory=dict)
    app: str = ""
    agi_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.agi_port = next(_ports)
        self.http_port = next(_ports)
        self.app = f"bridged-t{self.agi_port}"
        self.config_path = self.workdir / "bridged.yaml"
        self.log_path = self.workdir / "bridged.log"

    @property
    def agi_url(self) -> str:
        return f"agi://127.0.0.1:{self.agi_port}"

    def config(self) -> dict[str, Any]:
        return {
            "ari": {
                "url": self.asterisk.ari_url,
                "username": self.asterisk.ari_user,
                "password": self.asterisk.ari_password,
                "app": self.app,
                "reconnect_max_delay": 2,
            },
            "database": {"dsn": self.postgres.dsn(BRIDGED_DB)},
            "orders": {
                "dsn": self.orders_dsn or self.postgres.dsn(SHOP_DB),
                "query": "SELECT customer_phone AS phone, customer_name, manager AS manager_id"
                " FROM orders WHERE id = CAST($1::text AS bigint)",
                "timeout": 2,
            },
            "managers": [
                {"id": m.id, "name": m.id.title(), "endpoint": m.endpoint, "team": self.teams.get(m.id, "t")}
                for m in self.managers
            ],
            "policy": self.policy,
            "trunk": {
                "dial": "PJSIP/{number}@carrier",
                "caller_id": SHOP_CALLER_ID,
                "ring_timeout": self.ring_timeout,
            },
            "recording": {
                "enabled": self.recording,
                "format": "wav",
                "announcement": self.announcement or "",
            },
            "agi": {"host": "127.0.0.1", "port": self.agi_port},
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "logging": {"level": "DEBUG"},
        }

    def start(self, timeout: float = 60.0, ready: Callable[[], object] | None = None) -> None:
        """Start the daemon and wait until ``ready`` (by default: /healthz answers 200)."""
        self.config_path.write_text(yaml.safe_dump(_merge(self.config(), self.extra)))
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridged", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        self.starts += 1
        if not any(d is self for d in STARTED_DAEMONS):
            STARTED_DAEMONS.append(self)
        wait_for(ready or self.healthy, timeout, "bridged /healthz" if ready is None else "bridged started")

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"bridged exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- the daemon's database, read as an operator would --------------------------------------

    def sql(self, query: str) -> str:
        return self.postgres.execute(BRIDGED_DB, query)

    def call_rows(self, manager_id: str) -> list[dict[str, Any]]:
        out = self.sql(
            "SELECT coalesce(json_agg(c ORDER BY requested_at), '[]') FROM"
            " (SELECT *, extract(epoch FROM ended_at - answered_at) AS duration FROM calls"
            f" WHERE manager_id = '{manager_id}') c"
        )
        return json.loads(out.strip() or "[]")

    def audit_rows(self, actor: str) -> list[dict[str, Any]]:
        out = self.sql(f"SELECT coalesce(json_agg(a ORDER BY id), '[]') FROM audit a WHERE actor = '{actor}'")
        return json.loads(out.strip() or "[]")

    def dump_database(self) -> str:
        return self.sql(
            "SELECT coalesce(json_agg(c), '[]')::text FROM calls c UNION ALL"
            " SELECT coalesce(json_agg(a), '[]')::text FROM audit a"
        )


# -- fixtures and SIPp helpers shared by the end-to-end tests ---------------------------------------

CARRIER = ("127.0.0.2", 5060)


@contextmanager
def manager_on_endpoint(
    daemon: Bridged, asterisk: Asterisk, manager_id: str, endpoint: str, conf: str
) -> Iterator[None]:
    """A manager ``manager_id`` of ``daemon`` whose phone is the PJSIP endpoint ``endpoint``, configured in
    Asterisk as ``conf`` (a phone unlike the rig's: not registered, or not to be rung); bridged is restarted
    to know the manager, and the endpoint is removed afterwards."""
    asterisk.add_endpoints(f"test_{endpoint}", conf)
    try:
        config = daemon.config()
        config["managers"].append(
            {"id": manager_id, "name": "Test Manager", "endpoint": endpoint, "team": "t"}
        )
        daemon.extra["managers"] = config["managers"]
        daemon.stop()
        daemon.start()
        yield
    finally:
        asterisk.remove_endpoints(f"test_{endpoint}")


def _channels(nodes: list[Asterisk], ids: set[str]) -> dict[Asterisk, list[dict[str, Any]]]:
    """The channels among ``ids`` on each running node."""
    return {
        node: [c for c in json.loads(node.ari_get("/channels")) if c["id"] in ids]
        for node in nodes
        if node.running
    }


def hang_up_channels(nodes: list[Asterisk], channel_ids: set[str], workdir: Path) -> None:
    """Hang up these channels wherever they are, and wait until they are gone.

    The carrier's legs among them are hung up while ``rig/scenarios/carrier_absorb.xml`` answers on the
    carrier's address (the test's own SIPps are stopped by then): their BYE or CANCEL, unanswered, would be
    retransmitted for 32 s into the next test's carrier SIPp, which takes each unknown Call-ID for a new
    call, one of its ``-m`` calls, and leaves one of that test's INVITEs unanswered."""
    found = _channels(nodes, channel_ids)
    dialogs = {
        c["protocol_id"] for cs in found.values() for c in cs if c["name"].startswith("PJSIP/carrier-")
    }
    absorber = None
    if dialogs:
        absorber = Sipp.start(
            "carrier_absorb",
            local_ip=CARRIER[0],
            local_port=CARRIER[1],
            trace_dir=workdir,
            calls=1000,
            timeout_s=60,
            name="carrier_absorb",
        )
        absorber.wait_listening()
    try:
        for node, channels in found.items():
            for channel in channels:
                node.ari("DELETE", f"/channels/{channel['id']}")
        ids = {c["id"] for cs in found.values() for c in cs}
        wait_for(lambda: not any(_channels(nodes, ids).values()), 10, f"channels {sorted(ids)} hung up")
        if absorber is not None:
            wait_for(
                lambda: dialogs <= {h for m in absorber.sent() for h in m.header("Call-ID")},
                10,
                f"the carrier's answers in the dialogs {sorted(dialogs)}",
            )
    finally:
        if absorber is not None:
            absorber.stop()


def end_leftover_calls(daemons: list[Bridged], nodes: list[Asterisk]) -> None:
    """After a test: its daemons stopped, their calls' channels hung up on every node, their rows ended.

    The database and the Asterisk nodes serve the whole session: a call a failed test left up keeps an open
    row under a lease that expires, which the next test's daemon takes over, adopting the call (and hanging
    up its legs) in the middle of that test."""
    if not daemons:
        return
    for daemon in daemons:
        daemon.stop()
    if daemons[0].sql("SELECT to_regclass('calls') IS NULL").strip() == "t":
        return  # no daemon of the session got as far as creating its tables: no call either
    apps = {d.app for d in daemons}
    in_apps = ", ".join(f"'{app}'" for app in sorted(apps))
    rows = daemons[0].sql(
        "SELECT coalesce(json_agg(json_build_array(manager_channel_id, customer_channel_id)), '[]')"
        f" FROM calls WHERE ari_app IN ({in_apps})"
    )
    channel_ids = {c for pair in json.loads(rows.strip() or "[]") for c in pair if c}
    for node in nodes:
        if node.running:
            channel_ids |= {
                c["id"]
                for c in json.loads(node.ari_get("/channels"))
                if c["dialplan"]["app_name"] == "Stasis" and c["dialplan"]["app_data"].split(",")[0] in apps
            }
    hang_up_channels(nodes, channel_ids, daemons[0].workdir / "leftovers")
    # No daemon of these applications runs any more to end their rows, nor will one (ports never repeat):
    # ended as bridged ends a call that ended unseen (ended_by unknown).
    daemons[0].sql(
        "UPDATE calls SET state = 'ended',"
        " outcome = coalesce(outcome, CASE WHEN answered_at IS NULL THEN 'failed' ELSE 'completed' END),"
        " ended_by = coalesce(ended_by, 'unknown'), ended_at = coalesce(ended_at, now())"
        f" WHERE ari_app IN ({in_apps}) AND state <> 'ended'"
    )


def dial(
    manager: ManagerPhone,
    trace_dir: Path,
    code: str,
    *,
    hold_ms: int = 4000,
    dtmf: str = "",
    timeout_s: int = 60,
    scenario: str = "manager_call",
    remote: str = "127.0.0.1:5060",
) -> Sipp:
    """The manager's phone dials ``code`` (``scenario`` "manager_cancel": gives up while it rings)
    through the node at ``remote`` (node 1 unless told: ``asterisk_b.sip_address``)."""
    return Sipp.start(
        scenario,
        local_ip="127.0.0.1",
        local_port=manager.sip_port,
        remote=remote,
        service=code,
        keys={"user": manager.endpoint, "hold_ms": str(hold_ms), "dtmf": dtmf},
        trace_dir=trace_dir,
        rtp_port=manager.rtp_port,
        timeout_s=timeout_s,
        name=f"manager_{manager.endpoint}",
    )


def carrier(
    trace_dir: Path,
    rig_alloc,
    scenario: str = "carrier_answer",
    *,
    hold_ms: int = 30000,
    ring_ms: int = 300,
    timeout_s: int = 60,
    calls: int = 1,
) -> Sipp:
    sipp = Sipp.start(
        scenario,
        local_ip=CARRIER[0],
        local_port=CARRIER[1],
        keys={"hold_ms": str(hold_ms), "ring_ms": str(ring_ms)},
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        calls=calls,
        timeout_s=timeout_s,
        name=f"carrier_{scenario}",
    )
    sipp.wait_listening()
    return sipp


def customer_calls(
    trace_dir: Path,
    rig_alloc: Any,
    number: str,
    *,
    did: str = SHOP_DIDS[0],
    identity: str = "pai",
    hold_ms: int = 30000,
    cancel_ms: int = 0,
    update_ms: int = 0,
    update_method: str = "UPDATE",
    timeout_s: int = 60,
    caller_name: str | None = None,
) -> Sipp:
    """The customer calls the shop's number back through the carrier (rig/scenarios/carrier_inbound.xml):
    ``number`` in From and P-Asserted-Identity (``identity``: pai, rpid, history, anonymous), with
    ``caller_name`` as their display name (default: the number)."""
    return call_in(
        number,
        did,
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        identity=identity,
        hold_ms=hold_ms,
        cancel_ms=cancel_ms,
        update_ms=update_ms,
        update_method=update_method,
        timeout_s=timeout_s,
        name=f"carrier_inbound_{identity}",
        caller_name=caller_name,
    )


def phone_rings(
    manager: ManagerPhone,
    trace_dir: Path,
    *,
    final: int = 200,
    ring_ms: int = 500,
    hold_ms: int = 30000,
    timeout_s: int = 60,
) -> Sipp:
    """The manager's phone waits to be rung (rig/scenarios/manager_ring.xml): it answers after ``ring_ms``
    (``final=200``), refuses with ``final`` (486, 480, 603, ...), or rings until CANCEL
    (``ring_ms=rig.NEVER_MS``)."""
    return ring_phone(
        manager.endpoint,
        manager.sip_port,
        trace_dir=trace_dir,
        rtp_port=manager.rtp_port,
        final=final,
        ring_ms=ring_ms,
        hold_ms=hold_ms,
        timeout_s=timeout_s,
    )


def invites(trace: str) -> list[str]:
    """The INVITE requests in a SIPp message trace (whole messages)."""
    return [m for m in re.split(r"\n(?=-+ )", trace) if re.search(r"^INVITE sip:", m, re.M)]


def sox_rms(path: Path) -> float:
    out = subprocess.run(["sox", str(path), "-n", "stat"], capture_output=True, text=True, check=True).stderr
    match = re.search(r"RMS\s+amplitude:\s+([0-9.]+)", out)
    assert match, out
    return float(match[1])


def assert_not_leaked(number: str, **texts: str) -> None:
    for where, text in texts.items():
        leaks = number_leaks(text, number)
        assert not leaks, f"customer number reached {where}: {leaks[:3]}"


def call_cdrs(asterisk: Any, call_id: str) -> str:
    """The CDR lines (cdr_csv) of a call, once Asterisk has written them: the manager's leg's, which names
    the call id in its Stasis() arguments (lastdata) and the customer's channel as its destination
    (dstchannel), and any line of that channel's own.

    The customer's leg, originated into [bridged-customer], may have a CDR line of its own (a leg made in
    the application and dialled had none on Asterisk 22: docs/asterisk.md); if one comes, it is read too."""
    cdr_file = asterisk.base / "log" / "cdr-csv" / "Master.csv"

    def rows() -> list[list[str]]:
        text = cdr_file.read_text() if cdr_file.exists() else ""
        return list(csv.reader(io.StringIO(text)))

    def of_call() -> list[list[str]]:
        return [row for row in rows() if any(call_id in field for field in row)]

    found = wait_for(of_call, 10, f"the CDRs of call {call_id}")
    # channel (5) and dstchannel (6) name the legs: the customer's is the manager's line's destination.
    customer_channels = {row[6] for row in found if len(row) > 6 and row[6]}
    assert customer_channels, found
    lines = [row for row in rows() if row in found or (len(row) > 6 and row[5] in customer_channels)]
    return "\n".join(",".join(row) for row in lines)


def hang_up_in_asterisk(asterisk: Asterisk, channel_id: str, how: str = "cli") -> None:
    """Hang a call's leg up as someone other than bridged or the phones would: an administrator's
    ``channel request hangup`` on Asterisk's CLI (``cli``), or another ARI application's
    ``DELETE /channels/{id}`` (``ari``). Both are soft hangup requests (AST_SOFTHANGUP_EXPLICIT)."""
    if how == "ari":
        assert asterisk.ari("DELETE", f"/channels/{channel_id}")[0] == 204
        return
    name = json.loads(asterisk.ari_get(f"/channels/{channel_id}"))["name"]
    out = asterisk.cli(f"channel request hangup {name}")
    assert f"Requested Hangup on channel '{name}'" in out, out


def no_carrier_invite(carrier_sipp: Sipp) -> bool:
    return not invites(carrier_sipp.messages())


def finish(*sipps: Sipp, timeout: float = 60) -> None:
    for sipp in sipps:
        try:
            sipp.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            sipp.stop()
