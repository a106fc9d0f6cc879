"""``Idempotency-Key`` on ``POST /v1/calls``: a retry with the same key (per token) is answered with the
first request's answer instead of ringing twice.

The key is claimed before the call is placed and its answer remembered after (a 5xx is not remembered:
the retry may succeed); both writes are kept and written later if bridged's database is away, and until
then a retry is told the first request is still being handled.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from ..appkeys import CONFIG, SERVICE, STORE
from ..store.base import DatabaseUnavailable
from .errors import IdempotencyConflict, IdempotencyInProgress, InvalidIdempotencyKey

_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


class Unrecorded:
    """The key could not be claimed: bridged's database is away."""


def key_of(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _KEY_RE.fullmatch(key):
        raise InvalidIdempotencyKey()
    return key


async def claim(
    request: web.Request, client: str, key: str, body: Any
) -> tuple[int, dict[str, Any]] | Unrecorded | None:
    """Claim ``key`` for this request: None when it is the first with the key (go ahead), else the first
    request's answer (status, body). A different body with the key, or a first request still being
    handled, is refused (422, 409)."""
    request_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    try:
        claimed, first_hash, first_status, first_response = await request.app[STORE].idempotency.claim(
            client, key, request_hash, keep_hours=request.app[CONFIG].current.api.idempotency_hours
        )
    except DatabaseUnavailable:
        return Unrecorded()
    if claimed:
        return None
    if first_hash != request_hash:
        raise IdempotencyConflict()
    if first_status is None:
        raise IdempotencyInProgress()
    return first_status, first_response


async def settle(
    request: web.Request, client: str, key: str, status: int | None, payload: dict[str, Any] | None
) -> None:
    """Remember the answer for the key, or (``status`` None) release it."""
    store = request.app[STORE]

    def write() -> Awaitable[None]:
        if status is None:
            return store.idempotency.release(client, key)
        return store.idempotency.remember(client, key, status, payload)

    what = "Idempotency-Key release" if status is None else "Idempotency-Key answer"
    await request.app[SERVICE].deferred.write(what, write)
