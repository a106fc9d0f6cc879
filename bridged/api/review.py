"""Ops review: the call history, listening to recordings, the audit trail, recording retention.

Every listen is audited before the first byte of the recording leaves (no audit row, no recording);
every denied request is audited (403 through ``ON_DENIED``, 401 on these endpoints as ``anonymous``).
No response here carries a phone number: the call rows hold none, and channel ids are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from ipaddress import ip_address
from typing import Any

import aiohttp
from aiohttp import web

from .. import metrics
from ..appkeys import CONFIG, STORE
from ..recording_state import STATE_SCHEMA as RECORDING_STATE_SCHEMA
from ..recording_state import RecordingState
from ..recordings import (
    OpenRecording,
    RangeNotSatisfiable,
    RecordingMissing,
    SourceUnavailable,
    parse_range,
)
from ..retention import RECORDINGS, RETENTION, RetentionPolicy
from ..store import Store
from ..store.audit import AuditRow
from ..store.calls import CallRow
from . import openapi
from .auth import ON_DENIED, PERMISSIONS, TOKENS, Handler, Principal, principal, requires
from .cursors import CURSORS, CursorCodec, CursorKeeper
from .errors import ApiError, CallNotFound, Unauthorized
from .limits import DeniedAuditLimiter
from .openapi import error_responses, secured
from .params import Query, path_id, read_json

log = logging.getLogger(__name__)
# Caps the audit rows refused requests write per client (bridged.api.limits).
DENIED_LIMITER: web.AppKey[DeniedAuditLimiter] = web.AppKey("denied_limiter", DeniedAuditLimiter)

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_CURSOR = 400
MAX_REASON = 500
ANONYMOUS = "anonymous"


# -- errors -----------------------------------------------------------------------------------------


class ReasonRequired(ApiError):
    status = 422
    error_id = "reason_required"
    message = "listening to a recording needs a reason (?reason=...)"


class RecordingNotFound(ApiError):
    status = 404
    error_id = "recording_not_found"
    message = "this call has no recording"


class RecordingPurged(ApiError):
    status = 410
    error_id = "recording_purged"
    message = "the recording was deleted by the retention policy"


class RecordingInProgress(ApiError):
    status = 409
    error_id = "recording_in_progress"
    message = "the call is still going on; its recording is not finished"


class RecordingUnavailable(ApiError):
    status = 503
    error_id = "recording_unavailable"
    message = "the recording store did not answer"
    retry_after = 5


class AuditUnavailable(ApiError):
    status = 503
    error_id = "audit_unavailable"
    message = "the listen could not be audited, so the recording is not served"
    retry_after = 5


class InvalidRetention(ApiError):
    status = 422
    error_id = "invalid_retention"
    message = 'send {"days": <1..36500> or null}'


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def call_json(row: CallRow) -> dict[str, Any]:
    duration = None
    if row.answered_at is not None and row.ended_at is not None:
        duration = round(max(0.0, (row.ended_at - row.answered_at).total_seconds()), 3)
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
        "duration_seconds": duration,
        "recording": {
            "available": row.recording_available,
            "purged_at": _iso(row.recording_purged_at),
            "state": row.recording_state,
        },
    }


def audit_json(row: AuditRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": _iso(row.at),
        "actor": row.actor,
        "action": row.action,
        "call_id": row.call_id,
        "order_id": row.order_id,
        "outcome": row.outcome,
        "reason": row.reason,
        "details": row.details,
    }


# -- auditing denials -------------------------------------------------------------------------------


def _client(request: web.Request) -> str | None:
    """The client's address: the peer, or, when the peer is a trusted reverse proxy
    (``http.trusted_proxies``), the last address in X-Forwarded-For that is not one of them."""
    peer = request.remote
    trusted = request.app[CONFIG].current.http.trusted_proxies
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [
        h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()
    ]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop if _is_address(hop) else peer
    return hops[0] if hops else peer


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _is_trusted(address: str | None, trusted: tuple[Any, ...]) -> bool:
    try:
        ip = ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in trusted)


async def _audit_denied(request: web.Request, actor: str, outcome: str, details: dict[str, Any]) -> None:
    client = _client(request)
    limiter = request.app.get(DENIED_LIMITER)
    if limiter is not None:
        write, folded = limiter.admit(client or "?")
        if not write:
            metrics.API_DENIALS_FOLDED.inc()
            return
        if folded:
            details = {**details, "suppressed_before": folded}
    details = {"method": request.method, "path": request.rel_url.path, "client": client, **details}
    try:
        await _store(request.app).audit.add(
            actor=actor, action="api.denied", outcome=outcome, details=details
        )
    except Exception as exc:
        # The refusal stands either way; losing its audit row must not turn it into a 500.
        log.error("denied request not audited (%s %s): %s", request.method, request.rel_url.path, exc)


async def on_denied(request: web.Request, who: Principal, permission: str) -> None:
    """ON_DENIED: every 403 of the API (any module) leaves an audit row."""
    await _audit_denied(request, who.name, "forbidden", {"permission": permission, "role": who.role})


async def _audit_unauthenticated(request: web.Request, permission: str | None) -> None:
    header = request.headers.get("Authorization")
    details: dict[str, Any] = {"token": "invalid" if header else "none"}
    if permission is not None:
        details["permission"] = permission
    await _audit_denied(request, ANONYMOUS, "unauthenticated", details)


def audited(permission: str) -> Callable[[Handler], Handler]:
    """``requires(permission)``, plus an audit row for a missing or unknown token (401)."""

    def wrap(handler: Handler) -> Handler:
        checked = requires(permission)(handler)

        async def with_audit(request: web.Request) -> web.StreamResponse:
            try:
                return await checked(request)
            except Unauthorized:
                await _audit_unauthenticated(request, permission)
                raise

        with_audit.__name__ = handler.__name__
        with_audit.__doc__ = handler.__doc__
        setattr(with_audit, "permission", permission)  # noqa: B010 - as requires() does
        return with_audit

    return wrap


def _store(app: web.Application) -> Store:
    return app[STORE]


async def _cursors(app: web.Application) -> CursorCodec:
    return await app[CURSORS].codec(_store(app).settings.cursor_secret)


# -- handlers ---------------------------------------------------------------------------------------

_CALL_FILTERS = {"manager", "order", "outcome", "from", "to", "has_recording", "limit", "cursor"}


@audited("calls.list")
async def list_calls(request: web.Request) -> web.Response:
    """The call history, newest first, one page at a time."""
    q = Query(request, _CALL_FILTERS)
    limit = q.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    manager_id, order_id, outcome = q.text("manager", 64), q.text("order", 64), q.text("outcome", 64)
    since, until, has_recording = q.time("from"), q.time("to"), q.boolean("has_recording")
    cursor = q.text("cursor", MAX_CURSOR)
    cursors = await _cursors(request.app)
    before = cursors.decode_calls(cursor) if cursor else None
    rows = await _store(request.app).calls.page(
        manager_id=manager_id,
        order_id=order_id,
        outcome=outcome,
        since=since,
        until=until,
        has_recording=has_recording,
        before=before,
        limit=limit + 1,
    )
    page = rows[:limit]
    next_cursor = (
        cursors.encode("calls", page[-1].requested_at, page[-1].id) if len(rows) > limit and page else None
    )
    return web.json_response(
        {"items": [call_json(r) for r in page], "next_cursor": next_cursor},
        headers={"Cache-Control": "no-store"},
    )


_RECORDING_PARAMS = {"reason", "download"}


@audited("recordings.listen")
async def get_recording(request: web.Request) -> web.StreamResponse:
    """Stream a call's recording (Range supported); the listen is audited before the first byte.

    HEAD answers with the same status and headers and no body (players ask for the length first); no
    audio leaves, so it writes no listen row."""
    who = principal(request)
    q = Query(request, _RECORDING_PARAMS)
    reason = q.text("reason", MAX_REASON)
    download = bool(q.boolean("download"))
    if reason is None and request.app[CONFIG].current.recording.require_reason:
        raise ReasonRequired()
    store = _store(request.app)
    call = await store.calls.get(path_id(request))
    if call is None:
        raise CallNotFound()
    if call.recording_name is None or call.recording_state == RecordingState.FAILED:
        raise RecordingNotFound()
    if call.recording_purged_at is not None:
        raise RecordingPurged(details={"purged_at": _iso(call.recording_purged_at)})
    if call.state != "ended":
        raise RecordingInProgress()

    source = request.app[RECORDINGS]
    try:
        recording = await source.open(call.recording_name)
    except RecordingMissing:
        log.warning("call %s: recording %s is missing from %s", call.id, call.recording_name, source.name)
        raise RecordingNotFound("the recording file is missing") from None
    except SourceUnavailable as exc:
        log.error("call %s: recording store unavailable: %s", call.id, exc)
        raise RecordingUnavailable() from None
    try:
        return await _serve(request, who, call, recording, reason=reason, download=download)
    finally:
        await recording.close()


async def _serve(
    request: web.Request,
    who: Principal,
    call: CallRow,
    recording: OpenRecording,
    *,
    reason: str | None,
    download: bool,
) -> web.StreamResponse:
    size = recording.size
    try:
        wanted = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        return web.json_response(
            {"error": {"id": "range_not_satisfiable", "message": f"the recording has {size} bytes"}},
            status=416,
            headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
        )
    head = request.method == "HEAD"
    action = "recording.download" if download else "recording.listen"
    if not head:
        try:
            await _store(request.app).audit.add(
                actor=who.name,
                action=action,
                outcome="granted",
                reason=reason,
                call_id=call.id,
                order_id=call.order_id,
                details={
                    "client": _client(request),
                    "role": who.role,
                    "range": None if wanted is None else wanted.content_range(size),
                    "source": request.app[RECORDINGS].name,
                },
            )
        except Exception as exc:
            log.error("call %s: listen by %s not audited, recording withheld: %s", call.id, who.name, exc)
            raise AuditUnavailable() from None
        log.info("call %s: recording %s by %s", call.id, action.split(".")[1], who.name)

    start, end = (0, size - 1) if wanted is None else (wanted.start, wanted.end)
    response = web.StreamResponse(status=200 if wanted is None else 206)
    response.content_type = recording.content_type.split(";")[0]
    if ";" in recording.content_type:
        response.headers["Content-Type"] = recording.content_type
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    extension = {"audio/wav": "wav"}.get(response.content_type, "bin")
    disposition = "attachment" if download else "inline"
    response.headers["Content-Disposition"] = f'{disposition}; filename="call-{call.id}.{extension}"'
    if wanted is not None:
        response.headers["Content-Range"] = wanted.content_range(size)
    response.content_length = max(0, end - start + 1)
    await response.prepare(request)
    if head:
        await response.write_eof()
        return response
    try:
        if size > 0:
            async for chunk in recording.chunks(start, end):
                await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        # A player that seeks drops the connection mid-file; the listen was audited already.
        log.debug("call %s: client left while the recording was being sent", call.id)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        # The source broke off after the headers went out: cut the connection, the length tells the rest.
        log.error("call %s: recording source failed mid-stream: %s", call.id, type(exc).__name__)
        response.force_close()
    return response


_AUDIT_FILTERS = {"actor", "action", "call", "from", "to", "limit", "cursor"}


@audited("audit.read")
async def list_audit(request: web.Request) -> web.Response:
    """The audit trail, newest first, one page at a time."""
    q = Query(request, _AUDIT_FILTERS)
    limit = q.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    actor, action, call_id = q.text("actor", 200), q.text("action", 64), q.id("call")
    since, until = q.time("from"), q.time("to")
    cursor = q.text("cursor", MAX_CURSOR)
    cursors = await _cursors(request.app)
    before = cursors.decode_audit(cursor) if cursor else None
    rows = await _store(request.app).audit.page(
        actor=actor,
        action=action,
        call_id=call_id,
        since=since,
        until=until,
        before=before,
        limit=limit + 1,
    )
    page = rows[:limit]
    next_cursor = cursors.encode("audit", page[-1].at, page[-1].id) if len(rows) > limit and page else None
    return web.json_response(
        {"items": [audit_json(r) for r in page], "next_cursor": next_cursor},
        headers={"Cache-Control": "no-store"},
    )


def retention_json(policy: RetentionPolicy) -> dict[str, Any]:
    return {
        "days": policy.days,
        "source": policy.source,
        "updated_at": _iso(policy.updated_at),
        "updated_by": policy.updated_by,
    }


@audited("retention.read")
async def get_retention(request: web.Request) -> web.Response:
    Query(request, set())
    return web.json_response(retention_json(await request.app[RETENTION].policy()))


@audited("retention.write")
async def put_retention(request: web.Request) -> web.Response:
    Query(request, set())
    body = await read_json(request, 1024)
    if not isinstance(body, dict) or set(body) != {"days"}:
        raise InvalidRetention()
    days = body["days"]
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36500):
        raise InvalidRetention()
    policy = await request.app[RETENTION].set_days(days, actor=principal(request).name)
    return web.json_response(retention_json(policy))


@audited("retention.write")
async def delete_retention(request: web.Request) -> web.Response:
    """Back to the config file's retention."""
    Query(request, set())
    policy = await request.app[RETENTION].reset(actor=principal(request).name)
    return web.json_response(retention_json(policy))


