"""The HTTP API's router: every resource's module, the /ops/ page and the signed links' /c page, mounted on
the application."""

from __future__ import annotations

from aiohttp import web

from .. import callpage, ops
from ..appkeys import CONFIG
from . import audit, calls, canaries, me, openapi, recordings, retention
from .auth import DENIED_LIMITER, TOKENS, TokenRegistry
from .cursors import CURSORS, CursorKeeper
from .errors import error_middleware
from .limits import DeniedAuditLimiter


def setup(app: web.Application) -> None:
    app.middlewares.append(error_middleware)
    app[TOKENS] = TokenRegistry(lambda: app[CONFIG].current.api.tokens)
    app[DENIED_LIMITER] = DeniedAuditLimiter()
    app[CURSORS] = CursorKeeper()
    for resource in (calls, recordings, audit, retention, canaries, me, openapi, ops, callpage):
        resource.setup(app)
