"""The daemon's resources, each opened by its own cleanup context: a start that fails at the N-th closes
exactly the N-1 opened before it, in reverse, and a stop closes them all.

The resources are the real ones (bridged.app.RESOURCES) with their outside world replaced: a pool that
takes any statement, an event stream that is connected at once, the FastAGI server on a free port.
Each resource's closing step is watched; the N-th resource's constructor is made to fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from bridged import app as app_module
from bridged import hooks, retention
from bridged.agi import AgiServer
from bridged.api import server
from bridged.calls.engine import CallEngine
from bridged.config import AgiConfig, HttpConfig
from bridged.leases import Leases
from bridged.orders import OrderDirectory
from bridged.service import CallService
from bridged.serving import Serving
from bridged.systemd import Notifier
from bridged.webhooks import WebhookSink

from .fakes import FakePool, make_config

CLOSED: list[str] = []


class _Connector(aiohttp.TCPConnector):
    """The ARI session's connector: closing the session closes it."""

    async def close(self, *, abort_ssl: bool = False) -> None:
        CLOSED.append("ari")
        await super().close(abort_ssl=abort_ssl)


class _Events:
    """The ARI event stream, connected at once and never receiving anything."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connected = True

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def wait_connected(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        return True

    async def close(self) -> None:
        pass  # the websockets' resource is bridged.serving.Serving (watched below)


def _watched(cls: type, method: str, name: str) -> type:
    """``cls`` whose ``method`` (its closing step) is recorded under ``name``."""

    async def closing(self: Any, *args: Any, **kwargs: Any) -> Any:
        CLOSED.append(name)
        return await getattr(cls, method)(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {method: closing})


class _Retention(retention.Retention):
    async def run(self, interval: float) -> None:
        await asyncio.Event().wait()


class _Leases(Leases):
    async def run(self) -> None:
        await asyncio.Event().wait()

    async def release_all(self) -> None:
        CLOSED.append("leases")


class _Notifier(Notifier):
    def close(self) -> None:
        CLOSED.append("hooks")
        super().close()


async def _create_pool(*args: Any, **kwargs: Any) -> FakePool:
    pool: FakePool = _watched(FakePool, "close", "database")(value="bridged")  # the lease taken
    return pool


async def _migrate(pool: Any) -> int:
    return 7


# (name, where its constructor is, the attribute, the stand-in), in start order: bridged.app.RESOURCES.
RESOURCES: list[tuple[str, Any, str, Any]] = [
    ("database", app_module.db, "create_pool", _create_pool),
    ("ari", aiohttp, "TCPConnector", _Connector),
    ("orders", app_module, "OrderDirectory", _watched(OrderDirectory, "close", "orders")),
    ("webhooks", app_module, "WebhookSink", _watched(WebhookSink, "stop", "webhooks")),
    ("engine", app_module, "CallEngine", _watched(CallEngine, "shutdown", "engine")),
    ("service", app_module, "CallService", _watched(CallService, "close", "service")),
    ("events", app_module, "Serving", _watched(Serving, "close", "events")),
    ("leases", app_module, "Leases", _Leases),
    ("fastagi", app_module, "AgiServer", _watched(AgiServer, "stop", "fastagi")),
    ("retention", retention, "Retention", _Retention),
    ("hooks", hooks, "Notifier", _Notifier),
]
NAMES = [name for name, *_ in RESOURCES]


def _failing(name: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{name} cannot start")

    return fail


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[[str | None], None]]:
    CLOSED.clear()
    monkeypatch.setattr(app_module.db, "migrate", _migrate)
    monkeypatch.setattr(app_module, "AriEventStream", _Events)
    for _, owner, attribute, stand_in in RESOURCES:
        monkeypatch.setattr(owner, attribute, stand_in)

    def fail_at(name: str | None) -> None:
        for resource, owner, attribute, _ in RESOURCES:
            if resource == name:
                monkeypatch.setattr(owner, attribute, _failing(name))

    return fail_at  # type: ignore[return-value]


def _closed_in_reverse(names: list[str]) -> list[str]:
    """What closing ``names`` records: the retention's is its task's end, checked apart (a task cancelled
    before it ran never runs a line that could record it)."""
    return [name for name in reversed(names) if name != "retention"]


def _left_running() -> list[str]:
    return sorted(
        t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
    )


def _app() -> Any:
    config = make_config()
    return app_module.make_app(replace(config, agi=AgiConfig(host="127.0.0.1", port=0)))


def test_the_resources_are_these_in_this_order() -> None:
    assert len(app_module.RESOURCES) == len(RESOURCES)
    assert app_module.RESOURCES[-2:] == (retention.context, hooks.context)


@pytest.mark.parametrize("failing", range(len(RESOURCES)), ids=NAMES)
async def test_a_start_failing_at_one_resource_closes_the_ones_before_it_in_reverse(
    stand_ins: Callable[[str | None], None], failing: int
) -> None:
    stand_ins(NAMES[failing])
    with pytest.raises(RuntimeError, match=f"{NAMES[failing]} cannot start"):
        await server.serve(_app(), HttpConfig(host="127.0.0.1", port=0))
    assert CLOSED == _closed_in_reverse(NAMES[:failing])
    assert _left_running() == []  # the event stream's reader, the stray sweep, the retention: all stopped


async def test_a_stop_closes_every_resource_in_reverse(stand_ins: Callable[[str | None], None]) -> None:
    stand_ins(None)
    serving = asyncio.create_task(server.serve(_app(), HttpConfig(host="127.0.0.1", port=0)))
    for _ in range(200):
        await asyncio.sleep(0.01)
    assert CLOSED == [] and not serving.done()
    assert {"retention", "ari-events", "stray-sweep", "leases"} <= set(_left_running())
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert CLOSED == _closed_in_reverse(NAMES)
    assert _left_running() == []


class _ServingStandIn:
    """What ``accepting_calls`` asks the serving side: its websocket to the call's node, its dialplan."""

    def __init__(self, connected: bool, dialplan_current: bool) -> None:
        self._connected, self._dialplan_current = connected, dialplan_current

    def own_connected(self) -> bool:
        return self._connected

    def dialplan_current(self) -> bool:
        return self._dialplan_current


@pytest.mark.parametrize("connected", [True, False])
@pytest.mark.parametrize("dialplan_current", [True, False])
@pytest.mark.parametrize("draining", [False, True])
def test_calls_are_accepted_only_when_connected_on_the_current_dialplan_and_not_draining(
    connected: bool, dialplan_current: bool, draining: bool
) -> None:
    app = web.Application()
    app[app_module.SERVING] = cast(Serving, _ServingStandIn(connected, dialplan_current))
    app[hooks.LIFECYCLE] = hooks.Lifecycle(draining=draining)
    expected = connected and dialplan_current and not draining
    assert app_module.accepting_calls(app) is expected
    assert app_module.ari_connected(app) is connected


def test_no_call_is_accepted_before_the_serving_side_exists() -> None:
    app = web.Application()
    app[hooks.LIFECYCLE] = hooks.Lifecycle()
    assert app_module.accepting_calls(app) is False
    assert app_module.ari_connected(app) is False
