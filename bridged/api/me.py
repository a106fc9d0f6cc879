"""``GET /v1/me``: who this token is and what it may do (the /ops/ page adapts to it)."""

from __future__ import annotations

from aiohttp import web

from . import openapi
from .auth import PERMISSIONS, TOKENS, audit_unauthenticated
from .errors import Unauthorized
from .params import Query


async def me(request: web.Request) -> web.Response:
    Query(request, set())
    who = request.app[TOKENS].authenticate(request.headers.get("Authorization"))
    if who is None:
        await audit_unauthenticated(request, None)
        raise Unauthorized()
    return web.json_response(
        {"name": who.name, "role": who.role, "permissions": sorted(PERMISSIONS.get(who.role, ()))}
    )


openapi.register(
    {
        "/v1/me": {
            "get": {
                "operationId": "me",
                "summary": "The caller's token name, role and permissions",
                "security": [{"bearer": []}],
                "responses": {
                    "200": {"description": "who you are", "content": openapi.json_content("Me")},
                    **openapi.error_responses(401),
                },
            }
        }
    },
    {
        "Me": {
            "type": "object",
            "required": ["name", "role", "permissions"],
            "properties": {
                "name": openapi.STR,
                "role": {"type": "string", "enum": ["shop", "ops", "admin"]},
                "permissions": {"type": "array", "items": openapi.STR},
            },
        }
    },
)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/me", me, allow_head=False)
