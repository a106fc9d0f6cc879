"""What one ARI request costs Asterisk: HTTP (bridged's transport) versus REST over the ARI websocket.

    python -m bench.ari_transport [--requests 5000] [--concurrency 20]

Asterisk 22 also accepts REST requests as JSON messages on the application's websocket
("RESTRequest"/"RESTResponse"). This measures Asterisk's CPU per request for the same harmless
request (``GET /asterisk/ping``) both ways on the bench rig, to size what moving bridged's requests
to the websocket would save. Not part of ``python -m bench.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import uuid

import aiohttp

from .run import CPU_SOURCES, cpu_snapshot, rig


async def over_http(url: str, user: str, password: str, requests: int, concurrency: int) -> float:
    headers = {"Authorization": aiohttp.encode_basic_auth(user, password)}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                async with session.get(f"{url}/asterisk/ping") as resp:
                    assert resp.status == 200, resp.status
                    await resp.read()

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - started


async def over_websocket(url: str, user: str, password: str, requests: int, concurrency: int) -> float:
    ws_url = url.replace("http://", "ws://") + f"/events?app=transport-bench&api_key={user}:{password}"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        waiting: dict[str, asyncio.Future[dict]] = {}

        async def reader() -> None:
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("type") == "RESTResponse":
                    future = waiting.pop(data.get("request_id", ""), None)
                    if future is not None:
                        future.set_result(data)

        read_task = asyncio.create_task(reader())
        queue = iter(range(requests))

        async def worker() -> None:
            loop = asyncio.get_running_loop()
            for _ in queue:
                request_id = uuid.uuid4().hex
                waiting[request_id] = loop.create_future()
                await ws.send_str(
                    json.dumps(
                        {
                            "type": "RESTRequest",
                            "request_id": request_id,
                            "method": "GET",
                            "uri": "asterisk/ping",
                        }
                    )
                )
                reply = await asyncio.wait_for(waiting[request_id], 10)
                assert reply.get("status_code") == 200, reply

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        read_task.cancel()
        return elapsed


def main() -> int:
    if os.geteuid() != 0:
        print("run as root (the rig needs a network namespace)", file=sys.stderr)
        return 2
    if not os.environ.get("BRIDGED_BENCH_NETNS"):
        env = dict(os.environ, BRIDGED_BENCH_NETNS="1")
        return os.execvpe(
            "unshare", ["unshare", "-n", sys.executable, "-m", "bench.ari_transport", *sys.argv[1:]], env
        )
    parser = argparse.ArgumentParser(prog="python -m bench.ari_transport", description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with rig() as r:
        a = r.asterisk
        asyncio.run(over_http(a.ari_url, a.ari_user, a.ari_password, 200, 5))  # warm up both
        asyncio.run(over_websocket(a.ari_url, a.ari_user, a.ari_password, 200, 5))
        for _ in range(args.rounds):
            for name, run in (("http", over_http), ("websocket", over_websocket)):
                before = cpu_snapshot()
                own_before = resource.getrusage(resource.RUSAGE_SELF)
                elapsed = asyncio.run(
                    run(a.ari_url, a.ari_user, a.ari_password, args.requests, args.concurrency)
                )
                after = cpu_snapshot()
                own_after = resource.getrusage(resource.RUSAGE_SELF)
                own = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
                per = {k: round((after[k] - before[k]) * 1e6 / args.requests) for k in CPU_SOURCES}
                print(
                    f"{name:9s} {args.requests} requests in {elapsed:.2f} s"
                    f" ({args.requests / elapsed:.0f}/s); CPU per request: Asterisk {per['asterisk']} µs,"
                    f" the Python client (aiohttp, as in bridged) {own * 1e6 / args.requests:.0f} µs",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
