"""The floor server of ``python -m bench.cpu_floor`` (issue 19): bridged's call on the wire and nothing
else, run as a process of its own on uvloop, as bridged is.

    python -m bench.floor_app ARI_URL USER PASSWORD --counts FILE [--app A] [--port P]
                              [--shop-dsn DSN --db-dsn DSN]

What it does per call, and what it leaves out, is in ``bench/cpu_floor.py``'s docstring. Every request's
target and body come from bridged's own ``bridged.ari.targets.PLANS``, worked out once with placeholders for
the ids (a string replace per request); they go out on bridged's keep-alive HTTP transport
(``bridged.ari.transport.HttpTransport``); events come on aiohttp's websocket, read with orjson
(``bridged.ari.jsontext``), as bridged reads them. No log line, no state machine, no timeout. SIGUSR1
writes its counters (FastAGI sessions, requests, events, SQL statements, calls) to ``--counts``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

APP = "bench-cpufloor"
AGI_PORT = 4596
ORDER = "4242"
NUMBER = "+4930123456789"
TRUNK = "PJSIP/{number}@carrier"
SHOP_CALLER_ID = '"Bench Shop" <+15550100>'
RING_TIMEOUT = 30
LANGUAGE = "en"
# The ids a request template holds until a call's own replace them (left as they are by the quoting).
CALL, MANAGER, LEG = "CALLIDPLACEHOLDER", "MANAGERPLACEHOLDER", "LEGPLACEHOLDER"
LEG_EVENTS = frozenset({"ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"})
# With --shop-dsn: bridged's shop lookup (the bench's orders.query) and three writes of a call's row.
LOOKUP = (
    "SELECT customer_phone AS phone, customer_name, manager AS manager_id"
    " FROM orders WHERE id = CAST($1::text AS bigint)"
)
TABLE = "CREATE TABLE IF NOT EXISTS floor_calls (id text PRIMARY KEY, manager text, state text,"
TABLE += " requested_at timestamptz DEFAULT now(), answered_at timestamptz, ended_at timestamptz)"
INSERT = "INSERT INTO floor_calls (id, manager, state) VALUES ($1, $2, 'ringing_customer')"
BRIDGED = "UPDATE floor_calls SET state = 'bridged', answered_at = now() WHERE id = $1"
ENDED = "UPDATE floor_calls SET state = 'ended', ended_at = now() WHERE id = $1"


# -- the floor ------------------------------------------------------------------------------------------


class Requests:
    """Each request of a call as bridged sends it (``bridged.ari.targets.PLANS``), worked out once with
    placeholder ids: method, target, body."""

    def __init__(self, base_path: str, app: str, number: str, label: str) -> None:
        from bridged import dialplan
        from bridged.ari.targets import PLANS

        customer, bridge = f"{CALL}-customer", f"{CALL}-bridge"
        variables = {
            dialplan.CHANNEL_LANGUAGE: LANGUAGE,
            **dialplan.NO_TRANSFERS,
            **dialplan.identity_variables(SHOP_CALLER_ID),
            **dialplan.customer_leg_variables(app, CALL),
        }
        originate = {
            "endpoint": TRUNK.format(number=number),
            "context": dialplan.CUSTOMER_CONTEXT,
            "extension": dialplan.CUSTOMER_EXTEN,
            "priority": 1,
            "callerId": SHOP_CALLER_ID,
            "timeout": RING_TIMEOUT,
            "channelId": customer,
            "originator": MANAGER,
        }
        ops: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None]] = {
            "originate": ("originate", {}, originate, {"variables": variables}),
            "subscribe": (
                "subscribe",
                {"applicationName": app},
                {"eventSource": [f"channel:{customer}"]},
                None,
            ),
            "answer": ("answer", {"channelId": MANAGER}, {}, None),
            "set_variable": (
                "set_variable",
                {"channelId": customer},
                {"variable": "CALLERID(all)", "value": label},
                None,
            ),
            "create_bridge": (
                "create_bridge",
                {},
                {"type": "mixing", "bridgeId": bridge, "name": f"bridged-{CALL}"},
                None,
            ),
            "add_channel": (
                "add_channel",
                {"bridgeId": bridge},
                {"channel": [MANAGER, customer], "role": None, "inhibitConnectedLineUpdates": True},
                None,
            ),
            "hangup": ("hangup", {"channelId": LEG}, {"reason": "normal"}, None),
            "destroy_bridge": ("destroy_bridge", {"bridgeId": bridge}, {}, None),
        }
        self.made: dict[str, tuple[str, str, bytes | None]] = {}
        for name, (op, path, params, body) in ops.items():
            plan = PLANS[op]
            json_body = plan.json_body(body)
            sent = None if json_body is None else json.dumps(json_body).encode()
            self.made[name] = (plan.op.method, base_path + plan.target(path, params, body), sent)

    def of(self, name: str, call: str, manager: str = "", leg: str = "") -> tuple[str, str, bytes | None]:
        method, target, body = self.made[name]
        target = target.replace(CALL, call).replace(MANAGER, manager).replace(LEG, leg)
        if body is not None:
            body = body.replace(CALL.encode(), call.encode()).replace(MANAGER.encode(), manager.encode())
        return method, target, body


class Lane:
    """Connections to one database, each running one statement at a time: an idle one is taken, or a new one
    opened when none is (as many as statements run at once); no pool's acquire, release or reset (bridged's
    own pool keeps connections out of asyncpg's for single statements, bridged.db.Pool)."""

    def __init__(self, asyncpg: Any, dsn: str) -> None:
        self.asyncpg, self.dsn = asyncpg, dsn
        self.idle: list[Any] = []

    async def connect(self) -> Any:
        return await self.asyncpg.connect(self.dsn)


