"""bridged versus plain Asterisk on the real rig: setup latency, call rate, memory per call, CPU.

    python -m bench.run [--quick] [--out bench/last-run.json]

Runs as root; re-executes itself inside ``unshare -n`` (a private network namespace, so the rig's
fixed ports are free) unless it already runs in one. Provisions the rig from ``rig/``: Asterisk 22 in
the cached chroot, a throwaway PostgreSQL, SIPp phones and carrier (``bench/scenarios``: signalling
only, no RTP). Both paths use the same Asterisk, the same hostile manager endpoint settings and the
same carrier:

* bridged: the manager dials ``*77<order>``; dialplan/bridged.conf asks bridged over FastAGI, the call
  enters bridged's Stasis app, bridged originates the customer leg and bridges it;
* baseline: the manager dials the same ``*77<order>`` into a context that runs
  ``Dial(PJSIP/<number>@carrier)`` with the customer's number written in the dialplan.

Figures (printed side by side and written as JSON):

* setup latency: manager INVITE sent (SIPp ``-trace_msg`` timestamp; loopback, so that is when it reaches
  Asterisk) to the customer INVITE received by the carrier SIPp; one call at a time, p50/p99;
* call rate: the highest rate of a step ladder held for a while with < 1% failed calls (a call counts
  as completed when the carrier saw it through to BYE and the manager's phone saw no error);
* memory: bridged's RSS idle (after warm-up calls), with 100 bridged calls recorded, and with 500
  bridged calls not recorded (separate daemons: recording is not reloadable); bytes per active call;
* CPU: bridged's user+system seconds over the call-rate runs, per 1,000 calls;
* inbound setup latency (``--only inbound``, not in the default run): a customer calling the shop, the
  carrier SIPp's INVITE sent to the manager's phone SIPp receiving its INVITE, through bridged's inbound
  path (``[bridged-inbound]``, Stasis, the reverse lookup, the sticky manager, the call's row, the
  originate) against a plain ``Dial()`` of the same manager endpoint; one call at a time, p50/p99;
* two daemons (``--only availability``, not in the default run, ``bench/availability.py``): the call rate
  through two daemons against one, and a daemon SIGKILLed under a stream of calls (to the first call the
  survivor serves, to its takeover of the dead daemon's lease).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.wire import Capture  # noqa: E402
from bench.wire import report as wire_report  # noqa: E402
from rig import SHOP_DIDS, Asterisk, Postgres, ensure_asterisk_root  # noqa: E402
from rig.asterisk import manager_endpoint_conf  # noqa: E402
from rig.sipp import SIPP, parse_trace  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
WORK = REPO_ROOT / "artifacts" / "bench"
CARRIER_IP = "127.0.0.2"
PG_PORT = 55433
AGI_PORT = 4590
HTTP_PORT = 8095
ORDER = "4242"
NUMBER = "+4930123456789"
BRIDGED_EP = "benchmgr"
BASELINE_EP = "benchbase"
AGI_BASELINE_EP = "benchagi"
# Inbound: the manager whose phone the customer's calls reach, on either path; the customer and their order.
INBOUND_EP = "benchin"
INBOUND_NUMBER = "+4930123456788"
INBOUND_ORDER = "4243"
INBOUND_SECRET = "bench-inbound-secret-0123456789abcdef"
# The shop's number (bridged-inbound) and one a plain Dial() of the same endpoint answers.
INBOUND_DID = SHOP_DIDS[0]
INBOUND_BASELINE_DID = "+15550199"
INBOUND_BASELINE_CONTEXT = "bench-inbound-baseline"
# Two daemons (--only availability): A is the bench's usual daemon, B a second one on the same box.
# Two managers' phones whose dialplan tries A then B and B then A (the load spread as the README says), and
# two that name A alone: the same calls through two daemons and through one.
AGI_PORT_B = 4591
HTTP_PORT_B = 8096
APP_B = "bridged-bench-b"
TWO_DAEMON_EPS = ("benchab", "benchba")
ONE_DAEMON_EPS = ("bencha1", "bencha2")
MANAGER_PORT = {
    BRIDGED_EP: 5200,
    BASELINE_EP: 5201,
    AGI_BASELINE_EP: 5202,
    INBOUND_EP: 5203,
    **{ep: 5204 + i for i, ep in enumerate(TWO_DAEMON_EPS + ONE_DAEMON_EPS)},
}
BASELINE_CONTEXT = "bench-baseline"
# The baseline with a FastAGI round trip before its Dial(): what the FastAGI step costs Asterisk.
AGI_BASELINE_CONTEXT = "bench-agi-baseline"
STUB_AGI_PORT = 4599


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


# -- processes ----------------------------------------------------------------------------------------


@dataclass
class SippRun:
    proc: subprocess.Popen[bytes]
    name: str
    stat_file: Path
    message_file: Path | None

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return -999

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, grace in ((signal.SIGUSR1, 3.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=grace)
                    return
                except subprocess.TimeoutExpired:
                    continue

    def stats(self) -> dict[str, int]:
        """Cumulative counters from the last row of SIPp's ``-trace_stat`` CSV."""
        try:
            rows = [r for r in self.stat_file.read_text().splitlines() if r.strip()]
        except FileNotFoundError:
            return {}
        if len(rows) < 2:
            return {}
        head = rows[0].split(";")
        last = rows[-1].split(";")
        out: dict[str, int] = {}
        for key in ("TotalCallCreated", "SuccessfulCall(C)", "FailedCall(C)", "OutGoingCall(C)"):
            if key in head:
                with contextlib.suppress(ValueError):
                    out[key] = int(last[head.index(key)])
        return out

    def messages(self) -> str:
        return self.message_file.read_text(errors="replace") if self.message_file else ""


