"""Pagination cursors: opaque to clients, signed, and checked field by field before any SQL.

A cursor is ``<payload>.<signature>``, both base64url: the payload is ``[kind, time, id]`` of the last
row of the page (JSON), the signature its HMAC-SHA256 under a key derived from a secret bridged keeps in
its ``settings`` table. Kept in the database rather than made per process, so a cursor outlives a
restart (a client paging through the history across a deploy does not start over) and holds across
daemons that share the database behind one load balancer. A cursor crafted or altered by hand fails the
signature; one that passes is still validated as if it were not signed (kind, a time the parameter
parser accepts, an id of the right type), so a leaked key gains nothing beyond paging.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from aiohttp import web

from ..appkeys import STORE
from ..ids import ID_RE
from ..store.base import Window
from .errors import InvalidCursor, InvalidParameter
from .params import Query, parse_time

MAX_LENGTH = 400
# Rows per page: when no limit is asked for, and at most.
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# What every listing takes besides its own filters: the window of rows (bridged.store.base.Window).
PAGE_PARAMETERS = frozenset({"from", "to", "limit", "cursor"})
_SIGNATURE_BYTES = 16
_FORM = re.compile(r"([A-Za-z0-9_-]{1,340})\.([A-Za-z0-9_-]{22})")
_AUDIT_ID_MAX = 2**63 - 1  # bigserial


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    def __init__(self, secret: str) -> None:
        # Derived, not the stored secret itself: the same secret may key other things later.
        self._key = hmac.new(secret.encode("utf-8"), b"bridged pagination cursor v1", hashlib.sha256).digest()

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest()[:_SIGNATURE_BYTES])

    def encode(self, kind: str, at: datetime, row_id: str | int) -> str:
        payload = _b64(json.dumps([kind, at.isoformat(), row_id], separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def decode_calls(self, cursor: str) -> tuple[datetime, str]:
        when, row_id = self.decode("calls", cursor)
        assert isinstance(row_id, str)
        return when, row_id

    def decode_audit(self, cursor: str) -> tuple[datetime, int]:
        when, row_id = self.decode("audit", cursor)
        assert isinstance(row_id, int)
        return when, row_id

    def decode(self, kind: str, cursor: str) -> tuple[datetime, str | int]:
        """(time, id) of the row the page ends at; InvalidCursor for anything this codec did not make
        for ``kind``."""
        form = _FORM.fullmatch(cursor)
        if form is None or not hmac.compare_digest(self._sign(form[1]), form[2]):
            raise InvalidCursor()
        try:
            fields = json.loads(_unb64(form[1]))
        except (ValueError, binascii.Error):
            raise InvalidCursor() from None
        if not isinstance(fields, list) or len(fields) != 3:
            raise InvalidCursor()
        found_kind, at, row_id = fields
        if found_kind != kind or not isinstance(at, str):
            raise InvalidCursor()
        try:
            when = parse_time(at, "cursor")
        except InvalidParameter:
            raise InvalidCursor() from None
        if kind == "calls" and isinstance(row_id, str) and ID_RE.fullmatch(row_id):
            return when, row_id
        if kind == "audit" and type(row_id) is int and 0 < row_id <= _AUDIT_ID_MAX:
            return when, row_id
        raise InvalidCursor()


class CursorKeeper:
    """The app's codec, made on first use from the secret in the database (one query per process)."""

    def __init__(self) -> None:
        self._codec: CursorCodec | None = None
        self._lock = asyncio.Lock()

    async def codec(self, load_secret: Callable[[], Awaitable[str]]) -> CursorCodec:
        if self._codec is None:
            async with self._lock:
                if self._codec is None:
                    self._codec = CursorCodec(await load_secret())
        return self._codec


CURSORS: web.AppKey[CursorKeeper] = web.AppKey("cursors", CursorKeeper)


T = TypeVar("T")
F = TypeVar("F")


@dataclass(frozen=True)
class Listing(Generic[T, F]):
    """One listing endpoint's rows: ``kind`` names its cursors, ``fetch`` reads the rows of a
    :class:`Window` that the endpoint's filter (``F``) lets through, ``key`` is a row's (time, id) as the
    listing orders them, ``item`` its JSON."""

    kind: str
    fetch: Callable[[Window, F], Awaitable[Sequence[T]]]
    key: Callable[[T], tuple[datetime, str | int]]
    item: Callable[[T], dict[str, Any]]

    async def page(self, request: web.Request, q: Query, only: F) -> web.Response:
        """``{"items": [...], "next_cursor": ...}``: the rows ``only`` lets through at or after ``from`` and
        before ``to``, at most ``limit`` of them after the ``cursor``'s row, newest first. One row more than
        the page is read: it says whether there is a next page."""
        since, until = q.time("from"), q.time("to")
        limit = q.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        cursor = q.text("cursor", MAX_LENGTH)
        codec = await request.app[CURSORS].codec(request.app[STORE].settings.cursor_secret)
        before = codec.decode(self.kind, cursor) if cursor else None
        rows = await self.fetch(Window(since, until, before, limit + 1), only)
        page = rows[:limit]
        more = len(rows) > limit and page
        return web.json_response(
            {
                "items": [self.item(r) for r in page],
                "next_cursor": codec.encode(self.kind, *self.key(page[-1])) if more else None,
            },
            headers={"Cache-Control": "no-store"},
        )
