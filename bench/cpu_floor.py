"""The CPU floor of an ARI design (issue 19): what the leanest process doing bridged's call on the wire costs
in CPU per call, measured side by side with bridged in one sitting.

    python -m bench.cpu_floor [--rounds 4] [--rate 80] [--step-seconds 20] [--strace] [--raw]   # root

The floor server (``python -m bench.floor_app``, a process of its own on uvloop, as bridged is) does
each call as bridged does it on the wire, and nothing else: no lookup, no database, no log line, no state
machine. The manager's phone dials ``*77<order>`` into bridged's own dialplan (``[bridged-managers]``,
the endpoint's ``BRIDGED_AGI`` naming the floor's FastAGI port), so that Asterisk does the same work for
both; then:

* FastAGI: the environment read at once, the customer's originate into ``[bridged-customer]`` (bridged's
  request: ``POST /channels`` with the same parameters and variables, ``originator`` the manager's
  channel), its answer awaited (as bridged does, ``EARLY_ANSWER_WAIT``), bridged's ``ok|...`` answer in
  ``SET VARIABLE BRIDGED_REPLY``, its ``200 result=1`` read, the connection closed;
* the application subscribed to the customer's leg (``POST /applications/.../subscription``), off the
  setup's path; the event filter is bridged's (``bridged.calls.engine.EVENT_TYPES``, ``PUT eventFilter``);
* the customer's leg entering Stasis answered: the manager's channel answered, a mixing bridge created, the
  label put back on the customer's leg if the carrier changed its caller id (``ChannelCallerId``: the
  bench's carrier sends P-Asserted-Identity), both channels added with ``inhibitConnectedLineUpdates``;
* the first leg to leave (``ChannelHangupRequest``, ``StasisEnd`` or ``ChannelDestroyed``): the other leg
  hung up, the bridge destroyed.

Every request's target and body are bridged's own (``bridged.ari.targets.PLANS``), sent on bridged's
keep-alive HTTP transport; events are read as bridged reads them (``bench/floor_app.py``). A second floor
adds the four round trips
of bridged's call to PostgreSQL (asyncpg pools, trivial statements: the order's lookup before the
originate, an INSERT after it, an UPDATE when bridged, an UPDATE at the end) to show the database's share.

The measurement: the rig of ``python -m bench.run``, bridged's daemon and the floor servers running side by
side; ``--rounds`` rounds of one call-rate step (``bench.run.run_rate_step``: SIPp at ``--rate`` calls per
second for ``--step-seconds``) on each path (floor, bridged, floor with SQL), the order reversed every
other round; each step's CPU milliseconds per call of each process (``cpu_ms_per_call``, as ``bench.run``
accounts them), the read and write system calls per call of the deciding process (``/proc/PID/io``
``syscr``/``syscw``), and the floor's own count of messages per call (``--no-sql`` leaves the second
floor out; ``--raw`` adds a third, the plain floor with its requests and FastAGI session on
``asyncio.Protocol`` instead of streams, ``bench/floor_raw.py``). ``--strace`` adds one more floor step
under ``strace -c -f`` (every system call by name; strace slows the floor, so its CPU is not reported).
``BENCH_PYSPY_DIR=DIR`` profiles the floors' steps with py-spy as ``bench.run`` profiles bridged's
(``python -m bench.cpu_floor shares DIR/*.txt`` prints the largest leaf frames of each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import run  # noqa: E402
from bench.floor_app import AGI_PORT, APP  # noqa: E402

APP_SQL = "bench-cpufloor-sql"
APP_RAW = "bench-cpufloor-raw"
# The floors' FastAGI ports (AGI_PORT the plain floor's) and their managers' endpoints (context
# bridged-managers, BRIDGED_AGI naming the floor).
AGI_PORT_SQL = 4595
AGI_PORT_RAW = 4594
FLOOR_EP = "benchcpu"
FLOOR_SQL_EP = "benchcpusql"
FLOOR_RAW_EP = "benchcpuraw"
SIP_PORTS = {FLOOR_EP: 5221, FLOOR_SQL_EP: 5222, FLOOR_RAW_EP: 5223}


# -- the measurement ----------------------------------------------------------------------------------


class FloorProcess:
    """One ``python -m bench.floor_app`` for the sitting, its log and counts under artifacts/bench/."""

    def __init__(self, r: run.Rig, app: str, port: int, sql: bool, raw: bool = False) -> None:
        self.r, self.app, self.port, self.sql, self.raw = r, app, port, sql, raw
        self.dir = run.WORK / app
        self.dir.mkdir(parents=True, exist_ok=True)
        self.counts_file = self.dir / "counts.json"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        a = self.r.asterisk
        argv = [sys.executable, "-m", "bench.floor_app", a.ari_url, a.ari_user, a.ari_password]
        argv += ["--app", self.app, "--port", str(self.port), "--counts", str(self.counts_file)]
        if self.raw:
            argv.append("--raw")
        if self.sql:
            argv += ["--shop-dsn", self.r.postgres.dsn("shop"), "--db-dsn", self.r.postgres.dsn("bridged")]
        with open(self.dir / "floor.log", "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                cwd=REPO_ROOT,
            )
        run.wait_until(self.registered, 30, f"the {self.app} application")
        run.CPU_SOURCES[self.app] = (self.proc.pid, False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def registered(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"floor server exited: {self.proc.returncode}; see {self.dir / 'floor.log'}")
        with contextlib.suppress(OSError, ValueError):
            return self.app in [a["name"] for a in json.loads(self.r.asterisk.ari_get("/applications"))]
        return False

    def counts(self) -> dict[str, float]:
        before = self.counts_file.stat().st_mtime_ns if self.counts_file.exists() else 0
        os.kill(self.pid, signal.SIGUSR1)
        run.wait_until(
            lambda: self.counts_file.exists() and self.counts_file.stat().st_mtime_ns != before, 5, "counts"
        )
        time.sleep(0.05)
        return json.loads(self.counts_file.read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def syscalls(pid: int) -> dict[str, int]:
    """Read and write system calls (and bytes) the process has made so far (``/proc/PID/io``), and its
    user and system CPU time in clock ticks (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out = {"utime": int(fields[11]), "stime": int(fields[12])}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("syscr", "syscw", "rchar", "wchar"):
            out[key] = int(value)
    return out


def add_endpoints(r: run.Rig) -> None:
    """The floors' managers: bridged's dialplan, their FastAGI target the floor's port."""
    conf = ""
    for ep, port in ((FLOOR_EP, AGI_PORT), (FLOOR_SQL_EP, AGI_PORT_SQL), (FLOOR_RAW_EP, AGI_PORT_RAW)):
        run.MANAGER_PORT[ep] = SIP_PORTS[ep]
        conf += "\n" + run.manager_endpoint_conf(
            ep, SIP_PORTS[ep], set_vars={"BRIDGED_AGI": f"agi://127.0.0.1:{port}"}
        )
    r.asterisk.add_endpoints("cpufloor", conf)


def one_step(
    r: run.Rig, path: str, pid: int, floor: FloorProcess | None, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    endpoint = {
        "floor": FLOOR_EP,
        "floor-sql": FLOOR_SQL_EP,
        "floor-raw": FLOOR_RAW_EP,
        "bridged": run.BRIDGED_EP,
    }[path]
    spy = None
    if os.environ.get("BENCH_PYSPY_DIR") and floor is not None:  # bench.run profiles bridged's steps
        out = f"{os.environ['BENCH_PYSPY_DIR']}/{tag}-{args.rate:g}.txt"
        spy = subprocess.Popen(
            [run.py_spy(), "record", "--nonblocking", "--format", "raw", "--rate", "200", "-o", out]
            + ["-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    io0, counts0 = syscalls(pid), floor.counts() if floor else {}
    step = run.run_rate_step(r, endpoint, args.rate, args.step_seconds, tag)
    io1, counts1 = syscalls(pid), floor.counts() if floor else {}
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait()
    per = max(1, step.attempted)
    found = {
        "path": path,
        "at": datetime.now().strftime("%H:%M:%S"),
        "attempted": step.attempted,
        "completed": step.completed,
        "failed_pct": step.failed_pct,
        "cpu_ms_per_call": step.cpu_ms_per_call,
        "syscalls_per_call": {k: round((io1[k] - io0[k]) / per, 1) for k in ("syscr", "syscw")},
        "bytes_per_call": {k: round((io1[k] - io0[k]) / per) for k in ("rchar", "wchar")},
        "user_system_ms_per_call": [
            round((io1[k] - io0[k]) * 1000 / os.sysconf("SC_CLK_TCK") / per, 2) for k in ("utime", "stime")
        ],
    }
    if floor is not None:
        found["messages_per_call"] = {
            k: round((counts1[k] - counts0[k]) / per, 2) for k in counts0 if k != "at"
        }
    run.log(f"  {tag} {path}: {json.dumps({k: v for k, v in found.items() if k != 'path'})}")
    return found


def strace_step(r: run.Rig, floor: FloorProcess, args: argparse.Namespace) -> dict[str, Any]:
    """One more floor step with ``strace -c -f`` on the floor: every system call by name, per call."""
    out = run.WORK / "cpufloor-strace.txt"
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(floor.pid)])
    time.sleep(1)
    step = one_step(r, "floor", floor.pid, floor, args, "cpufloor-strace")
    tracer.send_signal(signal.SIGINT)
    tracer.wait()
    per = max(1, step["attempted"])
    counted: dict[str, float] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            counted[fields[-1]] = round(int(fields[3]) / per, 2)
    run.log(f"  strace: system calls per call {counted}")
    return {"step": step, "syscalls_per_call": counted, "raw": out.read_text()}


def shares(paths: list[str], top: int = 12) -> None:
    """Where a profile's samples are (py-spy's collapsed stacks): each leaf frame's share, the largest."""
    for path in paths:
        leaves: dict[str, int] = {}
        for line in Path(path).read_text().splitlines():
            stack, _, samples = line.rpartition(" ")
            leaf = stack.rsplit(";", 1)[-1]
            leaves[leaf] = leaves.get(leaf, 0) + int(samples)
        total = sum(leaves.values()) or 1
        print(f"{path}: {total} samples")
        for leaf, count in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {100 * count / total:5.1f}%  {leaf}")


def summary(steps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per path, the median (and min, max) of each process's CPU ms per call over the rounds."""
    out: dict[str, dict[str, float]] = {}
    for path in sorted({s["path"] for s in steps}):
        mine = [s for s in steps if s["path"] == path]
        for proc in ("asterisk", "postgres", run_proc(path)):
            values = [s["cpu_ms_per_call"].get(proc, 0.0) for s in mine]
            out.setdefault(path, {})[proc] = round(statistics.median(values), 2)
            out[path][f"{proc}_range"] = f"{min(values):.2f}-{max(values):.2f}"  # type: ignore[assignment]
    return out


def run_proc(path: str) -> str:
    return {"floor": APP, "floor-sql": APP_SQL, "floor-raw": APP_RAW, "bridged": "bridged"}[path]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of one step per path (default 4)")
    parser.add_argument("--rate", type=float, default=80, help="calls per second (default 80)")
    parser.add_argument("--step-seconds", type=float, default=20, help="seconds per step (default 20)")
    parser.add_argument("--no-sql", action="store_true", help="leave out the floor with SQL")
    parser.add_argument("--strace", action="store_true", help="one more floor step under strace -c")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="a third floor: requests and FastAGI on asyncio.Protocol (floor_raw.py)",
    )
    parser.add_argument("--out", default=str(run.WORK / "cpu_floor.json"), help="the figures as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.cpu_floor: needs root (Asterisk chroot, network namespace)", file=sys.stderr)
        return 2
    if not run.in_private_netns():
        if os.environ.get("BRIDGED_BENCH_NETNS"):
            print("bench.cpu_floor: still not in a private network namespace", file=sys.stderr)
            return 2
        env = dict(os.environ, BRIDGED_BENCH_NETNS="1")
        cmd = [sys.executable, "-m", "bench.cpu_floor", *argv]
        return subprocess.run(["unshare", "-n", "--", *cmd], cwd=REPO_ROOT, env=env).returncode
    run.WORK.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": run.machine(),
        "command": "python -m bench.cpu_floor " + " ".join(argv),
        "started": datetime.now().isoformat(timespec="seconds"),
        "load": os.getloadavg()[0],
    }
    paths = (
        ["floor", "bridged"] + ([] if args.no_sql else ["floor-sql"]) + (["floor-raw"] if args.raw else [])
    )
    steps: list[dict[str, Any]] = []
    with run.rig() as r:
        add_endpoints(r)
        daemon = run.Daemon(r.asterisk, r.postgres, recording=False, name="main")
        floors = {"floor": FloorProcess(r, APP, AGI_PORT, False)}
        if not args.no_sql:
            floors["floor-sql"] = FloorProcess(r, APP_SQL, AGI_PORT_SQL, True)
        if args.raw:
            floors["floor-raw"] = FloorProcess(r, APP_RAW, AGI_PORT_RAW, False, raw=True)
        daemon.start()
        try:
            for floor in floors.values():
                floor.start()
            shape = f"{args.rounds} rounds of {args.rate:g} cps x {args.step_seconds:g} s"
            run.log(f"cpu floor: {shape}, paths {paths}")
            for index in range(args.rounds):
                for path in paths if index % 2 == 0 else reversed(paths):
                    serving = floors.get(path)
                    pid = serving.pid if serving is not None else daemon.pid
                    steps.append(one_step(r, path, pid, serving, args, f"cpufloor-{path}-{index + 1}"))
            if args.strace:
                results["strace"] = strace_step(r, floors["floor"], args)
        finally:
            for floor in floors.values():
                floor.stop()
            daemon.stop()
    results["steps"] = steps
    results["summary"] = summary(steps)
    results["finished"] = datetime.now().isoformat(timespec="seconds")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nbench.cpu_floor ({results['started']}-{results['finished']}, load {results['load']:.2f}):")
    print(f"{results['machine']['cpu']}, {results['machine']['cores']} cores")
    for s in steps:
        proc = run_proc(s["path"])
        cpu = s["cpu_ms_per_call"]
        print(
            f"  {s['at']} {s['path']:<10} {s['completed']}/{s['attempted']}  {proc} {cpu.get(proc)}"
            f"  asterisk {cpu.get('asterisk')}  postgres {cpu.get('postgres')}"
            f"  user/sys {s['user_system_ms_per_call']}  syscalls/call {s['syscalls_per_call']}"
        )
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["shares"]:  # python -m bench.cpu_floor shares PROFILE.txt...
        shares(sys.argv[2:])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
