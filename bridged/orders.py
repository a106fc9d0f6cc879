"""Orders and who may call them: the lookup in the shop's database (by order code, and by an inbound
caller's number) and the authorization policy."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import asyncpg

from . import db, metrics
from .config import Config, Manager, OrdersConfig
from .outcomes import Refusal
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


@dataclass(frozen=True)
class CallerOrder:
    """An inbound caller's most recent order (``orders.reverse_query``): no phone number in it."""

    id: str
    customer_name: str
    manager_id: str | None


class LookupFailed(Exception):
    """The shop's database could not answer (down, slow, or the query is broken)."""


# The columns each query must return, by name.
ORDER_COLUMNS = ("phone", "customer_name", "manager_id")
CALLER_COLUMNS = ("order_id", "customer_name", "manager_id")
# How many trailing digits of a caller's number make an order id "hold the number".
_NUMBER_TAIL = 7


class OrderDirectory:
    """Resolves an order id to its customer, server-side, through the configured query."""

    def __init__(self, config: OrdersConfig) -> None:
        self._config = config
        self._pool: db.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def lookup(self, order_id: str) -> Order | None:
        row = await self._fetchrow(self._config.query, order_id)
        if row is None:
            return None
        try:
            phone = row["phone"]
            name = row["customer_name"]
            manager_id = row["manager_id"]
        except KeyError:
            metrics.LOOKUP_ERRORS.inc()
            raise LookupFailed(f"query must return {', '.join(ORDER_COLUMNS)}") from None
        return Order(
            id=order_id,
            # An order without a number is a known order that cannot be called: refused as invalid_phone.
            phone=None if phone is None else self._parse_phone(phone),
            customer_name=str(name or ""),
            manager_id=None if manager_id is None else str(manager_id),
        )

    async def reverse_lookup(self, number: PhoneNumber) -> CallerOrder | None:
        """The most recent order of the caller whose number (E.164) is ``number``; None without
        ``orders.reverse_query``, or when the shop has no order for it that bridged may show."""
        query = self._config.reverse_query
        if query is None:
            return None
        row = await self._fetchrow(query, number.dialable())
        if row is None:
            return None
        try:
            order_id, name, manager_id = (row[column] for column in CALLER_COLUMNS)
        except KeyError:
            metrics.LOOKUP_ERRORS.inc()
            raise LookupFailed(f"reverse query must return {', '.join(CALLER_COLUMNS)}") from None
        order_id = None if order_id is None else str(order_id)
        if order_id is None or not is_valid_code(self._config, order_id):
            # An id a manager could not dial could not be called back either, and is not shown.
            log.warning("reverse lookup: the shop's order id is one orders.code_pattern refuses; not shown")
            return None
        digits = "".join(ch for ch in order_id if ch.isdigit())
        if number.dialable()[-_NUMBER_TAIL:] in digits:
            # Shop data is hostile: an "order id" that holds the caller's number would be shown as the label.
            log.warning("reverse lookup: the shop's order id holds the caller's number; not shown")
            return None
        return CallerOrder(
            id=order_id,
            customer_name=str(name or ""),
            manager_id=None if manager_id is None else str(manager_id),
        )

    async def _fetchrow(self, query: str, argument: str) -> asyncpg.Record | None:
        try:
            async with asyncio.timeout(self._config.timeout):
                pool = self._pool or await self._get_pool()  # the lock only until it exists
                row: asyncpg.Record | None = await pool.fetchrow(query, argument)
                return row
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The exception text may quote the query or parameters; only its type is logged.
            metrics.LOOKUP_ERRORS.inc()
            raise LookupFailed(type(exc).__name__) from None

    async def _get_pool(self) -> db.Pool:
        # Created lazily with min_size=0: the daemon starts, and keeps serving refusals with a
        # prompt, while the shop's database is down.
        async with self._pool_lock:
            if self._pool is None:
                # The lookup is one SELECT: no round trip on release, and a connection kept for the next.
                self._pool = await db.create_pool(
                    self._config.dsn, min_size=0, max_size=5, connect_timeout=self._config.timeout
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


async def order_to_call(
    directory: OrderDirectory, config: Config, manager: Manager, code: str
) -> Order | Refusal:
    """The order ``code``, if ``manager`` may call its customer; else why not."""
    try:
        order = await directory.lookup(code)
    except LookupFailed as exc:
        log.warning("order lookup failed for order %s: %s", code, exc)
        return Refusal.LOOKUP_FAILED
    if order is None:
        return Refusal.UNKNOWN_ORDER
    if not may_call(config, manager, order):
        return Refusal.DENIED
    if order.phone is None:
        # Dialling what is left of a value that is not a valid number reaches a stranger. The value
        # itself goes nowhere: not in the log, not in the audit row.
        return Refusal.INVALID_PHONE
    return order


# -- check-config: the queries against the shop's database ------------------------------------------------

# Types a text parameter may be declared as ($1 without a cast is text when compared with a text column).
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name", "unknown"})


class ShopUnreachable(Exception):
    """The shop's database could not be asked (down, refused, timed out): the queries were not checked."""


async def check_queries(config: OrdersConfig) -> list[tuple[str, str]]:
    """Problems of ``orders.query`` and ``orders.reverse_query`` as the shop's database sees them, each
    ``(key, message)``: they are prepared (never run: no row is read) and their result columns and
    parameter compared with what bridged reads. Raises :class:`ShopUnreachable`."""
    queries = [("orders.query", config.query, ORDER_COLUMNS)]
    if config.reverse_query is not None:
        queries.append(("orders.reverse_query", config.reverse_query, CALLER_COLUMNS))
    try:
        async with asyncio.timeout(config.timeout):
            conn = await asyncpg.connect(config.dsn)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ShopUnreachable(getattr(exc, "strerror", None) or type(exc).__name__) from None
    problems: list[tuple[str, str]] = []
    try:
        for key, query, columns in queries:
            try:
                async with asyncio.timeout(config.timeout):
                    statement = await conn.prepare(query)
            except asyncpg.PostgresError as exc:
                # The server's message names what is wrong (a column, a table); it quotes no row.
                problems.append((key, f"the shop's database refuses it: {type(exc).__name__}: {exc}"))
                continue
            except (TimeoutError, OSError, asyncpg.InterfaceError) as exc:
                raise ShopUnreachable(type(exc).__name__) from None
            names = [attribute.name for attribute in statement.get_attributes()]
            missing = [c for c in columns if c not in names]
            if missing:
                problems.append(
                    (key, f"returns {', '.join(names) or 'no column'}; it must return {', '.join(columns)}")
                )
            parameters = [p.name for p in statement.get_parameters()]
            if len(parameters) != 1:
                problems.append((key, f"takes {len(parameters)} parameters; it must take $1 only"))
            elif parameters[0] not in _TEXT_TYPES:
                problems.append((key, f"takes $1 as {parameters[0]}; bridged passes text (cast: $1::text)"))
    finally:
        await conn.close()
    return problems
