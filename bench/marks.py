"""``python -m bench.marks --config FILE``: bridged with the wall-clock time of each point on a phone
call's way from the FastAGI connection to the customer's originate written, one ``MARKS`` log line per
call (for ``BENCH_MARKS=1 python -m bench.run --only latency``, beside ``BENCH_WIRE=1``; not for
production).

The times are kept in memory and logged once the FastAGI answer is written, off the setup's path, so
that the marks cost the path a few microseconds each, not a log line each. ``time.time()``: the same
clock as the packets ``bench.wire`` captures, so ``python -m bench.wire WIRE --marks LOG`` puts them in
one timeline.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
from typing import Any

from bridged import agi, budgets, canaries, labels, orders, service
from bridged.__main__ import main
from bridged.ari import client, transport
from bridged.calls import engine
from bridged.calls import steps as _steps

log = logging.getLogger("bench.marks")

_marks: list[tuple[str, float]] = []


def mark(name: str) -> None:
    _marks.append((name, time.time()))


def _around(owner: Any, attr: str, name: str) -> None:
    fn = getattr(owner, attr)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            mark(f"{name}>")
            try:
                return await fn(*args, **kwargs)
            finally:
                mark(f"{name}<")

    else:

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            mark(f"{name}>")
            try:
                return fn(*args, **kwargs)
            finally:
                mark(f"{name}<")

    setattr(owner, attr, timed)


def install() -> None:
    connection = agi.AgiServer._connection

    @functools.wraps(connection)
    async def accepted(self: Any, reader: Any, writer: Any) -> None:
        _marks.clear()
        mark("agi_accepted")
        await connection(self, reader, writer)

    agi.AgiServer._connection = accepted  # type: ignore[method-assign]
    _around(agi, "_read_headers", "read_headers")
    _around(agi.AgiServer, "order", "order")
    _around(service.CallService, "place_from_phone", "place_from_phone")
    _around(service.CallService, "_decide", "decide")
    _around(orders.OrderDirectory, "lookup", "lookup")
    _around(orders.OrderDirectory, "_fetchrow", "fetchrow")
    _around(orders.OrderDirectory, "_parse_phone", "parse_phone")
    _around(service.CallService, "_order_for", "order_for")
    _around(labels.Labeller, "label", "label")
    _around(budgets.Budgets, "attempt", "attempt")
    _around(canaries.CanaryRegistry, "of_order", "canary")
    _around(service, "new_call_id", "new_call_id")
    _around(engine.CallEngine, "expect", "expect")
    _around(_steps, "leg_variables", "leg_variables")
    _around(client.AriClient, "_prepare", "ari_prepare")
    _around(transport.HttpTransport, "request", "http_request")
    _around(_steps.Steps, "originate_customer", "originate_customer")
    _around(transport.HttpTransport, "_head", "http_head")

    send = agi._send

    @functools.wraps(send)
    async def sent(request: Any, command: str) -> Any:
        mark("agi_send>")
        try:
            return await send(request, command)
        finally:
            if command.startswith("SET VARIABLE BRIDGED_REPLY"):
                log.info("MARKS %s", " ".join(f"{n}={t:.6f}" for n, t in _marks))
                _marks.clear()

    agi._send = sent


if __name__ == "__main__":
    install()
    sys.exit(main(["run", *sys.argv[1:]]))
