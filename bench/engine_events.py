"""``python -m bench.engine_events``: the CPU the call engine spends on the events of a call that change
nothing (issue 19), in process, Asterisk and the network left out.

Of the 13 events bridged's application receives for a ``*77`` call on the bench (traced on the rig,
bench/RESULTS.md), 9 mean nothing to the call: while the customer rings, the Dial events of its leg
(empty status, RINGING, ANSWER: a leg rung from the dialplan is answered by its StasisStart) and, once
bridged, the caller id bridged put back itself; after the call's end (the worker tearing it down), the
manager's StasisEnd and the customer's hangup requests (bridged's own DELETE, the end of its dialplan),
StasisEnd and ChannelDestroyed. Each goes through :meth:`CallEngine.on_event` as the websocket reader
hands it over, one per loop iteration: ``--calls`` calls in state ringing_customer, their workers
waiting, get the first four; then, their workers busy with the end (state ended), the other five.
Reports CPU time (``time.process_time``) per call for each part, best of ``--rounds``, on uvloop as the
daemon runs. Compare trees with ``PYTHONPATH=TREE python bench/engine_events.py``.

    python -m bench.engine_events [--calls 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import uvloop

from bridged.calls.engine import CallEngine
from bridged.calls.model import Call, CallState, customer_leg_id
from bridged.config import ConfigHolder
from tests.unit.fakes import (
    FakeAri,
    FakeStore,
    caller_id_changed,
    channel_destroyed,
    dial,
    hangup_request,
    make_config,
    make_label,
    make_order,
    manager,
    stasis_end,
)

Events = Callable[[Call], list[dict[str, Any]]]


def ringing(call: Call) -> list[dict[str, Any]]:
    customer = call.customer_channel_id or ""
    ours = caller_id_changed(customer, call.label.number, "Order 123 Ivan P.")
    return [dial(customer, ""), dial(customer, "RINGING"), dial(customer, "ANSWER", state="Up"), ours]


def after_the_end(call: Call) -> list[dict[str, Any]]:
    customer, own = call.customer_channel_id or "", call.manager_channel_id or ""
    return [
        stasis_end(own),
        hangup_request(customer, cause=32),
        stasis_end(customer),
        hangup_request(customer, cause=16),
        channel_destroyed(customer),
    ]


async def one_round(calls: int) -> tuple[float, float]:
    config = make_config()
    engine = CallEngine(ConfigHolder(config), FakeAri(), FakeStore(), is_connected=lambda: True)  # type: ignore[arg-type]
    label = make_label("123", "Ivan Petrov")
    made = []
    for n in range(calls):
        call = Call(
            id=f"call-{n}",
            manager=manager(config),
            order_id="123",
            direction="phone",
            order=make_order(),
            label=label,
            manager_channel_id=f"m-{n}",
            customer_channel_id=customer_leg_id(f"call-{n}"),
        )
        call.state = CallState.RINGING_CUSTOMER
        engine.register(call)
        made.append(call)
    await asyncio.sleep(0)  # the workers start and wait for their first event
    ring = await _feed(engine, made, ringing)
    for call in made:  # as in Steps.finish: ended, the worker still at work (its last requests)
        call.state = CallState.ENDED
        assert call.task is not None
        call.task.cancel()
    await asyncio.gather(*(c.task for c in made if c.task is not None), return_exceptions=True)
    end = await _feed(engine, made, after_the_end)
    return ring / calls, end / calls


async def _feed(engine: CallEngine, calls: list[Call], events: Events) -> float:
    """The events of every call, the n-th of each in the same loop iteration; CPU seconds."""
    each = [events(call) for call in calls]
    started = time.process_time()
    for n in range(len(each[0])):
        for call_events in each:
            engine.on_event(call_events[n])
        await asyncio.sleep(0)  # the woken workers run
        await asyncio.sleep(0)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine_events", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = [uvloop.run(one_round(args.calls)) for _ in range(args.rounds)]
    ring = min(r[0] for r in results) * 1e6
    end = min(r[1] for r in results) * 1e6
    print(f"{args.calls} calls, best of {args.rounds} rounds, CPU per call:")
    print(f"  ringing, the worker waiting (4 events: 3 Dial, our caller id): {ring:.1f} us")
    print(f"  after the end, the worker busy (5 events):                   {end:.1f} us")


if __name__ == "__main__":
    main()
