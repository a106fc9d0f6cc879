"""Phone numbers never reach a log line, a repr, or a pickle."""

from __future__ import annotations

import io
import json
import logging
import pickle
from collections.abc import Iterator

import pytest

from bridged.logs import JsonFormatter, PlainFormatter
from bridged.orders import Order
from bridged.phones import parse_phone
from bridged.redact import MASK, PhoneNumber, RedactingFilter, digits, redact
from tests.unit.fakes import filtered_logger

NUMBER = "+14157654321"


@pytest.mark.parametrize(
    "text",
    [
        "+1 415 765 4321",
        "(415) 765-4321",
        "14157654321",
        "555.765.4321",
        "415-765-4321",
        "+14157654321",
        "555/765/4321",
        "7654321",
    ],
)
def test_redact_masks_numbers(text: str) -> None:
    line = f"dialling {text} now"
    out = redact(line)
    assert out == f"dialling {MASK} now"
    assert not any(ch.isdigit() for ch in out)


@pytest.mark.parametrize(
    "text", ["order 123", "order 123456", "call 42 ended, cause 16", "port 4573", "12:30:05"]
)
def test_redact_keeps_short_numbers(text: str) -> None:
    assert redact(text) == text


def test_redact_several_in_one_line() -> None:
    out = redact("from +1 415 765 4321 to (555) 000-1111, order 123")
    assert out == f"from {MASK} to {MASK}, order 123"


def test_phone_number_hides_digits() -> None:
    phone = parse_phone(" +1 (415) 765-4321 ", region=None)
    assert phone.dialable() == NUMBER
    renderings = [
        str(phone),
        repr(phone),
        format(phone),
        f"{phone}",
        f"{phone!r}",
        f"{phone!s}",
        "{}".format(phone),  # noqa: UP032 - the str.format path is what is tested
        "%s" % phone,  # noqa: UP031
        "%r" % phone,  # noqa: UP031
        str([phone]),
        str({"phone": phone}),
    ]
    for text in renderings:
        assert not any(ch.isdigit() for ch in text), text
        assert MASK in text
    order = Order(id="123", phone=phone, customer_name="Ivan Petrov", manager_id="anna")
    assert digits(NUMBER)[-7:] not in digits(repr(order))
    assert digits(NUMBER)[-7:] not in digits(str(order))


def test_phone_number_equality_and_validation() -> None:
    assert parse_phone("+1 415 765 4321", region=None) == PhoneNumber(NUMBER)
    assert hash(parse_phone("+1 415 765 4321", region=None)) == hash(PhoneNumber(NUMBER))
    assert PhoneNumber(NUMBER) != NUMBER
    # It holds a dial string only: what parse_phone made of a valid number.
    for bad in (
        "1+555",
        "++1555",
        "12",
        "",
        "+1 415 765 4321",
        "+14157654321@evil",
        "+１４１５７６５４３２１",
    ):
        with pytest.raises(ValueError) as info:
            PhoneNumber(bad)
        assert not any(ch.isdigit() for ch in str(info.value))


def test_phone_number_refuses_pickling() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(PhoneNumber(NUMBER))
    with pytest.raises(TypeError):
        pickle.dumps({"order": Order(id="1", phone=PhoneNumber(NUMBER), customer_name="", manager_id=None)})


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    with filtered_logger(
        "bridged.test_redact", logging.Formatter("%(levelname)s %(name)s: %(message)s")
    ) as pair:
        yield pair


def _leaks(output: str) -> bool:
    # Compare digits only: "+1 415 765 4321" must not survive in any spacing.
    return digits(NUMBER)[-7:] in digits(output)


def test_filter_masks_args(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured
    log.info("dialling %s for order %s", "+1 415 765 4321", "123")
    log.warning("dialling %(n)s", {"n": "(415) 765-4321"})
    log.info("plain message with 555.765.4321 in it")
    output = stream.getvalue()
    assert output.count("\n") == 3
    assert not _leaks(output), output
    assert "order 123" in output
    assert MASK in output


def test_filter_masks_exception_text(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured
    try:
        raise RuntimeError(f"trunk rejected {NUMBER}")
    except RuntimeError:
        log.exception("originate of %s failed", "14157654321")
    output = stream.getvalue()
    assert "Traceback" in output
    assert "RuntimeError" in output
    assert not _leaks(output), output


def test_filter_masks_chained_exception_and_stack(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured
    try:
        try:
            raise KeyError("415 765 4321")
        except KeyError as inner:
            raise ValueError("lookup failed") from inner
    except ValueError:
        log.error("failed", exc_info=True, stack_info=True)
    output = stream.getvalue()
    assert "KeyError" in output and "Stack (most recent call last)" in output
    assert not _leaks(output), output


def test_unfiltered_handler_would_leak() -> None:
    # Control for the tests above: without the filter the same record does show the number.
    stream = io.StringIO()
    plain = logging.StreamHandler(stream)
    fresh = logging.getLogger("bridged.test_redact.unfiltered")
    fresh.propagate = False
    fresh.addHandler(plain)
    try:
        fresh.warning("dialling %s", NUMBER)
    finally:
        fresh.removeHandler(plain)
        fresh.propagate = True
    assert _leaks(stream.getvalue())


def _json_logger() -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("bridged.test_redact.json")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log, stream, handler


def test_json_formatter_one_valid_object_per_line() -> None:
    log, stream, handler = _json_logger()
    try:
        log.info("call %s state %s", "abc", "bridged")
        log.warning('quote " backslash \\ newline\nand unicode é, number %s', NUMBER)
        try:
            raise RuntimeError(f"boom {NUMBER}\nsecond line")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    assert [e["level"] for e in entries] == ["INFO", "WARNING", "ERROR"]
    assert entries[0]["msg"] == "call abc state bridged"
    assert entries[0]["logger"] == "bridged.test_redact.json"
    assert entries[0]["ts"].endswith("+00:00")
    assert "é" in entries[1]["msg"] and MASK in entries[1]["msg"]
    assert "RuntimeError" in entries[2]["exc"]
    assert not _leaks(stream.getvalue())


def test_plain_formatter_folds_traceback_into_one_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(PlainFormatter())
    log = logging.getLogger("bridged.test_redact.plain")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise RuntimeError(f"boom {NUMBER}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    output = stream.getvalue()
    assert output.count("\n") == 1
    assert "RuntimeError" in output and " | " in output
    assert not _leaks(output)


def test_call_ids_survive_the_log_redaction() -> None:
    from bridged.calls.model import new_call_id

    ids = [new_call_id() for _ in range(2000)]
    assert all(redact(f"call {i} bridged") == f"call {i} bridged" for i in ids)
    assert len(set(ids)) == len(ids) and all(len(i) == 32 for i in ids)


def test_an_iso_date_with_its_time_is_kept_and_nothing_else_like_it() -> None:
    """A node's Asterisk startup time is logged as Asterisk gives it; a date alone, or digits in any other
    grouping before a 'T', are masked as before."""
    kept = "node b is Asterisk pbx-b, started 2026-12-02T00:05:19.567+0000"
    assert redact(kept) == kept
    assert redact("2026-12-02 00:05:19") == "<redacted>:05:19"
    assert redact("started 2026-12-02") == "started <redacted>"
    assert redact("79161234567T12:00") == "<redacted>T12:00"
    assert redact("+2026-12-02T00:05") == "<redacted>T00:05"
    assert redact("916-123-45T00:05") == "<redacted>T00:05"
