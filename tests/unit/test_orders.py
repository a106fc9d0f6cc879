"""OrderDirectory.lookup: the shop's row becomes an Order; its phone value is parsed, never trusted."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bridged.orders import CallerOrder, LookupFailed, OrderDirectory
from bridged.redact import PhoneNumber
from tests.unit.fakes import FakePool, make_config


def _directory(row: dict[str, Any] | None, **orders: Any) -> OrderDirectory:
    config = make_config().orders
    directory = OrderDirectory(replace(config, **orders))
    directory._pool = FakePool(row)  # type: ignore[assignment]
    return directory


def _row(phone: Any, name: str = "Ivan Petrov", manager_id: str | None = "anna") -> dict[str, Any]:
    return {"phone": phone, "customer_name": name, "manager_id": manager_id}


async def test_a_valid_number_becomes_its_dial_string() -> None:
    order = await _directory(_row("+7 (916) 123-45-67")).lookup("123")
    assert order is not None and order.phone is not None
    assert order.phone.dialable() == "+79161234567"
    assert (order.id, order.customer_name, order.manager_id) == ("123", "Ivan Petrov", "anna")


async def test_default_region_and_dial_format_apply() -> None:
    order = await _directory(_row("8 916 123-45-67"), default_region="RU", dial_format="national").lookup("1")
    assert order is not None and order.phone is not None and order.phone.dialable() == "89161234567"
    # Without a region the same value has no country code: not dialled.
    order = await _directory(_row("8 916 123-45-67")).lookup("1")
    assert order is not None and order.phone is None


@pytest.mark.parametrize("phone", ["+7916123456@evil.example", "1" * 60, "9161234567", "", None, 79161234567])
async def test_a_value_that_is_not_a_valid_number_is_a_known_order_without_a_number(phone: Any) -> None:
    order = await _directory(_row(phone)).lookup("123")
    assert order is not None
    assert order.phone is None
    assert order.id == "123" and order.manager_id == "anna"


async def test_unknown_order_and_broken_query() -> None:
    assert await _directory(None).lookup("123") is None
    with pytest.raises(LookupFailed):
        await _directory({"phone": "+79161234567"}).lookup("123")


# -- the reverse lookup of an inbound caller ---------------------------------------------------------------

CALLER = PhoneNumber("+79161234567")


def _caller_row(order_id: Any, name: Any = "Ivan Petrov", manager_id: Any = "anna") -> dict[str, Any]:
    return {"order_id": order_id, "customer_name": name, "manager_id": manager_id}


async def test_a_callers_order_is_found_by_their_number_in_e164() -> None:
    directory = _directory(_caller_row(123), reverse_query="SELECT ... WHERE phone = $1")
    found = await directory.reverse_lookup(CALLER)
    assert found == CallerOrder(id="123", customer_name="Ivan Petrov", manager_id="anna")
    assert directory._pool.queries == [("SELECT ... WHERE phone = $1", ("+79161234567",))]  # type: ignore[union-attr]


async def test_no_reverse_query_no_row_and_a_broken_query() -> None:
    assert await _directory(_caller_row(123), reverse_query=None).reverse_lookup(CALLER) is None
    assert await _directory(None, reverse_query="q $1").reverse_lookup(CALLER) is None
    with pytest.raises(LookupFailed):
        await _directory({"order": 1}, reverse_query="q $1").reverse_lookup(CALLER)


@pytest.mark.parametrize(
    "order_id",
    [None, "", "12 3", "sip:123@host", "1" * 13, "79161234567", "9161234567", "00079161234567"[-12:]],
)
async def test_an_order_id_bridged_could_not_dial_or_that_holds_the_callers_number_is_not_shown(
    order_id: Any,
) -> None:
    """Shop data is hostile: an id outside orders.code_pattern (nobody could call it back), or one that
    holds the caller's number (it would be the label), is no order."""
    assert await _directory(_caller_row(order_id), reverse_query="q $1").reverse_lookup(CALLER) is None
