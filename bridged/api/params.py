"""Request values parsed at the edge: every value becomes a typed value or a 4xx, before any SQL.

One parser per kind, shared by every handler: ids, text, integers, booleans, times. What they refuse is
what PostgreSQL or asyncpg would choke on (NUL, lone surrogates, times outside what ``timestamptz``
and Python's ``datetime`` both hold) and what only looks valid (``"١٢".isdigit()`` is true; those digits
are not a limit).
"""

from __future__ import annotations

import asyncio
import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from ..appkeys import CONFIG
from ..ids import ID_RE
from .errors import (
    ApiError,
    BodyTooLarge,
    CallNotFound,
    InvalidJson,
    InvalidParameter,
    InvalidRequest,
    RequestTimeout,
    UnsupportedMediaType,
)
from .server import GuardedRequestHandler

_INT_RE = re.compile(r"[0-9]{1,9}")
# Years 1970-9999 in UTC: within timestamptz and within datetime after any offset is applied (year 1
# with an offset east of UTC, or 9999-12-31 with one west of it, does not fit a datetime in UTC).
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_TIME_MAX_LENGTH = 64
# Control characters (NUL among them) and lone surrogates: PostgreSQL refuses NUL in text, asyncpg
# cannot encode a surrogate, and a log or a page has no use for either.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs"})
# No body bridged takes is more than a few levels deep.
MAX_JSON_DEPTH = 32


def printable(value: str) -> bool:
    return not any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in value)


def _invalid(name: str, message: str) -> ApiError:
    return InvalidParameter(f"{name} {message}", details={"parameter": name})


def parse_text(value: str, name: str, max_length: int) -> str:
    """The value as sent is checked (as openapi.text() documents it: a trailing newline is a control
    character, not whitespace to strip), then used without its surrounding spaces."""
    stripped = value.strip()
    if not stripped or len(value) > max_length or not printable(value):
        raise _invalid(name, f"must be 1 to {max_length} printable characters")
    return stripped


def parse_id(value: str, name: str) -> str:
    if not ID_RE.fullmatch(value):
        raise _invalid(name, "must be 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def parse_int(value: str, name: str, minimum: int, maximum: int) -> int:
    """ASCII digits only (``str.isdigit`` and ``int()`` take digits of every script)."""
    if not _INT_RE.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise _invalid(name, f"must be a whole number from {minimum} to {maximum}")
    return int(value)


def parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise _invalid(name, "must be true or false")


# A UTC offset with seconds ("+00:00:00.000001"): no zone has one, and Debian 12's Python 3.11.2 drops the
# offset's fraction when it parses one (2000-01-01T00:00:00+00:00:00.000001 came back a microsecond off).
_OFFSET_WITH_SECONDS = re.compile(r"T[^+-]*[+-]\d{2}:?\d{2}:?\d{2}")


def parse_time(value: str, name: str) -> datetime:
    """ISO 8601, in UTC when no offset is given; returned in UTC, years 1970 to 9999."""
    # A "+" of an offset left unencoded in the URL arrives as a space.
    text = value.strip().replace(" ", "+")
    refusal = _invalid(name, "must be an ISO 8601 time from 1970 to 9999, e.g. 2026-01-31T09:00:00Z")
    if not text.isascii() or len(text) > _TIME_MAX_LENGTH or _OFFSET_WITH_SECONDS.search(text):
        raise refusal
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise refusal from None
    if not TIME_MIN <= when <= TIME_MAX:
        raise refusal
    return when


def path_id(request: web.Request, name: str = "call_id") -> str:
    """A call id from the path; one that cannot be an id names no call (404, as an unknown one)."""
    value = request.match_info[name]
    if not ID_RE.fullmatch(value):
        raise CallNotFound()
    return value


class Query:
    """Typed access to a request's query string; unknown parameters are refused (a typo is no filter)."""

    def __init__(self, request: web.Request, known: set[str] | frozenset[str]) -> None:
        self.query: MultiMapping[str] = request.query
        for name in self.query:
            if name not in known:
                shown = name[:40]
                raise InvalidParameter(f"unknown query parameter {shown!r}", details={"parameter": shown})
        for name in known:
            if len(self.query.getall(name, [])) > 1:
                raise InvalidParameter(f"{name} is given more than once", details={"parameter": name})

    def _raw(self, name: str) -> str | None:
        return self.query.get(name)

    def text(self, name: str, max_length: int = 200) -> str | None:
        value = self._raw(name)
        return None if value is None else parse_text(value, name, max_length)

    def id(self, name: str) -> str | None:
        value = self._raw(name)
        return None if value is None else parse_id(value, name)

    def time(self, name: str) -> datetime | None:
        value = self._raw(name)
        return None if value is None else parse_time(value, name)

    def boolean(self, name: str) -> bool | None:
        value = self._raw(name)
        return None if value is None else parse_bool(value, name)

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self._raw(name)
        return default if value is None else parse_int(value, name, minimum, maximum)


def check_json(value: object, max_depth: int) -> None:
    """Refuse a parsed JSON body nested deeper than ``max_depth`` (400 invalid_json) or holding a string
    with a control character or a lone surrogate, keys included (422 invalid_request). Iterative: a deep
    body costs no recursion here."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not printable(item):
                raise InvalidRequest("strings may not hold control characters")
            continue
        if isinstance(item, Mapping):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise InvalidJson(f"the body is nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON body: at most ``max_bytes``, within ``http.body_timeout``, at most
    MAX_JSON_DEPTH levels deep, no control characters in its strings."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge()
    if request.content_type != "application/json":
        raise UnsupportedMediaType()
    raw = bytearray()
    try:
        async with asyncio.timeout(request.app[CONFIG].current.http.body_timeout):
            # read() returns what has arrived so far, not the whole body: read to the end.
            while chunk := await request.content.read(max_bytes + 1 - len(raw)):
                raw += chunk
                if len(raw) > max_bytes:
                    raise BodyTooLarge()
    except TimeoutError:
        if isinstance(request.protocol, GuardedRequestHandler):
            request.protocol.close_after_response()
        raise RequestTimeout() from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: nested deeper than the interpreter's limit (json's parser recurses).
        raise InvalidJson() from None
    check_json(body, MAX_JSON_DEPTH)
    return body
