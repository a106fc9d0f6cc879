"""The daemon as an aiohttp application: one cleanup context per resource.

Start order (RESOURCES): bridged's database (and migrations), the HTTP session and ARI clients (one per
Asterisk node), the shop's order directory, the webhook sink, the call engine (and its stray sweep on each
node), the call service, the ARI websockets (bridged.serving), the application's lease (bridged.leases:
the websockets open once it is held), the FastAGI server, the recording source and retention, then the
service hooks (bridged.hooks: systemd readiness and watchdog, SIGTERM drain, SIGHUP reload). Teardown runs
in reverse and only for what started, so a start that fails half-way closes exactly what it had opened.
Calls in progress are left up in Asterisk on stop: the next start (or another daemon, through the lease)
adopts them (bridged.calls.reconcile).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections.abc import AsyncIterator
from enum import IntEnum

import aiohttp
import asyncpg
from aiohttp import web

from . import db, hooks, retention
from .agi import AgiServer
from .api import routes
from .appkeys import (
    AGI,
    ARI,
    CONFIG,
    ENGINE,
    HTTP_SESSION,
    ORDERS,
    SERVICE,
    SERVING,
    STORE,
    WEBHOOKS,
)
from .ari import AriAccess, AriClient
from .ari.events import AriEventStream
from .ari.nodes import NodeClients, set_node
from .calls.engine import CallEngine
from .canaries import CanaryRegistry
from .config import Config, ConfigHolder, describe_dsn
from .hooks import LIFECYCLE, Lifecycle
from .leases import Leases
from .orders import OrderDirectory
from .service import CallService
from .serving import Serving
from .store import Store
from .systemd import Notifier
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
ARI_STREAMS = 16  # websockets (own and adopted applications) and recording downloads, per node

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
            check_client=True,
        )
    except Exception as exc:
        raise _database_error(exc, config.database.dsn) from None
    try:
        # Under systemd, the start timeout runs from the last extension, not from the daemon's start.
        notifier = Notifier()
        try:
            await notifier.while_starting(db.migrate(pool), "migrating the database")
        finally:
            notifier.close()
    except Exception as exc:
        await pool.close()
        raise _database_error(exc, config.database.dsn) from None
    app[STORE] = Store(pool)
    yield
    await pool.close()


def _database_error(exc: Exception, dsn: str) -> BaseException:
    return database_startup_error(exc, dsn) or exc


async def _ari(app: web.Application) -> AsyncIterator[None]:
    nodes = app[CONFIG].current.nodes
    # Asterisk's HTTP server serves at most http.conf sessionlimit (default 100) connections per node:
    # REST requests take up to ARI_CONNECTIONS (bridged.ari.transport's pool); aiohttp's session only the
    # event websockets and the recordings' downloads, ARI_STREAMS at most (its default of 100 could take
    # them all).
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=ARI_STREAMS * len(nodes), limit_per_host=ARI_STREAMS)
    )
    app[HTTP_SESSION] = session
    clients = {
        node.node: AriClient(
            session,
            AriAccess(node.url, node.username, node.password),
            request_timeout=node.request_timeout,
            connections=ARI_CONNECTIONS,
        )
        for node in nodes
    }
    # One client per node, behind the one the engine and the service use (bridged.ari.nodes).
    app[ARI] = NodeClients(clients)
    yield
    for client in clients.values():  # their REST connections (bridged.ari.transport)
        await client.close()
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
    sweepers = []
    for node in engine.nodes.names:
        # Each node's sweep runs in that node's context: its requests go there (bridged.ari.nodes).
        context = contextvars.copy_context()
        context.run(set_node, node)
        name = "stray-sweep" if not engine.nodes.several else f"stray-sweep-{node}"
        sweepers.append(
            asyncio.get_running_loop().create_task(
                engine.reconciler.sweep_strays_forever(), name=name, context=context
            )
        )
    yield
    for sweeper in sweepers:
        sweeper.cancel()
    await asyncio.gather(*sweepers, return_exceptions=True)
    await engine.shutdown()  # the workers stop; the calls stay up in Asterisk for the next start


class _NodesOf:
    """The service's view of the nodes, through the websockets that start after the service."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def of_channel(self, uniqueid: str | None) -> str | None:
        return self.app[SERVING].of_channel(uniqueid) if SERVING in self.app else None

    def connected(self, node: str) -> bool:
        return SERVING in self.app and self.app[SERVING].connected(node)


async def _service(app: web.Application) -> AsyncIterator[None]:
    canaries = CanaryRegistry(app[STORE].canaries)
    app[SERVICE] = service = CallService(
        app[CONFIG],
        app[STORE],
        app[ORDERS],
        app[ENGINE],
        accepting_calls=lambda: accepting_calls(app),
        nodes=_NodesOf(app),
        canaries=canaries,
    )
    service.alerts.append(app[WEBHOOKS].publish_event)
    # Read now and every REFRESH_SECONDS (another daemon's changes); at once after a change over the API.
    canaries.start(lambda: app[CONFIG].current.inbound.secret)
    yield
    await canaries.stop()
    await service.close()  # a last try at refused attempts' rows the database did not take


async def _events(app: web.Application) -> AsyncIterator[None]:
    """The websockets: opened by the lease (next resource), closed here."""
    app[SERVING] = serving = Serving(
        app[CONFIG], app[HTTP_SESSION], app[ENGINE], stream_factory=AriEventStream
    )
    try:
        yield
    finally:
        await serving.close()


async def _leases(app: web.Application) -> AsyncIterator[None]:
    """The lease of this daemon's application: held before its websockets open, renewed while it runs;
    other daemons' leases taken over (their calls adopted) and given back."""
    serving = app[SERVING]
    config = app[CONFIG].current.ari
    leases = Leases(app[STORE], config.app, serving)
    await leases.acquire_own()
    serving.serve_own()
    serving.start_watch()
    runner = asyncio.create_task(leases.run(), name="leases")
    try:
        if not await serving.wait_connected(timeout=10):
            # "bridged ready" comes from the readiness hook once connected (bridged.hooks).
            log.warning(
                "bridged started, still connecting to ARI at %s; calls are refused until then", config.url
            )
        yield
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await leases.release_all()


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
    """Whether this daemon serves calls on the node of the call being decided (bridged.ari.nodes)."""
    return SERVING in app and app[SERVING].own_connected()


def accepting_calls(app: web.Application) -> bool:
    """New calls are taken while ARI is connected, its dialplan is the one this daemon needs, and the
    daemon is not draining (SIGTERM)."""
    return ari_connected(app) and app[SERVING].dialplan_current() and not app[LIFECYCLE].draining


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
    _leases,
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
