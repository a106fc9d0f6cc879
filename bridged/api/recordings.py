"""A call's recording: ``GET /v1/calls/{id}/recording`` (and ``HEAD``), one byte range at a time.

Every listen is audited before the first byte of the recording leaves (no audit row, no recording).
Recording names come from the call rows, never from the request.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from aiohttp import web

from ..appkeys import CONFIG, STORE
from ..recording_state import RecordingState
from ..recordings import ByteRange, OpenRecording, RecordingMissing, SourceUnavailable, parse_range
from ..recordings import RangeNotSatisfiable as RangePastTheEnd
from ..retention import RECORDINGS
from ..store.calls import CallRow
from . import openapi
from .auth import Principal, audited, client_address, principal
from .errors import (
    AuditUnavailable,
    CallNotFound,
    RangeNotSatisfiable,
    ReasonRequired,
    RecordingInProgress,
    RecordingNotFound,
    RecordingPurged,
    RecordingUnavailable,
)
from .params import Query, path_id

log = logging.getLogger(__name__)

MAX_REASON = 500
_PARAMETERS = {"reason", "download"}


@audited("recordings.listen")
async def get_recording(request: web.Request) -> web.StreamResponse:
    """Stream a call's recording (Range supported); the listen is audited before the first byte.

    HEAD answers with the same status and headers and no body (players ask for the length first); no
    audio leaves, so it writes no listen row."""
    who = principal(request)
    q = Query(request, _PARAMETERS)
    reason = q.text("reason", MAX_REASON)
    download = bool(q.boolean("download"))
    if reason is None and request.app[CONFIG].current.recording.require_reason:
        raise ReasonRequired()
    call = await request.app[STORE].calls.get(path_id(request))
    if call is None:
        raise CallNotFound()
    if call.recording_name is None or call.recording_state == RecordingState.FAILED:
        raise RecordingNotFound()
    if call.recording_purged_at is not None:
        raise RecordingPurged(details={"purged_at": call.recording_purged_at.isoformat()})
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
        size = recording.size
        try:
            wanted = parse_range(request.headers.get("Range"), size)
        except RangePastTheEnd:
            headers = {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"}
            raise RangeNotSatisfiable(f"the recording has {size} bytes", headers=headers) from None
        if request.method != "HEAD":
            await _audit_listen(request, who, call, wanted, size, reason=reason, download=download)
        return await _send(request, call, recording, wanted, download=download)
    finally:
        await recording.close()


async def _audit_listen(
    request: web.Request,
    who: Principal,
    call: CallRow,
    wanted: ByteRange | None,
    size: int,
    *,
    reason: str | None,
    download: bool,
) -> None:
    action = "recording.download" if download else "recording.listen"
    try:
        await request.app[STORE].audit.add(
            actor=who.name,
            action=action,
            outcome="granted",
            reason=reason,
            call_id=call.id,
            order_id=call.order_id,
            details={
                "client": client_address(request),
                "role": who.role,
                "range": None if wanted is None else wanted.content_range(size),
                "source": request.app[RECORDINGS].name,
            },
        )
    except Exception as exc:
        log.error("call %s: listen by %s not audited, recording withheld: %s", call.id, who.name, exc)
        raise AuditUnavailable() from None
    log.info("call %s: recording %s by %s", call.id, action.split(".")[1], who.name)


async def _send(
    request: web.Request, call: CallRow, recording: OpenRecording, wanted: ByteRange | None, *, download: bool
) -> web.StreamResponse:
    size = recording.size
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
    if request.method == "HEAD":
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


# -- OpenAPI ----------------------------------------------------------------------------------------

_AUDIO = {
    "audio/wav": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}


def _headers_only(operation: dict[str, Any]) -> dict[str, Any]:
    """A secured HEAD operation: its answers, errors included, have no body to describe."""
    operation = openapi.secured(operation)
    operation["responses"] = {
        status: {"description": response["description"]}
        for status, response in operation["responses"].items()
    }
    return operation


_RECORDING_PARAMETERS = [
    openapi.CALL_ID_PARAMETER,
    openapi.param(
        "reason", "why (kept in the audit trail; may be required by config)", openapi.text(MAX_REASON)
    ),
    openapi.param("download", "as an attachment (audited as a download)", {"type": "boolean"}),
    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
]
_ERRORS = (404, 409, 410, 416, 422, 503)

openapi.register(
    {
        "/v1/calls/{call_id}/recording": {
            "get": openapi.secured(
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
                        **openapi.error_responses(*_ERRORS),
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
                        "200": {"description": "the whole recording's headers"},
                        "206": {"description": "the range's headers"},
                        **{str(status): {"description": "error"} for status in _ERRORS},
                    },
                }
            ),
        },
    }
)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/calls/{call_id}/recording", get_recording)  # and HEAD
