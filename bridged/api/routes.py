"""Wires the API's feature modules into the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from ..appkeys import CONFIG
from . import calls as calls_api
from . import openapi
from . import review as review_api
from .auth import TOKENS, TokenRegistry
from .errors import error_middleware


def setup(app: web.Application) -> None:
    app.middlewares.append(error_middleware)
    app[TOKENS] = TokenRegistry(lambda: app[CONFIG].current.api.tokens)
    calls_api.setup(app)
    review_api.setup(app)
    openapi.setup(app)
