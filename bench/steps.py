"""``python -m bench.steps --config FILE``: bridged with every ARI request, SQL statement and FastAGI
command timed, one ``STEP <what> <ms>`` log line each (for ``bench.run --steps``; not for production).

The timing is done by wrapping the methods at their boundary (``AriClient._call``, the store's and the
order directory's coroutines, the FastAGI command helper), so what is measured is exactly what the
daemon awaits on a call's setup path.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
from typing import Any

from bridged import agi, orders, service
from bridged.__main__ import main
from bridged.ari import client
from bridged.calls import engine, model
from bridged.calls import steps as _steps
from bridged.store.attempts import ManagerAttempts
from bridged.store.audit import AuditTrail
from bridged.store.callers import StickyCallers
from bridged.store.calls import CallRows
from bridged.store.idempotency import IdempotencyKeys
from bridged.store.outbox import WebhookOutbox
from bridged.store.settings import Settings

log = logging.getLogger("bench.steps")


def _timed(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            log.info("STEP %s %.3f", name, (time.perf_counter() - t0) * 1000)

    return wrapper


def _wrap_class(cls: type, prefix: str) -> None:
    for attr, fn in list(vars(cls).items()):
        if inspect.iscoroutinefunction(fn) and not attr.startswith("__"):
            setattr(cls, attr, _timed(f"{prefix}.{attr}", fn))


def install() -> None:
    original_call = client.AriClient._call

    @functools.wraps(original_call)
    async def call(self: Any, op_name: str, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await original_call(self, op_name, *args, **kwargs)
        finally:
            log.info("STEP ari.%s %.3f", op_name, (time.perf_counter() - t0) * 1000)

    client.AriClient._call = call  # type: ignore[method-assign]
    for aggregate in (
        CallRows,
        AuditTrail,
        IdempotencyKeys,
        WebhookOutbox,
        Settings,
        StickyCallers,
        ManagerAttempts,
    ):
        _wrap_class(aggregate, "db")
    orders.OrderDirectory.lookup = _timed("orders.lookup", orders.OrderDirectory.lookup)  # type: ignore[method-assign]
    orders.OrderDirectory.reverse_lookup = _timed(  # type: ignore[method-assign]
        "orders.reverse_lookup", orders.OrderDirectory.reverse_lookup
    )
    service.CallService.take_inbound = _timed(  # type: ignore[method-assign]
        "service.take_inbound(total)", service.CallService.take_inbound
    )
    service.CallService._phone_row = _timed(  # type: ignore[method-assign]
        "service.phone_row(total)", service.CallService._phone_row
    )
    # The reaction table holds the function itself: timed there.
    ring_customer = _timed("steps.ring_customer(total)", _steps.Steps.ring_customer)
    for key, reaction in list(engine.REACTIONS.items()):
        if reaction is _steps.Steps.ring_customer:
            engine.REACTIONS[key] = ring_customer
    agi._command = _timed("agi.command", agi._command)
    agi.get_var = _timed("agi.get_var", agi.get_var)
    agi.AgiServer.order = _timed("agi.order(total)", agi.AgiServer.order)  # type: ignore[method-assign]
    # From the FastAGI answer sent to the manager's StasisStart taken (the dialplan, Stasis(), the event).
    answered: dict[str, float] = {}
    order = agi.AgiServer.order

    @functools.wraps(order)
    async def timed_order(self: Any, request: Any) -> None:
        try:
            await order(self, request)
        finally:
            answered[request.headers.get("agi_uniqueid", "")] = time.perf_counter()

    agi.AgiServer.order = timed_order  # type: ignore[method-assign]
    start_phone_call = engine.CallEngine._start_phone_call

    # Which comes first on a phone call, its row written or its StasisStart, and by how much (the call
    # goes on in Stasis once both are there; the customer is rung at the decision, before either).
    row_done: dict[str, float] = {}
    row_being_written = model.PendingCall.row_being_written

    def timed_row(self: Any, written: Any) -> None:
        call_id = self.call_id
        written.add_done_callback(lambda _: row_done.__setitem__(call_id, time.perf_counter()))
        row_being_written(self, written)

    def timed_start(self: Any, call_id: str, channel_id: str, event: Any) -> None:
        now = time.perf_counter()
        if (t0 := answered.pop(channel_id, None)) is not None:
            log.info("STEP agi_answer_to_stasis_start %.3f", (now - t0) * 1000)
        if (t1 := row_done.pop(call_id, None)) is not None:
            log.info("STEP row_written_before_stasis_start %.3f", (now - t1) * 1000)
        elif (pending := self._pending.get(call_id)) is not None and pending.row_written is not None:
            pending.row_written.add_done_callback(
                lambda _: log.info(
                    "STEP row_written_after_stasis_start %.3f", (time.perf_counter() - now) * 1000
                )
            )
        start_phone_call(self, call_id, channel_id, event)

    model.PendingCall.row_being_written = timed_row  # type: ignore[method-assign]
    engine.CallEngine._start_phone_call = timed_start  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    sys.exit(main(["run", *sys.argv[1:]]))
