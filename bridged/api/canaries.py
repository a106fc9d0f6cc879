"""Canary orders and probing over HTTP: ``POST|GET /v1/canaries``, ``DELETE /v1/canaries/{id}`` (admin),
``GET /v1/probing`` (ops, admin).

A canary's number goes in once and never comes back out: bridged keeps its keyed hash and its last two
digits (bridged.canaries). Every change is audited in the statement that makes it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from ..appkeys import CONFIG, SERVICE, STORE
from ..canaries import e164_of, key_check, number_key
from ..ids import ID_RE
from ..store.canaries import CanaryExists, CanaryRow
from . import openapi
from .auth import audited, principal
from .errors import CanariesUnavailable, CanaryNotFound, CanaryTaken, InvalidCanary
from .params import Query, read_json

_FIELDS = {"id", "number", "order_id", "manager_id", "team", "note"}
_MAX_NOTE = 200


def canary_json(row: CanaryRow) -> dict[str, Any]:
    """A canary as admins see it: the number's last two digits, never the number."""
    return {
        "id": row.id,
        "number_last_digits": row.last_digits,
        "manager_id": row.manager_id,
        "team": row.team,
        "order_id": row.order_id,
        "note": row.note,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
    }


def _text(body: dict[str, Any], name: str, *, pattern: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or (pattern and not ID_RE.fullmatch(value)):
        raise InvalidCanary(details={"field": name})
    return value


@audited("canaries.manage")
async def create_canary(request: web.Request) -> web.Response:
    Query(request, set())
    config = request.app[CONFIG].current
    body = await read_json(request, 2048)
    if not isinstance(body, dict) or set(body) - _FIELDS:
        raise InvalidCanary()
    canary_id, order_id = _text(body, "id"), _text(body, "order_id")
    manager_id, team = _text(body, "manager_id"), _text(body, "team")
    note, number = _text(body, "note", pattern=False), _text(body, "number", pattern=False)
    if canary_id is None or order_id is None or number is None or (manager_id is None) == (team is None):
        raise InvalidCanary()
    if manager_id is not None and config.manager_by_id(manager_id) is None:
        raise InvalidCanary(details={"field": "manager_id"})
    if team is not None and not any(m.team == team for m in config.managers):
        raise InvalidCanary(details={"field": "team"})
    if note is not None and (len(note) > _MAX_NOTE or not note.isprintable()):
        raise InvalidCanary(details={"field": "note"})
    e164 = e164_of(number, config.orders.default_region)
    if e164 is None:
        raise InvalidCanary(details={"field": "number"})
    secret = config.inbound.secret
    if secret is None:
        raise CanariesUnavailable()
    row = CanaryRow(
        id=canary_id,
        number_key=number_key(secret, e164),
        last_digits=e164[-2:],
        key_check=key_check(secret),
        manager_id=manager_id,
        team=team,
        order_id=order_id,
        note=note,
        created_at=datetime.now(UTC),
        created_by=principal(request).name,
    )
    try:
        created = await request.app[STORE].canaries.add(row)
    except CanaryExists:
        raise CanaryTaken() from None
    await request.app[SERVICE].canaries.refresh(secret)
    return web.json_response(canary_json(created), status=201)


@audited("canaries.manage")
async def list_canaries(request: web.Request) -> web.Response:
    Query(request, set())
    rows = await request.app[STORE].canaries.all()
    return web.json_response({"canaries": [canary_json(r) for r in rows]})


@audited("canaries.manage")
async def delete_canary(request: web.Request) -> web.Response:
    Query(request, set())
    canary_id = request.match_info["canary_id"]
    if not ID_RE.fullmatch(canary_id):
        raise CanaryNotFound()
    if not await request.app[STORE].canaries.delete(canary_id, actor=principal(request).name):
        raise CanaryNotFound()
    await request.app[SERVICE].canaries.refresh(request.app[CONFIG].current.inbound.secret)
    return web.Response(status=204)


@audited("probing.read")
async def probing(request: web.Request) -> web.Response:
    """Managers' refused attempts since ``from`` (default: the last 24 hours), by outcome, shape and
    length of what was keyed in: a pattern, never the digits."""
    q = Query(request, {"manager", "from"})
    since = q.time("from") or datetime.now(UTC) - timedelta(hours=24)
    rows = await request.app[STORE].attempts.probing(since=since, manager_id=q.id("manager"))
    managers: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = managers.setdefault(r.manager_id, {"manager_id": r.manager_id, "refused": 0, "attempts": []})
        entry["refused"] += r.count
        entry["attempts"].append(
            {
                "outcome": r.outcome,
                "code_shape": r.code_shape,
                "code_length": r.code_length,
                "count": r.count,
                "last_at": r.last_at.isoformat(),
            }
        )
    return web.json_response({"since": since.isoformat(), "managers": list(managers.values())})


_CANARY_ID = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
_CANARY_SCHEMA = {
    "type": "object",
    "required": ["id", "number_last_digits", "order_id", "created_at", "created_by"],
    "properties": {
        "id": openapi.STR,
        "number_last_digits": {"type": "string", "pattern": "^[0-9]{2}$"},
        "manager_id": {"type": ["string", "null"]},
        "team": {"type": ["string", "null"]},
        "order_id": openapi.STR,
        "note": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "created_by": openapi.STR,
    },
}

openapi.register(
    {
        "/v1/canaries": {
            "get": openapi.secured(
                {
                    "operationId": "listCanaries",
                    "summary": "Canary orders (canaries.manage): never their numbers, the last two digits",
                    "responses": {
                        "200": {
                            "description": "the canaries",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["canaries"],
                                        "properties": {
                                            "canaries": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Canary"},
                                            }
                                        },
                                    }
                                }
                            },
                        },
                        **openapi.error_responses(422, 503),
                    },
                }
            ),
            "post": openapi.secured(
                {
                    "operationId": "createCanary",
                    "summary": "Register a canary order (canaries.manage); audited",
                    "requestBody": {"required": True, "content": openapi.json_content("CanaryCreate")},
                    "responses": {
                        "201": {"description": "registered", "content": openapi.json_content("Canary")},
                        **openapi.error_responses(400, 408, 409, 413, 415, 422, 503),
                    },
                }
            ),
        },
        "/v1/canaries/{canary_id}": {
            "delete": openapi.secured(
                {
                    "operationId": "deleteCanary",
                    "summary": "Unregister a canary (canaries.manage); audited",
                    "parameters": [openapi.param("canary_id", "canary id", _CANARY_ID, "path")],
                    "responses": {
                        "204": {"description": "deleted"},
                        **openapi.error_responses(404, 422, 503),
                    },
                }
            )
        },
        "/v1/probing": {
            "get": openapi.secured(
                {
                    "operationId": "probing",
                    "summary": "Managers' refused attempts by outcome, shape and length (probing.read)",
                    "parameters": [
                        openapi.param("manager", "manager id", _CANARY_ID),
                        openapi.param(
                            "from", "at or after (default: 24 h ago)" + openapi.TIME_NOTE, openapi.TIME_FILTER
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "refused attempts",
                            "content": openapi.json_content("Probing"),
                        },
                        **openapi.error_responses(422, 503),
                    },
                }
            )
        },
    },
    {
        "Canary": _CANARY_SCHEMA,
        "CanaryCreate": {
            "type": "object",
            "required": ["id", "number", "order_id"],
            "additionalProperties": False,
            "properties": {
                "id": _CANARY_ID,
                "number": {"type": "string", "description": "the shop's number, with its country code"},
                "order_id": _CANARY_ID,
                "manager_id": _CANARY_ID,
                "team": _CANARY_ID,
                "note": {"type": "string", "maxLength": _MAX_NOTE},
            },
        },
        "Probing": {
            "type": "object",
            "required": ["since", "managers"],
            "properties": {
                "since": {"type": "string", "format": "date-time"},
                "managers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["manager_id", "refused", "attempts"],
                        "properties": {
                            "manager_id": openapi.STR,
                            "refused": {"type": "integer"},
                            "attempts": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "outcome": openapi.STR,
                                        "code_shape": {
                                            "type": "string",
                                            "enum": ["well_formed", "phone_like", "digits", "other"],
                                        },
                                        "code_length": {"type": "integer"},
                                        "count": {"type": "integer"},
                                        "last_at": {"type": "string", "format": "date-time"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/canaries", list_canaries, allow_head=False)
    app.router.add_post("/v1/canaries", create_canary)
    app.router.add_delete("/v1/canaries/{canary_id}", delete_canary)
    app.router.add_get("/v1/probing", probing, allow_head=False)
