"""``/ops/``: a small page for ops staff over the review API (no build step, no data in the HTML).

The page holds no call data itself: after sign-in its script asks the API with the token the user
typed (kept in sessionStorage, sent as a Bearer header). Recordings are fetched into a blob for the
``<audio>`` element, because ``<audio src>`` cannot send an Authorization header; one press of Play is
one audited listen.
"""

from __future__ import annotations

import html
from importlib import resources
from importlib.abc import Traversable

from aiohttp import web

from ..appkeys import CONFIG
from ..outcomes import Outcome, Refusal

STATIC = resources.files("bridged.ops") / "static"

# The script and stylesheet come from this origin; recordings play from blob: URLs.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; media-src blob:; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

# The outcome filter offers what calls can end with (engine outcomes and refusals), from their enums.
OUTCOMES = tuple(dict.fromkeys([o.value for o in Outcome] + [r.value for r in Refusal]))


def render_page(*, require_reason: bool) -> str:
    template = (STATIC / "index.html").read_text(encoding="utf-8")
    options = "\n".join(
        f'            <option value="{html.escape(o)}">{html.escape(o.replace("_", " "))}</option>'
        for o in OUTCOMES
    )
    reason_hint = "required" if require_reason else "optional"
    return (
        template.replace("{{outcome_options}}", options)
        .replace("{{reason_required}}", "true" if require_reason else "false")
        .replace("{{reason_hint}}", reason_hint)
    )


async def page(request: web.Request) -> web.Response:
    body = render_page(require_reason=request.app[CONFIG].current.recording.require_reason)
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)


async def to_page(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/ops/")


def static_file(
    request: web.Request, folder: Traversable, types: dict[str, str], headers: dict[str, str]
) -> web.Response:
    """The file the path names, if it is one of ``types`` (name -> content type): nothing else of the
    package is reachable."""
    name = request.match_info["name"]
    if name not in types:
        raise web.HTTPNotFound()
    text = (folder / name).read_text(encoding="utf-8")
    return web.Response(text=text, content_type=types[name], charset="utf-8", headers=headers)


_STATIC_TYPES = {"ops.js": "text/javascript", "ops.css": "text/css", "favicon.svg": "image/svg+xml"}


async def static(request: web.Request) -> web.StreamResponse:
    return static_file(request, STATIC, _STATIC_TYPES, SECURITY_HEADERS)


def setup(app: web.Application) -> None:
    app.router.add_get("/ops", to_page)
    app.router.add_get("/ops/", page)
    app.router.add_get("/ops/static/{name}", static)
