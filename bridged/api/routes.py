"""Wires the API's feature modules into the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from . import calls as calls_api
from . import openapi
from . import review as review_api
from .auth import TOKENS, TokenRegistry
from .errors import error_middleware


def setup(app: web.Application, config: Config) -> None:
    app.middlewares.append(error_middleware)
    app[TOKENS] = TokenRegistry(config.api.tokens)
    calls_api.setup(app)
    review_api.setup(app)
    openapi.setup(app)