def sipp(
    name: str,
    scenario: str,
    *,
    local_ip: str,
    local_port: int,
    media_port: int,
    remote: str | None = None,
    service: str | None = None,
    keys: dict[str, str],
    calls: int,
    limit: int,
    rate: float | None = None,
    trace: bool = False,
    timeout_s: int = 600,
    hold_ms: int | None = None,
) -> SippRun:
    out_dir = WORK / name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    text = (SCENARIOS / f"{scenario}.xml").read_text()
    if hold_ms is not None:
        text = text.replace("HOLD_MS", str(hold_ms))
    scenario_file = out_dir / f"{scenario}.xml"
    scenario_file.write_text(text)
    argv = [SIPP]
    if remote:
        argv.append(remote)
    argv += [
        "-sf",
        str(scenario_file),
        "-i",
        local_ip,
        "-p",
        str(local_port),
        "-mi",
        local_ip,
        "-mp",
        str(media_port),
        "-t",
        "u1",
        "-m",
        str(calls),
        "-l",
        str(limit),
        "-nostdin",
        "-timeout",
        f"{timeout_s}s",
        "-timeout_error",
        "-max_recv_loops",
        "2000",
        "-trace_stat",
        "-stf",
        str(out_dir / "stat.csv"),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(out_dir / "errors.log"),
    ]
    if rate is not None:
        argv += ["-r", f"{rate:g}", "-rp", "1000"]
    if service:
        argv += ["-s", service]
    message_file = None
    if trace:
        message_file = out_dir / "messages.log"
        argv += ["-trace_msg", "-message_file", str(message_file)]
    for key, value in keys.items():
        argv += ["-key", key, value]
    if PINNED["others"] is not None:
        argv = ["taskset", "-c", PINNED["others"], *argv]
    with open(out_dir / "output.log", "wb") as output:
        proc = subprocess.Popen(
            argv,
            cwd=out_dir,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return SippRun(proc, name, out_dir / "stat.csv", message_file)


class Daemon:
    """One bridged process (``python -m bridged run``) with a config written for the bench."""

    def __init__(
        self,
        asterisk: Asterisk,
        postgres: Postgres,
        *,
        recording: bool,
        name: str,
        steps: bool = False,
        app: str = "bridged-bench",
        agi_port: int = AGI_PORT,
        http_port: int = HTTP_PORT,
    ) -> None:
        self.steps = steps
        self.app = app
        self.agi_port = agi_port
        self.http_port = http_port
        self.asterisk = asterisk
        self.postgres = postgres
        self.recording = recording
        self.dir = WORK / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "ari": {
                "url": self.asterisk.ari_url,
                "username": self.asterisk.ari_user,
                "password": self.asterisk.ari_password,
                "app": self.app,
                "reconnect_max_delay": 2,
                # BENCH_MAX_REQUEST_WAIT=0 runs without the overload guard (bridged's default is 1 s).
                **(
                    {"max_request_wait": float(os.environ["BENCH_MAX_REQUEST_WAIT"])}
                    if os.environ.get("BENCH_MAX_REQUEST_WAIT")
                    else {}
                ),
            },
            "database": {"dsn": self.postgres.dsn("bridged"), "max_connections": 20},
            "orders": {
                "dsn": self.postgres.dsn("shop"),
                "query": "SELECT customer_phone AS phone, customer_name, manager AS manager_id"
                " FROM orders WHERE id = CAST($1::text AS bigint)",
                "reverse_query": "SELECT id::text AS order_id, customer_name, manager AS manager_id"
                " FROM orders WHERE customer_phone = $1 ORDER BY id DESC LIMIT 1",
            },
            "managers": [
                {"id": "bench", "name": "Bench", "endpoint": BRIDGED_EP},
                {"id": "benchin", "name": "Bench Inbound", "endpoint": INBOUND_EP},
                *({"id": ep, "name": ep.title(), "endpoint": ep} for ep in TWO_DAEMON_EPS + ONE_DAEMON_EPS),
            ],
            # The customer's calls: their order's manager (benchin) first; the whole path (reverse lookup,
            # sticky manager, row) on every call.
            "inbound": {"numbers": [INBOUND_DID], "fallback": ["benchin"], "secret": INBOUND_SECRET},
            "policy": "any",
            # The per-manager budgets (issue 14; by default 60 calls an hour) would refuse the bench's
            # thousands of calls from one phone as rate_limited: off. BENCH_BUDGETS=on sets them out of
            # reach instead, so that each call checks them as in a default deployment (a short run only:
            # the check reads the manager's whole window, thousands of rows in a rate run).
            "limits": dict.fromkeys(
                ("calls", "distinct_orders", "refused_in_a_row"),
                1_000_000 if os.environ.get("BENCH_BUDGETS") == "on" else None,
            ),
            "trunk": {
                "dial": "PJSIP/{number}@carrier",
                "caller_id": '"Bench Shop" <+15550100>',
                "ring_timeout": 30,
            },
            "recording": {"enabled": self.recording, "format": "wav"},
            "agi": {"host": "127.0.0.1", "port": self.agi_port},
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "logging": {"level": os.environ.get("BENCH_LOG_LEVEL", "INFO")},
        }

    @property
    def module(self) -> str:
        """bench.steps (--steps), bench.marks (BENCH_MARKS=1, with BENCH_WIRE's timeline) or bridged."""
        if self.steps:
            return "bench.steps"
        return "bench.marks" if os.environ.get("BENCH_MARKS") else "bridged"

    def start(self) -> None:
        path = self.dir / "bridged.yaml"
        path.write_text(yaml.safe_dump(self.config()))
        with open(self.dir / "bridged.log", "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    *([] if self.module.startswith("bench.") else ["run"]),
                    "--config",
                    str(path),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                cwd=REPO_ROOT,
            )
        wait_until(self.healthy, 30, "bridged /healthz")
        # A second daemon's CPU is accounted for beside the first one's (--only availability).
        CPU_SOURCES["bridged" if self.http_port == HTTP_PORT else f"bridged:{self.http_port}"] = (
            self.proc.pid,
            False,
        )

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"bridged exited: {self.proc.returncode}; see {self.dir / 'bridged.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value.replace("+Inf", "inf"))
        return out


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- the rig --------------------------------------------------------------------------------------------


@dataclass
class Rig:
    asterisk: Asterisk
    postgres: Postgres

    def channels(self) -> int:
        try:
            return len(json.loads(self.asterisk.ari_get("/channels")))
        except (OSError, ValueError):
            # Asterisk's HTTP server drops requests when it is saturated (http.conf sessionlimit,
            # 100 by default, shared with the daemon's ARI connections): not quiet yet, ask again.
            return -1

    def leftover_channels(self) -> list[str]:
        """What is still up: id, name, state, application, age (no caller ids: they may hold a number)."""
        try:
            channels = json.loads(self.asterisk.ari_get("/channels"))
        except (OSError, ValueError):
            return ["(Asterisk did not answer)"]
        return [
            f"{c['id']} {c['name']} {c['state']} {c.get('dialplan', {}).get('app_name', '')}"
            f" since {c.get('creationtime', '?')}"
            for c in channels
        ]

    def quiet(self, timeout: float = 60) -> None:
        wait_until(lambda: self.channels() == 0, timeout, "Asterisk without channels", 0.5)
        time.sleep(0.5)  # the last BYE/200 exchanges

    def sql(self, query: str) -> str:
        return self.postgres.execute("bridged", query).strip()

    def outcomes_since(self, since: str) -> dict[str, int]:
        out = self.sql(
            "SELECT coalesce(json_object_agg(k, n), '{}') FROM (SELECT coalesce(outcome, state) AS k,"
            f" count(*) AS n FROM calls WHERE requested_at >= '{since}' GROUP BY 1) t"
        )
        return json.loads(out or "{}")

    def db_now(self) -> str:
        return self.sql("SELECT now()::text")


