"""``GET /v1/me``: who this token is, what it may do, and the manager a manager token is bound to (the
/ops/ page adapts to it)."""

from __future__ import annotations

from aiohttp import web

from ..config import ROLES
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
    answer: dict[str, object] = {
        "name": who.name,
        "role": who.role,
        "permissions": sorted(PERMISSIONS.get(who.role, ())),
    }
    if who.manager_id is not None:
        answer["manager_id"] = who.manager_id
    return web.json_response(answer)


openapi.register(
    {
        "/v1/me": {
            "get": {
                "operationId": "me",
                "summary": "The caller's token name, role and permissions",
                "security": [{"bearer": []}],
                "responses": {
                    "200": {"description": "who you are", "content": openapi.json_content("Me")},
                    **openapi.error_responses(401, 422),
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
                "role": {"type": "string", "enum": list(ROLES)},
                "permissions": {"type": "array", "items": openapi.STR},
                "manager_id": {
                    **openapi.STR,
                    "description": "a manager token's manager: the only one it places, reads and ends "
                    "calls of (absent for other roles)",
                },
            },
        }
    },
)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/me", me, allow_head=False)
