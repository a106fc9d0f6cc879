"""API errors: each a class with an HTTP status and a stable ``error_id`` slug.

Every error response is ``{"error": {"id": "<slug>", "message": "..."}}``; unexpected exceptions become
a 500 with id ``internal`` and no detail (the log has it, redacted).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400
    error_id = "bad_request"
    message = "bad request"
    # Seconds, sent as Retry-After: a 503 says when trying again makes sense.
    retry_after: int | None = None

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"id": self.error_id, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def _error(status: int, error_id: str, message: str, *, retry_after: int | None = None) -> type[ApiError]:
    return type(
        "".join(p.title() for p in error_id.split("_")),
        (ApiError,),
        {"status": status, "error_id": error_id, "message": message, "retry_after": retry_after},
    )


Unauthorized = _error(401, "unauthorized", "a valid bearer token is required")
Forbidden = _error(403, "forbidden", "this token's role may not do that")
NotFound = _error(404, "not_found", "no such resource")
MethodNotAllowed = _error(405, "method_not_allowed", "method not allowed")
InvalidJson = _error(400, "invalid_json", "the body is not valid JSON")
InvalidRequest = _error(422, "invalid_request", "the request is not valid")
BodyTooLarge = _error(413, "body_too_large", "the request body is too large")
UnsupportedMediaType = _error(415, "unsupported_media_type", "send application/json")
UnknownManager = _error(404, "unknown_manager", "no such manager")
UnknownOrder = _error(404, "unknown_order", "no such order")
InvalidOrderId = _error(422, "invalid_order_id", "the order id is not well-formed")
OrderNotAllowed = _error(403, "order_not_allowed", "this manager may not call this order's customer")
ManagerNotRegistered = _error(409, "manager_not_registered", "the manager's phone is not registered")
CallNotFound = _error(404, "call_not_found", "no such call")
CallEnded = _error(409, "call_ended", "the call has already ended")
IdempotencyConflict = _error(
    422, "idempotency_key_reused", "this Idempotency-Key was used with a different request"
)
LookupUnavailable = _error(
    503, "order_lookup_failed", "the shop's order database did not answer", retry_after=5
)
TelephonyUnavailable = _error(503, "telephony_unavailable", "Asterisk is not connected", retry_after=5)
# The guard lets calls through again as soon as Asterisk has caught up, within a second or two.
Overloaded = _error(
    503,
    "overloaded",
    "Asterisk is behind on bridged's requests; try again in a few seconds",
    retry_after=2,
)


def error_response(error: ApiError) -> web.Response:
    response = web.json_response(error.body(), status=error.status)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        return error_response(BodyTooLarge())
    except web.HTTPNotFound:
        return error_response(NotFound())
    except web.HTTPMethodNotAllowed as exc:
        response = error_response(MethodNotAllowed())
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    except web.HTTPException as exc:
        if exc.status >= 400:
            return web.json_response(
                {"error": {"id": exc.reason.lower().replace(" ", "_"), "message": exc.reason}},
                status=exc.status,
            )
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.rel_url.path)
        return web.json_response({"error": {"id": "internal", "message": "internal error"}}, status=500)


async def read_json(request: web.Request, max_bytes: int) -> Any:
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge()
    if request.content_type != "application/json":
        raise UnsupportedMediaType()
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BodyTooLarge()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidJson() from None
