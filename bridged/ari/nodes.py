"""Several Asterisk nodes behind one ARI client: each request goes to the node of the call being handled.

A call's channels, bridge, playbacks and recording all live on one node. Rather than hand a node to every
ARI request, the node is part of the asyncio context: each call's worker task runs with its call's node
set (bridged.calls.engine), each node's event reader, reconcile and stray sweep with theirs
(bridged.serving), and the service sets it while deciding a call (the phone's node, or the node where the
manager's phone is registered). Tasks inherit the context they were started in, so what a step starts in
the background (a hangup retried later) goes to the same node. Without a node set, a request goes to
the first node: a daemon with one node never sets one.
"""

from __future__ import annotations

import contextvars
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from .client import AriClient
from .context import ContextSetting

__all__ = ["CURRENT", "NodeClients", "NodeNames", "current_node", "on_node", "set_node"]

CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("bridged_ari_node", default=None)


def on_node(node: str | None) -> ContextSetting[str | None]:
    """ARI requests made inside (in this task and the tasks it starts) go to ``node``."""
    return ContextSetting(CURRENT, node)


def set_node(node: str | None) -> None:
    """From now on, this task's ARI requests go to ``node`` (a call moved to another node)."""
    CURRENT.set(node)


def current_node() -> str | None:
    return CURRENT.get()


@dataclass(frozen=True)
class NodeNames:
    """The nodes' names, the first one first (``config.nodes``)."""

    names: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.names[0]

    @property
    def several(self) -> bool:
        return len(self.names) > 1

    def current(self) -> str:
        """The node of the call being handled (the first when none is set)."""
        node = CURRENT.get()
        return node if node in self.names else self.first

    def holds(self, node: str, row_node: str | None) -> bool:
        """Whether a call row naming ``row_node`` is on ``node``. A row without a node, or naming one the
        config no longer has, is the first node's: a daemon that had one node (rows from before the
        ``node`` column) and got a second keeps finding its calls."""
        return row_node == node or (node == self.first and row_node not in self.names)


class NodeClients(AriClient):
    """An :class:`AriClient` per node behind the one interface the engine and the service use: each request
    goes to the current node's client (see the module's docstring). It holds no connection of its own."""

    def __init__(self, clients: Mapping[str, AriClient]) -> None:  # noqa: D107 - no AriClient state
        if not clients:
            raise ValueError("NodeClients needs at least one node")
        self.clients = dict(clients)
        self.names = NodeNames(tuple(self.clients))
        self._first = self.clients[self.names.first]

    def client(self, node: str | None = None) -> AriClient:
        """``node``'s client; without one (or one not configured), the current node's (the first when none
        is set). On every request's path: dictionary lookups only."""
        clients = self.clients
        if node not in clients:
            node = CURRENT.get()
            if node not in clients:
                return self._first
        return clients[node]

    @property
    def pending(self) -> int:
        return self.client().pending

    def oldest_wait(self) -> float:
        """How far behind the current node's Asterisk is (the overload guard asks for the node of the
        call it decides about)."""
        return self.client().oldest_wait()

    def _call(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        # Every operation goes through here, with AriClient._call's arguments: the current node's client's
        # request itself is what its caller awaits (no coroutine of our own around it).
        return self.client()._call(*args, **kwargs)

    async def stored_recording_file(
        self, name: str, *, range_header: str | None = None
    ) -> aiohttp.ClientResponse:
        return await self.client().stored_recording_file(name, range_header=range_header)


class NodeView(Protocol):
    """What the service needs to know about the Asterisk nodes (bridged.serving.Serving)."""

    def of_channel(self, uniqueid: str | None) -> str | None:
        """The node a channel is on, by its unique id (None: not known)."""
        ...

    def connected(self, node: str) -> bool:
        """Whether this daemon serves calls on ``node`` now (its websocket is up)."""
        ...
