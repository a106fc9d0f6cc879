"""The audit trail: ``GET /v1/audit``, newest first, one page at a time (admin)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..appkeys import STORE
from ..store.audit import AuditFilter, AuditRow
from . import openapi
from .auth import audited
from .cursors import DEFAULT_LIMIT, MAX_LIMIT, PAGE_PARAMETERS, Listing
from .cursors import MAX_LENGTH as MAX_CURSOR
from .params import Query

_FILTERS = {"actor", "action", "call"} | PAGE_PARAMETERS


def audit_json(row: AuditRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat(),
        "actor": row.actor,
        "action": row.action,
        "call_id": row.call_id,
        "order_id": row.order_id,
        "outcome": row.outcome,
        "reason": row.reason,
        "details": row.details,
    }


@audited("audit.read")
async def list_audit(request: web.Request) -> web.Response:
    """The audit trail, newest first, one page at a time."""
    q = Query(request, _FILTERS)
    listing = Listing("audit", request.app[STORE].audit.page, lambda r: (r.at, r.id), audit_json)
    only = AuditFilter(actor=q.text("actor", 200), action=q.text("action", 64), call_id=q.id("call"))
    return await listing.page(request, q, only)


openapi.register(
    {
        "/v1/audit": {
            "get": openapi.secured(
                {
                    "operationId": "listAudit",
                    "summary": "The audit trail, newest first (permission audit.read)",
                    "parameters": [
                        openapi.param(
                            "actor", "token or manager name, 'anonymous', 'retention'", openapi.text(200)
                        ),
                        openapi.param(
                            "action", "e.g. recording.listen, api.denied, call.request", openapi.text(64)
                        ),
                        openapi.param("call", "call id", openapi.CALL_ID_PARAMETER["schema"]),
                        openapi.param("from", "at or after" + openapi.TIME_NOTE, openapi.TIME_FILTER),
                        openapi.param("to", "before" + openapi.TIME_NOTE, openapi.TIME_FILTER),
                        *openapi.page_parameters(DEFAULT_LIMIT, MAX_LIMIT, MAX_CURSOR),
                    ],
                    "responses": {
                        "200": {"description": "one page", "content": openapi.json_content("AuditPage")},
                        **openapi.error_responses(422, 503),
                    },
                }
            )
        },
    },
    {
        "AuditEntry": {
            "type": "object",
            "required": ["id", "at", "actor", "action", "outcome"],
            "properties": {
                "id": {"type": "integer"},
                "at": {"type": "string", "format": "date-time"},
                "actor": openapi.STR,
                "action": openapi.STR,
                "call_id": {"type": ["string", "null"]},
                "order_id": {"type": ["string", "null"]},
                "outcome": openapi.STR,
                "reason": {"type": ["string", "null"]},
                "details": {"type": "object"},
            },
        },
        "AuditPage": openapi.page_of("AuditEntry"),
    },
)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/audit", list_audit, allow_head=False)
