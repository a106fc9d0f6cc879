"""Per-manager budgets (bridged.limits.verdict) and canary matching (bridged.canaries)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridged.canaries import CanaryRegistry, e164_of, e164_of_order_phone, key_check, number_key
from bridged.config import Budget, ConfigError
from bridged.configfile import parse_config
from bridged.limits import ACCEPTED, RATE_LIMITED, Attempt, code_shape, verdict
from bridged.redact import PhoneNumber
from bridged.store.canaries import CanaryRow
from tests.unit.fakes import example_data

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
OFF = Budget(calls=None, distinct_orders=None, refused_in_a_row=None)


def _at(seconds_ago: float) -> datetime:
    return NOW - timedelta(seconds=seconds_ago)


def test_ten_refusals_in_a_row_stop_the_eleventh_until_the_first_leaves_the_window() -> None:
    attempts = [Attempt(_at(1000 - i), "unknown_order", None) for i in range(10)]
    found = verdict(attempts, now=NOW, window=HOUR, budget=Budget(), code="1")
    assert found is not None and (found.budget, found.count, found.limit) == ("refused_in_a_row", 10, 10)
    assert found.retry_after == 3600 - 1000  # the oldest of the run leaves the window then
    # An accepted call in between ends the run; bridged's own refusals neither count nor end it.
    broken = [*attempts[:5], Attempt(_at(500), ACCEPTED, "7"), *attempts[5:]]
    assert verdict(broken, now=NOW, window=HOUR, budget=Budget(), code="1") is None
    ours = [*attempts[:9], Attempt(_at(10), "lookup_failed", None)]
    assert verdict(ours, now=NOW, window=HOUR, budget=Budget(), code="1") is None


def test_an_order_already_called_is_no_new_order_and_rate_limited_attempts_do_not_count() -> None:
    attempts = [Attempt(_at(60 + i), ACCEPTED, str(i)) for i in range(3)]
    budget = Budget(calls=None, distinct_orders=3, refused_in_a_row=None)
    assert verdict(attempts, now=NOW, window=HOUR, budget=budget, code="1") is None
    found = verdict(attempts, now=NOW, window=HOUR, budget=budget, code="99")
    assert found is not None and found.budget == "distinct_orders"
    limited = [Attempt(_at(1), RATE_LIMITED, None)] * 50
    assert verdict(limited, now=NOW, window=HOUR, budget=Budget(refused_in_a_row=1), code="1") is None


@given(
    ages=st.lists(st.floats(min_value=0.001, max_value=7200), max_size=40),
    limit=st.integers(min_value=1, max_value=12),
    window=st.integers(min_value=1, max_value=3600),
)
def test_calls_budget_boundaries_and_retry_after(ages: list[float], limit: int, window: int) -> None:
    """Refused exactly when ``limit`` accepted calls lie within the window; Retry-After is when one leaves,
    and at that time (to the second) the next call is let through."""
    attempts = [Attempt(_at(age), ACCEPTED, "1") for age in ages]
    budget = Budget(calls=limit, distinct_orders=None, refused_in_a_row=None)
    span = timedelta(seconds=window)
    found = verdict(attempts, now=NOW, window=span, budget=budget, code="1")
    inside = sum(1 for age in ages if age < window)
    assert (found is not None) == (inside >= limit)
    if found is not None:
        assert 1 <= found.retry_after <= window
        later = NOW + timedelta(seconds=found.retry_after)
        assert verdict(attempts, now=later, window=span, budget=budget, code="1") is None
    assert verdict(attempts, now=NOW, window=span, budget=OFF, code="1") is None


@given(st.text(max_size=80))
def test_a_code_is_kept_as_a_length_and_a_shape_only(code: str) -> None:
    length, shape = code_shape(code, r"[0-9]{1,12}")
    assert 0 <= length <= 64 and shape in ("well_formed", "phone_like", "digits", "other")


def test_shapes() -> None:
    assert code_shape("12345", r"[0-9]{1,12}") == (5, "well_formed")
    assert code_shape("+7 916 123-45-67", r"[0-9]{1,12}") == (16, "phone_like")
    assert code_shape("1234567890123", r"[0-9]{1,12}") == (13, "phone_like")
    assert code_shape("12AB", r"[0-9]{1,12}") == (4, "other")
    # The whole value, not a number and whatever follows it ('$' alone lets a trailing newline through).
    assert code_shape("+7 916 123-45-67\n", r"[0-9]{1,12}") == (17, "other")


def _row(secret: str, e164: str) -> CanaryRow:
    return CanaryRow(
        "c1", number_key(secret, e164), e164[-2:], key_check(secret), "anna", None, "77", None, NOW, "admin"
    )


def test_a_canary_matches_its_number_however_written_and_only_under_its_key() -> None:
    secret, other = "s" * 40, "t" * 40
    registry = CanaryRegistry(None)
    registry.load([_row(secret, "+79161234567")], secret)
    for written in ("+7 916 123-45-67", "8 (916) 123 45 67"):
        assert registry.match(secret, e164_of(written, "RU")) is not None, written
    assert registry.match(secret, e164_of("+79161234568", "RU")) is None
    assert registry.match(other, e164_of("+79161234567", "RU")) is None
    # An order's phone in each dial format compares in E.164.
    assert e164_of_order_phone(PhoneNumber("79161234567"), "e164_no_plus", "RU") == "+79161234567"
    assert e164_of_order_phone(PhoneNumber("89161234567"), "national", "RU") == "+79161234567"
    # Registered under another key: left out (bridged warns).
    stale = CanaryRegistry(None)
    stale.load([_row(other, "+79161234567")], secret)
    assert len(stale) == 0


def test_limits_config_overrides_and_null_turns_a_budget_off() -> None:
    data = example_data()
    manager = data["managers"][0]["id"]
    data["limits"] = {
        "window": 600,
        "calls": 5,
        "managers": {manager: {"calls": None, "refused_in_a_row": 3}},
    }
    limits = parse_config(data).limits
    assert limits.window == 600 and limits.default == Budget(calls=5)
    assert limits.budget(manager) == Budget(calls=None, distinct_orders=40, refused_in_a_row=3)
    assert limits.keep_days == 90


def test_attempts_are_kept_at_least_the_longest_window() -> None:
    """limits.keep_days under 7 (the longest window) would let the retention pass delete attempts a
    budget counts: refused."""
    data = example_data()
    data["limits"] = {"keep_days": 30}
    assert parse_config(data).limits.keep_days == 30
    data["limits"] = {"keep_days": 6}
    with pytest.raises(ConfigError, match="keep_days"):
        parse_config(data)
