"""POST /v1/calls while Asterisk is behind on bridged's ARI requests: 503 "overloaded", no ARI request made."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridged import metrics
from bridged.api import calls as api_calls
from bridged.api.auth import TOKENS, TokenRegistry
from bridged.api.errors import error_middleware
from bridged.appkeys import CONFIG, ENGINE, SERVICE, STORE
from bridged.calls import CallEngine
from bridged.config import ApiToken
from bridged.service import CallService

from .fakes import FakeAri, FakeStore, make_config, make_order
from .test_service import FakeDirectory

TOKEN = "shop-token"


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, FakeAri, FakeStore]]:
    config = make_config()
    config = replace(config, ari=replace(config.ari, max_request_wait=0.05))
    ari, store = FakeAri(), FakeStore()
    engine = CallEngine(config, ari, store, is_connected=lambda: True)  # type: ignore[arg-type]
    directory = FakeDirectory({"123": make_order("123", manager_id="anna")})
    service = CallService(config, store, directory, engine, is_connected=lambda: True)  # type: ignore[arg-type]
    app = web.Application(middlewares=[error_middleware])
    app[CONFIG] = config
    app[STORE] = store  # type: ignore[assignment]
    app[ENGINE] = engine
    app[SERVICE] = service
    app[TOKENS] = TokenRegistry(
        (ApiToken(name="shop-1", role="shop", sha256=hashlib.sha256(TOKEN.encode()).hexdigest()),)
    )
    api_calls.setup(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, ari, store
    finally:
        await client.close()
        await engine.shutdown()


async def test_overloaded_asterisk_gets_503_overloaded_before_any_ari_request(served: Any) -> None:
    client, ari, store = served
    ari.delays["answer"] = 30
    held = asyncio.create_task(ari.answer("some-channel"))  # a request Asterisk has not answered
    await asyncio.sleep(0.1)
    refused_before = metrics.CALLS_REFUSED.value("overloaded")
    ari.calls.clear()
    resp = await client.post(
        "/v1/calls",
        json={"order_id": "123", "manager_id": "anna"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    body = await resp.json()
    assert resp.status == 503, body
    assert body["error"]["id"] == "overloaded"
    assert resp.headers["Retry-After"] == "2"
    assert ari.calls == []  # not even the manager's registration check
    assert store.audits[-1]["outcome"] == "refused" and store.audits[-1]["reason"] == "overloaded"
    assert metrics.CALLS_REFUSED.value("overloaded") == refused_before + 1
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)


async def test_an_order_without_a_valid_number_is_422_invalid_phone_and_nobody_is_dialled(
    served: Any,
) -> None:
    client, ari, store = served
    service = client.server.app[SERVICE]
    service.directory.orders["124"] = replace(make_order("124", manager_id="anna"), phone=None)
    refused_before = metrics.CALLS_REFUSED.value("invalid_phone")
    resp = await client.post(
        "/v1/calls",
        json={"order_id": "124", "manager_id": "anna"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    body = await resp.json()
    assert resp.status == 422, body
    assert body["error"]["id"] == "invalid_phone"
    assert ari.named("originate") == []
    [row] = store.rows.values()
    assert (row["order_id"], row["outcome"], row["direction"]) == ("124", "invalid_phone", "api")
    assert store.audits[-1]["reason"] == "invalid_phone" and store.audits[-1]["order_id"] == "124"
    assert metrics.CALLS_REFUSED.value("invalid_phone") == refused_before + 1
