"""``python -m bench.call_cpu``: bridged's own CPU for a whole ``*77`` call, in process (issue 19).

One phone call after another goes through bridged's own code as on the rate bench: a FastAGI session
over loopback to the real ``AgiServer`` (the stand-in for Asterisk answers each command ``200
result=1``), the real ``CallService`` (the order looked up and its phone parsed on every call, the row
written with its audit row and attempt), the real ``CallEngine`` and its steps, the real ``AriClient``
(its requests checked, encoded and timed as the daemon's) and logging at INFO through the daemon's
handler, redaction and formatter (to ``/dev/null``). Left out: ARI's transport (a stand-in answers each
request at once from memory, as ``bench.ari_requests``), PostgreSQL (a pool that takes any statement) and
the websocket (the 13 events Asterisk sends for the call, bench/RESULTS.md, go to ``CallEngine.on_event``
one loop iteration apart, the reader's JSON parsing left out). The bench's config: budgets off, recording
off, policy ``any``.

Reports CPU time (``time.process_time``) per call, best of ``--rounds``, on uvloop as the daemon runs; the
stand-ins' own work (the FastAGI client, the events' dicts) is in it and the same for every tree. Compare
trees with ``PYTHONPATH=TREE python bench/call_cpu.py``. ``--profile N`` runs N calls under cProfile and
prints the functions with the most own time (µs per call; cProfile slows every call, the order is what
it tells).

    python -m bench.call_cpu [--calls 3000] [--rounds 5] [--profile 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import sys
import time
from dataclasses import replace
from typing import Any

import aiohttp
import uvloop

from bridged.agi import AgiServer
from bridged.ari import AriAccess, AriClient
from bridged.ari.nodes import NodeClients
from bridged.calls.engine import CallEngine
from bridged.config import AgiConfig, Budget, ConfigHolder, LimitsConfig, RecordingConfig
from bridged.logs import setup_logging
from bridged.orders import OrderDirectory
from bridged.service import CallService
from bridged.store import Store
from tests.unit.fakes import (
    NUMBER,
    answered,
    caller_id_changed,
    channel_destroyed,
    dial,
    hangup_request,
    make_config,
    stasis_end,
    stasis_start,
)

_CALL_ID = re.compile(r"[0-9a-f]{32}")
_CHANNEL = b'{"id": "x-customer", "name": "PJSIP/carrier-00000001", "state": "Down", "caller": {}}'


class _Asterisk:
    """ARI's transport stand-in: answers at once, and tells the driver which request of a call came."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.seen: set[tuple[str, str]] = set()

    def expect(self, call_id: str, what: str) -> asyncio.Future[None]:
        future = self.waiting[(call_id, what)] = asyncio.get_running_loop().create_future()
        if (call_id, what) in self.seen:  # came already (the originate: while the FastAGI answer goes out)
            self.seen.discard((call_id, what))
            future.set_result(None)
        return future

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        found = _CALL_ID.search(target)
        if found is not None:
            what = "originate" if target.startswith("/ari/channels?") else target.rsplit("/", 1)[-1]
            if method == "DELETE" and target.startswith("/ari/bridges/"):
                what = "bridge-destroyed"
            key = (found[0], what.split("?", 1)[0])
            waiter = self.waiting.pop(key, None)
            if waiter is not None:
                waiter.set_result(None)
            elif key[1] == "originate":
                self.seen.add(key)
        if method == "POST" and target.startswith("/ari/bridges?"):
            return 200, b'{"id": "b", "technology": "simple_bridge", "bridge_type": "mixing", "channels": []}'
        return 204, b""

    async def close(self) -> None:
        return None


class _Pool:
    """Takes any statement; the shop's pool answers the order's row."""

    def __init__(self, ended: dict[str, asyncio.Future[None]], row: dict[str, Any] | None = None) -> None:
        self.ended = ended
        self.row = row

    async def execute(self, sql: str, *args: Any) -> str:
        if "SET state = 'ended'" in sql:
            waiter = self.ended.pop(args[0], None)
            if waiter is not None:
                waiter.set_result(None)
        return "OK"

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return []

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        return self.row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return None


class _AgiClient(asyncio.Protocol):
    """Asterisk's side of one FastAGI session for ``*77123``: every command answered ``200 result=1``."""

    def __init__(self, environment: bytes, done: asyncio.Future[str]) -> None:
        self.environment = environment
        self.done = done
        self.reply = ""
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.environment)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.startswith(b"SET VARIABLE BRIDGED_REPLY "):
                self.reply = line.decode().split(" ", 3)[3].strip('"')
            self.transport.write(b"200 result=1\n")  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.reply)


async def _events(engine: CallEngine, *events: dict[str, Any]) -> None:
    for event in events:
        engine.on_event(event)
        await asyncio.sleep(0)  # one loop iteration apart, as the websocket's reader hands them over


