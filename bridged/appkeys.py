"""Typed keys of the objects the aiohttp application holds, importable without the app itself."""

from __future__ import annotations

from aiohttp import web

from .agi import AgiServer
from .ari.events import AriEventStream
from .calls.engine import CallEngine
from .config import ConfigHolder
from .service import CallService
from .store import Store

CONFIG = web.AppKey("config", ConfigHolder)
STORE = web.AppKey("store", Store)
ENGINE = web.AppKey("engine", CallEngine)
AGI = web.AppKey("agi", AgiServer)
SERVICE = web.AppKey("service", CallService)
EVENTS = web.AppKey("events", AriEventStream)
