"""The daemon's lifecycle as an aiohttp application: each resource owned by a cleanup context.

Start order: database (and migrations), ARI client and event stream, call engine, FastAGI, then the
service hooks (systemd readiness and watchdog, SIGTERM drain, SIGHUP reload). Teardown runs in reverse
and only for what started. Calls in progress are left up in Asterisk on stop: the next start adopts
them (see CallEngine.reconcile).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from . import db, metrics, retention
from .agi import AgiServer
from .api import routes
from .appkeys import AGI, CONFIG, ENGINE, EVENTS, SERVICE, STORE
from .ari import AriClient
from .ari.events import AriEventStream
from .calls.engine import CallEngine
from .calls.model import CallState
from .config import Config, ConfigHolder, describe_dsn
from .orders import OrderDirectory
from .reload import reload_config
from .service import CallService
from .store import Store
from .systemd import Notifier
from .webhooks import WebhookSink

log = logging.getLogger(__name__)


@dataclass
class Lifecycle:
    """What the service hooks change while the daemon runs (the app itself is frozen once started)."""

    config_path: str | None = None
    draining: bool = False


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)


class StartupError(Exception):
    """bridged cannot start; ``exit_code`` (one of :class:`Exit`) tells systemd whether to retry."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Exit(IntEnum):
    """Exit status of ``bridged run``: one meaning each (README, systemd/bridged.service)."""

    OK = 0  # stopped (SIGTERM, SIGINT)
    CRASH = 1  # an unexpected error (a traceback in the log): restarted
    CONFIG = 2  # the config file is invalid: needs an admin
    DATABASE_UNREACHABLE = 3  # bridged's database does not answer (yet): restarted
    SCHEMA_TOO_NEW = 4  # the database was migrated by a newer bridged: needs an admin
    DATABASE_REFUSED = 5  # the database said no (password, role, database, privileges): needs an admin
    LISTEN = 6  # the HTTP or FastAGI address cannot be listened on (in use, not local): restarted


# What systemd must not retry (RestartPreventExitStatus=): retrying cannot fix them.
NEEDS_ADMIN = frozenset({Exit.CONFIG, Exit.SCHEMA_TOO_NEW, Exit.DATABASE_REFUSED})

EXIT_CONFIG = Exit.CONFIG

ARI_CONNECTIONS = 40

# Not up yet, or busy: a later start may succeed.
_DB_NOT_YET = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)
# Up, and saying no to bridged: wrong password or role, no such database, no right to migrate.
_DB_REFUSED = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InsufficientPrivilegeError,
)


def database_startup_error(exc: BaseException, dsn: str) -> StartupError | None:
    """The StartupError for what connecting and migrating raised (None: not a known start-up failure).

    The message names the target (user, host, port, database), never the password."""
    target = describe_dsn(dsn)
    if isinstance(exc, db.SchemaTooNew):
        return StartupError(f"database {target}: {exc}; upgrade bridged", Exit.SCHEMA_TOO_NEW)
    if isinstance(exc, _DB_REFUSED):
        # asyncpg's message is the server's (e.g. 'password authentication failed for user "bridged"').
        return StartupError(
            f"database {target} refused bridged: {type(exc).__name__}: {exc}", Exit.DATABASE_REFUSED
        )
    if isinstance(exc, _DB_NOT_YET):
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return StartupError(f"database {target} not reachable: {reason}", Exit.DATABASE_UNREACHABLE)
    return None


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG].current
    try:
        pool = await db.create_pool(
            config.database.dsn,
            min_size=config.database.min_connections,
            max_size=config.database.max_connections,
        )
        await db.migrate(pool)
    except Exception as exc:
        error = database_startup_error(exc, config.database.dsn)
        if error is None:
            raise
        raise error from None
    app[STORE] = Store(pool)
    yield
    await pool.close()


async def _calls(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG].current
    # Asterisk's HTTP server serves at most http.conf sessionlimit (default 100) connections, the
    # event websocket included; aiohttp's own default of 100 could take them all under load.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=ARI_CONNECTIONS))
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

    def accepting() -> bool:
        # New calls only while connected and not draining (SIGTERM): the service refuses the rest.
        return is_connected() and not app[LIFECYCLE].draining

    engine = CallEngine(app[CONFIG], ari, app[STORE], is_connected=is_connected)

    async def on_connect() -> None:
        metrics.ARI_RECONNECTS.inc()
        await engine.reconciler.reconcile()

    events = AriEventStream(
        session,
        config.ari.url,
        config.ari.username,
        config.ari.password,
        config.ari.app,
        handler=engine.on_event,
        on_connect=on_connect,
        max_backoff=config.ari.reconnect_max_delay,
    )
    holder["events"] = events
    directory = OrderDirectory(config.orders)
    service = CallService(app[CONFIG], app[STORE], directory, engine, accepting_calls=accepting)
    app[ENGINE] = engine
    app[SERVICE] = service
    app[EVENTS] = events
    app[AGI] = agi = AgiServer(app[CONFIG], service)
    webhooks = WebhookSink(config.webhook, app[STORE].outbox, session)
    engine.listeners.append(webhooks.publish)
    webhooks.start()
    runner = asyncio.create_task(events.run(), name="ari-events")
    sweeper = asyncio.create_task(engine.reconciler.sweep_strays_forever(), name="stray-sweep")
    if not await events.wait_connected(timeout=10):
        # "bridged ready" comes from the readiness hook once connected (_service).
        log.warning(
            "bridged started, still connecting to ARI at %s; calls are refused until then", config.ari.url
        )
    try:
        try:
            await agi.start()
        except OSError as exc:
            where = f"{config.agi.host}:{config.agi.port}"
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(f"cannot listen for FastAGI on {where}: {reason}", Exit.LISTEN) from None
        yield
    finally:
        await agi.stop()
        await events.close()
        for task in (runner, sweeper):
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await engine.shutdown()
        await service.close()  # a last try at refused attempts' rows the database did not take
        await webhooks.stop()
        await directory.close()
        await session.close()


