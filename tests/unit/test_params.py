"""The edge of the HTTP API, over generated input: every parameter parser returns a value PostgreSQL and
asyncpg take, or refuses with a 4xx (never another exception); cursors that were tampered with are
always refused with 422 invalid_cursor; JSON bodies are bounded in depth and free of control characters.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from bridged.api import openapi, params
from bridged.api.cursors import CursorCodec
from bridged.api.errors import ApiError, InvalidCursor, InvalidJson, InvalidParameter, InvalidRequest

ANY_TEXT = st.text(st.characters(codec=None), max_size=60)  # every code point, surrogates included
DIGITS_OF_EVERY_SCRIPT = st.text(st.characters(categories=["Nd"]), min_size=1, max_size=4)

T = TypeVar("T")


def refused_or(function: Callable[..., T], *args: Any) -> T | None:
    """The parser's value, or None if it refused with InvalidParameter (any other exception fails)."""
    try:
        return function(*args)
    except InvalidParameter as exc:
        assert exc.status == 422 and exc.error_id == "invalid_parameter"
        return None


# -- integers ---------------------------------------------------------------------------------------


@given(st.one_of(ANY_TEXT, DIGITS_OF_EVERY_SCRIPT, st.integers(-(10**12), 10**12).map(str)))
@example("١٢")  # Arabic-Indic 12: str.isdigit() is True, and int() reads it
@example("１２")  # fullwidth
@example("12\n")
@example(" 12")
@example("+12")
@example("0x10")
@example("1_0")
def test_integers_are_ascii_digits_within_range_or_refused(text: str) -> None:
    value = refused_or(params.parse_int, text, "limit", 1, 200)
    if value is not None:
        assert set(text) <= set(string.digits) and 1 <= value <= 200 and int(text) == value
    else:
        assert not (set(text) <= set(string.digits) and text and 1 <= int(text) <= 200)


# -- times ------------------------------------------------------------------------------------------

ZONES = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)))


@given(st.datetimes(timezones=st.one_of(st.none(), ZONES)))
@example(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))))  # no datetime in UTC
@example(datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5))))  # year 10000 in UTC
@example(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC))
@example(datetime(1970, 1, 1, tzinfo=UTC))
@example(datetime(2000, 1, 1, tzinfo=timezone(timedelta(microseconds=1))))  # an offset with a fraction
def test_times_within_1970_to_9999_in_utc_are_taken_and_others_refused(when: datetime) -> None:
    value = refused_or(params.parse_time, when.isoformat(), "from")
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    try:
        in_utc: datetime | None = aware.astimezone(UTC)
    except OverflowError:
        in_utc = None
    # An offset of whole minutes, as every real zone has (one with seconds is refused).
    offset = aware.utcoffset()
    assert offset is not None  # aware has a tzinfo
    whole_minutes = offset % timedelta(minutes=1) == timedelta(0)
    expected = in_utc is not None and in_utc.year >= 1970 and whole_minutes
    assert (value is not None) == expected, (when, value)
    if value is not None:
        assert value == in_utc and value.tzinfo is UTC


@given(ANY_TEXT)
@example("2026-01-31T09:00:00 00:00")  # a "+" the URL turned into a space
@example("２０２６-01-01")
@example("2026-01-01T00:00:00\x00")
def test_any_text_as_a_time_is_a_utc_time_in_range_or_refused(text: str) -> None:
    value = refused_or(params.parse_time, text, "to")
    if value is not None:
        assert value.tzinfo is UTC and params.TIME_MIN <= value <= params.TIME_MAX
        value.astimezone(timezone(timedelta(hours=-23)))  # asyncpg may convert: no overflow either way


# -- text, ids, booleans ----------------------------------------------------------------------------


