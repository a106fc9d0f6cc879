"""``/c``: the page a signed click-to-call link opens (bridged.links), and the requests its script makes.

- ``GET /c?order=..&manager=..&exp=..&sig=..`` checks the link and answers a page; it never places a call.
  Link previews, prefetchers and mail scanners fetch URLs: a fetch alone rings nobody. A refused link
  (malformed, tampered, expired, valid for too long) gets a page saying so in the shop's words and an
  audit row (``link.refused``: the order id only when the signature is valid, never the link's sig).
- ``POST /c/place`` (the page's script, same origin, the signed fields in a JSON body) places the call as
  ``POST /v1/calls`` does (the same service entry, policy, rows, audit, webhooks), at most once per link:
  the link is claimed first (``call_links``, keyed by the signature's hash) and opening it again, or two
  openings at once, answers with that call (``link.replayed`` audit row) instead of ringing again; a
  refusal that rang nobody leaves the link free (bridged.api.idempotency.final). It
  returns the call's progress and a capability, derived from the link, to follow it with.
- ``GET /c/call`` and ``DELETE /c/call`` (``Authorization: Capability <hex>``): the call's progress in
  words ("Ringing your phone", "Ringing the customer", "Connected", "Ended: ..."), and "End call".

The page and its script carry no token and no call data beyond the order id: progress is the call's state
and outcome in words, never a number. Every answer is ``no-store`` with ``Referrer-Policy: no-referrer``
(the signed URL goes to no one), and the page has a strict CSP (its own script and stylesheet only) and
refuses to be framed (``frame-ancestors 'none'``): a shop admin opens it in a small window or a tab.
"""

from __future__ import annotations

import html
import logging
import re
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web

from .. import links, ops
from ..api import calls as api_calls
from ..api import idempotency, openapi
from ..api.auth import audit_denied
from ..api.errors import (
    ApiError,
    CallEnded,
    CapabilityRequired,
    CrossSite,
    LinkExpired,
    LinkInUse,
    LinkInvalid,
    LinkMalformed,
    LinksDisabled,
    LinkTooLong,
    LinkUnknown,
    refusal_error,
)
from ..api.params import read_json
from ..appkeys import CONFIG, SERVICE, STORE
from ..config import LinksConfig
from ..links import LinkProblem, LinkRefused, SignedLink
from ..store.base import DatabaseUnavailable
from ..store.calls import CallRow
from ..store.links import LinkUse
from .words import PHASES, REFUSAL_WORDS, progress, progress_of

log = logging.getLogger(__name__)

