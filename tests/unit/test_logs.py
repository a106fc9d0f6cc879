"""Log lines: control and format characters from URLs, SIP values or shop rows never leave a formatter raw."""

from __future__ import annotations

import io
import json
import logging
import sys
import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridged.logs import JsonFormatter, PlainFormatter, escape_controls, setup_logging
from bridged.redact import MASK, digits
from tests.unit.fakes import filtered_logger

_RAW = {"Cc", "Cf", "Cs", "Zl", "Zp"}


@pytest.fixture(params=[PlainFormatter, JsonFormatter], ids=["plain", "json"])
def pipeline(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """The handler set-up of bridged.logs.setup_logging, writing to a buffer."""
    with filtered_logger(f"bridged.test_logs.{request.param.__name__}", request.param()) as pair:
        yield pair


def _raw_controls(line: str) -> list[str]:
    return [ch for ch in line if unicodedata.category(ch) in _RAW]


# The test empties the fixture's buffer itself for each input.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(st.characters(exclude_categories=()), max_size=80))
@example(value="\x1b[2J\x1b[31mred\r\nINFO fake: line\x00\x7f\x85\u2028\u202eevil\ufeff")
def test_no_control_character_leaves_a_formatter(
    pipeline: tuple[logging.Logger, io.StringIO], value: str
) -> None:
    log, stream = pipeline
    stream.seek(0)
    stream.truncate()
    log.warning("GET %s from %r", value, value)
    try:
        raise ValueError(value)
    except ValueError:
        log.exception("failed on %s", value)
    output = stream.getvalue()
    lines = output.split("\n")
    # One line per record, each ended by the handler's "\n" and nothing else.
    assert len(lines) == 3 and lines[-1] == "", output
    for line in lines[:2]:
        assert not _raw_controls(line), line


def test_escapes_are_readable_and_cyrillic_stays(pipeline: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = pipeline
    log.warning("path %s", "/v1/calls/\x1b[31mИван\u202e\x00")
    line = stream.getvalue().splitlines()[0]
    text = json.loads(line)["msg"] if line.startswith("{") else line
    assert "/v1/calls/\\x1b[31mИван\\u202e\\x00" in text


def test_a_number_spread_out_with_control_characters_is_still_masked(
    pipeline: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = pipeline
    log.warning("value %s", "\x00".join("+79161234567"))
    log.warning("value %s", "\u200b".join("89161234567"))
    output = stream.getvalue()
    assert "9161234567" not in digits(output.replace("\\x00", "").replace("\\u200b", ""))
    assert output.count(MASK) == 2


def test_escape_controls() -> None:
    assert escape_controls("a\tb\x1b\x7f\x9f\u00ad\u2028\U000e0001 é Ж 中") == (
        "a\\x09b\\x1b\\x7f\\x9f\\xad\\u2028\\U000e0001 é Ж 中"
    )
    assert escape_controls("plain") == "plain"


@given(st.lists(st.floats(min_value=0, max_value=4e9, allow_nan=False), min_size=1, max_size=20))
@example([0.0, 0.9995, 1.0, 1796175025.999999, 1796175025.0])
def test_the_time_stamp_formatted_once_a_second_is_logging_s_own(stamps: list[float]) -> None:
    """PlainFormatter keeps the last second's text (issue 19): every stamp, in any order, is written as
    logging's own Formatter writes it."""
    ours, stock = PlainFormatter(), logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for stamp in stamps:
        record = logging.LogRecord("bridged.x", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = stamp, int((stamp - int(stamp)) * 1000) + 0.0
        assert ours.formatTime(record) == stock.formatTime(record)
        assert ours.format(record) == stock.format(record)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_set_up_records_skip_what_no_line_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup_logging's records no longer look up the caller (a walk up the stack), the thread or the
    process id (a getpid system call) for each line (issue 19): no formatter writes them. The lines are
    what they were, a traceback included. Checked to fail on the code before, which looked them up."""
    for flag in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, getattr(logging, flag))  # put back after the test
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging("INFO")
    kept = _Records()
    root.addHandler(kept)
    log = logging.getLogger("bridged.test_logs.lean")
    log.info("call %s accepted: manager %s order %s", "c1", "anna", "123")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("call %s: step failed", "c1")
    first, second = kept.records
    assert (first.funcName, first.threadName, first.process, first.processName) == (
        "(unknown function)",
        None,
        None,
        None,
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" INFO bridged.test_logs.lean: call c1 accepted: manager anna order 123")
    assert " ERROR bridged.test_logs.lean: call c1: step failed | Traceback " in lines[1]
    assert lines[1].endswith("ValueError: boom")
