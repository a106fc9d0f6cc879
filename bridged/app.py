"""The daemon as an aiohttp application: one cleanup context per resource.

Start order (RESOURCES): bridged's database (and migrations), the HTTP session and ARI client, the shop's
order directory, the webhook sink, the call engine (and its stray sweep), the call service, the ARI event
stream, the FastAGI server, the recording source and retention, then the service hooks (bridged.hooks:
systemd readiness and watchdog, SIGTERM drain, SIGHUP reload). Teardown runs in reverse and only for what
started, so a start that fails half-way closes exactly what it had opened. Calls in progress are left
up in Asterisk on stop: the next start adopts them (bridged.calls.reconcile).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from enum import IntEnum

import aiohttp
import asyncpg
from aiohttp import web

from . import db, hooks, metrics, retention
from .agi import AgiServer
from .api import routes
from .appkeys import (
    AGI,
    ARI,
    ARI_ACCESS,
    CONFIG,
    ENGINE,
    EVENTS,
    HTTP_SESSION,
    ORDERS,
    SERVICE,
    STORE,
    WEBHOOKS,
)
from .ari import AriAccess, AriClient
from .ari.events import AriEventStream
from .calls.engine import CallEngine
from .config import Config, ConfigHolder, describe_dsn
from .hooks import LIFECYCLE, Lifecycle
from .orders import OrderDirectory
from .service import CallService
from .store import Store
from .webhooks import WebhookSink

log = logging.getLogger(__name__)


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
    except Exception as exc:
        raise _database_error(exc, config.database.dsn) from None
    try:
        await db.migrate(pool)
    except Exception as exc:
        await pool.close()
        raise _database_error(exc, config.database.dsn) from None
    app[STORE] = Store(pool)
    yield
    await pool.close()


def _database_error(exc: Exception, dsn: str) -> BaseException:
    return database_startup_error(exc, dsn) or exc


async def _ari(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG].current.ari
    # Asterisk's HTTP server serves at most http.conf sessionlimit (default 100) connections, the
    # event websocket included; aiohttp's own default of 100 could take them all under load.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=ARI_CONNECTIONS))
    app[HTTP_SESSION] = session
    app[ARI_ACCESS] = access = AriAccess(config.url, config.username, config.password)
    app[ARI] = ari = AriClient(
        session, access, request_timeout=config.request_timeout, connections=ARI_CONNECTIONS
    )
    yield
    await ari.close()
    await session.close()


async def _orders(app: web.Application) -> AsyncIterator[None]:
    app[ORDERS] = directory = OrderDirectory(app[CONFIG].current.orders)
    yield
    await directory.close()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    app[WEBHOOKS] = webhooks = WebhookSink(app[CONFIG].current.webhook, app[STORE].outbox, app[HTTP_SESSION])
    webhooks.start()
    yield
    await webhooks.stop()  # what is queued is persisted (bounded); undelivered rows stay in the outbox


async def _engine(app: web.Application) -> AsyncIterator[None]:
    app[ENGINE] = engine = CallEngine(
        app[CONFIG], app[ARI], app[STORE], is_connected=lambda: ari_connected(app)
    )
    engine.listeners.append(app[WEBHOOKS].publish)
    sweeper = asyncio.create_task(engine.reconciler.sweep_strays_forever(), name="stray-sweep")
    yield
    sweeper.cancel()
    await asyncio.gather(sweeper, return_exceptions=True)
    await engine.shutdown()  # the workers stop; the calls stay up in Asterisk for the next start


async def _service(app: web.Application) -> AsyncIterator[None]:
    app[SERVICE] = service = CallService(
        app[CONFIG], app[STORE], app[ORDERS], app[ENGINE], accepting_calls=lambda: accepting_calls(app)
    )
    yield
    await service.close()  # a last try at refused attempts' rows the database did not take


async def _events(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG].current.ari
    engine = app[ENGINE]

    async def on_connect() -> None:
        metrics.ARI_RECONNECTS.inc()
        await engine.reconciler.reconcile()

    app[EVENTS] = events = AriEventStream(
        app[HTTP_SESSION],
        app[ARI_ACCESS],
        config.app,
        handler=engine.on_event,
        on_connect=on_connect,
        max_backoff=config.reconnect_max_delay,
    )
    runner = asyncio.create_task(events.run(), name="ari-events")
    try:
        if not await events.wait_connected(timeout=10):
            # "bridged ready" comes from the readiness hook once connected (bridged.hooks).
            log.warning(
                "bridged started, still connecting to ARI at %s; calls are refused until then", config.url
            )
        yield
    finally:
        await events.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _fastagi(app: web.Application) -> AsyncIterator[None]:
    app[AGI] = agi = AgiServer(app[CONFIG], app[SERVICE])
    try:
        await agi.start()
    except OSError as exc:
        config = app[CONFIG].current.agi
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartupError(
            f"cannot listen for FastAGI on {config.host}:{config.port}: {reason}", Exit.LISTEN
        ) from None
    yield
    await agi.stop()


def ari_connected(app: web.Application) -> bool:
    return EVENTS in app and app[EVENTS].connected


def accepting_calls(app: web.Application) -> bool:
    """New calls are taken while ARI is connected and the daemon is not draining (SIGTERM)."""
    return ari_connected(app) and not app[LIFECYCLE].draining


# Each resource's cleanup context, in start order: each is opened by its own context, so a start that
# fails at one closes only (and all of) those opened before it, in reverse.
RESOURCES = (
    _database,
    _ari,
    _orders,
    _webhooks,
    _engine,
    _service,
    _events,
    _fastagi,
    retention.context,  # the recording source for the review API and the scheduled retention pass
    hooks.context,  # systemd readiness and watchdog, SIGTERM drain, SIGHUP reload
)


def make_app(config: Config, *, config_path: str | None = None) -> web.Application:
    app = web.Application()
    app[CONFIG] = ConfigHolder(config)
    app[LIFECYCLE] = Lifecycle(config_path=config_path)
    app.cleanup_ctx.extend(RESOURCES)
    app.router.add_get("/healthz", hooks.healthz)
    app.router.add_get("/metrics", hooks.metrics_handler)
    routes.setup(app)
    return app
