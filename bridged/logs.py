"""Logging set-up: one line per event, plain or JSON, always redacted."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import unicodedata
from datetime import UTC, datetime

from .redact import RedactingFilter

# Characters that must not reach a log line raw: controls (an ESC sequence recolours or rewrites a
# terminal, CR overwrites the line, NUL truncates), format characters (a bidi override reverses what
# follows), line and paragraph separators, lone surrogates (unwritable as UTF-8). Anything from a URL,
# a SIP value or a shop's row may hold them. Letters of any script stay as they are.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Printable ASCII and the Latin, Greek and Cyrillic blocks hold none of those (U+00AD aside): not looked at.
_MAYBE_ESCAPED = re.compile(r"[^\x20-\x7e\u00a0-\u00ac\u00ae-\u05ff]")


def _escape_char(ch: str) -> str:
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_controls(text: str) -> str:
    """``text`` with every control or format character written as an escape (``\\x1b``, ``\\u202e``)."""
    return _MAYBE_ESCAPED.sub(lambda m: _escape_char(m.group(0)), text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": escape_controls(record.getMessage()),
        }
        if record.exc_text:
            entry["exc"] = escape_controls(record.exc_text)
        # json escapes only C0 controls itself: DEL, C1 and format characters were done above.
        return json.dumps(entry, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        # The last second formatted and its text: strftime once a second, not once a line (logging's
        # own formatTime cost a fifth of bridged's logging CPU at 80 calls/s, issue 19).
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second  # one read: another thread's update replaces the pair whole
        if cached[0] != second:
            cached = (second, time.strftime(self.default_time_format, self.converter(second)))
            self._second = cached
        return f"{cached[1]},{int(record.msecs):03d}"  # logging's default_msec_format, "%s,%03d"

    def formatException(self, ei) -> str:  # noqa: N802 - logging's API
        # Keep one event on one line: a traceback is folded, and it has already been redacted.
        return super().formatException(ei).replace("\n", " | ")

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_text:
            record.exc_text = record.exc_text.replace("\n", " | ")
        # logging.Formatter joins message and traceback (and stack) with a newline: fold those too.
        return escape_controls(super().format(record).replace("\n", " | "))


def lean_records() -> None:
    """Records no longer look up what no line shows (the logging HOWTO's "Optimization"): the caller's
    file, line and function (a walk up the stack per record), the thread, the process id (a getpid
    system call per record) and the multiprocessing process name. Neither formatter writes any of them.
    ``stack_info=True`` is then ignored (nothing in bridged asks for it); tracebacks (``exc_info``) stay."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def setup_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    lean_records()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party loggers may log request URLs with query strings (ARI parameters carry dial strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.client").setLevel(logging.WARNING)
