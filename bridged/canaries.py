"""Canary orders: numbers the shop owns, planted as fake customers in one manager's (or team's) segment of
the shop's order database, to find out who leaked a customer base.

- A call from outside to a canary number is the alarm (bridged.service ``take_inbound``): the caller hears
  a plausible answer and is recorded, the row is ``canary``, and the shop gets ``canary.called``.
- A manager calling the canary order through bridged hears what an unanswered customer sounds like; the
  attempt is a ``canary.touched`` audit row, and the carrier is never dialled.

A canary's number is matched by its keyed hash (HMAC-SHA256 under ``inbound.secret`` of the number in
E.164, as callers are: bridged.callers): the table keeps that and the last two digits only, so whoever
reads bridged's database (or a backup) cannot list the shop's canary numbers, and no number has to be
read back. The registry is held in memory (matching costs no query on a call's path) and read again from
the database after each change and every :data:`REFRESH_SECONDS` (another daemon's change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import metrics
from .callers import caller_key
from .phones import InvalidPhone, parse_phone
from .redact import PhoneNumber
from .store.audit import AuditTrail
from .store.base import DatabaseUnavailable
from .store.canaries import Canaries, CanaryRow
from .store.deferred import DeferredWrites

if TYPE_CHECKING:
    from .config import OrdersConfig
    from .orders import Order

log = logging.getLogger(__name__)

REFRESH_SECONDS = 30.0
# What key_check is the HMAC of: tells whether a canary was keyed with the secret in force.
_KEY_CHECK_MATERIAL = "bridged-canary-key-check"


def number_key(secret: str, e164: str) -> str:
    """The keyed hash a canary number is kept and matched by (the material callers are keyed by)."""
    return caller_key(secret, f"e164:{e164}")


def key_check(secret: str) -> str:
    return caller_key(secret, _KEY_CHECK_MATERIAL)[:16]


def e164_of(value: str, region: str | None) -> str | None:
    """``value`` (a DID as the carrier writes it, a number an admin typed) in E.164, or None."""
    try:
        return parse_phone(value.strip()[:64], region=region, dial_format="e164").dialable()
    except InvalidPhone:
        return None


def e164_of_order_phone(phone: PhoneNumber, dial_format: str, region: str | None) -> str | None:
    """An order's phone (its dial string, in ``orders.dial_format``) in E.164, to compare with canaries."""
    dialable = phone.dialable()
    if dial_format == "e164_no_plus":
        dialable = "+" + dialable
    return e164_of(dialable, region)


@dataclass(frozen=True)
class Canary:
    id: str
    manager_id: str | None
    team: str | None
    order_id: str
    last_digits: str


class CanaryRegistry:
    """The canaries in force, by their number's keyed hash."""

    def __init__(self, store: Canaries | None) -> None:
        self._store = store
        self._by_key: dict[str, Canary] = {}
        self._task: asyncio.Task[None] | None = None
        self._reads = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def of_order(self, order: Order, orders: OrdersConfig, secret: str | None) -> Canary | None:
        """The canary whose number is the order's phone, if any (compared in E.164, by keyed hash)."""
        if order.phone is None or not self._by_key:
            return None
        return self.match(secret, e164_of_order_phone(order.phone, orders.dial_format, orders.default_region))

    def match(self, secret: str | None, e164: str | None) -> Canary | None:
        if not self._by_key or secret is None or e164 is None:
            return None
        return self._by_key.get(number_key(secret, e164))

    async def refresh(self, secret: str | None) -> None:
        """Read the canaries again; rows keyed with another secret are left out (and warned about)."""
        if self._store is None:
            return
        # A read that began before a later one (the periodic refresh racing an API change) is stale.
        self._reads += 1
        mine = self._reads
        rows = await self._store.all()
        if mine == self._reads:
            self.load(rows, secret)

    def load(self, rows: list[CanaryRow], secret: str | None) -> None:
        check = key_check(secret) if secret is not None else None
        usable = [r for r in rows if r.key_check == check]
        if len(usable) < len(rows):
            log.warning(
                "%d canaries were registered under another inbound.secret (or none is set): not matched;"
                " register them again",
                len(rows) - len(usable),
            )
        self._by_key = {
            r.number_key: Canary(r.id, r.manager_id, r.team, r.order_id, r.last_digits) for r in usable
        }

    def start(self, secret: Callable[[], str | None]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresher(secret), name="canaries")

    async def _refresher(self, secret: Callable[[], str | None]) -> None:
        while True:
            try:
                await self.refresh(secret())
            except DatabaseUnavailable as exc:
                log.warning("canaries not refreshed: bridged's database is unavailable (%s)", exc)
            except Exception:
                log.exception("canaries not refreshed")
            await asyncio.sleep(REFRESH_SECONDS)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def canary_touched(
    deferred: DeferredWrites,
    audit: AuditTrail,
    call_id: str,
    manager_id: str,
    canary: Canary,
    row_written: asyncio.Future[bool] | None = None,
) -> None:
    """A manager called a canary order: no alarm (the shop planted it in their segment, calling it is
    their work), but admins see it in the audit trail. The call itself rings out as an unanswered
    customer would, without dialling the carrier (bridged.calls.steps).

    The audit row names the call, so it follows the call's row: a phone call's is written in the
    background (``row_written``); without one there is no call, and the refusal's row says so."""
    if row_written is not None and not await asyncio.shield(row_written):
        return
    metrics.CANARY_TOUCHES.inc()
    log.info("call %s: manager %s called a canary order; the carrier is not dialled", call_id, manager_id)
    await deferred.write(
        f"call {call_id} canary touch audit row",
        lambda: audit.add(
            actor=manager_id,
            action="canary.touched",
            outcome="not_dialled",
            call_id=call_id,
            order_id=canary.order_id,
            details={"canary": canary.id, "manager_id": manager_id},
        ),
    )