# -- service hooks (systemd, signals, health, metrics) ---------------------------------------------

# How long SIGTERM waits for calls still being set up (ringing, announcing, prompting) to be bridged
# or to end; bridged calls need no wait, they survive the restart. Below the unit's TimeoutStopSec.
DRAIN_TIMEOUT = 25.0
_DB_CHECK_TIMEOUT = 1.0


async def _service(app: web.Application) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    life = app[LIFECYCLE]
    notifier = Notifier()
    engine, events = app[ENGINE], app[EVENTS]
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
        task: asyncio.Task[None] = loop.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def ready() -> None:
        # Type=notify: "started" means the database is migrated (earlier context) and ARI is connected.
        await events.wait_connected(timeout=None)
        config = app[CONFIG].current
        log.info("bridged ready (app %s, ARI %s)", config.ari.app, config.ari.url)
        notifier.ready(f"serving app {config.ari.app}")

    async def watchdog(interval: float) -> None:
        # The ping proves the event loop turns; a wedged loop stops it and systemd restarts the unit.
        while True:
            notifier.watchdog()
            await asyncio.sleep(interval)

    async def drain() -> None:
        life.draining = True
        notifier.stopping("draining: new calls refused")
        deadline = loop.time() + DRAIN_TIMEOUT
        waited = False
        while (busy := engine.setting_up()) and loop.time() < deadline:
            if not waited:
                log.info("SIGTERM: draining; waiting for %d calls being set up", busy)
                waited = True
            await asyncio.sleep(0.1)
        bridged = sum(1 for c in engine.calls.values() if c.state is CallState.BRIDGED)
        log.info(
            "SIGTERM: stopping; %d bridged calls stay up for the next start, %d still being set up",
            bridged,
            engine.setting_up(),
        )
        loop.call_soon(_graceful_exit)

    def on_sigterm() -> None:
        if life.draining:
            loop.call_soon(_graceful_exit)  # a second SIGTERM: stop now
            return
        spawn(drain(), "drain")

    def apply(config: Config) -> None:
        # Every component reads the holder's config when it needs a value (the API's tokens, the
        # retention's default: an admin's override over the API, kept in the database, still wins).
        app[CONFIG].current = config

    def on_sighup() -> None:
        if life.config_path is None:
            log.warning("SIGHUP ignored: no config file to reload")
            return
        notifier.reloading("reloading managers and tokens")
        reload_config(life.config_path, app[CONFIG].current, apply)
        notifier.ready(f"serving app {app[CONFIG].current.ari.app}")

    spawn(ready(), "sd-ready")
    if notifier.watchdog_interval:
        spawn(watchdog(notifier.watchdog_interval), "sd-watchdog")
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        yield
    finally:
        notifier.stopping("stopping")
        loop.remove_signal_handler(signal.SIGHUP)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        notifier.close()


def _graceful_exit() -> None:
    # Raised from a loop callback, GracefulExit (a SystemExit) leaves run_app's loop, which then runs
    # the cleanup contexts in reverse, as for SIGINT.
    raise web.GracefulExit()


async def _database_ok(app: web.Application) -> bool:
    try:
        async with asyncio.timeout(_DB_CHECK_TIMEOUT):
            await app[STORE].pool.fetchval("SELECT 1")
        return True
    except Exception:
        return False


async def healthz(request: web.Request) -> web.Response:
    """For a load balancer: 200 only while ARI is connected, the database answers and not draining."""
    app = request.app
    ari_ok = app[EVENTS].connected
    db_ok = await _database_ok(app)
    draining = app[LIFECYCLE].draining
    ok = ari_ok and db_ok and not draining
    return web.json_response(
        {
            "status": "ok" if ok else "unavailable",
            "ari": "connected" if ari_ok else "disconnected",
            "database": "ok" if db_ok else "unreachable",
            "draining": draining,
            "active_calls": len(app[ENGINE].calls),
        },
        status=200 if ok else 503,
    )


async def metrics_handler(request: web.Request) -> web.Response:
    app = request.app
    engine = app[ENGINE]
    text = metrics.render(
        active_calls=len(engine.calls),
        bridged_calls=sum(1 for c in engine.calls.values() if c.state is CallState.BRIDGED),
        ari_connected=app[EVENTS].connected,
        draining=app[LIFECYCLE].draining,
        ari_pending=engine.ari.pending,
        ari_oldest_wait=engine.ari.oldest_wait(),
    )
    return web.Response(
        text=text, content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-store"}
    )


def make_app(config: Config, *, config_path: str | None = None) -> web.Application:
    app = web.Application()
    app[CONFIG] = ConfigHolder(config)
    app[LIFECYCLE] = Lifecycle(config_path=config_path)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_calls)
    app.cleanup_ctx.append(retention.context)  # recording source and retention (ops review)
    app.cleanup_ctx.append(_service)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    routes.setup(app)
    return app
