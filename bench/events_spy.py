"""Count the ARI events Asterisk produces during a bench step (``BENCH_EVENTS=1 python -m bench.run``).

Connects as an application of its own with ``subscribeAll=true``: it sees every event of every
channel, including those bridged's application filters out (and those of channels before they
enter Stasis). On SIGINT it writes ``{"counts": {type: n}, "bytes": {type: n}}`` to OUT.json, with
``ChannelVarset`` split by variable name.

Usage: ``python -m bench.events_spy ARI_URL USER PASSWORD OUT.json``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sys
from pathlib import Path

import aiohttp


async def spy(url: str, user: str, password: str) -> dict[str, collections.Counter[str]]:
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    async with aiohttp.ClientSession(auth=aiohttp.BasicAuth(user, password)) as session:
        ws = await session.ws_connect(
            url.replace("http", "ws", 1) + "/events?app=bench-spy&subscribeAll=true"
        )

        async def read() -> None:
            async for msg in ws:
                event = json.loads(msg.data)
                kind = event.get("type", "?")
                if kind == "ChannelVarset":
                    kind += ":" + event.get("variable", "")
                counts[kind] += 1
                sizes[kind] += len(msg.data)

        reader = asyncio.create_task(read())
        await stop.wait()
        reader.cancel()
    return {"counts": counts, "bytes": sizes}


if __name__ == "__main__":
    found = asyncio.run(spy(sys.argv[1], sys.argv[2], sys.argv[3]))
    Path(sys.argv[4]).write_text(json.dumps(found, indent=1))
