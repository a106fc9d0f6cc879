"""The floor of two designs for a phone's call setup (issue 19): deciding over FastAGI against deciding
inside Stasis, with nothing between the decision's first byte and the customer's originate (no lookup,
no database), side by side with a plain ``Dial()`` and bridged's real path in the same run.

    python -m bench.floor [--calls 200] [--rounds 4]     # root; re-executes itself under unshare -n
    BENCH_WIRE=1 BENCH_MARKS=1 python -m bench.floor     # and a timeline of each path (bench/wire.py)

The paths, all dialled by a manager's phone (the bench's SIPp ``manager.xml``) and answered by the bench's
carrier SIPp (``carrier.xml``, no ring time); the latency is the manager's INVITE sent to the carrier's
INVITE received, as ``python -m bench.run --only latency`` measures it:

* ``baseline``: ``*77<order>`` into ``[bench-baseline]``, ``Dial(PJSIP/<number>@carrier)``;
* ``fastagi`` (design A's floor): ``*78<code>`` into ``[bench-floor]``: ``AGI(agi://127.0.0.1:4597/order,
  <code>)`` to this module's FastAGI server, which reads the environment, sends the customer leg's
  originate (``POST /channels``, the request bridged sends, into ``[bench-floor-customer]``), waits for
  its answer as bridged does and answers ``SET VARIABLE``; then ``Stasis(bench-floor,decided)``;
* ``stasis`` (design B's floor): ``*79<code>`` into ``[bench-floor]``: ``Stasis(bench-floor,order,
  <code>)`` at once; this module's ARI application originates the same leg on the ``StasisStart`` (its
  event websocket open beforehand, its requests on bridged's keep-alive HTTP transport);
* ``bridged``: ``*77<order>`` into ``[bridged-managers]``, the bench's bridged daemon (lookup, row, ...).

The customer's leg enters ``Stasis(bench-floor,customer)`` once answered; the application answers the
manager's channel when both are in, and hangs the other leg up when one leaves (the manager's phone hangs
up after 250 ms). Nothing is bridged and no label is set: the floors are what each design cannot go below.
The floor server runs as a process of its own (``python -m bench.floor serve``), on uvloop, as bridged does.
The paths take turns: ``--rounds`` rounds of ``--calls / --rounds`` calls each, the order reversed every
other round, so that Asterisk's drift over a run is shared out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import run  # noqa: E402

APP = "bench-floor"
FLOOR_AGI_PORT = 4597
FLOOR_EP = "benchfloor"
FLOOR_SIP_PORT = 5220
FLOOR_CONTEXT = "bench-floor"
CUSTOMER_CONTEXT = "bench-floor-customer"
CUSTOMER_SUFFIX = "-c"
CALLER_ID = '"Bench Shop" <+15550100>'
# The customer leg's variables as bridged sets them (bridged.calls.legs.leg_variables with the identity's
# and [bridged-customer]'s): the same originate request, so that Asterisk does the same work for it.
LEG_VARIABLES = {
    "CHANNEL(language)": "en",
    "PJSIP_TRANSFER_HANDLING()": "ari-only",
    "CALLERID(all)": CALLER_ID,
    "CONNECTEDLINE(all,i)": CALLER_ID,
    "BRIDGED_LEG_APP": APP,
    "BRIDGED_CALL": "0123456789abcdef",
}
DIALPLAN = f"""
[{FLOOR_CONTEXT}]
exten => _*78X.,1,AGI(agi://127.0.0.1:{FLOOR_AGI_PORT}/order,${{EXTEN:3}})
 same => n,Stasis({APP},decided)
 same => n,Hangup()
exten => _*79X.,1,Stasis({APP},order,${{EXTEN:3}})
 same => n,Hangup()

[{CUSTOMER_CONTEXT}]
exten => s,1,Stasis({APP},customer)
 same => n,Hangup()
"""
PATHS = ("baseline", "fastagi", "stasis", "bridged")

log = logging.getLogger("bench.floor")


# -- the floor server (python -m bench.floor serve) ------------------------------------------------------


class FloorServer:
    """Design A's FastAGI server and design B's ARI application in one process, each sending the customer
    leg's originate as soon as it knows the manager's channel."""

    def __init__(self, ari: Any, number: str, marks: bool) -> None:
        self.ari = ari
        self.number = number
        self.marks = marks
        # The manager's channel id -> which of its two legs are in the application (answered once both).
        self.inside: dict[str, set[str]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("floor task failed: %r", task.exception())

    async def originate(self, manager: str, marks: list[tuple[str, float]]) -> None:
        marks.append(("originate>", time.time()))
        await self.ari.originate_to_dialplan(
            endpoint=f"PJSIP/{self.number}@carrier",
            context=CUSTOMER_CONTEXT,
            extension="s",
            channel_id=manager + CUSTOMER_SUFFIX,
            caller_id=CALLER_ID,
            timeout=30,
            variables=LEG_VARIABLES,
            originator=manager,
        )
        marks.append(("originate<", time.time()))

    def logged(self, marks: list[tuple[str, float]]) -> None:
        """``MARKS`` as bench.marks logs them (``python -m bench.wire ... --marks``), after the fact."""
        if self.marks:
            log.info("MARKS %s", " ".join(f"{name}={stamp:.6f}" for name, stamp in marks))

    # Design A: the decision over FastAGI.

    async def fastagi(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        marks = [("agi_accepted", time.time())]
        try:
            block = await reader.readuntil(b"\n\n")
            marks.append(("agi_read", time.time()))
            env = dict(
                line.partition(": ")[::2] for line in block.decode("utf-8", "replace").split("\n") if line
            )
            await self.originate(env["agi_uniqueid"], marks)
            writer.write(b'SET VARIABLE FLOOR_REPLY "ok"\n')
            await reader.readline()  # 200 result=1
            self.logged(marks)
        except (ConnectionError, asyncio.IncompleteReadError, KeyError) as exc:
            log.warning("FastAGI: %r", exc)
        finally:
            writer.close()

    # Design B: the decision inside Stasis.

    def event(self, received: float, event: dict[str, Any]) -> None:
        kind = event.get("type")
        channel = event.get("channel", {}).get("id", "")
        if kind == "StasisStart":
            args = event.get("args") or [""]
            if args[0] == "order":
                marks = [("event_received", received), ("event_parsed", time.time())]
                self.spawn(self._decide(channel, marks))
            manager = channel.removesuffix(CUSTOMER_SUFFIX)
            inside = self.inside.setdefault(manager, set())
            inside.add(channel)
            if len(inside) == 2:
                self.spawn(self.ari.answer(manager))
        elif kind == "StasisEnd":
            manager = channel.removesuffix(CUSTOMER_SUFFIX)
            if self.inside.pop(manager, None) is not None:  # the first of the two to leave
                self.spawn(self._hang_up(manager + CUSTOMER_SUFFIX if channel == manager else manager))

    async def _decide(self, manager: str, marks: list[tuple[str, float]]) -> None:
        await self.originate(manager, marks)
        self.logged(marks)

    async def _hang_up(self, channel: str) -> None:
        await self.ari.hangup(channel)


async def serve(args: argparse.Namespace) -> None:
    import aiohttp

    from bridged.ari.client import AriAccess, AriClient
    from bridged.ari.events import ws_url_from_base

    access = AriAccess(args.ari_url, args.user, args.password)
    async with aiohttp.ClientSession() as session:
        ari = AriClient(session, access)
        floor = FloorServer(ari, args.number, bool(os.environ.get("BENCH_MARKS")))
        server = await asyncio.start_server(floor.fastagi, "127.0.0.1", args.port, backlog=512)
        url = ws_url_from_base(args.ari_url).with_query(app=APP, subscribeAll="false")
        async with session.ws_connect(url, headers=access.headers, heartbeat=None) as ws:
            log.info("floor server up: FastAGI on %d, application %s", args.port, APP)
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                floor.event(time.time(), json.loads(message.data))
        server.close()
        await ari.close()


# -- the measurement ----------------------------------------------------------------------------------


class FloorProcess:
    """``python -m bench.floor serve`` for the run, its log under artifacts/bench/floor/."""

    def __init__(self, r: run.Rig) -> None:
        self.asterisk = r.asterisk
        self.dir = run.WORK / "floor"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.dir / "floor.log", "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.floor",
                    "serve",
                    self.asterisk.ari_url,
                    self.asterisk.ari_user,
                    self.asterisk.ari_password,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                cwd=REPO_ROOT,
            )
        run.wait_until(self.registered, 30, f"the {APP} application")

    def registered(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"floor server exited: {self.proc.returncode}; see {self.dir / 'floor.log'}")
        with contextlib.suppress(OSError, ValueError):
            return APP in [a["name"] for a in json.loads(self.asterisk.ari_get("/applications"))]
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def add_floor_paths(r: run.Rig) -> None:
    """The floors' manager endpoint (its own context) and their dialplan."""
    run.MANAGER_PORT[FLOOR_EP] = FLOOR_SIP_PORT
    conf = run.manager_endpoint_conf(FLOOR_EP, FLOOR_SIP_PORT, context=FLOOR_CONTEXT)
    r.asterisk.add_endpoints("floor", conf)
    r.asterisk.add_dialplan("floor", DIALPLAN)


def one_path(r: run.Rig, path: str, calls: int, tag: str) -> list[float]:
    """``calls`` sequential calls on ``path``: each call's latency in ms (warm-up calls left out)."""
    if path == "baseline":
        return run.latency_deltas(r, run.BASELINE_EP, calls, tag)
    if path == "bridged":
        return run.latency_deltas(r, run.BRIDGED_EP, calls, tag)
    service = {"fastagi": "*78", "stasis": "*79"}[path] + run.ORDER
    return run.latency_deltas(r, FLOOR_EP, calls, tag, service=service, agi_port=FLOOR_AGI_PORT)


def measure(r: run.Rig, calls: int, rounds: int) -> dict[str, list[float]]:
    per_round = calls // rounds
    deltas: dict[str, list[float]] = {path: [] for path in PATHS}
    for index in range(rounds):
        order = PATHS if index % 2 == 0 else tuple(reversed(PATHS))
        for path in order:
            found = one_path(r, path, per_round, f"floor-{path}-{index + 1}")
            deltas[path] += found
            run.log(
                f"  round {index + 1} {path}: p50 {run.percentile(found, 50):.2f} ms ({len(found)} calls)"
            )
    return deltas


def timelines() -> dict[str, list[str]]:
    """Each path's first round on the wire (``BENCH_WIRE=1``) with the marks of the process that decides
    (``BENCH_MARKS=1``: bridged's, the floor server's), printed."""
    out = {}
    for path in PATHS[1:]:
        marks = run.WORK / ("main/bridged.log" if path == "bridged" else "floor/floor.log")
        port = run.AGI_PORT if path == "bridged" else FLOOR_AGI_PORT
        out[path] = run.wire_report(run.WORK / f"wire-floor-{path}-1-lat-manager.txt", marks, port)
        print("\n".join(out[path]))
    return out


def table(results: dict[str, Any]) -> list[str]:
    base = results["paths"]["baseline"]
    lines = [
        f"{'path':<10}{'calls':>7}{'p50':>8}{'p99':>8}{'mean':>8}{'added p50':>11}{'added p99':>11}",
    ]
    for path in PATHS:
        lat = results["paths"][path]
        added = (
            ("", "")
            if path == "baseline"
            else (f"{lat['p50_ms'] - base['p50_ms']:.2f}", f"{lat['p99_ms'] - base['p99_ms']:.2f}")
        )
        lines.append(
            f"{path:<10}{lat['calls']:>7}{lat['p50_ms']:>8}{lat['p99_ms']:>8}{lat['mean_ms']:>8}"
            f"{added[0]:>11}{added[1]:>11}"
        )
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per path (default 200)")
    parser.add_argument("--rounds", type=int, default=4, help="turns the paths take (default 4)")
    parser.add_argument("--out", default=str(run.WORK / "floor.json"), help="the figures as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.floor: needs root (Asterisk chroot, network namespace)", file=sys.stderr)
        return 2
    if not run.in_private_netns():
        if os.environ.get("BRIDGED_BENCH_NETNS"):
            print("bench.floor: still not in a private network namespace", file=sys.stderr)
            return 2
        env = dict(os.environ, BRIDGED_BENCH_NETNS="1")
        cmd = [sys.executable, "-m", "bench.floor", *argv]
        return subprocess.run(["unshare", "-n", "--", *cmd], cwd=REPO_ROOT, env=env).returncode
    run.WORK.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": run.machine(),
        "command": "python -m bench.floor " + " ".join(argv),
        "started": datetime.now().isoformat(timespec="seconds"),
        "load": os.getloadavg()[0],
    }
    with run.rig() as r:
        add_floor_paths(r)
        daemon = run.Daemon(r.asterisk, r.postgres, recording=False, name="main")
        floor = FloorProcess(r)
        daemon.start()
        try:
            floor.start()
            run.log(f"floors: {args.calls} sequential calls per path, {args.rounds} rounds, paths {PATHS}")
            deltas = measure(r, args.calls, args.rounds)
        finally:
            floor.stop()
            daemon.stop()
    results["paths"] = {path: asdict(run.summary(values)) for path, values in deltas.items()}
    base = results["paths"]["baseline"]
    for path in PATHS[1:]:
        for p in ("p50", "p99"):
            results["paths"][path][f"added_{p}_ms"] = round(
                results["paths"][path][f"{p}_ms"] - base[f"{p}_ms"], 2
            )
    if os.environ.get("BENCH_WIRE") and os.environ.get("BENCH_MARKS"):
        results["timelines"] = timelines()
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nbench.floor ({results['started']}, load {results['load']:.2f}): {results['machine']['cpu']}")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        import uvloop

        parser = argparse.ArgumentParser(prog="python -m bench.floor serve")
        parser.add_argument("ari_url")
        parser.add_argument("user")
        parser.add_argument("password")
        parser.add_argument("--port", type=int, default=FLOOR_AGI_PORT)
        parser.add_argument("--number", default=run.NUMBER)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        uvloop.run(serve(parser.parse_args(sys.argv[2:])))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