STATIC = resources.files("bridged.callpage") / "static"

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Every answer under /c: nothing is cached or indexed, the signed URL is sent to no one as a referrer,
# and the page is not framed (clickjacking) nor scriptable by the window that opened it.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}
PAGE_HEADERS = {
    **HEADERS,
    "Content-Security-Policy": _CSP,
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

_PROBLEM_ERRORS: dict[LinkProblem, type[ApiError]] = {
    LinkProblem.MALFORMED: LinkMalformed,
    LinkProblem.BAD_SIGNATURE: LinkInvalid,
    LinkProblem.EXPIRED: LinkExpired,
    LinkProblem.TOO_LONG: LinkTooLong,
}

_CAPABILITY_RE = re.compile(r"Capability ([0-9a-f]{64})")
_MAX_BODY = 1024


def client_of(manager: str) -> str:
    """The API client a link's call belongs to (``created_by``), and who asked in its audit rows."""
    return f"link:{manager}"


# -- the page ----------------------------------------------------------------------------------------


def render(
    *, status: int, text: str, order: str | None, phase: str, script: bool, error: str | None = None
) -> web.Response:
    """The page; a refusal's (``error``: its catalogue id) carries the id as ``data-error`` on its root
    element, so that a shop's support tells refusals apart without reading the words."""
    template = (STATIC / "call.html").read_text(encoding="utf-8")
    script_tag = '<script src="/c/static/call.js" defer></script>' if script else ""
    error_attribute = "" if error is None else f' data-error="{html.escape(error)}"'
    body = (
        template.replace("{{error}}", error_attribute)
        .replace("{{title}}", html.escape(f"Order {order}" if order else "Call link"))
        .replace("{{status}}", html.escape(text))
        .replace("{{phase}}", html.escape(phase))
        .replace("{{script}}", script_tag)
    )
    return web.Response(
        status=status, text=body, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
    )


async def page(request: web.Request) -> web.Response:
    """The link's page. Checks the link (and audits a refused one); places nothing."""
    config = request.app[CONFIG].current.links
    secret = config.secret
    if secret is None:
        return _refused_page(LinksDisabled(), None)
    query = {name: request.query.getall(name) for name in request.query}
    try:
        link = _checked(secret, config, links.fields_of(query))
    except LinkRefused as refused:
        return _refused_page(await _refused(request, refused), refused.link.order if refused.link else None)
    return render(
        status=200,
        text=f"Calling the customer of order {link.order}…",
        order=link.order,
        phase="placing",
        script=True,
    )


def _refused_page(error: ApiError, order: str | None) -> web.Response:
    return render(
        status=error.status,
        text=error.message,
        order=order,
        phase="refused",
        script=False,
        error=error.error_id,
    )


def _checked(secret: str, config: LinksConfig, link: SignedLink) -> SignedLink:
    return links.verify(secret, link, now=time.time(), max_age=config.max_age)


async def _refused(request: web.Request, refused: LinkRefused) -> ApiError:
    """Audit a refused link (within the client's quota of such rows) and say why it was refused."""
    link = refused.link
    details: dict[str, Any] = {}
    call_id = None
    if link is not None:
        details = {"manager_id": link.manager, "exp": link.expires}
        try:
            earlier = await request.app[STORE].links.find(link.key)
        except DatabaseUnavailable:
            earlier = None
        call_id = earlier.call_id if earlier is not None else None
    await audit_denied(
        request,
        client_of(link.manager) if link else "link",
        "refused",
        details,
        action="link.refused",
        reason=refused.problem.value,
        order_id=link.order if link else None,
        call_id=call_id,
    )
    return _PROBLEM_ERRORS[refused.problem]()


def _same_origin(request: web.Request) -> None:
    """The page's own script is same-origin; a browser says so (Fetch Metadata). Clients without the
    header (not a browser) need the link's fields or its capability anyway."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise CrossSite()


def _under_c(path: str) -> bool:
    return path == "/c" or path.startswith("/c/")


async def _with_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer under /c carries HEADERS: the handlers' own, and the router's 404 and 405 and the
    error middleware's answers (a 503 while the database is away) as well."""
    if _under_c(request.path):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)


