"""What the daemon serves on each Asterisk node: one ARI websocket per node for its own Stasis application,
one per node for each application of another daemon it adopted (bridged.leases), what each node is and
whether it is up.

- A node is known by ``ari[].name``; Asterisk tells its ``systemname`` (the prefix of every channel's
  unique id, which is how a phone's FastAGI request is placed on its node) and its start time at every
  connect (``GET /asterisk/info``): a new start time means the node restarted, and the reconcile that
  follows ends the calls it no longer has.
- Each websocket runs in its node's context (bridged.ari.nodes): its reconcile, the calls it starts and
  their requests go to that node.
- ``ApplicationReplaced``: another websocket took the application on that node (the later one wins,
  docs/asterisk.md). This daemon stops serving it there: its calls are forgotten, not ended (their events
  go to the other websocket now); the lease decides what happens next.
- With several nodes, a node unreachable for its ``lost_after`` seconds is taken for lost: the rows of its
  calls are ended with what is known. With one node, calls wait for it to come back, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from . import dialplan, metrics
from .ari import AriAccess, AriError
from .ari.events import AriEventStream
from .ari.nodes import set_node
from .calls.engine import CallEngine
from .config import AriConfig, ConfigHolder
from .store.base import DatabaseUnavailable
from .tasks import Tasks

log = logging.getLogger(__name__)

# How often a node's loss is looked for.
LOST_CHECK_SECONDS = 1.0
# How often a node whose dialplan is not the one this daemon needs is asked again.
DIALPLAN_RECHECK_SECONDS = 10.0
# A websocket replaced by someone who is not a bridged holding our lease (an admin's tool, a misconfigured
# second daemon) is taken back after this long, not at once: two clients would take it from each other
# in a loop.
RETAKE_AFTER_SECONDS = 6.0
# A channel's unique id: ``<systemname>-<epoch>.<sequence>``, or ``<epoch>.<sequence>`` without one.
_UNIQUE_ID = re.compile(r"(?:(.+)-)?\d+\.\d+")

StreamFactory = Callable[..., AriEventStream]


@dataclass
class _Stream:
    events: AriEventStream
    task: asyncio.Task[None]


@dataclass
class Node:
    config: AriConfig
    access: AriAccess
    # From GET /asterisk/info at each connect.
    systemname: str | None = None
    startup_time: str | None = None
    # Its dialplan is not the one this daemon needs (bridged.dialplan.VERSION): no call is taken there.
    dialplan_outdated: bool = False
    dialplan_rechecked: bool = False  # a task reads it again until it matches
    # Since when this daemon's own websocket to the node has been down (monotonic; None: up).
    down_since: float | None = None
    lost: bool = False
    replaced_at: float | None = None
    own: _Stream | None = None
    adopted: dict[str, _Stream] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.node


class Serving:
    def __init__(
        self,
        config: ConfigHolder,
        session: aiohttp.ClientSession,
        engine: CallEngine,
        *,
        stream_factory: StreamFactory = AriEventStream,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.session = session
        self.engine = engine
        self.own_app = config.current.ari.app
        self._stream_factory = stream_factory
        self._clock = clock
        now = clock()
        self.nodes = {
            node.node: Node(node, AriAccess(node.url, node.username, node.password), down_since=now)
            for node in config.current.nodes
        }
        self._tasks = Tasks()
        self._watch: asyncio.Task[None] | None = None

    # -- what the service and the hooks ask ---------------------------------------------------------

    def of_channel(self, uniqueid: str | None) -> str | None:
        """The node a channel is on, by the system name its unique id starts with (None: not known)."""
        if len(self.nodes) == 1:
            return next(iter(self.nodes))
        match = _UNIQUE_ID.fullmatch(uniqueid or "")
        if match is None or not match[1]:
            return None
        found = [node.name for node in self.nodes.values() if node.systemname == match[1]]
        return found[0] if len(found) == 1 else None

    def connected(self, node: str) -> bool:
        """Whether calls on ``node`` are served now: this daemon's own websocket there is up."""
        found = self.nodes.get(node)
        return found is not None and found.own is not None and found.own.events.connected

    def own_connected(self) -> bool:
        """:meth:`connected` for the node of the call being decided (bridged.ari.nodes)."""
        return self.connected(self.engine.nodes.current())

    def dialplan_current(self) -> bool:
        """Whether the node of the call being decided runs the dialplan this daemon needs (as far as
        known: a node not asked yet, or whose answer failed, counts as current)."""
        node = self.nodes.get(self.engine.nodes.current())
        return node is None or not node.dialplan_outdated

    def connected_nodes(self) -> list[str]:
        return [name for name in self.nodes if self.connected(name)]

    def outdated_nodes(self) -> list[str]:
        """The nodes whose dialplan is not the one this daemon needs (no call is taken there)."""
        return [name for name, node in self.nodes.items() if node.dialplan_outdated]

    async def wait_connected(self, timeout: float | None) -> bool:  # noqa: ASYNC109 - part of the API
        """True once this daemon's websocket is up on at least one node (now or within ``timeout``)."""
        deadline = None if timeout is None else self._clock() + timeout
        while not self.connected_nodes():
            if deadline is not None and self._clock() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # -- this daemon's own application (bridged.leases calls these) --------------------------------

    def serve_own(self) -> None:
        """Open this daemon's websocket on every node that has none (its lease is held)."""
        for node in self.nodes.values():
            if node.own is not None:
                continue
            if node.replaced_at is not None and self._clock() - node.replaced_at < RETAKE_AFTER_SECONDS:
                continue
            node.replaced_at = None
            node.own = self._open(node, self.own_app)

    def stop_own(self) -> None:
        """Another daemon holds this daemon's lease (it could not renew it): stop serving its calls."""
        for node in self.nodes.values():
            if node.own is not None:
                self._close(node.own)
                node.own = None
            self.engine.stop_serving(node.name, self.own_app)

    # -- other daemons' applications ---------------------------------------------------------------

    def adopt(self, app: str) -> None:
        """Open a websocket for ``app`` on every node: its reconcile adopts the calls of ``app`` there,
        and every later event of them (StasisEnd included) comes here."""
        for node in self.nodes.values():
            if app not in node.adopted:
                node.adopted[app] = self._open(node, app)

    async def give_back(self, app: str) -> None:
        """Stop serving ``app``: its websockets closed, its calls forgotten (its owner takes them)."""
        for node in self.nodes.values():
            stream = node.adopted.pop(app, None)
            self.engine.stop_serving(node.name, app)
            if stream is not None:
                await stream.events.close()

    def adopted_apps(self) -> set[str]:
        return {app for node in self.nodes.values() for app in node.adopted}

    def busy_with(self, app: str) -> bool:
        """Whether a call of ``app`` is still handled here (its recording's end included)."""
        calls = (*self.engine.calls.values(), *self.engine.recordings.settling.values())
        return any((call.app or self.own_app) == app for call in calls)

    # -- the websockets -----------------------------------------------------------------------------

    def _open(self, node: Node, app: str) -> _Stream:
        own = app == self.own_app
        stream: _Stream | None = None

        async def on_connect() -> None:
            if own:
                metrics.ARI_RECONNECTS.inc()
                await self._identify(node)
            await self.engine.reconciler.reconcile(None if own else app)
            if own and node.own is stream:
                node.down_since = None
                node.lost = False

        def on_disconnect() -> None:
            if own and node.own is stream and node.down_since is None:
                node.down_since = self._clock()

        def handler(event: dict[str, Any]) -> None:
            if event.get("type") == "ApplicationReplaced":
                self._replaced(node, app)
                return
            self.engine.on_event(event)

        events = self._stream_factory(
            self.session,
            node.access,
            app,
            handler=handler,
            on_connect=on_connect,
            on_disconnect=on_disconnect,
            max_backoff=node.config.reconnect_max_delay,
        )
        # The reader, its reconcile and every call it starts talk to this node.
        context = contextvars.copy_context()
        context.run(set_node, node.name)
        name = "ari-events" if own and len(self.nodes) == 1 else f"ari-events-{node.name}-{app}"
        task = asyncio.get_running_loop().create_task(events.run(), name=name, context=context)
        stream = _Stream(events, task)
        return stream

    async def _identify(self, node: Node) -> None:
        try:
            info = await self.engine.ari.get_info()
        except AriError as exc:
            log.warning("node %s: GET /asterisk/info failed: %s", node.name, exc)
            return
        config_info = _mapping(info.get("config"))
        status = _mapping(info.get("status"))
        systemname = str(config_info.get("name") or "") or None
        startup = str(status.get("startup_time") or "") or None
        if node.startup_time is not None and startup != node.startup_time:
            log.warning(
                "node %s restarted (Asterisk started %s): the calls it lost are ended", node.name, startup
            )
        node.systemname, node.startup_time = systemname, startup
        if len(self.nodes) > 1:
            others = [n.name for n in self.nodes.values() if n is not node and n.systemname == systemname]
            if systemname is None or others:
                log.error(
                    "node %s: Asterisk's systemname is %s: phone calls cannot be told apart by node; give"
                    " each node its own systemname in asterisk.conf",
                    node.name,
                    "not set" if systemname is None else f"also the one of {', '.join(others)}",
                )
        log.info("node %s is Asterisk %s, started %s", node.name, systemname or "(no systemname)", startup)
        await self._check_dialplan(node)

    async def _check_dialplan(self, node: Node) -> None:
        """Read the node's dialplan version (dialplan/bridged.conf's BRIDGED_DIALPLAN). Not the one this
        daemon needs (an upgrade whose dialplan was not copied to Asterisk): no call is taken on the node,
        rather than ringing customers into contexts that do not exist there, and it is read again every
        DIALPLAN_RECHECK_SECONDS until it is."""
        try:
            found = await self.engine.ari.get_global(dialplan.VERSION_VARIABLE)
        except AriError as exc:
            log.warning("node %s: the dialplan's version could not be read: %s", node.name, exc)
            return
        outdated = found != dialplan.VERSION
        if outdated and not node.dialplan_outdated:
            log.error(
                "node %s: Asterisk's dialplan is %s, this bridged needs version %s: no call is taken on"
                " this node until dialplan/bridged.conf is copied to /etc/asterisk/ and the dialplan"
                " reloaded (asterisk -rx 'dialplan reload')",
                node.name,
                f"version {found!r}" if found else f"older ({dialplan.VERSION_VARIABLE} not set)",
                dialplan.VERSION,
            )
        elif not outdated and node.dialplan_outdated:
            log.info("node %s: the dialplan is version %s now: calls are taken again", node.name, found)
        node.dialplan_outdated = outdated
        if outdated and not node.dialplan_rechecked:
            node.dialplan_rechecked = True
            # Spawned from the node's context (the reader's): its requests go to that node.
            self._tasks.spawn(self._recheck_dialplan(node), f"dialplan-check-{node.name}")

    async def _recheck_dialplan(self, node: Node) -> None:
        try:
            while node.dialplan_outdated:
                await asyncio.sleep(DIALPLAN_RECHECK_SECONDS)
                await self._check_dialplan(node)
        finally:
            node.dialplan_rechecked = False

    def _replaced(self, node: Node, app: str) -> None:
        """Another websocket took ``app`` on ``node``: stop serving it there."""
        if app == self.own_app:
            log.error(
                "node %s: another websocket took application %s (a daemon that adopted this one's calls"
                " while it could not renew its lease, or a second daemon with the same ari.app): its calls"
                " there are no longer handled here",
                node.name,
                app,
            )
            stream, node.own, node.replaced_at = node.own, None, self._clock()
        else:
            log.warning(
                "node %s: application %s was taken back; its calls there are its owner's", node.name, app
            )
            stream = node.adopted.pop(app, None)
        self.engine.stop_serving(node.name, app)
        if stream is not None:
            self._close(stream)

    def _close(self, stream: _Stream) -> None:
        self._tasks.spawn(stream.events.close(), name="ari-events-close")

    # -- node loss ----------------------------------------------------------------------------------

    def start_watch(self) -> None:
        if len(self.nodes) > 1 and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_nodes(), name="node-watch")

    async def _watch_nodes(self) -> None:
        while True:
            await asyncio.sleep(LOST_CHECK_SECONDS)
            for node in self.nodes.values():
                down = node.down_since
                if node.own is None or node.lost or down is None:
                    continue
                if self._clock() - down < node.config.lost_after:
                    continue
                try:
                    await self.lose(node)
                except DatabaseUnavailable as exc:
                    log.warning("node %s: ending its calls' rows waits for the database (%s)", node.name, exc)

    async def lose(self, node: Node) -> None:
        """Take ``node`` for lost: stop handling its calls and end their rows."""
        log.error(
            "node %s unreachable for %.0f s (ari lost_after): its calls are taken for lost",
            node.name,
            node.config.lost_after,
        )
        self.engine.stop_serving(node.name)
        apps = [self.own_app, *node.adopted]
        ended = await self.engine.reconciler.end_lost(node.name, apps)
        node.lost = True
        log.warning("node %s: %d calls ended as lost", node.name, ended)

    # -- the end ------------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        streams = [s for n in self.nodes.values() for s in (n.own, *n.adopted.values()) if s is not None]
        for node in self.nodes.values():
            node.own = None
            node.adopted.clear()
        await asyncio.gather(*(s.events.close() for s in streams), return_exceptions=True)
        for stream in streams:
            stream.task.cancel()
        await asyncio.gather(*(s.task for s in streams), return_exceptions=True)
        self._tasks.cancel()
        await self._tasks.wait()


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
