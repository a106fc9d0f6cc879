"""Recording retention over HTTP: ``GET|PUT|DELETE /v1/retention``, ``POST /v1/retention/purge`` (admin).

The retention itself (the schedule, the purge, the setting kept in the database) is bridged.retention.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..recordings import SourceUnavailable
from ..retention import RETENTION, RetentionPolicy
from . import openapi
from .auth import audited, principal
from .errors import InvalidRetention, RecordingUnavailable
from .params import Query, read_json


def retention_json(policy: RetentionPolicy) -> dict[str, Any]:
    return {
        "days": policy.days,
        "source": policy.source,
        "updated_at": None if policy.updated_at is None else policy.updated_at.isoformat(),
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


_OK = {"200": {"description": "the retention in force", "content": openapi.json_content("Retention")}}

openapi.register(
    {
        "/v1/retention": {
            "get": openapi.secured(
                {
                    "operationId": "getRetention",
                    "summary": "Recording retention in force (retention.read)",
                    "responses": {**_OK, **openapi.error_responses(422, 503)},
                }
            ),
            "put": openapi.secured(
                {
                    "operationId": "setRetention",
                    "summary": "Set the recording retention; kept across restarts; audited (retention.write)",
                    "requestBody": {"required": True, "content": openapi.json_content("RetentionChange")},
                    "responses": {**_OK, **openapi.error_responses(400, 408, 413, 415, 422, 503)},
                }
            ),
            "delete": openapi.secured(
                {
                    "operationId": "resetRetention",
                    "summary": "Back to the config's retention (retention.write)",
                    "responses": {**_OK, **openapi.error_responses(422, 503)},
                }
            ),
        },
        "/v1/retention/purge": {
            "post": openapi.secured(
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
                        **openapi.error_responses(422, 503),
                    },
                }
            )
        },
    },
    {
        "Retention": {
            "type": "object",
            "required": ["days", "source"],
            "properties": {
                "days": {"type": ["integer", "null"], "description": "null: recordings are kept"},
                "source": {"type": "string", "enum": ["config", "api"]},
                "updated_at": openapi.TIME,
                "updated_by": {"type": ["string", "null"]},
            },
        },
        "RetentionChange": {
            "type": "object",
            "required": ["days"],
            "additionalProperties": False,
            "properties": {"days": {"type": ["integer", "null"], "minimum": 1, "maximum": 36500}},
        },
    },
)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/retention", get_retention, allow_head=False)
    app.router.add_put("/v1/retention", put_retention)
    app.router.add_delete("/v1/retention", delete_retention)
    app.router.add_post("/v1/retention/purge", purge_now)
