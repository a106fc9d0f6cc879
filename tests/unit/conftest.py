"""Event loops for the unit tests: asyncio's, and uvloop's too for the HTTP and FastAGI servers and the ARI
transport (bridged runs on uvloop, whose transports are not asyncio's classes)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping

import pytest
import uvloop

from bridged.store.base import OUTAGES


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name in ("test_http_server.py", "test_agi.py", "test_agi_wire.py", "test_ari_transport.py"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(autouse=True)
def _database_outages_forgotten() -> None:
    """Each test starts with bridged's database never seen away (bridged.store.base.OUTAGES is one per
    process: another test's outage would otherwise change how this one's phone calls are rung)."""
    OUTAGES.last = -math.inf
