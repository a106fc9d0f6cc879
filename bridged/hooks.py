"""The daemon as a service: systemd readiness and watchdog, the SIGTERM drain, the SIGHUP reload, and the
``/healthz`` and ``/metrics`` endpoints."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from . import metrics
from .api import openapi
from .appkeys import CONFIG, ENGINE, SERVING, STORE
from .calls.model import CallState
from .config import Config
from .reload import reload_config
from .systemd import Notifier
from .tasks import Tasks

log = logging.getLogger(__name__)

# How long SIGTERM waits for calls still being set up (ringing, announcing, prompting) to be bridged
# or to end; bridged calls need no wait, they survive the restart. Below the unit's TimeoutStopSec.
DRAIN_TIMEOUT = 25.0
_DB_CHECK_TIMEOUT = 1.0


@dataclass
class Lifecycle:
    """What the service hooks change while the daemon runs (the app itself is frozen once started)."""

    config_path: str | None = None
    draining: bool = False


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)


class ServiceHooks:
    def __init__(self, app: web.Application, notifier: Notifier) -> None:
        self.app = app
        self.life = app[LIFECYCLE]
        self.notifier = notifier
        self.tasks = Tasks()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks.spawn(self._ready(), "sd-ready")
        if self.notifier.watchdog_interval:
            self.tasks.spawn(self._watchdog(self.notifier.watchdog_interval), "sd-watchdog")
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    async def stop(self) -> None:
        self.notifier.stopping("stopping")
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        self.tasks.cancel()
        await self.tasks.wait()
        self.notifier.close()

    async def _ready(self) -> None:
        # Type=notify: "started" means the database is migrated (an earlier resource) and ARI is connected.
        await self.app[SERVING].wait_connected(timeout=None)
        config = self.app[CONFIG].current
        log.info("bridged ready (app %s, ARI %s)", config.ari.app, config.ari.url)
        self.notifier.ready(f"serving app {config.ari.app}")

    async def _watchdog(self, interval: float) -> None:
        # The ping proves the event loop turns; a wedged loop stops it and systemd restarts the unit.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _on_sigterm(self) -> None:
        if self.life.draining:
            asyncio.get_running_loop().call_soon(_graceful_exit)  # a second SIGTERM: stop now
            return
        self.tasks.spawn(self._drain(), "drain")

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self.app[ENGINE]
        self.life.draining = True
        self.notifier.stopping("draining: new calls refused")
        deadline = loop.time() + DRAIN_TIMEOUT
        waited = False
        while (busy := engine.setting_up()) and loop.time() < deadline:
            if not waited:
                log.info("SIGTERM: draining; waiting for %d calls being set up", busy)
                waited = True
            await asyncio.sleep(0.1)
        log.info(
            "SIGTERM: stopping; %d bridged calls stay up for the next start, %d still being set up",
            _bridged_calls(self.app),
            engine.setting_up(),
        )
        loop.call_soon(_graceful_exit)

    def _on_sighup(self) -> None:
        if self.life.config_path is None:
            log.warning("SIGHUP ignored: no config file to reload")
            return
        self.notifier.reloading("reloading managers and tokens")
        reload_config(self.life.config_path, self.app[CONFIG].current, self._apply)
        self.notifier.ready(f"serving app {self.app[CONFIG].current.ari.app}")

    def _apply(self, config: Config) -> None:
        # Every component reads the holder's config when it needs a value (the API's tokens, the
        # retention's default: an admin's override over the API, kept in the database, still wins).
        self.app[CONFIG].current = config


async def context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the service hooks, from the moment everything else has started."""
    hooks = ServiceHooks(app, Notifier())
    hooks.start()
    yield
    await hooks.stop()


def _graceful_exit() -> None:
    # Raised from a loop callback, GracefulExit (a SystemExit) leaves run_app's loop, which then runs
    # the cleanup contexts in reverse, as for SIGINT.
    raise web.GracefulExit()


def _bridged_calls(app: web.Application) -> int:
    return sum(1 for c in app[ENGINE].calls.values() if c.state is CallState.BRIDGED)


async def _database_ok(app: web.Application) -> bool:
    try:
        async with asyncio.timeout(_DB_CHECK_TIMEOUT):
            await app[STORE].pool.fetchval("SELECT 1")
        return True
    except Exception:
        return False


async def healthz(request: web.Request) -> web.Response:
    """For a load balancer: 200 only while ARI is connected (with several Asterisk nodes: to one of them
    at least) to an Asterisk whose dialplan is the one this daemon needs, the database answers and not
    draining."""
    app = request.app
    serving = app[SERVING]
    up = serving.connected_nodes()
    outdated = serving.outdated_nodes()
    ari_ok = any(name not in outdated for name in up)
    db_ok = await _database_ok(app)
    draining = app[LIFECYCLE].draining
    ok = ari_ok and db_ok and not draining
    body: dict[str, object] = {
        "status": "ok" if ok else "unavailable",
        "ari": "connected" if len(up) == len(serving.nodes) else "partial" if up else "disconnected",
        # "outdated": a node's dialplan is not the version this daemon ships with (no call taken there).
        "dialplan": "outdated" if outdated else "current",
        "database": "ok" if db_ok else "unreachable",
        "draining": draining,
        "active_calls": len(app[ENGINE].calls),
    }
    if len(serving.nodes) > 1:
        body["nodes"] = {name: "connected" if name in up else "disconnected" for name in serving.nodes}
    return web.json_response(body, status=200 if ok else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    app = request.app
    engine = app[ENGINE]
    text = metrics.render(
        active_calls=len(engine.calls),
        bridged_calls=_bridged_calls(app),
        ari_connected=len(app[SERVING].connected_nodes()) == len(app[SERVING].nodes),
        draining=app[LIFECYCLE].draining,
        ari_pending=engine.ari.pending,
        ari_oldest_wait=engine.ari.oldest_wait(),
    )
    return web.Response(
        text=text, content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-store"}
    )


openapi.register(
    {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "For a load balancer: 200 while this daemon takes calls, 503 while not",
                "responses": {
                    "200": {"description": "taking calls", "content": openapi.json_content("Health")},
                    "503": {"description": "not taking calls", "content": openapi.json_content("Health")},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus' text format; label values from small closed sets, never a number",
                "responses": {
                    "200": {
                        "description": "every series",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                        "headers": {"Cache-Control": openapi.fixed_header("no-store", "as served")},
                    }
                },
            }
        },
    },
    {
        "Health": {
            "type": "object",
            "required": ["status", "ari", "dialplan", "database", "draining", "active_calls"],
            "additionalProperties": False,
            "properties": {
                "status": {"enum": ["ok", "unavailable"]},
                "ari": {"enum": ["connected", "partial", "disconnected"]},
                "dialplan": {"enum": ["current", "outdated"]},
                "database": {"enum": ["ok", "unreachable"]},
                "draining": {"type": "boolean"},
                "active_calls": {"type": "integer", "minimum": 0},
                "nodes": {
                    "type": "object",
                    "description": "with several Asterisk nodes: each one's connection",
                    "additionalProperties": {"enum": ["connected", "disconnected"]},
                },
            },
        }
    },
    into=openapi.WEB,
)
