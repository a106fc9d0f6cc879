"""``/ops/``: a small page for ops staff over the review API (no build step, no data in the HTML).

The page holds no call data itself: after sign-in its script asks the API with the token the user
typed (kept in sessionStorage, sent as a Bearer header). Recordings are fetched into a blob for the
``<audio>`` element, because ``<audio src>`` cannot send an Authorization header; one press of Play is
one audited listen.

In English and Russian: the server picks the language of ``<html lang>`` from the browser's
``Accept-Language`` (the shop's ``language`` when it names neither), the script holds every visible
string per language and a switch on the page overrides the choice (remembered in localStorage). Dates,
durations and counts follow the viewer's locale (Intl). API error ids stay English slugs; the script
maps the ones it knows to messages in the page's language.
"""

from __future__ import annotations

import html
from importlib import resources
from importlib.abc import Traversable
from typing import Any

from aiohttp import web

from ..api import openapi
from ..appkeys import CONFIG
from ..config import LANGUAGES
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
# The page itself depends on the request's Accept-Language.
PAGE_HEADERS = {**SECURITY_HEADERS, "Vary": "Accept-Language"}

# The outcome filter offers what calls can end with (engine outcomes and refusals), from their enums.
OUTCOMES = tuple(dict.fromkeys([o.value for o in Outcome] + [r.value for r in Refusal]))


def choose_language(accept_language: str | None, fallback: str) -> str:
    """The page's language: the first of LANGUAGES the browser asks for (by ``q``, then by order; a
    region such as ``ru-RU`` counts as its language), else ``fallback``.

    Any text is accepted and never echoed: a malformed entry is skipped."""
    wanted: list[tuple[float, int, str]] = []
    for index, entry in enumerate((accept_language or "")[:1000].split(",")):
        tag, _, params = entry.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.strip().split("-")[0].lower()
        if primary in LANGUAGES and 0 < quality <= 1:
            wanted.append((-quality, index, primary))
    return min(wanted)[2] if wanted else fallback


def render_page(*, require_reason: bool, language: str = "en") -> str:
    template = (STATIC / "index.html").read_text(encoding="utf-8")
    options = "\n".join(
        f'            <option value="{html.escape(o)}">{html.escape(o.replace("_", " "))}</option>'
        for o in OUTCOMES
    )
    reason_hint = "required" if require_reason else "optional"
    return (
        template.replace("{{outcome_options}}", options)
        .replace("{{lang}}", language if language in LANGUAGES else "en")
        .replace("{{reason_required}}", "true" if require_reason else "false")
        .replace("{{reason_hint_key}}", f"reason_{reason_hint}")
        .replace("{{reason_hint}}", reason_hint)
    )


async def page(request: web.Request) -> web.Response:
    config = request.app[CONFIG].current
    language = choose_language(request.headers.get("Accept-Language"), config.language)
    body = render_page(require_reason=config.recording.require_reason, language=language)
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


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


_STATIC_TYPES = {
    "ops.js": "text/javascript",
    "ops.css": "text/css",
    # The palette and type the call page (bridged.callpage) shares; it serves this file too.
    "base.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


async def static(request: web.Request) -> web.StreamResponse:
    return static_file(request, STATIC, _STATIC_TYPES, SECURITY_HEADERS)


def static_files(
    operation_id: str,
    summary: str,
    types: dict[str, str],
    headers: dict[str, Any],
    error_headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The description of a static_file route serving ``types`` (name -> content type): the files with
    ``headers`` (name -> header object), any other name's 404 with ``error_headers``."""
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "parameters": [
                openapi.param("name", "file name", {"type": "string", "enum": sorted(types)}, "path")
            ],
            "responses": {
                "200": {
                    "description": "the file",
                    "content": {t: {"schema": openapi.STR} for t in sorted(set(types.values()))},
                    "headers": headers,
                },
                **openapi.error_responses(404, headers=error_headers),
            },
        }
    }


_SECURITY_HEADERS_DOC = {
    name: openapi.fixed_header(value, "as served") for name, value in SECURITY_HEADERS.items()
}

openapi.register(
    {
        "/ops": {
            "get": {
                "operationId": "opsRedirect",
                "summary": "Redirects to /ops/",
                "responses": {
                    "308": {
                        "description": "to the page",
                        "headers": {"Location": openapi.fixed_header("/ops/", "the page")},
                    }
                },
            }
        },
        "/ops/": {
            "get": {
                "operationId": "opsPage",
                "summary": "The ops page; no data in it (its script asks the API with the token typed in)",
                "parameters": [
                    openapi.param(
                        "Accept-Language",
                        "the page's language: the first of en, ru asked for; the shop's language when "
                        "none is (any text is taken, none of it is echoed)",
                        openapi.STR,
                        "header",
                    )
                ],
                "responses": {
                    "200": {
                        "description": "the page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                        "headers": {
                            **_SECURITY_HEADERS_DOC,
                            "Vary": openapi.fixed_header("Accept-Language", "the page's language"),
                        },
                    }
                },
            }
        },
        "/ops/static/{name}": static_files(
            "opsPageFile",
            "The page's script, stylesheets and icon; any other name is 404",
            _STATIC_TYPES,
            _SECURITY_HEADERS_DOC,
        ),
    },
    into=openapi.WEB,
)


def setup(app: web.Application) -> None:
    app.router.add_get("/ops", to_page)
    app.router.add_get("/ops/", page)
    app.router.add_get("/ops/static/{name}", static)
