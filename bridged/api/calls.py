"""Calls: ``POST /v1/calls`` (click-to-call), ``GET /v1/calls/{id}``, ``DELETE /v1/calls/{id}``, and the
history ``GET /v1/calls``; one representation of a call (:func:`call_json`) for all of them.

Thin handlers: they parse, ask the CallService (which decides, as for the phone path), and translate its
answer. No response carries a customer's number.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..appkeys import CONFIG, SERVICE, STORE
from ..calls.model import Call
from ..ids import ID_RE
from ..outcomes import ROW_REFUSALS, Outcome
from ..recording_state import STATE_SCHEMA as RECORDING_STATE_SCHEMA
from ..service import NotStarted, Refused
from ..store.base import DatabaseUnavailable
from ..store.calls import CallFilter, CallRow
from . import idempotency, openapi
from .auth import Principal, audit_denied, audited, forbid_unless, principal, requires
from .cursors import DEFAULT_LIMIT, MAX_LIMIT, PAGE_PARAMETERS, Listing
from .cursors import MAX_LENGTH as MAX_CURSOR
from .errors import (
    ApiError,
    CallbackNotPossible,
    CallEnded,
    CallNotFound,
    InvalidRequest,
    OtherManager,
    outcome_error,
    refusal_error,
)
from .params import Query, path_id, read_json

log = logging.getLogger(__name__)

_ID_MAX = 64


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def call_json(row: CallRow) -> dict[str, Any]:
    """A call as every endpoint shows it (``Call`` in the OpenAPI document). No phone number: the row
    holds none, and its channel and bridge ids are left out."""
    duration = row.duration
    return {
        "id": row.id,
        "order_id": row.order_id,
        "manager_id": row.manager_id,
        "direction": row.direction,
        "state": row.state,
        "outcome": row.outcome,
        "hangup_cause": row.hangup_cause,
        "ended_by": row.ended_by,
        "requested_at": _iso(row.requested_at),
        "answered_at": _iso(row.answered_at),
        "ended_at": _iso(row.ended_at),
        "duration_seconds": None if duration is None else round(duration, 3),
        "has_recording": row.recording_available,
        "recording_state": row.recording_state,
        "recording_purged_at": _iso(row.recording_purged_at),
        "caller_ref": row.caller_ref,
    }


def _parse_create(body: Any, *, manager_optional: bool = False) -> tuple[str, str | None] | str:
    """``(order_id, manager_id)`` (manager_id None only when ``manager_optional``: a manager token's
    own), or the id of the missed call to call back (``callback_of``)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - {"order_id", "manager_id", "callback_of"})
    if unknown:
        raise InvalidRequest(f"unknown field: {unknown[0][:40]}", details={"field": unknown[0][:40]})
    if "callback_of" in body:
        value = body["callback_of"]
        if set(body) != {"callback_of"}:
            raise InvalidRequest("callback_of comes alone: the order and the manager are the missed call's")
        if not isinstance(value, str) or not ID_RE.fullmatch(value):
            raise InvalidRequest("callback_of must be a call id", details={"field": "callback_of"})
        return value
    values: dict[str, str] = {}
    for name in ("order_id", "manager_id"):
        value = body.get(name)
        if value is None and name == "manager_id" and manager_optional:
            continue
        if value is None:
            raise InvalidRequest(f"{name} is required", details={"field": name})
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a string", details={"field": name})
        if not 1 <= len(value) <= _ID_MAX:
            raise InvalidRequest(f"{name} must be 1-{_ID_MAX} characters", details={"field": name})
        values[name] = value
    return values["order_id"], values.get("manager_id")


