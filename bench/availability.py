"""Two daemons on one Asterisk (issue 16): what a second daemon adds, and what the death of one costs.

Run by ``python -m bench.run --only availability`` (not in the default run), on the bench's rig:

* call rate through two daemons against one, in the same run, the paths interleaved on one ladder
  (``bench.run.find_max_rates``): two managers' phones share the rate. Two daemons: one phone's dialplan
  tries daemon A then B, the other's B then A (the README's way to spread the load). One daemon: both
  phones name A alone (B runs, idle). The highest rate held with < 1% failed calls, and CPU per call;
* failover: a stream of calls (20/s, held 15 s) from a phone whose dialplan tries A then B; A is killed
  with SIGKILL after 5 s. Measured from the kill (``time.time()``; SIPp traces and PostgreSQL's ``now()``
  read the same clock on this one box): the first customer INVITE the carrier receives (a call served by
  B, the FastAGI failover), the first row B writes, the longest silence in the carrier's INVITEs against
  the stream's spacing, the calls that failed; then the adoption: B's ``app.takeover`` of A's lease and
  B's ``call.adopt`` of each of A's calls still up, and the outcome of A's rows (``completed``, all).
  A is started again between rounds (its lease handed back).
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.run import (
    AGI_PORT_B,
    APP_B,
    CARRIER_CALLS,
    CARRIER_IP,
    CPU_SOURCES,
    HTTP_PORT_B,
    MANAGER_PORT,
    ONE_DAEMON_EPS,
    ORDER,
    TWO_DAEMON_EPS,
    Daemon,
    Rig,
    find_max_rates,
    finish_carrier,
    first_invites,
    log,
    run_rate_step,
    sipp,
    wait_quiet,
    wait_until,
)

FAILOVER_CPS = 20
# Held long enough to be still up when B takes A's lease over (6-9 s after the kill): adopted.
FAILOVER_HOLD_MS = 15000
KILL_AFTER_S = 5.0
STREAM_S = 14


@dataclass
class Failover:
    """One SIGKILL of daemon A under a stream of calls; seconds from the kill unless said otherwise."""

    attempted: int
    failed: int
    first_customer_invite_s: float
    first_row_of_b_s: float
    # The longest time between two customer INVITEs the carrier received around the kill, and the
    # stream's own spacing (1 / rate).
    longest_silence_s: float
    spacing_s: float
    # The first call dialled after the kill: its manager's INVITE to its customer's INVITE; and the median
    # of the calls dialled in the 4 s before it.
    first_setup_after_kill_ms: float
    setup_before_kill_ms: float
    takeover_s: float
    # A's calls still up at the takeover, adopted by B (audited), and the last adoption.
    adopted: int
    last_adoption_s: float
    # A's rows that ended ``completed`` (every one of them, when nothing was lost) and all A's rows.
    rows_of_a_completed: int
    rows_of_a: int
    restart_to_healthy_s: float


def _epoch(r: Rig, query: str) -> float:
    out = r.sql(f"SELECT extract(epoch FROM ({query}))")
    return float(out) if out else float("nan")


def _after(stamps: list[float], moment: float) -> float:
    return next((t for t in stamps if t >= moment), float("nan"))


def kill_under_stream(r: Rig, a: Daemon) -> Failover:
    r.quiet(90)
    wait_quiet()
    since = r.db_now()
    carrier = sipp(
        "ha-kill-carrier",
        "carrier",
        local_ip=CARRIER_IP,
        local_port=5060,
        media_port=31000,
        keys={"ring_ms": "0"},
        calls=CARRIER_CALLS,
        limit=5000,
        trace=True,
    )
    time.sleep(0.3)
    endpoint = TWO_DAEMON_EPS[0]  # A first, then B
    total = FAILOVER_CPS * STREAM_S
    manager = sipp(
        "ha-kill-manager",
        "manager",
        local_ip="127.0.0.1",
        local_port=MANAGER_PORT[endpoint],
        media_port=32000,
        remote="127.0.0.1:5060",
        service=f"*77{ORDER}",
        keys={"user": endpoint},
        hold_ms=FAILOVER_HOLD_MS,
        calls=total,
        limit=total,
        rate=FAILOVER_CPS,
        trace=True,
    )
    time.sleep(KILL_AFTER_S)
    assert a.proc is not None
    killed = time.time()
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(timeout=10)
    manager.wait(timeout=STREAM_S + 120)
    # B's takeover comes once A's lease has expired: wait for the rows A left open to be ended by B.
    open_rows = f"SELECT count(*) FROM calls WHERE requested_at >= '{since}' AND state <> 'ended'"
    wait_until(lambda: r.sql(open_rows) == "0", 60, "every row ended")
    finish_carrier(r, carrier)
    sent = first_invites(manager.messages(), "sent")
    received = first_invites(carrier.messages(), "received")
    window = [t for t in received if killed - 1 <= t <= killed + 3]
    stats = manager.stats()
    attempted = stats.get("OutGoingCall(C)", total) or total
    first_sent = _after(sent, killed)
    before = [(_after(received, t) - t) * 1000 for t in sent if killed - 4 <= t < killed]
    a_rows = f"calls WHERE requested_at >= '{since}' AND ari_app = '{a.app}'"
    b_rows = f"calls WHERE requested_at >= '{since}' AND ari_app = '{APP_B}'"
    takeover = (
        f"SELECT min(at) FROM audit WHERE action = 'app.takeover' AND at >= '{since}'"
        f" AND details->>'ari_app' = '{a.app}'"
    )
    adoptions = f"audit WHERE action = 'call.adopt' AND at >= '{since}' AND details->>'from_app' = '{a.app}'"
    outcomes = r.sql(f"SELECT count(*) FILTER (WHERE outcome = 'completed') || ' ' || count(*) FROM {a_rows}")
    completed, rows_of_a = (int(x) for x in outcomes.split())
    restarted = time.monotonic()
    a.start()  # healthy once B has handed A's lease back and A's websocket is up
    return Failover(
        attempted=attempted,
        failed=attempted - stats.get("SuccessfulCall(C)", 0),
        first_customer_invite_s=round(_after(received, killed) - killed, 4),
        first_row_of_b_s=round(_epoch(r, f"SELECT min(requested_at) FROM {b_rows}") - killed, 4),
        longest_silence_s=round(max(b - a for a, b in zip(window, window[1:], strict=False)), 4),
        spacing_s=round(1 / FAILOVER_CPS, 4),
        first_setup_after_kill_ms=round((_after(received, first_sent) - first_sent) * 1000, 2),
        setup_before_kill_ms=round(statistics.median(before), 2) if before else float("nan"),
        takeover_s=round(_epoch(r, takeover) - killed, 2),
        adopted=int(r.sql(f"SELECT count(*) FROM {adoptions}") or 0),
        last_adoption_s=round(_epoch(r, f"SELECT max(at) FROM {adoptions}") - killed, 2),
        rows_of_a_completed=completed,
        rows_of_a=rows_of_a,
        restart_to_healthy_s=round(time.monotonic() - restarted, 2),
    )


def _summary(rounds: list[Failover]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (
        "first_customer_invite_s",
        "first_row_of_b_s",
        "longest_silence_s",
        "first_setup_after_kill_ms",
        "setup_before_kill_ms",
        "takeover_s",
        "last_adoption_s",
    ):
        values = [getattr(f, key) for f in rounds]
        out[key] = {"median": round(statistics.median(values), 4), "min": min(values), "max": max(values)}
    for key in ("failed", "adopted", "rows_of_a_completed", "rows_of_a"):
        out[key] = sum(getattr(f, key) for f in rounds)
    out["attempted"] = sum(f.attempted for f in rounds)
    return out


def measure_availability(r: Rig, ladder: list[float], seconds: float, kills: int) -> dict[str, Any]:
    a = Daemon(r.asterisk, r.postgres, recording=False, name="ha-a")
    b = Daemon(
        r.asterisk,
        r.postgres,
        recording=False,
        name="ha-b",
        app=APP_B,
        agi_port=AGI_PORT_B,
        http_port=HTTP_PORT_B,
    )
    a.start()
    b.start()
    try:
        # Warm-up, both paths: the first calls after a start open pools and import code (not counted).
        for endpoints in (ONE_DAEMON_EPS, TWO_DAEMON_EPS):
            run_rate_step(r, endpoints, 10, 3, "ha-warm")
        log(f"two daemons against one: ladder {ladder} cps, {seconds} s per step")
        paths: list[tuple[str | tuple[str, ...], str]] = [
            (ONE_DAEMON_EPS, "one_daemon"),
            (TWO_DAEMON_EPS, "two_daemons"),
        ]
        climbed = find_max_rates(r, paths, ladder, seconds)
        one, one_steps = climbed["one_daemon"]
        two, two_steps = climbed["two_daemons"]
        log(f"  max cps one daemon {one}, two daemons {two}")
        rounds = []
        for i in range(kills):
            log(f"failover {i + 1}/{kills}: A SIGKILLed under {FAILOVER_CPS} calls/s")
            rounds.append(kill_under_stream(r, a))
            log(f"  {asdict(rounds[-1])}")
        return {
            "rate": {
                "seconds_per_step": seconds,
                "ladder": ladder,
                "one_daemon_max_cps": one,
                "two_daemons_max_cps": two,
                "one_daemon_steps": [asdict(s) for s in one_steps],
                "two_daemons_steps": [asdict(s) for s in two_steps],
            },
            "failover": {
                "rate": FAILOVER_CPS,
                "hold_ms": FAILOVER_HOLD_MS,
                "rounds": [asdict(f) for f in rounds],
                "summary": _summary(rounds),
            },
        }
    finally:
        a.stop()
        b.stop()
        CPU_SOURCES.pop(f"bridged:{HTTP_PORT_B}", None)
