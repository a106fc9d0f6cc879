"""Keeping customers' phone numbers out of everything a manager or an operator can read.

Two layers: numbers travel inside :class:`PhoneNumber`, whose ``str``/``repr`` never show the digits,
and every log record passes through :class:`RedactingFilter`, which masks anything that looks like a
phone number (a run of 7 or more digits, with or without the usual separators) as a last line of defence.
"""

from __future__ import annotations

import logging
import re

# 7+ digits, optionally with +, spaces, dots, dashes, slashes or parentheses between them, or control
# and invisible format characters (which the log formatters then escape: a number spread out with
# them must not come out readable).
_PHONE_RE = re.compile(
    r"\+?\(?\d(?:[\s().\-/\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]{0,2}\d){6,}"
)
MASK = "<redacted>"
_DIAL_STRING_RE = re.compile(r"\+?[0-9]{3,20}")


# Asterisk unique ids ("1764413784.12", "host-1764413784.12") are an epoch and a sequence number;
# masking them would make logs useless for tracing a channel, and no dialled number looks like that.
_UNIQUEID_RE = re.compile(r"(?<![\d.+])\d{10}\.\d{1,9}(?![\d.])")


# An ISO 8601 date with its time ("2026-12-02T00:05:19.567+0000": Asterisk's startup time, which bridged
# logs per node) is a date: its year, month and day are not masked when a 'T' and hh:mm follow at once.
_ISO_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_TIME_AFTER_RE = re.compile(r"T\d{2}:\d{2}")


def _mask(match: re.Match[str]) -> str:
    text = match.group(0)
    if _UNIQUEID_RE.fullmatch(text):
        return text
    if _ISO_DATE_RE.fullmatch(text) and _ISO_TIME_AFTER_RE.match(match.string, match.end()):
        return text
    return MASK


def redact(text: str) -> str:
    """Mask every phone-number-like run of digits in ``text``."""
    return _PHONE_RE.sub(_mask, text)


def digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


class PhoneNumber:
    """A customer's number. Only :meth:`dialable` reveals it, and only the trunk dial string uses it.

    Built by :func:`bridged.phones.parse_phone` from a validated number; holds the dial string itself
    (``+`` and ASCII digits), nothing else.
    """

    __slots__ = ("_value",)

    def __init__(self, dial_string: str) -> None:
        if not _DIAL_STRING_RE.fullmatch(dial_string):
            raise ValueError("not a dial string (an optional '+' and ASCII digits)")
        self._value = dial_string

    def dialable(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"PhoneNumber({MASK})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhoneNumber) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("phone numbers are not serialisable")


class RedactingFilter(logging.Filter):
    """Masks phone numbers in a record's message, arguments and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message or record.args:
            record.msg = redacted
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
