"""Logging set-up: one line per event, plain or JSON, always redacted."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from .redact import RedactingFilter


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatException(self, ei) -> str:  # noqa: N802 - logging's API
        # Keep one event on one line: a traceback is folded, and it has already been redacted.
        return super().formatException(ei).replace("\n", " | ")

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_text:
            record.exc_text = record.exc_text.replace("\n", " | ")
        # logging.Formatter joins message and traceback (and stack) with a newline: fold those too.
        return super().format(record).replace("\n", " | ")


def setup_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
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