@contextlib.contextmanager
def rig() -> Iterator[Rig]:
    for ip in ("127.0.0.1", CARRIER_IP):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
        if ip != "127.0.0.1":
            subprocess.run(["ip", "addr", "add", f"{ip}/8", "dev", "lo"], check=False, capture_output=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    postgres = Postgres(port=PG_PORT)
    postgres.start()
    assert postgres.proc is not None
    CPU_SOURCES["postgres"] = (postgres.proc.pid, True)
    asterisk = Asterisk(ensure_asterisk_root(), instance=f"bench-{os.getpid()}")
    try:
        asterisk.start()
        assert asterisk.proc is not None
        CPU_SOURCES["asterisk"] = (asterisk.proc.pid, True)
        for db in ("shop", "bridged"):
            postgres.create_database(db)
        postgres.execute(
            "shop",
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_phone text,"
            " customer_name text, manager text)",
        )
        postgres.execute(
            "shop", f"INSERT INTO orders VALUES ({ORDER}, '{NUMBER}', 'Bench Customer', 'bench')"
        )
        postgres.execute(
            "shop",
            f"INSERT INTO orders VALUES ({INBOUND_ORDER}, '{INBOUND_NUMBER}', 'Bench Caller', 'benchin')",
        )
        agi_a, agi_b = f"agi://127.0.0.1:{AGI_PORT}", f"agi://127.0.0.1:{AGI_PORT_B}"
        conf = (
            manager_endpoint_conf(
                BRIDGED_EP, MANAGER_PORT[BRIDGED_EP], set_vars={"BRIDGED_AGI": f"agi://127.0.0.1:{AGI_PORT}"}
            )
            + "\n"
            + manager_endpoint_conf(BASELINE_EP, MANAGER_PORT[BASELINE_EP], context=BASELINE_CONTEXT)
            + "\n"
            + manager_endpoint_conf(
                AGI_BASELINE_EP, MANAGER_PORT[AGI_BASELINE_EP], context=AGI_BASELINE_CONTEXT
            )
            + "\n"
            + manager_endpoint_conf(INBOUND_EP, MANAGER_PORT[INBOUND_EP])
            + "".join(
                "\n" + manager_endpoint_conf(ep, MANAGER_PORT[ep], set_vars=targets)
                for ep, targets in (
                    (TWO_DAEMON_EPS[0], {"BRIDGED_AGI": agi_a, "BRIDGED_AGI_2": agi_b}),
                    (TWO_DAEMON_EPS[1], {"BRIDGED_AGI": agi_b, "BRIDGED_AGI_2": agi_a}),
                    (ONE_DAEMON_EPS[0], {"BRIDGED_AGI": agi_a}),
                    (ONE_DAEMON_EPS[1], {"BRIDGED_AGI": agi_a}),
                )
            )
        )
        asterisk.add_endpoints("bench", conf)
        with open(asterisk.etc / "extensions.conf", "a") as ext:
            # The baseline: what an admin would write without bridged, the number in the dialplan.
            ext.write(
                f"\n[{BASELINE_CONTEXT}]\nexten => _*77X.,1,Dial(PJSIP/{NUMBER}@carrier,30)\n"
                " same => n,Hangup()\n"
                f"\n[{AGI_BASELINE_CONTEXT}]\n"
                f"exten => _*77X.,1,AGI(agi://127.0.0.1:{STUB_AGI_PORT}/order,${{EXTEN:3}})\n"
                f" same => n,Dial(PJSIP/{NUMBER}@carrier,30)\n"
                " same => n,Hangup()\n"
                # Inbound baseline: the carrier's call to another number Dial()s the same manager
                # endpoint, as a PBX without bridged would (and hands it the caller's number).
                f"\n[from-carrier]\nexten => {INBOUND_BASELINE_DID},1,Goto({INBOUND_BASELINE_CONTEXT},s,1)\n"
                f"\n[{INBOUND_BASELINE_CONTEXT}]\nexten => s,1,Dial(PJSIP/{INBOUND_EP},30)\n"
                " same => n,Hangup()\n"
            )
        asterisk.cli("dialplan reload")
        # [bridged-inbound] enters the bench daemon's application (an admin sets it in [globals]).
        asterisk.cli("dialplan set global BRIDGED_APP bridged-bench")
        yield Rig(asterisk, postgres)
    finally:
        asterisk.stop()
        if not os.environ.get("BRIDGED_RIG_KEEP"):
            asterisk.cleanup()
        postgres.stop()


# -- measurements ---------------------------------------------------------------------------------------


# The carrier SIPp never stops by itself: a stray retransmitted BYE from an earlier phase would count
# as one of its calls. It is stopped once the managers are done and Asterisk has no channel left.
CARRIER_CALLS = 1_000_000


def finish_carrier(r: Rig, carrier: SippRun) -> int:
    """Wait for Asterisk to have no channel left; returns how many were still up after 60 s.

    Those are listed and hung up (an overloaded step can leave calls SIPp gave up on, on either path),
    so that the next step starts clean.
    """
    left = 0
    try:
        r.quiet(60)
    except TimeoutError:
        leftovers = r.leftover_channels()
        left = len(leftovers)
        log(f"  {left} channels left after 60 s, hung up now: {leftovers[:10]}")
        r.asterisk.cli("channel request hangup all")
        with contextlib.suppress(TimeoutError):
            r.quiet(30)
    carrier.stop()
    return left


def _ts(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def first_invites(text: str, direction: str) -> list[float]:
    """Time of the first INVITE per Call-ID in a SIPp trace, in order."""
    seen: set[str] = set()
    out = []
    for message in parse_trace(text):
        if message.direction == direction and message.is_request and message.method == "INVITE":
            call_id = (message.header("Call-ID") or [""])[0]
            if call_id not in seen:
                seen.add(call_id)
                out.append(_ts(message.timestamp))
    return out


def step_report(log_file: Path) -> list[str]:
    """Median and count of each timed step in a ``bench.steps`` daemon's log."""
    found: dict[str, list[float]] = {}
    for line in log_file.read_text(errors="replace").splitlines():
        match = re.search(r"STEP (\S+) ([0-9.]+)$", line)
        if match:
            found.setdefault(match[1], []).append(float(match[2]))
    return [
        f"{name:<34} n={len(v):<5} p50={percentile(v, 50):.3f} ms  p99={percentile(v, 99):.3f} ms"
        for name, v in sorted(found.items(), key=lambda kv: -percentile(kv[1], 50) * len(kv[1]))
    ]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Latency:
    calls: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


def measure_latency(r: Rig, endpoint: str, calls: int, tag: str) -> Latency:
    """The manager dials ``*77<order>`` ``calls`` times, one call at a time: the manager's INVITE sent to
    the carrier receiving the customer leg's INVITE."""
    return summary(latency_deltas(r, endpoint, calls, tag))


def latency_deltas(
    r: Rig, endpoint: str, calls: int, tag: str, *, service: str = f"*77{ORDER}", agi_port: int = AGI_PORT
) -> list[float]:
    """:func:`measure_latency`'s calls, each call's latency (ms, the warm-up calls left out); ``service``
    is what the manager dials, ``agi_port`` the FastAGI port ``BENCH_WIRE``'s timeline looks at."""
    return _one_at_a_time(
        r,
        calls,
        callee=(f"{tag}-lat-carrier", "carrier", CARRIER_IP, 5060, 31000, {"ring_ms": "0"}),
        caller=(
            f"{tag}-lat-manager",
            "manager",
            "127.0.0.1",
            MANAGER_PORT[endpoint],
            32000,
            {"user": endpoint},
        ),
        service=service,
        agi_port=agi_port,
    )


def measure_inbound_latency(r: Rig, did: str, calls: int, tag: str) -> Latency:
    """A customer calls ``did`` ``calls`` times, one call at a time: the carrier's INVITE sent to the
    manager's phone receiving its INVITE. The bench's scenarios swap roles: ``carrier.xml`` (a UAS that
    answers and waits for the BYE) is the manager's phone, ``manager.xml`` (a UAC) the carrier delivering
    the customer's call (From: the customer's number)."""
    deltas = _one_at_a_time(
        r,
        calls,
        callee=(f"{tag}-in-phone", "carrier", "127.0.0.1", MANAGER_PORT[INBOUND_EP], 33000, {"ring_ms": "0"}),
        caller=(f"{tag}-in-carrier", "manager", CARRIER_IP, 5060, 34000, {"user": INBOUND_NUMBER}),
        service=did,
    )
    return summary(deltas)


# A SIPp party of a timed call: run name, scenario, address, SIP port, media port, keys.
Party = tuple[str, str, str, int, int, dict[str, str]]


def _one_at_a_time(
    r: Rig, calls: int, *, callee: Party, caller: Party, service: str, agi_port: int = AGI_PORT
) -> list[float]:
    """``calls`` calls from ``caller`` to ``service`` at 10/s, one at a time, answered by ``callee``: each
    call's setup latency (ms) from the caller's INVITE sent to the callee's received (both SIPp traces;
    loopback), the warm-up calls left out."""
    r.quiet()
    name, scenario, ip, port, media, keys = callee
    answering = sipp(
        name,
        scenario,
        local_ip=ip,
        local_port=port,
        media_port=media,
        keys=keys,
        calls=CARRIER_CALLS,
        limit=5000,
        trace=True,
    )
    time.sleep(0.3)
    name, scenario, ip, port, media, keys = caller
    # BENCH_WIRE=1: every packet on lo, timestamped by the kernel, for bench.wire's per-stage breakdown.
    wire = Capture(WORK / f"wire-{name}.txt") if os.environ.get("BENCH_WIRE") else None
    if wire is not None:
        wire.start()
    calling = sipp(
        name,
        scenario,
        local_ip=ip,
        local_port=port,
        media_port=media,
        remote="127.0.0.1:5060",
        service=service,
        keys=keys,
        hold_ms=250,
        calls=calls,
        limit=1,
        rate=10,
        trace=True,
    )
    calling.wait(timeout=calls * 5 + 60)
    if wire is not None:
        wire.stop()
        for line in wire_report(wire.path, agi_port=agi_port):
            log(f"    {line}")
    finish_carrier(r, answering)
    return _deltas(name, calls, calling.messages(), answering.messages())


def _deltas(tag: str, calls: int, caller_trace: str, callee_trace: str) -> list[float]:
    """Setup latency (ms) from the caller's INVITE sent to the callee's received, one call at a time."""
    sent = first_invites(caller_trace, "sent")
    received = first_invites(callee_trace, "received")
    if len(sent) != calls or len(received) != calls:
        raise RuntimeError(f"{tag}: {len(sent)} INVITEs sent, {len(received)} received for {calls} calls")
    deltas = [(b - a) * 1000 for a, b in zip(sent, received, strict=True)]
    # The first calls warm caches and connection pools on both paths; leave them out.
    return deltas[min(5, calls // 10) :]


def summary(deltas: list[float]) -> Latency:
    return Latency(
        len(deltas),
        round(percentile(deltas, 50), 2),
        round(percentile(deltas, 99), 2),
        round(statistics.mean(deltas), 2),
        round(max(deltas), 2),
    )


@dataclass
class RateStep:
    rate: float
    attempted: int
    completed: int
    failed: int
    failed_pct: float
    seconds: float
    db_outcomes: dict[str, int] = field(default_factory=dict)
    # Channels still up 60 s after the last call (hung up by the bench before the next step).
    left_over: int = 0
    # CPU milliseconds per attempted call, by process group, over the whole step.
    cpu_ms_per_call: dict[str, float] = field(default_factory=dict)
    # Seconds waited before the step for the box to go quiet (the previous step's work to drain).
    settled_seconds: float = 0.0


# Processes whose CPU a rate step accounts for: name -> (pid, whole process tree?).
CPU_SOURCES: dict[str, tuple[int, bool]] = {}

# --pin: the CPU list Asterisk runs on, and the one for everything else (SIPp, bridged, PostgreSQL).
PINNED: dict[str, str | None] = {"asterisk": None, "others": None}


def py_spy() -> str:
    """The py-spy next to this interpreter (the test extras install it into .venv/bin), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("BENCH_PYSPY_DIR needs py-spy: scripts/bootstrap test installs it into .venv")
    return found


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents[int(entry)] = int(_stat_fields(int(entry))[1])
    members, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in members:
                members.append(child)
                frontier.append(child)
    return members


def pin(asterisk_cpus: str, other_cpus: str) -> None:
    """Asterisk (every thread) on ``asterisk_cpus``; bridged, PostgreSQL (the postmaster's tree: new
    backends inherit it) and the SIPp processes started from now on on ``other_cpus``. Models bridged
    and its database on a host or core of their own, so the ratio measures Asterisk's work alone."""
    PINNED.update(asterisk=asterisk_cpus, others=other_cpus)
    for name, (pid, tree) in CPU_SOURCES.items():
        cpus = asterisk_cpus if name == "asterisk" else other_cpus
        for member in _tree(pid) if tree else [pid]:
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(member)], check=False, capture_output=True)


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int, tree: bool) -> float:
    """CPU seconds of ``pid`` and, with ``tree``, of all its live descendants and every child any of
    them has reaped (PostgreSQL's backends, Asterisk's helpers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc") if tree else [str(pid)]:
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stats[int(entry)] = _stat_fields(int(entry))
    if pid not in stats:
        return 0.0
    members, frontier = {pid}, [pid]
    while tree and frontier:
        parent = frontier.pop()
        for child, fields in stats.items():
            if int(fields[1]) == parent and child not in members:  # ppid
                members.add(child)
                frontier.append(child)
    total = 0
    for member in members:
        fields = stats[member]
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if tree:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime of reaped children
    return total / ticks


def cpu_snapshot() -> dict[str, float]:
    snap = {name: process_cpu(pid, tree) for name, (pid, tree) in CPU_SOURCES.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    snap["sipp"] = children.ru_utime + children.ru_stime  # both SIPp processes, reaped by the step
    return snap


def wait_quiet(limit: float = 60.0, busy: float = 0.1) -> float:
    """Wait until Asterisk, bridged and PostgreSQL together use less than ``busy`` of a core.

    After a heavy step Asterisk goes on for a while (its logger, CDR and stasis queues drain): without
    this, that work is charged to the next step and slows it. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = cpu_snapshot()
        time.sleep(0.5)
        after = cpu_snapshot()
        used = sum(after[k] - before[k] for k in CPU_SOURCES) / 0.5
        if used < busy:
            break
    return time.monotonic() - started


# The managers' endpoints a rate step dials from: one, or several sharing the rate (one SIPp each).
Endpoints = str | tuple[str, ...]


def run_rate_step(r: Rig, endpoint: Endpoints, rate: float, seconds: float, tag: str) -> RateStep:
    endpoints = (endpoint,) if isinstance(endpoint, str) else endpoint
    r.quiet(90)
    settled = wait_quiet()
    total = max(1, int(rate * seconds))
    hold_ms = 1000
    since = r.db_now()
    cpu_before = cpu_snapshot()
    carrier = sipp(
        f"{tag}-rate{rate:g}-carrier",
        "carrier",
        local_ip=CARRIER_IP,
        local_port=5060,
        media_port=31000,
        keys={"ring_ms": "0"},
        calls=CARRIER_CALLS,
        limit=5000,
    )
    time.sleep(0.3)
    started = time.monotonic()
    share = len(endpoints)
    managers = [
        sipp(
            f"{tag}-rate{rate:g}-manager" + (f"-{i}" if i else ""),
            "manager",
            local_ip="127.0.0.1",
            local_port=MANAGER_PORT[ep],
            media_port=32000 + 10 * i,
            remote="127.0.0.1:5060",
            service=f"*77{ORDER}",
            keys={"user": ep},
            hold_ms=hold_ms,
            calls=max(1, total // share),
            limit=max(50, int(rate * 10 / share)),
            rate=rate / share,
        )
        for i, ep in enumerate(endpoints)
    ]
    perf = None
    if os.environ.get("BENCH_PERF_DIR"):  # a system-wide profile of the step, for `perf report`
        perf = subprocess.Popen(
            ["perf", "record", "-a", "-g", "-o", f"{os.environ['BENCH_PERF_DIR']}/{tag}-{rate:g}.data"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    spy = None
    if os.environ.get("BENCH_PYSPY_DIR") and endpoint == BRIDGED_EP:  # collapsed stacks of bridged
        spy = subprocess.Popen(
            [
                py_spy(),
                "record",
                "--nonblocking",
                "--format",
                "raw",
                "--rate",
                "200",
                "-o",
                f"{os.environ['BENCH_PYSPY_DIR']}/{tag}-{rate:g}.txt",
                "-p",
                str(CPU_SOURCES["bridged"][0]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    events = None
    if os.environ.get("BENCH_EVENTS"):  # count the ARI events Asterisk produces (bench/events_spy.py)
        events = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.events_spy",
                r.asterisk.ari_url,
                r.asterisk.ari_user,
                r.asterisk.ari_password,
                str(WORK / f"{tag}-{rate:g}-events.json"),
            ],
            cwd=REPO_ROOT,
        )
    for manager in managers:
        manager.wait(timeout=seconds + 120)
    elapsed = time.monotonic() - started
    for profiler in (perf, spy, events):
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait()
    left_over = finish_carrier(r, carrier)
    cpu_after = cpu_snapshot()
    stats = [manager.stats() for manager in managers]
    m = {key: sum(s.get(key, 0) for s in stats) for key in ("OutGoingCall(C)", "SuccessfulCall(C)")}
    c = carrier.stats()
    total = max(1, total // share) * share
    attempted = m.get("OutGoingCall(C)", total) or total
    completed = min(m.get("SuccessfulCall(C)", 0), c.get("SuccessfulCall(C)", 0))
    failed = attempted - completed
    step = RateStep(rate, attempted, completed, failed, round(100 * failed / attempted, 2), round(elapsed, 1))
    step.left_over = left_over
    step.settled_seconds = round(settled, 1)
    step.cpu_ms_per_call = {
        name: round((cpu_after[name] - cpu_before[name]) * 1000 / attempted, 2) for name in cpu_before
    }
    if BASELINE_EP not in endpoints and AGI_BASELINE_EP not in endpoints:
        with contextlib.suppress(Exception):
            wait_until(lambda: "bridged" not in r.outcomes_since(since), 30, "rows ended")
        step.db_outcomes = r.outcomes_since(since)
    return step


def find_max_rates(
    r: Rig, paths: list[tuple[Endpoints, str]], ladder: list[float], seconds: float
) -> dict[str, tuple[float, list[RateStep]]]:
    """Climb the ladder on every path at once: at each rate each path still standing runs one step, the
    order alternating from rate to rate. Asterisk gets slower as calls go through it (about 2 ms per call
    on the bridged path after a full baseline ladder), so running one path's whole ladder before the
    other's would charge the second path for the first one's calls."""
    best = {tag: 0.0 for _, tag in paths}
    steps: dict[str, list[RateStep]] = {tag: [] for _, tag in paths}
    standing = list(paths)
    for index, rate in enumerate(ladder):
        if not standing:
            break
        for endpoint, tag in list(standing if index % 2 == 0 else reversed(standing)):
            step = run_rate_step(r, endpoint, rate, seconds, tag)
            steps[tag].append(step)
            log(
                f"  {tag} {rate:g} cps: {step.completed}/{step.attempted} completed"
                + f" ({step.failed_pct}% failed)"
                + (f" rows {step.db_outcomes}" if step.db_outcomes else "")
                + f" cpu ms/call {step.cpu_ms_per_call}"
                + (f" (waited {step.settled_seconds:g} s for quiet)" if step.settled_seconds >= 1 else "")
            )
            if step.failed_pct >= 1.0:
                standing.remove((endpoint, tag))
            else:
                best[tag] = rate
    return {tag: (best[tag], steps[tag]) for _, tag in paths}


# An answer shaped like bridged's (bridged.dialplan.reply_ok); the AGI baseline's dialplan ignores it.
STUB_REPLY = b'SET VARIABLE BRIDGED_REPLY "ok|en|bridged-bench,order,x|\\"Order 1\\" <*771>"\n'


def stub_agi_server(port: int) -> None:
    """A FastAGI server that reads the request and answers with one SET VARIABLE, as bridged does;
    runs in a daemon thread (its CPU is the bench's, not Asterisk's)."""

    def serve() -> None:
        server = socket.create_server(("127.0.0.1", port), backlog=512)
        while True:
            conn, _ = server.accept()
            with conn, conn.makefile("rb") as lines:
                while lines.readline() not in (b"", b"\n"):
                    pass
                conn.sendall(STUB_REPLY)
                lines.readline()

    threading.Thread(target=serve, name="stub-agi", daemon=True).start()


def measure_agi_cost(r: Rig, rate: float, seconds: float, rounds: int) -> dict[str, Any]:
    """Asterisk's CPU per call for the plain Dial() baseline and for the same Dial() after a FastAGI
    round trip, alternating, ``rounds`` times each."""
    stub_agi_server(STUB_AGI_PORT)
    runs: dict[str, list[float]] = {"dial": [], "agi_then_dial": []}
    for _ in range(rounds):
        for key, endpoint in (("dial", BASELINE_EP), ("agi_then_dial", AGI_BASELINE_EP)):
            step = run_rate_step(r, endpoint, rate, seconds, f"agi-{key}")
            runs[key].append(step.cpu_ms_per_call["asterisk"])
            log(f"  {key} {rate:g} cps: {step.completed}/{step.attempted}, Asterisk {runs[key][-1]} ms/call")
    dial, agi = statistics.median(runs["dial"]), statistics.median(runs["agi_then_dial"])
    return {"rate": rate, "runs": runs, "asterisk_ms_per_call_fastagi": round(agi - dial, 2)}


@dataclass
class Memory:
    calls: int
    recording: bool
    idle_rss: int
    loaded_rss: int
    bytes_per_call: int
    bridged_seen: int
    completed: int
    dropped: int
    outcomes: dict[str, int]


def measure_memory(r: Rig, calls: int, recording: bool, hold_s: int, ramp_cps: float) -> Memory:
    r.quiet(120)
    daemon = Daemon(r.asterisk, r.postgres, recording=recording, name=f"mem{calls}")
    daemon.start()
    try:
        # Warm-up: a few calls so that pools, caches and the first-call imports are in the idle figure.
        warm = run_rate_step(r, BRIDGED_EP, 5, 2, f"mem{calls}-warm")
        if warm.failed:
            log(f"  warm-up had {warm.failed} failed calls")
        r.quiet()
        time.sleep(1)
        idle = daemon.rss()
        since = r.db_now()
        carrier = sipp(
            f"mem{calls}-carrier",
            "carrier",
            local_ip=CARRIER_IP,
            local_port=5060,
            media_port=31000,
            keys={"ring_ms": "0"},
            calls=CARRIER_CALLS,
            limit=5000,
        )
        time.sleep(0.3)
        manager = sipp(
            f"mem{calls}-manager",
            "manager",
            local_ip="127.0.0.1",
            local_port=MANAGER_PORT[BRIDGED_EP],
            media_port=32000,
            remote="127.0.0.1:5060",
            service=f"*77{ORDER}",
            keys={"user": BRIDGED_EP},
            hold_ms=hold_s * 1000,
            calls=calls,
            limit=calls,
            rate=ramp_cps,
        )
        peak_bridged = 0

        def all_bridged() -> bool:
            nonlocal peak_bridged
            peak_bridged = max(peak_bridged, int(daemon.metrics().get("bridged_bridged_calls", 0)))
            return peak_bridged >= calls

        try:
            wait_until(all_bridged, calls / ramp_cps + 60, f"{calls} bridged calls", 0.5)
        except TimeoutError:
            log(f"  only {peak_bridged} of {calls} calls were bridged at once")
        time.sleep(1)
        loaded = daemon.rss()
        manager.wait(timeout=hold_s + calls / ramp_cps + 120)
        finish_carrier(r, carrier)
        with contextlib.suppress(Exception):
            wait_until(lambda: "bridged" not in r.outcomes_since(since), 60, "rows ended")
        outcomes = r.outcomes_since(since)
        m = manager.stats()
        ended_by_manager = int(
            r.sql(
                f"SELECT count(*) FROM calls WHERE requested_at >= '{since}'"
                " AND outcome = 'completed' AND ended_by = 'manager'"
            )
            or 0
        )
        completed = min(m.get("SuccessfulCall(C)", 0), ended_by_manager)
        return Memory(
            calls,
            recording,
            idle,
            loaded,
            int((loaded - idle) / max(peak_bridged, 1)),
            peak_bridged,
            completed,
            calls - completed,
            outcomes,
        )
    finally:
        daemon.stop()


# -- main -----------------------------------------------------------------------------------------------


def in_private_netns() -> bool:
    # A fresh `unshare -n` namespace has nothing but lo (if_nameindex asks the current namespace;
    # /sys/class/net would show the namespace sysfs was mounted in).
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ast = subprocess.run(
        ["chroot", str(ensure_asterisk_root()), "asterisk", "-V"], capture_output=True, text=True
    )
    sipp_v = subprocess.run([SIPP, "-v"], capture_output=True, text=True).stdout
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "asterisk": ast.stdout.strip(),
        "sipp": (re.search(r"SIPp v[\S]+", sipp_v) or [sipp_v.strip()[:40]])[0],
        "host": socket.gethostname(),
    }


def side_by_side(base: Latency, brid: Latency) -> dict[str, Any]:
    """A latency measured on both paths, logged, and what bridged adds."""
    log(f"  baseline {asdict(base)}")
    log(f"  bridged  {asdict(brid)}")
    return {
        "baseline": asdict(base),
        "bridged": asdict(brid),
        "added_p50_ms": round(brid.p50_ms - base.p50_ms, 2),
        "added_p99_ms": round(brid.p99_ms - base.p99_ms, 2),
    }


def logged_steps(daemon: Daemon) -> list[str]:
    """The per-step timing of a ``bench.steps`` daemon so far, logged."""
    lines = step_report(daemon.dir / "bridged.log")
    for line in lines:
        log(f"    {line}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer calls and shorter steps (about 3 minutes)"
    )
    parser.add_argument(
        "--out", default=str(WORK / "results.json"), help="where to write the figures as JSON"
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="time every ARI request, SQL statement and AGI command (bench.steps) and "
        "print where bridged's setup time goes; slows bridged a little",
    )
    parser.add_argument(
        "--only",
        choices=("latency", "rate", "memory", "agi", "inbound", "availability"),
        action="append",
        help="run only these parts (repeatable)",
    )
    parser.add_argument(
        "--ladder", help="call-rate steps in calls per second, comma-separated (default 80,160,...,480)"
    )
    parser.add_argument("--step-seconds", type=float, help="seconds per call-rate step (default 10)")
    parser.add_argument(
        "--rate-path",
        choices=("both", "bridged", "baseline"),
        default="both",
        help="which path the call-rate ladder runs on (default both)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="call rate with Asterisk alone on CPU 0 and SIPp, bridged and PostgreSQL on CPU 1 "
        "(bridged on a core of its own: the ratio then measures Asterisk's work per path)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (Asterisk chroot, network namespace)", file=sys.stderr)
        return 2
    if not in_private_netns():
        if os.environ.get("BRIDGED_BENCH_NETNS"):
            print("bench: still not in a private network namespace after unshare -n", file=sys.stderr)
            return 2
        cmd = [sys.executable, "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]
        env = dict(os.environ, BRIDGED_BENCH_NETNS="1")
        return subprocess.run(["unshare", "-n", "--", *cmd], cwd=REPO_ROOT, env=env).returncode

    parts = set(args.only or ("latency", "rate", "memory"))
    quick = args.quick
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": quick,
        "command": "python -m bench.run" + (" --quick" if quick else ""),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    t0 = time.monotonic()
    with rig() as r:
        log("rig up: Asterisk, PostgreSQL; bridged starting")
        daemon = Daemon(r.asterisk, r.postgres, recording=False, name="main", steps=args.steps)
        daemon.start()
        try:
            n = 40 if quick else 200
            if "latency" in parts:
                log(f"setup latency: {n} sequential calls per path")
                results["latency"] = side_by_side(
                    measure_latency(r, BASELINE_EP, n, "baseline"),
                    measure_latency(r, BRIDGED_EP, n, "bridged"),
                )
                if args.steps:
                    results["steps"] = logged_steps(daemon)
                results["latency"]["bridged_setup_histogram_count"] = daemon.metrics().get(
                    "bridged_call_setup_seconds_count"
                )
            if "inbound" in parts:  # not in the default run
                log(f"inbound setup latency: {n} sequential customer calls per path (baseline: Dial())")
                results["inbound_latency"] = side_by_side(
                    measure_inbound_latency(r, INBOUND_BASELINE_DID, n, "baseline"),
                    measure_inbound_latency(r, INBOUND_DID, n, "bridged"),
                )
                if args.steps:
                    results["inbound_steps"] = logged_steps(daemon)
            if "rate" in parts:
                ladder: list[float] = (
                    [20, 40, 60]
                    if quick
                    else [80, 160, 200, 240, 260, 280, 300, 320, 340, 360, 380, 400, 440, 480]
                )
                if args.ladder:
                    ladder = [float(x) for x in args.ladder.split(",")]
                seconds = args.step_seconds or (8 if quick else 10)
                log(f"call rate: ladder {ladder} cps, {seconds} s per step")
                paths: list[tuple[Endpoints, str]] = [
                    (endpoint, tag)
                    for endpoint, tag in ((BASELINE_EP, "baseline"), (BRIDGED_EP, "bridged"))
                    if args.rate_path in ("both", tag)
                ]
                if args.pin:
                    pin("0", "1")
                    log("  pinned: Asterisk on CPU 0; SIPp, bridged and PostgreSQL on CPU 1")
                    results["pinned"] = dict(PINNED)
                cpu0, calls0 = daemon.cpu_seconds(), daemon.metrics().get("bridged_calls_started_total", 0)
                climbed = find_max_rates(r, paths, ladder, seconds)
                cpu1, calls1 = daemon.cpu_seconds(), daemon.metrics().get("bridged_calls_started_total", 0)
                base_best, base_steps = climbed.get("baseline", (0.0, []))
                brid_best, brid_steps = climbed.get("bridged", (0.0, []))
                handled = max(1, int(calls1 - calls0))
                results["rate"] = {
                    "seconds_per_step": seconds,
                    "ladder": ladder,
                    "baseline_max_cps": base_best,
                    "bridged_max_cps": brid_best,
                    "ratio": round(brid_best / base_best, 2) if base_best else None,
                    "ladder_capped": base_best == ladder[-1],
                    "baseline_steps": [asdict(s) for s in base_steps],
                    "bridged_steps": [asdict(s) for s in brid_steps],
                }
                results["cpu"] = {
                    "calls": handled,
                    "cpu_seconds": round(cpu1 - cpu0, 2),
                    "cpu_seconds_per_1000_calls": round((cpu1 - cpu0) / handled * 1000, 2),
                }
                log(f"  max cps baseline {base_best}, bridged {brid_best}; cpu {results['cpu']}")
        finally:
            daemon.stop()
        if "agi" in parts:  # not in the default run
            log("FastAGI cost: Dial() with and without a FastAGI round trip before it, 160 cps")
            results["agi"] = measure_agi_cost(r, 160, 10, 3)
            log(f"  FastAGI costs Asterisk {results['agi']['asterisk_ms_per_call_fastagi']} ms per call")
        if "availability" in parts:  # not in the default run
            from bench.availability import measure_availability

            ha_ladder: list[float] = [40, 80, 120] if quick else [40, 60, 80, 100, 120, 140, 160, 200]
            if args.ladder:
                ha_ladder = [float(x) for x in args.ladder.split(",")]
            results["availability"] = measure_availability(
                r, ha_ladder, args.step_seconds or (8 if quick else 10), 2 if quick else 5
            )
        if "memory" in parts:
            hold = 20 if quick else 40
            small, large = (50, 200) if quick else (100, 500)
            log(f"memory: {small} recorded calls, then {large} unrecorded calls, held {hold} s")
            results["memory"] = {
                "recorded": asdict(measure_memory(r, small, True, hold, 25)),
                "unrecorded": asdict(measure_memory(r, large, False, hold, 25)),
            }
            for key in ("recorded", "unrecorded"):
                log(f"  {key}: {results['memory'][key]}")
    results["seconds"] = round(time.monotonic() - t0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


def cpu_breakdown(rate: dict[str, Any]) -> list[str]:
    """CPU milliseconds per call of each part, both paths, at the highest rate both held."""
    held = {
        path: {step["rate"]: step for step in rate[f"{path}_steps"] if step["failed_pct"] < 1.0}
        for path in ("baseline", "bridged")
    }
    common = sorted(set(held["baseline"]) & set(held["bridged"]))
    if not common:
        return []
    at = common[-1]
    parts = ["asterisk", "bridged", "postgres", "sipp"]
    lines = [f"{f'CPU per call (ms) at {at:g} cps':<28}{'baseline':>12}{'bridged':>12}"]
    totals = [0.0, 0.0]
    for part in parts:
        b = held["baseline"][at]["cpu_ms_per_call"].get(part, 0.0)
        x = held["bridged"][at]["cpu_ms_per_call"].get(part, 0.0)
        totals = [totals[0] + b, totals[1] + x]
        lines.append(f"{'  ' + part:<28}{b:>12}{x:>12}")
    lines.append(f"{'  all of them':<28}{round(totals[0], 2):>12}{round(totals[1], 2):>12}")
    return [*lines, ""]


def availability_report(ha: dict[str, Any]) -> list[str]:
    rate, fail = ha["rate"], ha["failover"]["summary"]
    lines = [
        f"{'call rate, <1% failed (cps)':<28}{'one daemon':>12}{'two':>12}",
        f"{'':<28}{rate['one_daemon_max_cps']:>12}{rate['two_daemons_max_cps']:>12}",
        f"daemon A SIGKILLed under {ha['failover']['rate']} calls/s, {len(ha['failover']['rounds'])} rounds"
        f" (median, min-max; seconds from the kill): {fail['failed']} of {fail['attempted']} calls failed,"
        f" {fail['adopted']} adopted,"
        f" {fail['rows_of_a_completed']} of A's {fail['rows_of_a']} rows completed",
    ]
    for key, value in fail.items():
        if isinstance(value, dict):
            lines.append(f"  {key:<30}{value['median']:>10}  ({value['min']} - {value['max']})")
    return [*lines, ""]


def report(results: dict[str, Any]) -> str:
    lines = [
        "",
        f"bridged bench ({results['command']}, {results.get('seconds', '?')} s)",
        f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['asterisk']}",
        "",
    ]
    for key, title, baseline, targets in (
        ("latency", "setup latency (ms)", "baseline", ("< 5", "< 20")),
        ("inbound_latency", "inbound setup (ms)", "Dial()", ("<= 5", "")),
    ):
        if lat := results.get(key):
            b, x = lat["baseline"], lat["bridged"]
            lines += [
                f"{title:<28}{baseline:>12}{'bridged':>12}{'added':>10}{'target':>10}",
                f"{'  p50':<28}{b['p50_ms']:>12}{x['p50_ms']:>12}{lat['added_p50_ms']:>10}{targets[0]:>10}",
                f"{'  p99':<28}{b['p99_ms']:>12}{x['p99_ms']:>12}{lat['added_p99_ms']:>10}{targets[1]:>10}",
                "",
            ]
    rate = results.get("rate")
    if rate:
        capped = " (baseline hit the top of the ladder)" if rate["ladder_capped"] else ""
        if results.get("pinned"):
            capped += " (pinned: Asterisk alone on CPU 0)"
        lines += [
            f"{'call rate, <1% failed (cps)':<28}{rate['baseline_max_cps']:>12}{rate['bridged_max_cps']:>12}"
            f"{rate['ratio']!s:>10}{'>= 0.9':>10}{capped}",
            "",
        ]
    if rate:
        lines += cpu_breakdown(rate)
    cpu = results.get("cpu")
    if cpu:
        lines += [
            f"bridged CPU: {cpu['cpu_seconds_per_1000_calls']} s per 1000 calls ({cpu['calls']} calls)",
            "",
        ]
    if ha := results.get("availability"):
        lines += availability_report(ha)
    mem = results.get("memory")
    if mem:
        for key in ("recorded", "unrecorded"):
            m = mem[key]
            lines.append(
                f"memory, {m['calls']} calls ({key}): idle {m['idle_rss'] / 2**20:.1f} MiB, loaded "
                f"{m['loaded_rss'] / 2**20:.1f} MiB, {m['bytes_per_call'] / 1024:.1f} KiB per call "
                "(target < 30), "
                f"{m['bridged_seen']} bridged at once, {m['dropped']} dropped"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    # One module, not two: bench.availability imports bench.run (CPU_SOURCES, PINNED must be these).
    sys.modules.setdefault("bench.run", sys.modules[__name__])
    sys.exit(main())
