"""Orders and who may call them: the lookup in the shop's database and the authorization policy."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import asyncpg

from . import db, metrics
from .config import Config, Manager, OrdersConfig
from .phones import InvalidPhone, parse_phone
from .redact import PhoneNumber

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Order:
    id: str
    # None: the shop's value is not a valid number (the call is refused, never dialled).
    phone: PhoneNumber | None
    customer_name: str
    manager_id: str | None


class LookupFailed(Exception):
    """The shop's database could not answer (down, slow, or the query is broken)."""


class OrderDirectory:
    """Resolves an order id to its customer, server-side, through the configured query."""

    def __init__(self, config: OrdersConfig) -> None:
        self._config = config
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def lookup(self, order_id: str) -> Order | None:
        try:
            async with asyncio.timeout(self._config.timeout):
                pool = await self._get_pool()
                row = await pool.fetchrow(self._config.query, order_id)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The exception text may quote the query or parameters; only its type is logged.
            metrics.LOOKUP_ERRORS.inc()
            raise LookupFailed(type(exc).__name__) from None
        if row is None:
            return None
        try:
            phone = row["phone"]
            name = row["customer_name"]
            manager_id = row["manager_id"]
        except KeyError:
            metrics.LOOKUP_ERRORS.inc()
            raise LookupFailed("query must return phone, customer_name and manager_id") from None
        return Order(
            id=order_id,
            # An order without a number is a known order that cannot be called: refused as invalid_phone.
            phone=None if phone is None else self._parse_phone(phone),
            customer_name=str(name or ""),
            manager_id=None if manager_id is None else str(manager_id),
        )

    async def _get_pool(self) -> asyncpg.Pool:
        # Created lazily with min_size=0: the daemon starts, and keeps serving refusals with a
        # prompt, while the shop's database is down.
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._config.dsn,
                    min_size=0,
                    max_size=5,
                    timeout=self._config.timeout,
                    reset=db.release_as_is,  # the lookup is one SELECT: no round trip on release
                )
            return self._pool

    def _parse_phone(self, value: object) -> PhoneNumber | None:
        try:
            return parse_phone(
                str(value), region=self._config.default_region, dial_format=self._config.dial_format
            )
        except InvalidPhone:
            return None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def is_valid_code(config: OrdersConfig, code: str) -> bool:
    return re.fullmatch(config.code_pattern, code) is not None


def may_call(config: Config, manager: Manager, order: Order) -> bool:
    """The manager-order policy: ``own`` orders, the ``team``'s orders, or ``any``."""
    if config.policy == "any":
        return True
    if order.manager_id is None:
        return False
    if order.manager_id == manager.id:
        return True
    if config.policy == "team":
        owner = config.manager_by_id(order.manager_id)
        return owner is not None and owner.team is not None and owner.team == manager.team
    return False