class Call:
    __slots__ = (
        "bridge",
        "bridging",
        "customer",
        "customer_up",
        "dirty",
        "ending",
        "gone",
        "id",
        "manager",
        "manager_in",
    )

    def __init__(self, call_id: str, manager: str) -> None:
        self.id = call_id
        self.manager = manager
        self.customer = f"{call_id}-customer"
        self.manager_in = self.customer_up = self.dirty = self.ending = self.bridge = False
        self.bridging: asyncio.Task[None] | None = None
        self.gone: set[str] = set()


class LeanFloor:
    """bridged's call on the wire, nothing else: one FastAGI handler, one event handler, a task per step
    that sends requests (the bridge, the end)."""

    def __init__(self, transport: Any, requests: Requests, app: str, label: str, sql: Any = None) -> None:
        from bridged.calls.model import new_call_id

        self.http = transport
        self.requests = requests
        self.new_call_id = new_call_id
        self.label_number = label.rsplit("<", 1)[-1].rstrip(">")
        self.shop_number = SHOP_CALLER_ID.rsplit("<", 1)[-1].rstrip(">")
        stasis_args = f"{app},order,{CALL}"
        reply = "|".join(("ok", LANGUAGE, stasis_args, label))
        self.reply = (
            "SET VARIABLE BRIDGED_REPLY " + '"' + reply.replace("\\", "\\\\").replace('"', '\\"') + '"\n'
        )
        self.sql = sql
        self.by_channel: dict[str, Call] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.counts = dict.fromkeys(("agi", "requests", "failed", "events", "sql", "calls", "strays"), 0)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def send(self, name: str, call: Call, leg: str = "") -> None:
        method, target, body = self.requests.of(name, call.id, call.manager, leg)
        self.counts["requests"] += 1
        try:
            status, _ = await self.http.request(method, target, body)
        except ConnectionError:
            status = 0
        if status >= 400 or status == 0:
            self.counts["failed"] += 1

    async def query(self, lane: Lane, statement: str, *args: Any) -> None:
        self.counts["sql"] += 1
        conn = lane.idle.pop() if lane.idle else await lane.connect()
        await conn.fetchrow(statement, *args)
        lane.idle.append(conn)

    # FastAGI: the decision.

    async def decide(self, block: bytes) -> bytes | None:
        """The FastAGI environment (up to its blank line) -> the answer to write; None: it failed."""
        self.counts["agi"] += 1
        env = {}
        for line in block.decode("utf-8", "replace").split("\n"):
            key, sep, value = line.partition(": ")
            if sep:
                env[key] = value
        try:
            if self.sql is not None:
                await self.query(self.sql[0], LOOKUP, env.get("agi_arg_1", ""))
            call = Call(self.new_call_id(), env["agi_uniqueid"])
            self.by_channel[call.manager] = self.by_channel[call.customer] = call
            await self.send("originate", call)
        except (ConnectionError, KeyError):
            self.counts["failed"] += 1
            return None
        self.spawn(self.send("subscribe", call))
        if self.sql is not None:
            self.spawn(self.query(self.sql[1], INSERT, call.id, "bench"))
        return self.reply.replace(CALL, call.id).encode()

    async def fastagi(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self.decide(await reader.readuntil(b"\n\n"))
            if reply is not None:
                writer.write(reply)
                await reader.readline()  # 200 result=1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.counts["failed"] += 1
        finally:
            writer.close()

    # The application: what each event does.

    def event(self, event: dict[str, Any]) -> None:
        self.counts["events"] += 1
        kind = event.get("type")
        channel = event.get("channel") or {}
        call = self.by_channel.get(channel.get("id", ""))
        if call is None:
            if kind == "StasisStart":
                self.counts["strays"] += 1
            return
        if kind == "StasisStart":
            if channel["id"] == call.manager:
                call.manager_in = True
            elif channel.get("state") == "Up":
                call.customer_up = True
            if call.manager_in and call.customer_up and call.bridging is None and not call.ending:
                call.bridging = self.spawn(self.bridge(call))
        elif kind in LEG_EVENTS:
            call.gone.add(channel["id"])
            if not call.ending:
                call.ending = True
                self.spawn(self.finish(call))
        elif kind == "ChannelCallerId" and channel["id"] == call.customer:
            number = (channel.get("caller") or {}).get("number")
            if number not in (self.label_number, self.shop_number):
                if call.bridge:
                    self.spawn(self.send("set_variable", call))
                else:
                    call.dirty = True

    async def bridge(self, call: Call) -> None:
        await self.send("answer", call)
        await self.send("create_bridge", call)
        call.bridge = True
        if call.dirty:
            call.dirty = False
            await self.send("set_variable", call)
        await self.send("add_channel", call)
        if self.sql is not None:
            await self.query(self.sql[1], BRIDGED, call.id)

    async def finish(self, call: Call) -> None:
        if call.bridging is not None:
            with contextlib.suppress(Exception):
                await call.bridging
        for leg in (call.manager, call.customer):
            if leg not in call.gone:
                await self.send("hangup", call, leg)
        if call.bridge:
            await self.send("destroy_bridge", call)
        if self.sql is not None:
            await self.query(self.sql[1], ENDED, call.id)
        self.counts["calls"] += 1
        for leg in (call.manager, call.customer):
            if self.by_channel.get(leg) is call:
                del self.by_channel[leg]


async def serve(args: argparse.Namespace) -> None:
    import aiohttp

    from bridged.ari.client import AriAccess
    from bridged.ari.events import ws_url_from_base
    from bridged.ari.jsontext import loads
    from bridged.ari.targets import PLANS
    from bridged.ari.transport import HttpTransport
    from bridged.calls.engine import EVENT_TYPES
    from bridged.labels import Labeller

    access = AriAccess(args.ari_url, args.user, args.password)
    base_path = "/" + args.ari_url.split("://", 1)[1].split("/", 1)[1].rstrip("/")
    label = Labeller().label(ORDER, "Bench Customer").caller_id
    transport: Any = HttpTransport(args.ari_url, access.headers, limit=40)
    if args.raw:  # the requests and the FastAGI session on asyncio.Protocol (bench/floor_raw.py)
        from bench.floor_raw import RawHttp

        transport = RawHttp(args.ari_url, access.headers)
    sql = None
    if args.shop_dsn:
        import asyncpg

        shop, own = Lane(asyncpg, args.shop_dsn), Lane(asyncpg, args.db_dsn)
        conn = await own.connect()
        await conn.execute(TABLE)
        own.idle.append(conn)
        sql = (shop, own)
    floor = LeanFloor(transport, Requests(base_path, args.app, args.number, label), args.app, label, sql)

    def dump(*_: Any) -> None:
        Path(args.counts).write_text(json.dumps({**floor.counts, "at": time.time()}))

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    if args.raw:
        from bench.floor_raw import AgiSession

        loop = asyncio.get_running_loop()
        agi = functools.partial(AgiSession, floor.decide, floor.spawn)
        server = await loop.create_server(agi, "127.0.0.1", args.port, backlog=512)
    else:
        server = await asyncio.start_server(floor.fastagi, "127.0.0.1", args.port, backlog=512)
    url = ws_url_from_base(args.ari_url).with_query(app=args.app, subscribeAll="false")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=access.headers, heartbeat=None, max_msg_size=0) as ws,
    ):
        # bridged's event filter (bridged.calls.reconcile: allow_events with the engine's EVENT_TYPES).
        plan = PLANS["filter_events"]
        body = {"filter": {"allowed": [{"type": t} for t in sorted(EVENT_TYPES)]}}
        target = base_path + plan.target({"applicationName": args.app}, {}, body)
        status, _ = await transport.request(plan.op.method, target, json.dumps(plan.json_body(body)).encode())
        print(f"floor {args.app} up: FastAGI on {args.port}, event filter {status}", flush=True)
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            floor.event(loads(message.data))
    server.close()
    await transport.close()


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m bench.floor_app")
    parser.add_argument("ari_url")
    parser.add_argument("user")
    parser.add_argument("password")
    parser.add_argument("--app", default=APP)
    parser.add_argument("--port", type=int, default=AGI_PORT)
    parser.add_argument("--number", default=NUMBER)
    parser.add_argument("--counts", required=True)
    parser.add_argument("--shop-dsn")
    parser.add_argument("--db-dsn")
    parser.add_argument("--raw", action="store_true", help="requests and FastAGI on asyncio.Protocol")
    uvloop.run(serve(parser.parse_args(sys.argv[1:])))
