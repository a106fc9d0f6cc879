"""The OpenAPI 3.1 description served at ``GET /v1/openapi.json``.

Each feature module contributes its paths and schemas with :func:`register` at import time; the
document is assembled once, so what is served is what the modules declare.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

_PATHS: dict[str, dict[str, Any]] = {}
_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["id", "message"],
                "properties": {
                    "id": {"type": "string", "description": "stable error id"},
                    "message": {"type": "string"},
                    "details": {"type": "object"},
                },
            }
        },
    }
}


# Call ids in paths: what params.path_id accepts (anything else is 404 call_not_found, as an unknown id).
CALL_ID_PARAMETER: dict[str, Any] = {
    "name": "call_id",
    "in": "path",
    "required": True,
    "description": "call id",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
}


# Building blocks of the feature modules' descriptions.
STR: dict[str, Any] = {"type": "string"}
TIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
# A time filter: what params.parse_time accepts (JSON Schema cannot say "years 1970 to 9999").
TIME_FILTER: dict[str, Any] = {"type": "string", "format": "date-time", "maxLength": 64}
TIME_NOTE = "; ISO 8601, 1970 to 9999, UTC when no offset is given"


def text(max_length: int) -> dict[str, Any]:
    """A text parameter: what params.parse_text accepts (no control characters)."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
    }


def param(name: str, description: str, schema: dict[str, Any], where: str = "query") -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


def json_content(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def page_of(ref: str) -> dict[str, Any]:
    """The schema of one page of a listing of ``ref``."""
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


def page_parameters(default: int, maximum: int, cursor_max: int) -> list[dict[str, Any]]:
    return [
        param(
            "limit",
            f"rows per page (default {default})",
            {"type": "integer", "minimum": 1, "maximum": maximum},
        ),
        param("cursor", "next_cursor of the previous page", {"type": "string", "maxLength": cursor_max}),
    ]


def register(paths: dict[str, dict[str, Any]], schemas: dict[str, Any] | None = None) -> None:
    for path, operations in paths.items():
        _PATHS.setdefault(path, {}).update(operations)
    _SCHEMAS.update(schemas or {})


def error_responses(*statuses: int) -> dict[str, Any]:
    """Response entries for the given error statuses (401 and 403 are added by :func:`secured`)."""
    return {
        str(status): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            **(
                {"headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}}
                if status in (429, 503)
                else {}
            ),
        }
        for status in statuses
    }


def secured(operation: dict[str, Any]) -> dict[str, Any]:
    operation = copy.deepcopy(operation)
    operation["security"] = [{"bearer": []}]
    responses = operation.setdefault("responses", {})
    for status, response in error_responses(401, 403).items():
        responses.setdefault(status, response)  # an operation may say more about its own 403
    return operation


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bridged",
            "version": "1",
            "description": "Masked calls between shop managers and customers. No response ever carries a "
            "customer's phone number.",
        },
        "servers": [{"url": "/"}],
        "paths": copy.deepcopy(_PATHS),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": copy.deepcopy(_SCHEMAS),
        },
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document())


register(
    {
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "responses": {
                    "200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}
                },
            }
        }
    }
)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", serve)
