"""Typed keys of the objects the aiohttp application holds, importable without the app itself."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .agi import AgiServer
from .ari import AriClient
from .calls.engine import CallEngine
from .config import ConfigHolder
from .orders import OrderDirectory
from .service import CallService
from .serving import Serving
from .store import Store
from .webhooks import WebhookSink

CONFIG = web.AppKey("config", ConfigHolder)
STORE = web.AppKey("store", Store)
ENGINE = web.AppKey("engine", CallEngine)
AGI = web.AppKey("agi", AgiServer)
SERVICE = web.AppKey("service", CallService)
# The ARI websockets of every node (bridged.serving).
SERVING = web.AppKey("serving", Serving)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
# Every node's ARI client behind one (bridged.ari.nodes.NodeClients).
ARI = web.AppKey("ari", AriClient)
ORDERS = web.AppKey("orders", OrderDirectory)
WEBHOOKS = web.AppKey("webhooks", WebhookSink)