async def _as_whom(request: web.Request, who: Principal, asked: str | None) -> str:
    """The manager a call is placed as: the one asked for, or a manager token's own. A manager token
    asking for anyone else is refused (403, audited; the id it asked for is not stored: it is the
    client's text)."""
    if who.manager_id is None:
        if asked is None:  # _parse_create requires it of every other role
            raise InvalidRequest("manager_id is required", details={"field": "manager_id"})
        return asked
    if asked is not None and asked != who.manager_id:
        details = {"permission": "calls.create", "role": who.role, "manager_id": who.manager_id}
        await audit_denied(request, who.name, "forbidden", {**details, "reason": "other_manager"})
        raise OtherManager(f"this token places calls only as manager {who.manager_id}")
    return who.manager_id


async def _missed_call(request: web.Request, call_id: str) -> tuple[str, str]:
    """The order and manager of a missed inbound call this token may see, to call the customer back."""
    row = await request.app[STORE].calls.get(call_id)
    if row is None or not may_see(principal(request), row):
        raise CallNotFound()
    if (
        row.direction != "inbound"
        or row.outcome != "missed"
        or row.order_id is None
        or row.manager_id is None
    ):
        raise CallbackNotPossible()
    return row.order_id, row.manager_id


async def place(
    request: web.Request,
    client: str,
    order_id: str,
    manager_id: str,
    *,
    actor: str | None = None,
    callback_of: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Place a call for API client ``client`` through the service (as ``POST /v1/calls`` and a signed
    link do): 202 and the call, or the refusal raised as its ApiError."""
    placed = await request.app[SERVICE].place_from_api(
        client, manager_id, order_id, actor=actor, callback_of=callback_of
    )
    if isinstance(placed, Refused):
        raise refusal_error(placed.reason, retry_after=placed.retry_after)
    if isinstance(placed, NotStarted):
        raise outcome_error(placed.outcome, details={"call_id": placed.call_id})
    try:
        row = await request.app[STORE].calls.get(placed.id)
    except DatabaseUnavailable:
        row = None  # gone since the row was written: the call rings all the same
    return 202, call_json(row or _live_row(placed, client))


async def _create(
    request: web.Request, order_id: str, manager_id: str, callback_of: str | None = None
) -> tuple[int, dict[str, Any]]:
    return await place(request, principal(request).name, order_id, manager_id, callback_of=callback_of)


def _live_row(call: Call, client: str) -> CallRow:
    """The answer for a call that is ringing when its row cannot be read back (bridged's database went
    away a moment after taking it): what this daemon knows."""
    return CallRow(
        id=call.id,
        order_id=call.order_id,
        manager_id=call.manager.id if call.manager is not None else None,
        direction=call.direction,
        state=call.state.value,
        requested_at=datetime.now(UTC),
        created_by=client,
    )


@requires("calls.create", "calls.callback")
async def create_call(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG].current
    key = idempotency.key_of(request)
    body = await read_json(request, config.api.max_body_bytes)
    who = principal(request)
    parsed = _parse_create(body, manager_optional=who.manager_id is not None)
    if isinstance(parsed, str):  # a call back of a missed call: its order and manager
        await forbid_unless(request, "calls.callback", "calls.create")
        callback_of: str | None = parsed
        order_id, manager_id = await _missed_call(request, parsed)
    else:
        await forbid_unless(request, "calls.create")
        order_id, asked = parsed
        callback_of, manager_id = None, await _as_whom(request, who, asked)
    if key is None:
        status, payload = await _create(request, order_id, manager_id, callback_of)
        return _created(status, payload)
    first = await idempotency.claim(request, who.name, key, body)
    if isinstance(first, idempotency.Unrecorded):
        # Without the key's record a retry could ring twice: refused like any attempt without its row.
        refused = await request.app[SERVICE].refuse_unrecorded(who.name, manager_id)
        raise refusal_error(refused.reason)
    if first is not None:
        return _created(*first, replayed=True)
    try:
        status, payload = await _create(request, order_id, manager_id, callback_of)
    except ApiError as exc:
        # Answered as without a key (its Retry-After with it); the key keeps it only if it is final.
        await idempotency.settle(request, who.name, key, exc.status, exc.body(), exc.retry_after)
        raise
    except BaseException:
        await idempotency.settle(request, who.name, key, None, None)
        raise
    await idempotency.settle(request, who.name, key, status, payload)
    return _created(status, payload)


def _created(status: int, payload: dict[str, Any], *, replayed: bool = False) -> web.Response:
    response = web.json_response(payload, status=status)
    if status == 202 and "id" in payload:
        response.headers["Location"] = f"/v1/calls/{payload['id']}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def may_see(who: Principal, row: CallRow) -> bool:
    """A shop token sees the calls it placed, a manager token its manager's calls, a role with
    ``calls.any_client`` every call (:meth:`Principal.owns`). A call to a canary number is no manager's
    to see, though its row names the manager the canary was planted for: it is the alarm about them."""
    if row.canary and not who.may("calls.any_client"):
        return False
    return who.owns(manager_id=row.manager_id, created_by=row.created_by)


async def _visible_call(request: web.Request) -> CallRow:
    """The path's call, if this token may see it. Another client's call answers as one that does not
    exist: a shop learns nothing about calls that are not its own, not even that they exist."""
    row = await request.app[STORE].calls.get(path_id(request))
    if row is None or not may_see(principal(request), row):
        raise CallNotFound()
    return row


_LIST_FILTERS = {"manager", "order", "outcome", "has_recording"} | PAGE_PARAMETERS


@audited("calls.list")
async def list_calls(request: web.Request) -> web.Response:
    """The call history, newest first, one page at a time."""
    q = Query(request, _LIST_FILTERS)
    listing = Listing("calls", request.app[STORE].calls.page, lambda r: (r.requested_at, r.id), call_json)
    only = CallFilter(
        manager_id=q.text("manager", 64),
        order_id=q.text("order", 64),
        outcome=q.text("outcome", 64),
        has_recording=q.boolean("has_recording"),
    )
    return await listing.page(request, q, only)


@requires("calls.read")
async def get_call(request: web.Request) -> web.StreamResponse:
    return web.json_response(call_json(await _visible_call(request)))


@requires("calls.end")
async def end_call(request: web.Request) -> web.StreamResponse:
    row = await end(request, await _visible_call(request), principal(request).name)
    return web.json_response(call_json(row), status=202)


async def end(request: web.Request, row: CallRow, client: str, *, actor: str | None = None) -> CallRow:
    """End a live call for ``client`` (as ``DELETE /v1/calls/{id}`` and a link's page do); the row as it
    is once ended, or as last read if that takes more than a moment. 409 call_ended if it is not live."""
    if row.state == "ended":
        raise CallEnded()
    if not await request.app[SERVICE].end_from_api(client, row.id, actor=actor):
        raise CallEnded("the call is not live on this daemon")
    store = request.app[STORE]
    call_id = row.id
    # Answer with the ended call when that is quick (it normally takes a few milliseconds).
    try:
        for _ in range(40):
            found = await store.calls.get(call_id)
            if found is not None:
                row = found
            if row.state == "ended":
                break
            await asyncio.sleep(0.05)
    except DatabaseUnavailable:
        pass  # the call is ending all the same; the answer is the last row read
    return row


_TIMESTAMP = openapi.TIME
SCHEMAS: dict[str, Any] = {
    "CreateCall": {
        "description": "An order and the manager to connect with its customer (permission calls.create; "
        "manager_id may be left out with a manager token: then its own manager, another is 403 "
        "other_manager); or callback_of alone: a missed inbound call whose customer is called back, with "
        "the missed call's order and manager (permission calls.callback or calls.create)",
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["order_id"],
                "properties": {
                    "order_id": {"type": "string", "minLength": 1, "maxLength": _ID_MAX},
                    "manager_id": {"type": "string", "minLength": 1, "maxLength": _ID_MAX},
                },
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["callback_of"],
                "properties": {"callback_of": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}},
            },
        ],
    },
    "Call": {
        "type": "object",
        "additionalProperties": False,
        "description": "A call, as every endpoint shows it. It never carries a phone number.",
        "required": [
            "id",
            "order_id",
            "manager_id",
            "direction",
            "state",
            "outcome",
            "hangup_cause",
            "ended_by",
            "requested_at",
            "answered_at",
            "ended_at",
            "duration_seconds",
            "has_recording",
            "recording_state",
            "recording_purged_at",
            "caller_ref",
        ],
        "properties": {
            "id": {"type": "string"},
            "order_id": {
                "type": ["string", "null"],
                "description": "null only for an inbound call from a caller without an order",
            },
            "manager_id": {
                "type": ["string", "null"],
                "description": "the manager who placed or answered the call; for a missed inbound call the "
                "manager it was for (null when the caller has no order and no manager talked to them before)",
            },
            "direction": {
                "type": "string",
                "enum": ["phone", "api", "inbound"],
                "description": "phone: a manager dialled *77; api: POST /v1/calls; inbound: a customer "
                "called the shop's number",
            },
            "state": {
                "type": "string",
                "enum": [
                    "requested",
                    "ringing_manager",
                    "ringing_customer",
                    "announcing",
                    "bridged",
                    "ending",
                    "ended",
                ],
                "description": "ending: the manager hears why the call did not go ahead, then is hung up "
                "(an inbound call: the caller hears that nobody answered); ringing_manager: on an inbound "
                "call, the managers' phones ring while the caller hears ringing",
            },
            "outcome": {
                "type": ["string", "null"],
                "description": ", ".join(Outcome) + " (missed: an inbound call nobody answered, the caller "
                "hanging up while managers rang included); a refused attempt's reason (or an HTTP "
                "call's adopted while its manager rang, whose order may not be called any more): "
                + ", ".join(ROW_REFUSALS),
            },
            "requested_at": {"type": "string", "format": "date-time"},
            "answered_at": _TIMESTAMP,
            "ended_at": _TIMESTAMP,
            "hangup_cause": {"type": ["integer", "null"], "description": "Q.850 cause of the customer leg"},
            "ended_by": {"type": ["string", "null"]},
            "duration_seconds": {"type": ["number", "null"]},
            "has_recording": {
                "type": "boolean",
                "description": "a recording was made, holds audio (see recording_state) and was not purged",
            },
            "recording_state": RECORDING_STATE_SCHEMA,
            "recording_purged_at": {
                **_TIMESTAMP,
                "description": "when the retention deleted the recording (the call's row stays)",
            },
            "caller_ref": {
                "type": ["string", "null"],
                "pattern": "^[A-Z]{1,24}$",
                "description": "an inbound call's caller: letters derived from a keyed hash of their "
                "number (the same on every call of theirs, never the number), shown on the manager's phone "
                "as 'Customer <ref>' when the caller has no order. null for a withheld number and on other "
                "calls",
            },
        },
    },
}

SCHEMAS["CallPage"] = openapi.page_of("Call")
_CALL = openapi.json_content("Call")
_CALL_ID = openapi.CALL_ID_PARAMETER
# On an answer an Idempotency-Key replays (bridged.api.idempotency.final: the 202, or a 409
# manager_unavailable; never a refusal that rang nobody).
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "the first answer to a request with this Idempotency-Key, given again (the 202, or "
        "409 manager_unavailable)",
        "schema": {"type": "string", "const": "true"},
    }
}

openapi.register(
    {
        "/v1/calls": {
            "get": openapi.secured(
                {
                    "operationId": "listCalls",
                    "summary": "Call history, newest first (permission calls.list)",
                    "parameters": [
                        openapi.param("manager", "manager id", openapi.text(64)),
                        openapi.param("order", "order id", openapi.text(64)),
                        openapi.param("outcome", "e.g. completed, customer_busy, missed", openapi.text(64)),
                        openapi.param(
                            "from", "requested at or after" + openapi.TIME_NOTE, openapi.TIME_FILTER
                        ),
                        openapi.param("to", "requested before" + openapi.TIME_NOTE, openapi.TIME_FILTER),
                        openapi.param(
                            "has_recording", "a recording is available (not purged)", {"type": "boolean"}
                        ),
                        *openapi.page_parameters(DEFAULT_LIMIT, MAX_LIMIT, MAX_CURSOR),
                    ],
                    "responses": {
                        "200": {"description": "one page", "content": openapi.json_content("CallPage")},
                        **openapi.error_responses(422, 503),
                    },
                }
            ),
            "post": openapi.secured(
                {
                    "operationId": "createCall",
                    "summary": "Ring a manager, then connect them with the customer of an order (or call "
                    "back the customer of a missed inbound call)",
                    "description": "A shop token names the manager; a manager token places calls as its "
                    "own manager only (403 other_manager for another), under the same policy as *77.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "Keeps the answer to a request that placed or tried a call, so "
                            "that a retry does not ring again: a retry with the same key (per token, for "
                            "api.idempotency_hours) and the same body gets the 202 (the call placed) or the "
                            "409 manager_unavailable (the call tried, named in details.call_id) again "
                            "(Idempotent-Replayed: true) and places no second call. Every other answer "
                            "rang nobody and frees the key: a retry with it is a new attempt (with its own "
                            "call.request audit row), e.g. after 409 manager_not_registered once the phone "
                            "registered, after 404 unknown_order once the order exists, after a 429 or 503 "
                            "once its Retry-After has passed. Another body with the key is 422 "
                            "idempotency_key_reused, a retry while the first request is handled 409 "
                            "idempotency_key_in_use.",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/CreateCall"}}
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "the manager's phone is ringing",
                            "content": _CALL,
                            "headers": _REPLAYED,
                        },
                        **openapi.error_responses(400, 404, 408, 413, 415, 429, 503),
                        "403": {
                            **openapi.error_responses(403)["403"],
                            "description": "forbidden (the role may not place calls), order_not_allowed "
                            "(the policy), or other_manager (a manager token naming another manager)",
                        },
                        "409": {
                            **openapi.error_responses(409, headers=_REPLAYED)["409"],
                            "description": "idempotency_key_in_use, manager_not_registered, "
                            "manager_unavailable (the manager's phone could not be called: the call, named "
                            "in details.call_id, has ended; the one refusal an Idempotency-Key replays), or "
                            "callback_not_possible (callback_of names a "
                            "call that is not a missed inbound call with an order and a manager)",
                        },
                        "422": {
                            **openapi.error_responses(422)["422"],
                            "description": "invalid_request, invalid_order_id, invalid_idempotency_key, "
                            "idempotency_key_reused, or invalid_phone (the order's phone value is not a "
                            "valid number: nobody was dialled)",
                        },
                    },
                }
            ),
        },
        "/v1/calls/{call_id}": {
            "get": openapi.secured(
                {
                    "operationId": "getCall",
                    "summary": "A call's state and outcome",
                    "description": "A shop token sees the calls it placed, a manager token its manager's "
                    "calls; ops and admin tokens see all. Any other call is 404 call_not_found to them.",
                    "parameters": [_CALL_ID],
                    "responses": {
                        "200": {"description": "the call", "content": _CALL},
                        **openapi.error_responses(404, 503),
                    },
                }
            ),
            "delete": openapi.secured(
                {
                    "operationId": "endCall",
                    "summary": "End a call that is ringing or bridged (one this token placed; a manager "
                    "token: one of its manager's)",
                    "parameters": [_CALL_ID],
                    "responses": {
                        "202": {"description": "the call is ending or has ended", "content": _CALL},
                        **openapi.error_responses(404, 409, 503),
                    },
                }
            ),
        },
    },
    SCHEMAS,
)


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/calls", create_call)
    app.router.add_get("/v1/calls", list_calls, allow_head=False)
    app.router.add_get("/v1/calls/{call_id}", get_call)
    app.router.add_delete("/v1/calls/{call_id}", end_call)