@audited("retention.write")
async def purge_now(request: web.Request) -> web.Response:
    """Run a retention pass now (the schedule runs them anyway)."""
    Query(request, set())
    try:
        purged = await request.app[RETENTION].purge()
    except SourceUnavailable:
        raise RecordingUnavailable() from None
    return web.json_response({"purged": purged})


async def me(request: web.Request) -> web.Response:
    """Who this token is and what it may do (the ops page adapts to it)."""
    Query(request, set())
    who = request.app[TOKENS].authenticate(request.headers.get("Authorization"))
    if who is None:
        await _audit_unauthenticated(request, None)
        raise Unauthorized()
    return web.json_response(
        {"name": who.name, "role": who.role, "permissions": sorted(PERMISSIONS.get(who.role, ()))}
    )


# -- OpenAPI ----------------------------------------------------------------------------------------

_STR = {"type": "string"}
_TIME = {"type": ["string", "null"], "format": "date-time"}
# A time filter: what params.parse_time accepts (JSON Schema cannot say "years 1970 to 9999").
_TIME_FILTER = {"type": "string", "format": "date-time", "maxLength": 64}
_TIME_NOTE = "; ISO 8601, 1970 to 9999, UTC when no offset is given"


def _text(max_length: int) -> dict[str, Any]:
    """A text parameter: what params.parse_text accepts (no control characters)."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
    }


def _param(name: str, description: str, schema: dict[str, Any], where: str = "query") -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


_PAGE = [
    _param(
        "limit",
        f"rows per page (default {DEFAULT_LIMIT})",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    ),
    _param("cursor", "next_cursor of the previous page", {"type": "string", "maxLength": MAX_CURSOR}),
]

SCHEMAS: dict[str, Any] = {
    "ReviewCall": {
        "type": "object",
        "description": "A call as ops review shows it. It never carries a phone number.",
        "required": ["id", "order_id", "manager_id", "state", "requested_at", "recording"],
        "properties": {
            "id": _STR,
            "order_id": _STR,
            "manager_id": _STR,
            "direction": {"type": "string", "enum": ["phone", "api"]},
            "state": _STR,
            "outcome": {"type": ["string", "null"]},
            "hangup_cause": {"type": ["integer", "null"]},
            "ended_by": {"type": ["string", "null"]},
            "requested_at": {"type": "string", "format": "date-time"},
            "answered_at": _TIME,
            "ended_at": _TIME,
            "duration_seconds": {"type": ["number", "null"]},
            "recording": {
                "type": "object",
                "required": ["available", "purged_at", "state"],
                "properties": {
                    "available": {"type": "boolean"},
                    "purged_at": _TIME,
                    "state": RECORDING_STATE_SCHEMA,
                },
            },
        },
    },
    "ReviewCallPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/ReviewCall"}},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "at", "actor", "action", "outcome"],
        "properties": {
            "id": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "actor": _STR,
            "action": _STR,
            "call_id": {"type": ["string", "null"]},
            "order_id": {"type": ["string", "null"]},
            "outcome": _STR,
            "reason": {"type": ["string", "null"]},
            "details": {"type": "object"},
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Retention": {
        "type": "object",
        "required": ["days", "source"],
        "properties": {
            "days": {"type": ["integer", "null"], "description": "null: recordings are kept"},
            "source": {"type": "string", "enum": ["config", "api"]},
            "updated_at": _TIME,
            "updated_by": {"type": ["string", "null"]},
        },
    },
    "RetentionChange": {
        "type": "object",
        "required": ["days"],
        "additionalProperties": False,
        "properties": {"days": {"type": ["integer", "null"], "minimum": 1, "maximum": 36500}},
    },
    "Me": {
        "type": "object",
        "required": ["name", "role", "permissions"],
        "properties": {
            "name": _STR,
            "role": {"type": "string", "enum": ["shop", "ops", "admin"]},
            "permissions": {"type": "array", "items": _STR},
        },
    },
}

_AUDIO = {
    "audio/wav": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}


def _headers_only(operation: dict[str, Any]) -> dict[str, Any]:
    """A secured HEAD operation: its answers, errors included, have no body to describe."""
    operation = secured(operation)
    operation["responses"] = {
        status: {"description": response["description"]}
        for status, response in operation["responses"].items()
    }
    return operation


_RECORDING_PARAMETERS = [
    openapi.CALL_ID_PARAMETER,
    _param("reason", "why (kept in the audit trail; may be required by config)", _text(MAX_REASON)),
    _param("download", "as an attachment (audited as a download)", {"type": "boolean"}),
    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
]
_RETENTION_OK = {"200": {"description": "the retention in force", "content": _json("Retention")}}

PATHS: dict[str, dict[str, Any]] = {
    "/v1/calls": {
        "get": secured(
            {
                "operationId": "listCalls",
                "summary": "Call history, newest first (permission calls.list)",
                "parameters": [
                    _param("manager", "manager id", _text(64)),
                    _param("order", "order id", _text(64)),
                    _param("outcome", "e.g. completed, customer_busy", _text(64)),
                    _param("from", "requested at or after" + _TIME_NOTE, _TIME_FILTER),
                    _param("to", "requested before" + _TIME_NOTE, _TIME_FILTER),
                    _param("has_recording", "a recording is available (not purged)", {"type": "boolean"}),
                    *_PAGE,
                ],
                "responses": {
                    "200": {"description": "one page", "content": _json("ReviewCallPage")},
                    **error_responses(422, 503),
                },
            }
        )
    },
    "/v1/calls/{call_id}/recording": {
        "get": secured(
            {
                "operationId": "getCallRecording",
                "summary": "Stream a call's recording; audited (permission recordings.listen)",
                "description": "Supports a single byte range (206, Content-Range; 416 past the end). "
                "An audit row (who, call, reason, client address) is written before the first byte; "
                "if it cannot be, 503 and nothing is served.",
                "parameters": _RECORDING_PARAMETERS,
                "responses": {
                    "200": {"description": "the whole recording", "content": _AUDIO},
                    "206": {"description": "the range asked for", "content": _AUDIO},
                    **error_responses(404, 409, 410, 416, 422, 503),
                },
            }
        ),
        "head": _headers_only(
            {
                "operationId": "headCallRecording",
                "summary": "GET's status and headers (Content-Length, Content-Type, Accept-Ranges), no "
                "body; writes no listen row (permission recordings.listen)",
                "parameters": _RECORDING_PARAMETERS,
                "responses": {
                    str(status): {"description": description}
                    for status, description in (
                        (200, "the whole recording's headers"),
                        (206, "the range's headers"),
                        (404, "error"),
                        (409, "error"),
                        (410, "error"),
                        (416, "error"),
                        (422, "error"),
                        (503, "error"),
                    )
                },
            }
        ),
    },
    "/v1/audit": {
        "get": secured(
            {
                "operationId": "listAudit",
                "summary": "The audit trail, newest first (permission audit.read)",
                "parameters": [
                    _param("actor", "token or manager name, 'anonymous', 'retention'", _text(200)),
                    _param("action", "e.g. recording.listen, api.denied, call.request", _text(64)),
                    _param("call", "call id", openapi.CALL_ID_PARAMETER["schema"]),
                    _param("from", "at or after" + _TIME_NOTE, _TIME_FILTER),
                    _param("to", "before" + _TIME_NOTE, _TIME_FILTER),
                    *_PAGE,
                ],
                "responses": {
                    "200": {"description": "one page", "content": _json("AuditPage")},
                    **error_responses(422, 503),
                },
            }
        )
    },
    "/v1/retention": {
        "get": secured(
            {
                "operationId": "getRetention",
                "summary": "Recording retention in force (retention.read)",
                "responses": {**_RETENTION_OK, **error_responses(503)},
            }
        ),
        "put": secured(
            {
                "operationId": "setRetention",
                "summary": "Set the recording retention; kept across restarts; audited (retention.write)",
                "requestBody": {"required": True, "content": _json("RetentionChange")},
                "responses": {**_RETENTION_OK, **error_responses(400, 408, 413, 415, 422, 503)},
            }
        ),
        "delete": secured(
            {
                "operationId": "resetRetention",
                "summary": "Back to the config's retention (retention.write)",
                "responses": {**_RETENTION_OK, **error_responses(503)},
            }
        ),
    },
    "/v1/retention/purge": {
        "post": secured(
            {
                "operationId": "purgeRecordings",
                "summary": "Run a retention pass now (retention.write)",
                "responses": {
                    "200": {
                        "description": "how many recordings were purged",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["purged"],
                                    "properties": {"purged": {"type": "integer"}},
                                }
                            }
                        },
                    },
                    **error_responses(503),
                },
            }
        )
    },
    "/v1/me": {
        "get": {
            "operationId": "me",
            "summary": "The caller's token name, role and permissions",
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "who you are", "content": _json("Me")},
                **error_responses(401),
            },
        }
    },
}

openapi.register(PATHS, SCHEMAS)


def setup(app: web.Application) -> None:
    from ..ops import setup as ops_setup

    app[ON_DENIED] = on_denied
    app[DENIED_LIMITER] = DeniedAuditLimiter()
    app[CURSORS] = CursorKeeper()
    app.router.add_get("/v1/calls", list_calls, allow_head=False)
    app.router.add_get("/v1/calls/{call_id}/recording", get_recording)  # and HEAD
    app.router.add_get("/v1/audit", list_audit, allow_head=False)
    app.router.add_get("/v1/retention", get_retention, allow_head=False)
    app.router.add_put("/v1/retention", put_retention)
    app.router.add_delete("/v1/retention", delete_retention)
    app.router.add_post("/v1/retention/purge", purge_now)
    app.router.add_get("/v1/me", me, allow_head=False)
    ops_setup(app)
