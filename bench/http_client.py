"""``python -m bench.http_client``: the CPU one ARI-shaped REST request costs bridged's side, aiohttp's client
against bridged.ari.transport (issue 19), on uvloop as the daemon runs.

A stub server in a child process answers every request at once with a small JSON body (Content-Length, kept
alive, as Asterisk's HTTP server does); the client sends ``--requests`` POSTs with a query string and a JSON
body, one after another, and reports its own CPU time (``time.process_time``) per request. The server's CPU is
not counted. Rounds alternate between the two clients (``--rounds``), since a shared box drifts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import time

import aiohttp
import uvloop

from bridged.ari.transport import HttpTransport

_BODY = json.dumps({"id": "0123abcd-customer", "name": "PJSIP/carrier-00000001", "state": "Down"}).encode()
_TARGET = "/ari/channels?endpoint=PJSIP%2F%2B4930123456789%40carrier&app=bench&channelId=0123abcd-customer"
_AUTH = {"Authorization": "Basic YnJpZGdlZDpzM2NyZXQ="}
_VARIABLES = {"variables": {"CHANNEL(language)": "en", "PJSIP_TRANSFER_HANDLING()": "ari-only"}}


async def _serve(sock: socket.socket) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = b"HTTP/1.1 200 OK\r\nServer: Asterisk\r\nContent-Type: application/json\r\n"
        answer += b"Content-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, sock=sock)
    await server.serve_forever()


def _server_main(sock: socket.socket) -> None:
    uvloop.run(_serve(sock))


async def _aiohttp(base: str, n: int) -> None:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as session:
        for _ in range(n):
            async with session.request(
                "POST", f"{base}{_TARGET}", headers=_AUTH, json=_VARIABLES, timeout=timeout
            ) as resp:
                await resp.json(content_type=None)


async def _transport(base: str, n: int) -> None:
    transport = HttpTransport(base + "/ari", _AUTH, limit=40)
    for _ in range(n):
        async with asyncio.timeout(5):
            _, raw = await transport.request("POST", _TARGET, json.dumps(_VARIABLES).encode())
        json.loads(raw)
    await transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = multiprocessing.Process(target=_server_main, args=(sock,), daemon=True)
    server.start()
    try:
        for round_ in range(1, args.rounds + 1):
            for name, client in (("aiohttp", _aiohttp), ("bridged.ari.transport", _transport)):
                cpu, wall = time.process_time(), time.perf_counter()
                uvloop.run(client(base, args.requests))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                per = 1e6 / args.requests
                print(f"round {round_} {name:22} cpu {cpu * per:6.1f} us/request, wall {wall * per:6.1f} us")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
