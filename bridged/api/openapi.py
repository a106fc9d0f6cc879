"""The OpenAPI 3.1 descriptions: the API's at ``GET /v1/openapi.json``, and the pages' and probes' at
``GET /openapi-web.json``.

Each feature module contributes its paths and schemas with :func:`register` at import time; a document is
assembled on request from what the modules declared, so what is served is what they declare.

Two documents, because the second one's operations are not the API: ``/c`` is reached by a manager's
browser with a signed link (no bearer token; its JSON endpoints answer only the page's own script),
``/ops/`` is a page, ``/healthz`` and ``/metrics`` are for a load balancer and Prometheus. In /v1's
document they would be offered to client generators as API calls with a security scheme no API client
has. The web document describes them as they behave, for reviewers and for the generated-input tests.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["id", "message"],
            "properties": {
                "id": {
                    "type": "string",
                    "pattern": "^[a-z0-9_]+$",
                    "description": "stable error id: one of the catalogue's (bridged.api.errors), or "
                    "http_<status> for an error status it has none for; never words of the request",
                },
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


class Description:
    """One OpenAPI document: its paths and schemas as the modules register them."""

    def __init__(self, info: dict[str, Any], security_schemes: dict[str, Any]) -> None:
        self.info = info
        self.security_schemes = security_schemes
        self.paths: dict[str, dict[str, Any]] = {}
        self.schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def register(self, paths: dict[str, dict[str, Any]], schemas: dict[str, Any] | None = None) -> None:
        for path, operations in paths.items():
            self.paths.setdefault(path, {}).update(operations)
        self.schemas.update(schemas or {})

    def document(self) -> dict[str, Any]:
        return {
            "openapi": "3.1.0",
            "info": copy.deepcopy(self.info),
            "servers": [{"url": "/"}],
            "paths": copy.deepcopy(self.paths),
            "components": {
                "securitySchemes": copy.deepcopy(self.security_schemes),
                "schemas": copy.deepcopy(self.schemas),
            },
        }


API = Description(
    {
        "title": "bridged",
        "version": "1",
        "description": "Masked calls between shop managers and customers. No response ever carries a "
        "customer's phone number.",
    },
    {"bearer": {"type": "http", "scheme": "bearer"}},
)
WEB = Description(
    {
        "title": "bridged: pages and probes",
        "version": "1",
        "description": "What bridged serves beside its API (GET /v1/openapi.json): the page a signed "
        "call link opens and the requests of its script (/c), the ops page (/ops/), /healthz and /metrics. "
        "Not an API for clients: /c's JSON endpoints answer the page's own script. No answer ever carries "
        "a customer's phone number.",
    },
    {
        "capability": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Capability <64 lowercase hex digits>`: what POST /c/place answered with. "
            "Missing or malformed: 401 capability_required; one no placed call has: 404 link_unknown.",
        }
    },
)


# An id as bridged.ids.ID_RE takes it.
ID: dict[str, Any] = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
# Call ids in paths: what params.path_id accepts (anything else is 404 call_not_found, as an unknown id).
CALL_ID_PARAMETER: dict[str, Any] = {
    "name": "call_id",
    "in": "path",
    "required": True,
    "description": "call id",
    "schema": ID,
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


def register(
    paths: dict[str, dict[str, Any]], schemas: dict[str, Any] | None = None, *, into: Description = API
) -> None:
    into.register(paths, schemas)


def error_responses(*statuses: int, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Response entries for the given error statuses (401 and 403 are added by :func:`secured`), each
    with ``headers`` (name -> header object) besides its own."""
    return {
        str(status): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            **(
                {"headers": {**(headers or {}), **_retry_after(status)}}
                if headers or _retry_after(status)
                else {}
            ),
        }
        for status in statuses
    }


def _retry_after(status: int) -> dict[str, Any]:
    if status in (429, 503):
        return {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}
    return {}


def fixed_header(value: str, description: str) -> dict[str, Any]:
    """A response header every such answer carries, with this value."""
    return {"description": description, "required": True, "schema": {"type": "string", "const": value}}


def secured(operation: dict[str, Any]) -> dict[str, Any]:
    operation = copy.deepcopy(operation)
    operation["security"] = [{"bearer": []}]
    responses = operation.setdefault("responses", {})
    for status, response in error_responses(401, 403).items():
        responses.setdefault(status, response)  # an operation may say more about its own 403
    return operation


def document() -> dict[str, Any]:
    """The API's document (``/v1/openapi.json``)."""
    return API.document()


def web_document() -> dict[str, Any]:
    """The pages' and probes' document (``/openapi-web.json``)."""
    return WEB.document()


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document())


async def serve_web(request: web.Request) -> web.Response:
    return web.json_response(web_document())


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
register(
    {
        "/openapi-web.json": {
            "get": {
                "operationId": "openapiWeb",
                "summary": "This description",
                "responses": {
                    "200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}
                },
            }
        }
    },
    into=WEB,
)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", serve)
    app.router.add_get("/openapi-web.json", serve_web)
