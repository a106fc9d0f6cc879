"""How far a reader travels to follow one ``*77123`` call: ``python -m bench.call_path [--list]``.

One masked call runs through bridged's own code, in process: a FastAGI request over loopback to the
real ``AgiServer``, the real ``CallService`` and call engine, then the ARI events Asterisk 22 sends for it
(the manager's channel enters Stasis, the customer answers, the customer hangs up), up to the moment the
call's row is written as ended. Two parts are stand-ins, taken at their call site: ARI is the unit tests'
``FakeAri`` (the engine's requests are read where they are made), and PostgreSQL is a pool that takes any
statement (the store's SQL is read; the driver is not).

Every function of ``bridged/`` that runs is recorded the first time it runs (lambdas and comprehensions
are read where they stand), in that order: the reading order. Printed:

- ``files``: the files of ``bridged/`` the reading order visits;
- ``functions``: the functions it visits;
- ``jumps``: moves in the reading order that are not straight on down the same file (to another file,
  or back up in the same one): what a reader does with "go to definition" rather than by scrolling.

``--list`` prints the reading order itself, one function a line, ``*`` before a jump.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bridged.agi import AgiServer  # noqa: E402
from bridged.calls.engine import CallEngine  # noqa: E402
from bridged.config import AgiConfig, ConfigHolder  # noqa: E402, ConfigHolder
from bridged.limits import Tally  # noqa: E402
from bridged.orders import OrderDirectory  # noqa: E402
from bridged.service import CallService  # noqa: E402
from bridged.store import Store, attempts  # noqa: E402
from tests.unit.fakes import (  # noqa: E402
    NUMBER,
    FakeAri,
    answered,
    channel_destroyed,
    make_config,
    stasis_start,
    wait_until,
)

PACKAGE = str(REPO_ROOT / "bridged")
TESTS = str(REPO_ROOT / "tests")


@dataclass(frozen=True)
class Visit:
    path: str
    line: int
    end: int
    name: str


class ReadingOrder:
    """A profile hook: the first run of each function of ``bridged/``, in order."""

    def __init__(self) -> None:
        self.visits: list[Visit] = []
        self._seen: set[Any] = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code in self._seen or not code.co_filename.startswith(PACKAGE) or code.co_name.startswith("<"):
            return
        if frame.f_back is not None and frame.f_back.f_code.co_filename.startswith(TESTS):
            return  # run by a stand-in (FakeAri), not by the call
        self._seen.add(code)
        lines = [line for _, _, line in code.co_lines() if line is not None]
        path = str(Path(code.co_filename).relative_to(REPO_ROOT))
        self.visits.append(Visit(path, code.co_firstlineno, max(lines, default=0), code.co_qualname))

    def jumps(self) -> list[bool]:
        """For each visit after the first: is it a jump (another file, or above the previous one)?"""
        return [
            here.path != before.path or here.line < before.line
            for before, here in zip(self.visits, self.visits[1:], strict=False)
        ]


# The budgets' one statement (bridged.store.attempts): a limits.Tally of the window, and its now.
_BUDGETS_WINDOW = attempts._WINDOW
_TALLY = [field.name for field in fields(Tally)]
_NO_ATTEMPTS = {"calls": 0, "distinct_orders": 0, "refused_in_a_row": 0, "code_seen": False}


class _Pool:
    """Takes every statement; announces the one that ends the call's row."""

    def __init__(self, ended: asyncio.Event, row: dict[str, Any] | None = None) -> None:
        self.ended = ended
        self.row = row

    async def execute(self, sql: str, *args: Any) -> str:
        if "SET state = 'ended'" in sql:
            sys.setprofile(None)  # the row's end: the walk stops here
            self.ended.set()
        return "OK"

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return []

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        if sql == _BUDGETS_WINDOW:  # the database's now, no attempts in the manager's window
            return {"now": datetime.now(UTC), **{name: None for name in _TALLY}, **_NO_ATTEMPTS}
        return self.row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return None

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Pool]:
        yield self


async def _fastagi(port: int, channel_id: str) -> str:
    """One FastAGI session as Asterisk runs it for ``*77123`` from anna's phone; the BRIDGED_REPLY."""
    headers = {
        "agi_network_script": "order",
        "agi_channel": "PJSIP/anna-00000001",
        "agi_uniqueid": channel_id,
        "agi_arg_1": "123",
    }
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write("".join(f"{k}: {v}\n" for k, v in headers.items()).encode() + b"\n")
    reply = ""
    while line := (await reader.readline()).decode().strip():
        if line.startswith("SET VARIABLE BRIDGED_REPLY "):
            reply = line.split(" ", 3)[3].strip('"')
        writer.write(b"200 result=1\n")
    writer.close()
    return reply


async def _call(engine: CallEngine, ari: FakeAri, port: int, ended: asyncio.Event) -> None:
    reply = await _fastagi(port, "m-1")
    call_id = reply.split("|")[2].split(",")[2]  # ok|<language>|<app>,order,<call id>|<label>
    engine.on_event(stasis_start("m-1", ["order", call_id], state="Ring"))
    # The customer's leg is originated into [bridged-customer] (at the decision, as a rule) and enters
    # the application once answered: its StasisStart in state Up is the answer.
    rung = "originate_to_dialplan"
    await wait_until(lambda: bool(ari.named(rung)), what="the customer leg originated")
    customer = ari.named(rung)[0]["channel_id"]
    engine.on_event(answered(customer))
    await wait_until(lambda: bool(ari.named("add_channel")), what="the bridge")
    engine.on_event(channel_destroyed(customer, cause=16))
    await asyncio.wait_for(ended.wait(), 2)


async def walk() -> ReadingOrder:
    config = make_config()
    config = replace(config, agi=AgiConfig(host="127.0.0.1", port=0))
    ended = asyncio.Event()
    ari = FakeAri()
    store = Store(_Pool(ended))  # type: ignore[arg-type]
    directory = OrderDirectory(config.orders)
    order = {"phone": NUMBER, "customer_name": "Ivan Petrov", "manager_id": "anna"}
    directory._pool = _Pool(ended, order)  # type: ignore[assignment]
    holder = ConfigHolder(config)
    engine = CallEngine(holder, ari, store, is_connected=lambda: True)  # type: ignore[arg-type]
    ari.events = engine.on_event
    service = CallService(holder, store, directory, engine, accepting_calls=lambda: True)
    agi = AgiServer(holder, service)
    await agi.start()
    assert agi._server is not None
    port = agi._server.sockets[0].getsockname()[1]

    order_of_reading = ReadingOrder()
    # A call id without a run of digits in it, as about half of them are: the same walk every time.
    fixed_id = uuid.UUID("dcaab88c-f812-4f74-ae28-a82b07a70229")
    sys.setprofile(order_of_reading)
    try:
        with mock.patch("uuid.uuid4", return_value=fixed_id):
            await _call(engine, ari, port, ended)
    finally:
        sys.setprofile(None)
        await agi.stop()
        await engine.shutdown()
        await service.close()
    return order_of_reading


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.call_path", description=__doc__)
    parser.add_argument("--list", action="store_true", help="print the reading order")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the call's own log lines are not what is measured
    reading = asyncio.run(walk())
    jumps = reading.jumps()
    if args.list:
        for visit, jump in zip(reading.visits, [False, *jumps], strict=True):
            print(f"{'*' if jump else ' '} {visit.path}:{visit.line} {visit.name}")
    files = list(dict.fromkeys(v.path for v in reading.visits))
    print(f"files: {len(files)} ({', '.join(files)})")
    print(f"functions: {len(reading.visits)}")
    print(f"jumps: {sum(jumps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
