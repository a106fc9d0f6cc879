"""The daemon's lifecycle as an aiohttp application: each resource owned by a cleanup context.

Start order: database (and migrations), ARI client and event stream, call engine, FastAGI. Teardown
runs in reverse and only for what started. Calls in progress are left up in Asterisk on stop: the next
start adopts them (see CallEngine.reconcile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from . import db
from .agi import AgiServer
from .ari import AriClient
from .ari.events import AriEventStream
from .calls import CallEngine
from .config import Config
from .orders import OrderDirectory
from .service import CallService
from .store import Store

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
ENGINE = web.AppKey("engine", CallEngine)
SERVICE = web.AppKey("service", CallService)
EVENTS = web.AppKey("events", AriEventStream)


class StartupError(Exception):
    """A dependency could not be reached at start; ``exit_code`` tells which."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


EXIT_CONFIG = 2
EXIT_DATABASE = 3


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    try:
        pool = await db.create_pool(
            config.database.dsn,
            min_size=config.database.min_connections,
            max_size=config.database.max_connections,
        )
        await db.migrate(pool)
    except (OSError, TimeoutError) as exc:
        raise StartupError(f"database unreachable: {type(exc).__name__}", EXIT_DATABASE) from None
    except db.SchemaTooNew as exc:
        raise StartupError(str(exc), EXIT_DATABASE) from None
    app[STORE] = Store(pool)
    yield
    await pool.close()


async def _calls(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    session = aiohttp.ClientSession()
    ari = AriClient(
        session,
        config.ari.url,
        config.ari.username,
        config.ari.password,
        request_timeout=config.ari.request_timeout,
    )
    holder: dict[str, AriEventStream] = {}

    def is_connected() -> bool:
        return "events" in holder and holder["events"].connected

    engine = CallEngine(config, ari, app[STORE], is_connected=is_connected)
    events = AriEventStream(
        session,
        config.ari.url,
        config.ari.username,
        config.ari.password,
        config.ari.app,
        handler=engine.on_event,
        on_connect=engine.reconcile,
        max_backoff=config.ari.reconnect_max_delay,
    )
    holder["events"] = events
    directory = OrderDirectory(config.orders)
    service = CallService(config, app[STORE], directory, engine, is_connected=is_connected)
    app[ENGINE] = engine
    app[SERVICE] = service
    app[EVENTS] = events
    runner = asyncio.create_task(events.run(), name="ari-events")
    if not await events.wait_connected(timeout=10):
        log.warning("ARI not reachable yet; retrying in the background, calls are refused until then")
    agi = AgiServer(config, service)
    await agi.start()
    log.info("bridged ready (app %s)", config.ari.app)
    try:
        yield
    finally:
        await agi.stop()
        await events.close()
        runner.cancel()
        try:
            await runner
        except (asyncio.CancelledError, Exception):
            pass
        await engine.shutdown()
        await directory.close()
        await session.close()


async def healthz(request: web.Request) -> web.Response:
    events = request.app[EVENTS]
    ok = events.connected
    return web.json_response(
        {"ari": "connected" if ok else "disconnected", "active_calls": len(request.app[ENGINE].calls)},
        status=200 if ok else 503,
    )


def make_app(config: Config) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_calls)
    app.router.add_get("/healthz", healthz)
    return app