def _printable(text: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


@given(ANY_TEXT)
@example("anna\x00")
@example("\ud800")
@example("   ")
@example("a" * 65)
@example("anna\n")  # schemathesis found it accepted: the OpenAPI pattern refuses control characters
def test_text_is_printable_stripped_and_bounded_or_refused(text: str) -> None:
    """What parse_text takes is what the OpenAPI document's text() pattern allows, stripped."""
    value = refused_or(params.parse_text, text, "manager", 64)
    documented = bool(re.fullmatch(openapi.text(64)["pattern"], text)) and len(text) <= 64
    if value is not None:
        assert documented
        assert value == text.strip() and 1 <= len(value) <= 64 and _printable(value)
        value.encode("utf-8")  # what asyncpg does with it
    else:
        assert not (documented and text.strip() and _printable(text))


@given(ANY_TEXT)
@example("0123456789abcdef0123456789abcdef")
@example("no-such-call")
@example("c1\x00")
def test_ids_are_short_and_plain_or_refused(text: str) -> None:
    value = refused_or(params.parse_id, text, "call")
    assert (value is not None) == (
        0 < len(text) <= 64 and set(text) <= set(string.ascii_letters + string.digits + "._-")
    )


@given(ANY_TEXT)
def test_booleans_are_the_six_words_or_refused(text: str) -> None:
    value = refused_or(params.parse_bool, text, "download")
    assert value == {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
        text.strip().lower()
    )


# -- cursors ----------------------------------------------------------------------------------------

CODEC = CursorCodec("a-secret-only-this-test-knows-" + "x" * 16)
IN_RANGE = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
CALL_IDS = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
AUDIT_IDS = st.integers(1, 2**63 - 1)


def refused_cursor(decode: Callable[[str], object], cursor: str) -> None:
    with pytest.raises(InvalidCursor) as raised:
        decode(cursor)
    assert raised.value.status == 422 and raised.value.error_id == "invalid_cursor"


@given(IN_RANGE, CALL_IDS, AUDIT_IDS)
def test_cursors_round_trip(at: datetime, call_id: str, audit_id: int) -> None:
    assert CODEC.decode_calls(CODEC.encode("calls", at, call_id)) == (at, call_id)
    assert CODEC.decode_audit(CODEC.encode("audit", at, audit_id)) == (at, audit_id)
    assert len(CODEC.encode("calls", at, call_id)) <= 400  # the parameter's documented bound
    refused_cursor(CODEC.decode_audit, CODEC.encode("calls", at, call_id))  # a cursor of another list


@given(IN_RANGE, CALL_IDS, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_a_tampered_cursor_is_always_refused_with_422(
    at: datetime, call_id: str, data: st.DataObject
) -> None:
    cursor = CODEC.encode("calls", at, call_id)
    alphabet = string.ascii_letters + string.digits + "-_.=+/ \x00é"
    position = data.draw(st.integers(0, len(cursor)), label="position")
    tampered = data.draw(
        st.one_of(
            # one character replaced, inserted, or removed
            st.sampled_from(alphabet).map(lambda c: cursor[:position] + c + cursor[position + 1 :]),
            st.sampled_from(alphabet).map(lambda c: cursor[:position] + c + cursor[position:]),
            st.just(cursor[:position] + cursor[position + 1 :]),
            st.just(cursor[:position]),
        ),
        label="tampered",
    )
    assume(tampered != cursor)
    refused_cursor(CODEC.decode_calls, tampered)


@given(ANY_TEXT)
@example("eyJrIjoxfQ.AAAAAAAAAAAAAAAAAAAAAA")
def test_any_text_as_a_cursor_is_refused_with_422(text: str) -> None:
    refused_cursor(CODEC.decode_calls, text)
    refused_cursor(CODEC.decode_audit, text)


def test_a_cursor_survives_a_new_codec_over_the_same_secret_but_not_another() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    cursor = CODEC.encode("calls", at, "c1")
    assert CursorCodec("a-secret-only-this-test-knows-" + "x" * 16).decode_calls(cursor) == (at, "c1")
    refused_cursor(CursorCodec("y" * 64).decode_calls, cursor)


# -- JSON bodies ------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=20,
)


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [*value.keys(), *(s for v in value.values() for s in _strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@given(JSON_VALUES)
def test_check_json_refuses_exactly_control_characters_and_depth(value: object) -> None:
    try:
        params.check_json(value, 3)
    except ApiError as exc:
        if isinstance(exc, InvalidJson):
            assert _depth(value) > 3
        else:
            assert isinstance(exc, InvalidRequest) and exc.status == 422
            assert not all(_printable(s) for s in _strings(value))
        return
    assert _depth(value) <= 3 and all(_printable(s) for s in _strings(value))


def test_check_json_does_not_recurse_on_a_deep_value() -> None:
    deep: object = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidJson):
        params.check_json(deep, params.MAX_JSON_DEPTH)


def test_json_nested_exactly_to_the_limit_passes() -> None:
    value: object = {"a": 1}
    for _ in range(params.MAX_JSON_DEPTH - 1):
        value = [value]
    params.check_json(json.loads(json.dumps(value)), params.MAX_JSON_DEPTH)
    with pytest.raises(InvalidJson):
        params.check_json([value], params.MAX_JSON_DEPTH)