def _answer(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(payload, status=status, headers=HEADERS)


def _refusal(status: int, body: dict[str, Any], order: str, retry_after: int | None = None) -> web.Response:
    """A call the service did not place, in the shop's words (the API's message where it has none);
    with the refusal's Retry-After, as POST /v1/calls answers it."""
    error = dict(body.get("error") or {})
    words = REFUSAL_WORDS.get(str(error.get("id")))
    if words is not None:
        error["message"] = words.format(order=order)
    error.pop("details", None)  # a refused call's id is of no use to the page
    response = _answer({"error": error}, status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


# -- placing the call --------------------------------------------------------------------------------


async def place(request: web.Request) -> web.Response:
    """``POST /c/place``: the link's call, placed once; a second opening answers with the first."""
    config = request.app[CONFIG].current.links
    secret = config.secret
    if secret is None:
        raise LinksDisabled()
    _same_origin(request)
    body = await read_json(request, _MAX_BODY)
    try:
        if not isinstance(body, dict):
            raise LinkRefused(LinkProblem.MALFORMED)
        link = _checked(secret, config, links.fields_of(body))
    except LinkRefused as refused:
        raise await _refused(request, refused) from None
    capability = links.capability(secret, link)
    client = client_of(link.manager)
    store = request.app[STORE]
    try:
        earlier = await store.links.claim(
            link.key,
            order_id=link.order,
            manager_id=link.manager,
            expires_at=datetime.fromtimestamp(link.expires, UTC),
            capability_hash=links.capability_hash(capability),
        )
    except DatabaseUnavailable:
        # Without the claim a second opening could ring again: refused like any unrecorded attempt.
        unrecorded = await request.app[SERVICE].refuse_unrecorded(client, link.manager, actor=client)
        error = refusal_error(unrecorded.reason)
        return _refusal(error.status, error.body(), link.order, error.retry_after)
    if earlier is not None:
        return await _replayed(request, link, earlier, capability)
    retry_after = None
    try:
        status, payload = await api_calls.place(request, client, link.order, link.manager, actor=client)
    except ApiError as exc:
        status, payload, retry_after = exc.status, exc.body(), exc.retry_after
    except BaseException:
        await _settle(request, link, None, None)
        raise
    # As an Idempotency-Key: only the call placed or tried is kept; after a refusal (nobody was dialled) the
    # link is free, and opening it again may place the call (the phone registered, the order arrived, the
    # manager's budget has a slot again) while the link lives.
    final = idempotency.final(status, payload, retry_after)
    await _settle(request, link, *((status, payload) if final else (None, None)))
    if status != 202:
        # A call tried (409 manager_unavailable) is told as a refusal too; opened again, the link shows it.
        return _refusal(status, payload, link.order, retry_after)
    log.info("call %s placed by a link for manager %s", payload.get("id"), link.manager)
    call = progress(payload["state"], payload["outcome"], payload["order_id"])
    return _answer({"progress": call, "capability": capability}, 202)


async def _settle(request: web.Request, link: SignedLink, status: int | None, payload: Any) -> None:
    """Keep the first opening's answer for the next ones, or (``status`` None) free the link."""
    store = request.app[STORE]

    def write() -> Any:
        if status is None:
            return store.links.release(link.key)
        # The call placed, or the call tried (409 manager_unavailable names it): the next openings and the
        # capability follow it. A placed call's answer is not kept (its row is the call's state).
        call_id = idempotency.call_named(status, payload)
        kept = {"call_id": call_id} if status == 202 else payload
        return store.links.settle(link.key, status=status, response=kept, call_id=call_id)

    what = "call link release" if status is None else "call link answer"
    await request.app[SERVICE].deferred.write(what, write)


async def _replayed(
    request: web.Request, link: SignedLink, earlier: LinkUse, capability: str
) -> web.Response:
    if earlier.status is None:
        raise LinkInUse()  # a first opening is placing the call right now: the script asks again
    store = request.app[STORE]
    await request.app[SERVICE].deferred.write(
        "call link replay audit row",
        lambda: store.audit.add(
            actor=client_of(link.manager),
            action="link.replayed",
            outcome="shown",
            call_id=earlier.call_id,
            order_id=link.order,
            details={"manager_id": link.manager, "status": earlier.status},
        ),
    )
    if earlier.call_id is None:
        return _refusal(earlier.status, earlier.response or {}, link.order)
    row = await store.calls.get(earlier.call_id)
    if row is None:
        raise LinkUnknown()
    return _answer({"progress": progress_of(row), "capability": capability})


# -- following and ending the call -------------------------------------------------------------------


async def _call_of(request: web.Request) -> tuple[LinkUse, CallRow]:
    _same_origin(request)
    found = _CAPABILITY_RE.fullmatch(request.headers.get("Authorization", ""))
    if found is None:
        # No credentials at all (the page's script always sends its capability): 401, as /v1 answers a
        # request without a token.
        await audit_denied(request, "link", "refused", {}, action="link.refused", reason="no_capability")
        raise CapabilityRequired(headers={"WWW-Authenticate": "Capability"})
    use = await request.app[STORE].links.by_capability(links.capability_hash(found[1]))
    if use is None or use.call_id is None:
        await audit_denied(request, "link", "refused", {}, action="link.refused", reason="unknown_capability")
        raise LinkUnknown()
    row = await request.app[STORE].calls.get(use.call_id)
    if row is None:
        raise LinkUnknown()
    return use, row


async def follow(request: web.Request) -> web.Response:
    """``GET /c/call``: the progress of the link's call."""
    _, row = await _call_of(request)
    return _answer({"progress": progress_of(row)})


async def end(request: web.Request) -> web.Response:
    """``DELETE /c/call``: "End call" on the page, as ``DELETE /v1/calls/{id}`` would."""
    use, row = await _call_of(request)
    if row.state == "ended":
        return _answer({"progress": progress_of(row)})
    client = client_of(use.manager_id)
    try:
        row = await api_calls.end(request, row, client, actor=client)
    except CallEnded:
        row = await request.app[STORE].calls.get(row.id) or row
    return _answer({"progress": progress_of(row)}, 202)


# -- static files ------------------------------------------------------------------------------------

_STATIC_TYPES = {"call.js": "text/javascript", "call.css": "text/css", "base.css": "text/css"}


async def static(request: web.Request) -> web.Response:
    # base.css is the palette and type the /ops/ page's folder holds for both pages; the call page serves
    # it itself, so that it needs nothing of /ops/ but its favicon.
    folder = ops.STATIC if request.match_info["name"] == "base.css" else STATIC
    return ops.static_file(request, folder, _STATIC_TYPES, PAGE_HEADERS)


# -- the description (bridged.api.openapi's second document) -----------------------------------------

_LINK_FIELDS = {
    "order": (openapi.ID, "the order's id"),
    "manager": (openapi.ID, "the manager's id"),
    "exp": ({"type": "string", "pattern": "^[0-9]{1,12}$"}, "Unix time in seconds the link is good until"),
    "sig": (
        {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
        "hex HMAC-SHA256 of order=..&manager=..&exp=.. keyed with links.secret",
    ),
}
_HEADERS_DOC = {
    "Cache-Control": openapi.fixed_header("no-store", "nothing under /c is cached"),
    "Referrer-Policy": openapi.fixed_header("no-referrer", "the signed URL is sent to no one"),
    "X-Content-Type-Options": openapi.fixed_header("nosniff", "as served"),
}
_PAGE_HEADERS_DOC = {
    **_HEADERS_DOC,
    "Content-Security-Policy": openapi.fixed_header(_CSP, "its own script and stylesheets only; not framed"),
    "X-Frame-Options": openapi.fixed_header("DENY", "not framed"),
}
_SEC_FETCH_SITE = openapi.param(
    "Sec-Fetch-Site",
    "sent by browsers (Fetch Metadata); anything but same-origin or none is 403 cross_site_request, and "
    "a client that sends none needs the link's fields or its capability anyway",
    {"type": "string", "enum": ["same-origin", "none"]},
    "header",
)
_HTML = {"text/html": {"schema": {"type": "string"}}}


def _page_answer(description: str) -> dict[str, Any]:
    return {"description": description, "content": _HTML, "headers": _PAGE_HEADERS_DOC}


def _json_answer(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "content": openapi.json_content(ref), "headers": _HEADERS_DOC}


def _errors(*statuses: int) -> dict[str, Any]:
    return openapi.error_responses(*statuses, headers=_HEADERS_DOC)


_FOLLOW_DESCRIPTION = (
    "With the capability POST /c/place answered with (security `capability`). Without one (no "
    "Authorization header, or not `Capability <64 lowercase hex digits>`): 401 capability_required; one "
    "that names no placed call: 404 link_unknown. Both with an audit row (`link.refused`, reason "
    "`no_capability` or `unknown_capability`)."
)

openapi.register(
    {
        "/c": {
            "get": {
                "operationId": "openCallLink",
                "summary": "The page a signed call link opens; it places nothing",
                "description": "Checks the link and answers an HTML page whose script places the call "
                "(POST /c/place). A refused link gets a page saying why, without the script, and an audit "
                "row (`link.refused`); the page's root element carries the refusal's error id, as "
                'POST /c/place\'s JSON would name it: `<html lang="en" data-error="link_expired">` '
                "(link_malformed, link_invalid, link_too_long, link_expired, links_disabled), for a "
                "shop's support to tell refusals apart without reading the words. The page of a good link "
                "has no data-error. Any other query parameter, or one of the four given twice, is a "
                "malformed link.",
                "parameters": [
                    openapi.param(name, description, schema) | {"required": True}
                    for name, (schema, description) in _LINK_FIELDS.items()
                ],
                "responses": {
                    "200": _page_answer("the page; its script places the call"),
                    "400": _page_answer("not a whole link (data-error link_malformed)"),
                    "403": _page_answer(
                        "tampered (data-error link_invalid), or valid for longer than links.max_age "
                        "(link_too_long)"
                    ),
                    "404": _page_answer("links are not enabled: links.secret is not set (links_disabled)"),
                    "410": _page_answer("expired (data-error link_expired)"),
                },
            }
        },
        "/c/place": {
            "post": {
                "operationId": "placeLinkCall",
                "summary": "The link's call, placed at most once; opening the link again answers with it",
                "description": "As POST /v1/calls places a call, as API client `link:<manager>`. The "
                "second and later openings of a link answer 200 with the first one's call and its "
                "capability: the call placed, or the call tried (the first opening got 409 "
                "manager_unavailable: its manager's phone could not be rung; its progress says it ended "
                "so), 409 link_in_use while the first is still placing it. Any other refusal rang nobody "
                "and does "
                "not spend the link, as it frees an Idempotency-Key: opening it again is a new attempt "
                "(the phone registered, the order arrived, a budget freed a slot). A refusal carries the "
                "error id of POST /v1/calls's refusal and words for the page.",
                "parameters": [_SEC_FETCH_SITE],
                "requestBody": {
                    "required": True,
                    "description": f"the link's four fields, as strings; at most {_MAX_BODY} bytes",
                    "content": openapi.json_content("LinkFields"),
                },
                "responses": {
                    "200": _json_answer("the link's call, placed by an earlier opening", "PlacedByLink"),
                    "202": _json_answer("the call is placed", "PlacedByLink"),
                    **_errors(400, 403, 404, 408, 409, 410, 413, 415, 422, 429, 503),
                },
            }
        },
        "/c/call": {
            "get": {
                "operationId": "followLinkCall",
                "summary": "The progress of the link's call, in words",
                "description": _FOLLOW_DESCRIPTION,
                "security": [{"capability": []}],
                "parameters": [_SEC_FETCH_SITE],
                "responses": {
                    "200": _json_answer("the call's progress", "LinkCallProgress"),
                    **_errors(401, 403, 404, 503),
                },
            },
            "delete": {
                "operationId": "endLinkCall",
                "summary": "End the link's call (the page's End call), as DELETE /v1/calls/{call_id}",
                "description": _FOLLOW_DESCRIPTION,
                "security": [{"capability": []}],
                "parameters": [_SEC_FETCH_SITE],
                "responses": {
                    "200": _json_answer("the call had ended already", "LinkCallProgress"),
                    "202": _json_answer("ending the call", "LinkCallProgress"),
                    **_errors(401, 403, 404, 503),
                },
            },
        },
        "/c/static/{name}": ops.static_files(
            "callPageFile",
            "The page's script and stylesheets; any other name is 404",
            _STATIC_TYPES,
            _PAGE_HEADERS_DOC,
            _HEADERS_DOC,
        ),
    },
    {
        "LinkFields": {
            "type": "object",
            "required": list(_LINK_FIELDS),
            "additionalProperties": False,
            "properties": {name: schema for name, (schema, _) in _LINK_FIELDS.items()},
        },
        "LinkCallProgress": {
            "type": "object",
            "required": ["progress"],
            "additionalProperties": False,
            "properties": {"progress": {"$ref": "#/components/schemas/Progress"}},
        },
        "PlacedByLink": {
            "type": "object",
            "required": ["progress", "capability"],
            "additionalProperties": False,
            "properties": {
                "progress": {"$ref": "#/components/schemas/Progress"},
                "capability": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{64}$",
                    "description": "sent as `Authorization: Capability <it>` to follow and end the call",
                },
            },
        },
        "Progress": {
            "type": "object",
            "description": "A call as the page shows it: no call id, no channel, no number.",
            "required": ["order_id", "state", "outcome", "phase", "text", "live"],
            "additionalProperties": False,
            "properties": {
                "order_id": {"type": ["string", "null"]},
                "state": openapi.STR,
                "outcome": {"type": ["string", "null"]},
                "phase": {
                    "type": "string",
                    "enum": sorted({phase for phase, _ in PHASES.values()} | {"unknown"}),
                },
                "text": {"type": "string", "description": "the phase (and an ended call's outcome) in words"},
                "live": {"type": "boolean", "description": "whether the call can still be ended"},
            },
        },
    },
    into=openapi.WEB,
)


def setup(app: web.Application) -> None:
    app.on_response_prepare.append(_with_headers)
    app.router.add_get("/c", page)
    app.router.add_post("/c/place", place)
    app.router.add_get("/c/call", follow, allow_head=False)
    app.router.add_delete("/c/call", end)
    app.router.add_get("/c/static/{name}", static)
