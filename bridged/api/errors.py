"""API errors: each a class with an HTTP status and a stable ``error_id`` slug.

Every error response is ``{"error": {"id": "<slug>", "message": "..."}}``; unexpected exceptions become
a 500 with id ``internal`` and no detail (the log has it, redacted). The answers made outside the API's
handlers (aiohttp's own, the connection guard's: bridged.api.server) are in this catalogue too, and so is
every aiohttp HTTPException a handler or the router raises: an error status without an error here is
``http_<status>`` with the status's phrase (:func:`aiohttp_error`), never the exception's own words.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ..outcomes import OUTCOME_ERRORS, REFUSALS, HttpError, Outcome, Refusal
from ..store.base import DatabaseUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400
    error_id = "bad_request"
    message = "bad request"
    # Seconds, sent as Retry-After: a 503 says when trying again makes sense.
    retry_after: int | None = None
    # The connection is closed after the answer (the rest of the request was not read).
    close_connection = False

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"id": self.error_id, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def _error(
    status: int, error_id: str, message: str, *, retry_after: int | None = None, close: bool = False
) -> type[ApiError]:
    return type(
        "".join(p.title() for p in error_id.split("_")),
        (ApiError,),
        {
            "status": status,
            "error_id": error_id,
            "message": message,
            "retry_after": retry_after,
            "close_connection": close,
        },
    )


# -- the request itself ----------------------------------------------------------------------------
Unauthorized = _error(401, "unauthorized", "a valid bearer token is required")
Forbidden = _error(403, "forbidden", "this token's role may not do that")
NotFound = _error(404, "not_found", "no such resource")
MethodNotAllowed = _error(405, "method_not_allowed", "method not allowed")
InvalidJson = _error(400, "invalid_json", "the body is not valid JSON")
InvalidRequest = _error(422, "invalid_request", "the request is not valid")
InvalidParameter = _error(422, "invalid_parameter", "a query parameter is not valid")
InvalidCursor = _error(422, "invalid_cursor", "the cursor is not one this endpoint gave out")
RequestTimeout = _error(408, "request_timeout", "the request body did not arrive in time", close=True)
BodyTooLarge = _error(413, "body_too_large", "the request body is too large")
UnsupportedMediaType = _error(415, "unsupported_media_type", "send application/json")

# -- calls ------------------------------------------------------------------------------------------
OtherManager = _error(403, "other_manager", "this token places calls only as its own manager")
CallNotFound = _error(404, "call_not_found", "no such call")
CallEnded = _error(409, "call_ended", "the call has already ended")
IdempotencyConflict = _error(
    422, "idempotency_key_reused", "this Idempotency-Key was used with a different request"
)
InvalidIdempotencyKey = _error(
    422, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable ASCII characters"
)
IdempotencyInProgress = _error(
    409, "idempotency_key_in_use", "a request with this Idempotency-Key is still being handled"
)
CallbackNotPossible = _error(
    409,
    "callback_not_possible",
    "only a missed inbound call whose caller has an order and a manager can be called back",
)

# -- signed call links (bridged.callpage): the message is what the link's page shows the manager --------
LinksDisabled = _error(404, "links_disabled", "Call links are not enabled on this bridged.")
LinkMalformed = _error(
    400, "link_malformed", "This is not a whole call link; open it again from the shop admin."
)
LinkInvalid = _error(403, "link_invalid", "This link is not valid; open it again from the shop admin.")
LinkExpired = _error(410, "link_expired", "This link has expired, ask for a new one.")
LinkTooLong = _error(
    403, "link_too_long", "This link is valid for longer than bridged allows; ask for a new one."
)
LinkInUse = _error(409, "link_in_use", "This call is being placed; one moment.")
LinkUnknown = _error(404, "link_unknown", "This call can no longer be followed here.")
CapabilityRequired = _error(
    401, "capability_required", "This request needs the call's capability (Authorization: Capability ...)."
)
CrossSite = _error(403, "cross_site_request", "This request did not come from the call page.")

# -- recordings and retention -----------------------------------------------------------------------
ReasonRequired = _error(422, "reason_required", "listening to a recording needs a reason (?reason=...)")
RecordingNotFound = _error(404, "recording_not_found", "this call has no recording")
RecordingPurged = _error(410, "recording_purged", "the recording was deleted by the retention policy")
RecordingInProgress = _error(
    409, "recording_in_progress", "the call is still going on; its recording is not finished"
)
RangeNotSatisfiable = _error(416, "range_not_satisfiable", "the range is past the recording's end")
RecordingUnavailable = _error(
    503, "recording_unavailable", "the recording store did not answer", retry_after=5
)
AuditUnavailable = _error(
    503, "audit_unavailable", "the listen could not be audited, so the recording is not served", retry_after=5
)
InvalidRetention = _error(422, "invalid_retention", 'send {"days": <1..36500> or null}')


# -- canary orders ----------------------------------------------------------------------------------
InvalidCanary = _error(
    422,
    "invalid_canary",
    'send {"id", "number", "order_id", and "manager_id" or "team"}: the number a valid phone number,'
    " the manager one bridged knows",
)
CanaryTaken = _error(409, "canary_exists", "a canary with this id or this number is registered already")
CanariesUnavailable = _error(
    409, "canaries_unavailable", "canaries need inbound.secret: their numbers are kept as its keyed hash"
)
CanaryNotFound = _error(404, "canary_not_found", "no such canary")


# -- answers made outside the API's handlers (bridged.api.server) ------------------------------------
# aiohttp's own: a request its parser refused (request line, headers, chunked encoding), a request that
# failed or timed out where the middleware does not see it; aiohttp closes the connection after each.
BadHttp = _error(400, "bad_request", "the request is not valid HTTP")
HeadersTooLarge = _error(431, "headers_too_large", "request header fields too large")
Internal = _error(500, "internal", "internal error")
Unavailable = _error(503, "unavailable", "service unavailable")
Timeout = _error(504, "timeout", "gateway timeout")
# The connection guard's, written straight to a connection that is then closed.
HeadersTimeout = _error(408, "request_timeout", "the request's headers did not arrive in time", close=True)
TooManyConnections = _error(
    503, "too_many_connections", "this client has too many connections open", retry_after=5, close=True
)

# aiohttp's answers by status. aiohttp 3.14 makes 400, 500 and 504 (web_protocol's handle_error calls),
# and its router and request raise 404, 405 and 413 (HTTPException, answered by error_middleware); the
# others are the ids such an answer would carry, a 408 or 413 the same as the API's own. Not 401 or 403:
# the catalogue's are about bearer tokens, which such an answer is not.
_AIOHTTP_ERRORS = {
    error.status: error
    for error in (
        BadHttp,
        NotFound,
        MethodNotAllowed,
        RequestTimeout,
        BodyTooLarge,
        HeadersTooLarge,
        Internal,
        Unavailable,
        Timeout,
    )
}


def aiohttp_error(status: int) -> ApiError:
    """The error an answer aiohttp makes itself with ``status`` carries; a status without one here is
    ``http_<status>`` with the status's phrase. Never the words aiohttp (or a handler) gave it: an id
    made of words changes with an aiohttp upgrade, and the words may quote the request."""
    known = _AIOHTTP_ERRORS.get(status)
    if known is not None:
        return known()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    error = ApiError(phrase.lower())
    error.status, error.error_id = status, f"http_{status}"
    return error


def _from(http: HttpError) -> type[ApiError]:
    return _error(http.status, http.error_id, http.message, retry_after=http.retry_after)


# -- a refused call and the one outcome that fails a POST, as bridged.outcomes says ------------------
_REFUSAL_ERRORS = {reason: _from(meaning.http) for reason, meaning in REFUSALS.items()}
_OUTCOME_ERRORS = {outcome: _from(http) for outcome, http in OUTCOME_ERRORS.items()}
DatabaseDown = _REFUSAL_ERRORS[Refusal.DATABASE_UNAVAILABLE]


def refusal_error(
    reason: Refusal, *, details: dict[str, Any] | None = None, retry_after: int | None = None
) -> ApiError:
    """The refusal as its error; ``retry_after`` (seconds) replaces the refusal's usual Retry-After."""
    error = _REFUSAL_ERRORS[reason](details=details)
    if retry_after is not None:
        error.retry_after = retry_after
    return error


def outcome_error(outcome: Outcome, *, details: dict[str, Any] | None = None) -> ApiError:
    return _OUTCOME_ERRORS[outcome](details=details)


def error_response(error: ApiError) -> web.Response:
    response = web.json_response(error.body(), status=error.status, headers=error.headers)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if error.close_connection:
        response.force_close()
    return response


def route_name(request: web.Request) -> str:
    """The route's pattern (``/v1/calls/{call_id}``) for a log line: the path itself is the client's and
    may hold anything."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "?"


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except DatabaseUnavailable as exc:
        # Store-level: every handler's database calls end up here when PostgreSQL is away.
        log.warning("%s %s: bridged's database is unavailable (%s)", request.method, route_name(request), exc)
        return error_response(DatabaseDown())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # not an error: a redirect (/ops to /ops/) is answered as aiohttp makes it
        # The router's 404 and 405, the request's 413, any other: by status, never by its reason or text.
        response = error_response(aiohttp_error(exc.status))
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, route_name(request))
        return error_response(Internal())