async def _call(engine: CallEngine, asterisk: _Asterisk, ended: dict[str, Any], port: int, n: int) -> None:
    loop = asyncio.get_running_loop()
    manager = f"rig-{n}.1"
    environment = (
        "agi_network_script: order\nagi_channel: PJSIP/anna-00000001\n"
        f"agi_uniqueid: {manager}\nagi_arg_1: 123\n\n"
    ).encode()
    done: asyncio.Future[str] = loop.create_future()
    await loop.create_connection(lambda: _AgiClient(environment, done), "127.0.0.1", port)
    reply = await done
    call_id = reply.split("|")[2].split(",")[2]  # ok|<language>|<app>,order,<call id>|<label>
    customer = f"{call_id}-customer"
    originated = asterisk.expect(call_id, "originate")
    bridged = asterisk.expect(call_id, "addChannel")
    destroyed = asterisk.expect(call_id, "bridge-destroyed")
    ended[call_id] = row_ended = loop.create_future()
    await _events(engine, stasis_start(manager, ["order", call_id], state="Ring"))
    await originated
    await _events(
        engine,
        dial(customer, ""),
        dial(customer, "RINGING"),
        caller_id_changed(customer, NUMBER),
        dial(customer, "ANSWER"),
        answered(customer),
    )
    await bridged
    await _events(engine, caller_id_changed(customer, "*77123", "Order 123"), hangup_request(manager))
    await destroyed
    soft = hangup_request(customer, cause=32) | {"soft": True}
    await _events(engine, stasis_end(manager), soft, stasis_end(customer))
    await _events(engine, hangup_request(customer, cause=16) | {"soft": True}, channel_destroyed(customer))
    await row_ended


async def _round(calls: int, profile: cProfile.Profile | None = None) -> float:
    config = make_config()
    config = replace(
        config,
        agi=AgiConfig(host="127.0.0.1", port=0),
        limits=LimitsConfig(default=Budget(calls=None, distinct_orders=None, refused_in_a_row=None)),
        recording=RecordingConfig(enabled=False),
        policy="any",
    )
    holder = ConfigHolder(config)
    ended: dict[str, asyncio.Future[None]] = {}
    asterisk = _Asterisk()
    async with aiohttp.ClientSession() as session:
        node = AriClient(session, AriAccess("http://127.0.0.1:8088/ari", "bridged", "s3cret"))
        node._transport = asterisk  # type: ignore[assignment]
        ari = NodeClients({config.nodes[0].node: node})  # as the daemon makes its requests
        store = Store(_Pool(ended))  # type: ignore[arg-type]
        directory = OrderDirectory(config.orders)
        order = {"phone": NUMBER, "customer_name": "Ivan Petrov", "manager_id": "anna"}
        directory._pool = _Pool(ended, order)  # type: ignore[assignment]
        engine = CallEngine(holder, ari, store, is_connected=lambda: True)
        service = CallService(holder, store, directory, engine, accepting_calls=lambda: True)
        agi = AgiServer(holder, service)
        await agi.start()
        assert agi._server is not None
        port = agi._server.sockets[0].getsockname()[1]
        try:
            for n in range(100):  # warm up
                await _call(engine, asterisk, ended, port, n)
            if profile is not None:
                profile.enable()
            start = time.process_time()
            for n in range(calls):
                await _call(engine, asterisk, ended, port, n)
            spent = time.process_time() - start
            if profile is not None:
                profile.disable()
        finally:
            await agi.stop()
            await engine.shutdown()
            await service.close()
    return spent / calls


def _print_profile(profile: cProfile.Profile, calls: int, top: int) -> None:
    stats = pstats.Stats(profile)
    rows = []
    for (path, line, name), (_, ncalls, own, total, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((own, total, ncalls, f"{os.path.relpath(path) if '/' in path else path}:{line} {name}"))
    rows.sort(reverse=True)
    print(f"{'own µs':>8} {'incl µs':>8} {'per call':>8}  function (cProfile, {calls} calls)")
    for own, total, ncalls, where in rows[:top]:
        print(f"{own / calls * 1e6:8.1f} {total / calls * 1e6:8.1f} {ncalls / calls:8.1f}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="N calls under cProfile")
    parser.add_argument("--top", type=int, default=60)
    args = parser.parse_args()
    stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115 - the daemon's log, written
    setup_logging("INFO")
    sys.stderr = stderr
    if args.profile:
        profile = cProfile.Profile()
        uvloop.run(_round(args.profile, profile))
        _print_profile(profile, args.profile, args.top)
        return
    results = [uvloop.run(_round(args.calls)) for _ in range(args.rounds)]
    each = ", ".join(f"{r * 1e6:.0f}" for r in results)
    print(f"bridged CPU per call, in process: best {min(results) * 1e6:.0f} µs (rounds: {each})")


if __name__ == "__main__":
    main()
