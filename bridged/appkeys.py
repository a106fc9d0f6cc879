"""Typed keys of the objects the aiohttp application holds, importable without the app itself."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .agi import AgiServer
from .ari import AriAccess, AriClient
from .ari.events import AriEventStream
from .calls.engine import CallEngine
from .config import ConfigHolder
from .orders import OrderDirectory
from .service import CallService
from .store import Store
from .webhooks import WebhookSink

CONFIG = web.AppKey("config", ConfigHolder)
STORE = web.AppKey("store", Store)
ENGINE = web.AppKey("engine", CallEngine)
AGI = web.AppKey("agi", AgiServer)
SERVICE = web.AppKey("service", CallService)
EVENTS = web.AppKey("events", AriEventStream)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
ARI = web.AppKey("ari", AriClient)
ARI_ACCESS = web.AppKey("ari_access", AriAccess)
ORDERS = web.AppKey("orders", OrderDirectory)
WEBHOOKS = web.AppKey("webhooks", WebhookSink)
