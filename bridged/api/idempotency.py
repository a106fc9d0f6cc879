"""``Idempotency-Key`` on ``POST /v1/calls``: a retry with the same key (per token) is answered with the
first request's answer instead of ringing twice.

The key is claimed before the call is placed, and after it either keeps the answer for good (:func:`final`:
the call placed, or tried) or is released, so that a retry is a new attempt; both writes are kept and
written later if bridged's database is away, and until then a retry is told the first request is still
being handled. While the first request is handled the key is held either way: a concurrent duplicate is
409, never a second ring.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..appkeys import CONFIG, SERVICE, STORE
from ..outcomes import OUTCOME_ERRORS
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


# The errors that report a call attempted: the call went ahead (its row written, Asterisk asked to ring
# its manager's phone) and ended before it began; the answer names it (details.call_id). bridged.outcomes
# OUTCOME_ERRORS says which.
ATTEMPTED = frozenset(http.error_id for http in OUTCOME_ERRORS.values())


def error_id(body: Any) -> str | None:
    """The catalogue id of an error answer's body (``{"error": {"id": ...}}``), None for any other."""
    error = body.get("error") if isinstance(body, dict) else None
    found = error.get("id") if isinstance(error, dict) else None
    return found if isinstance(found, str) else None


def call_named(status: int, body: Any) -> str | None:
    """The call an answer names: a 2xx's (its ``id``), or the call tried of an :data:`ATTEMPTED` error
    (``details.call_id``); None for an answer that names none. A signed link's kept answer is followed by
    it (bridged.callpage), as an Idempotency-Key's replay names it."""
    if not isinstance(body, dict):
        return None
    if 200 <= status < 300:
        named = body.get("id")
    elif error_id(body) in ATTEMPTED:
        details = body["error"].get("details")
        named = details.get("call_id") if isinstance(details, dict) else None
    else:
        named = None
    return named if isinstance(named, str) else None


def final(status: int, body: Any, retry_after: int | None) -> bool:
    """Whether an answer is the key's for good, replayed to every retry with the key; if not, the key is
    released and a retry is a new attempt (a signed link's answer, bridged.callpage, follows the same rule).

    A key is there so that a retry does not repeat an *effect*: only an answer to a request that had one
    is kept. Decided by what the answer says (its error id), not by its status alone: one status holds
    both kinds (409 manager_unavailable is a call tried, 409 manager_not_registered none).

    Kept:
    - a 2xx: the call was placed and rings; a retry must get that call, not ring the manager again.
    - manager_unavailable (409, :data:`ATTEMPTED`): the call went ahead (its row, Asterisk asked to ring
      the manager's phone) and ended before it began; the answer names it (details.call_id). A retry
      would ring for the phone again and make a second call of one request.

    Released, each because nobody was dialled (a refusal of bridged.outcomes REFUSALS is decided before
    anyone is), so evaluating the request again repeats nothing:
    - a refusal of the request as it is (422 invalid_order_id, 403 order_not_allowed, 404
      unknown_manager): the same request is refused again anyway; kept, it would only hide a change that
      makes it good (the policy, the managers or the order edited).
    - a refusal of a passing state: 409 manager_not_registered (the phone registers a minute later),
      404 unknown_order (the order reaches the shop's database later), 422 invalid_phone (the shop
      corrects the order's number), 429 rate_limited (the budget has a slot again after Retry-After), any
      5xx (bridged's own state or a neighbour's, Asterisk, a database). Kept, the retry that would now
      succeed would get the refusal until the key expires.
    - any answer with Retry-After: bridged itself says when to try again (so no kept answer has one).
    A refused attempt may have a call row holding its refusal (bridged.outcomes ROW_REFUSALS) and has an
    audit row; the answer names neither, and a retry adds its own, as a request without a key does: the
    trail of each attempt, not an effect. Such retries count towards the manager's budgets
    (bridged.limits) as the same requests without a key do."""
    if retry_after is not None:
        return False
    return 200 <= status < 300 or error_id(body) in ATTEMPTED


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
    if status is None or not final(status, payload, retry_after):
        what, write = "Idempotency-Key release", lambda: store.idempotency.release(client, key)
    else:
        kept = status
        what, write = "Idempotency-Key answer", lambda: store.idempotency.remember(client, key, kept, payload)
    await request.app[SERVICE].deferred.write(what, write)
