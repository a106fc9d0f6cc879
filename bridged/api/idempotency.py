"""``Idempotency-Key`` on ``POST /v1/calls``: a retry with the same key (per token) is answered with the
first request's answer instead of ringing twice.

The key is claimed before the call is placed, and after it either keeps the answer for good (:func:`final`)
or is released, so that a retry is a new attempt; both writes are kept and written later if bridged's
database is away, and until then a retry is told the first request is still being handled. While the
first request is handled the key is held either way: a concurrent duplicate is 409, never a second ring.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
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


def final(status: int, retry_after: int | None) -> bool:
    """Whether an answer is the key's for good, replayed to every retry with the key; if not, the key is
    released and a retry is a new attempt (a signed link's answer, bridged.callpage, follows the same rule).

    Final: a 2xx (the call was placed: a retry must get it, not ring again) and a 4xx a retry cannot change
    (403, 404, 409, 422: a decision on this request, which the same request gets again; manager_unavailable
    also names the call that was tried). Not final, each because the same request may succeed later:
    429 rate_limited (the manager's budget has a slot again after Retry-After), any 5xx (bridged's own
    state or a neighbour's, Asterisk, a database: nothing about the request), and any answer carrying
    Retry-After (bridged itself says when to try again; remembering it would answer that try with a
    refusal). So no answer a key keeps has a Retry-After to replay."""
    return retry_after is None and status < 500 and status != 429


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
    request: web.Request,
    client: str,
    key: str,
    status: int | None,
    payload: dict[str, Any] | None,
    retry_after: int | None = None,
) -> None:
    """Remember the answer for the key if it is :func:`final`, else (or ``status`` None: no answer)
    release it."""
    store = request.app[STORE]
    write: Callable[[], Awaitable[None]]
    if status is None or not final(status, retry_after):
        what, write = "Idempotency-Key release", lambda: store.idempotency.release(client, key)
    else:
        kept = status
        what, write = "Idempotency-Key answer", lambda: store.idempotency.remember(client, key, kept, payload)
    await request.app[SERVICE].deferred.write(what, write)
