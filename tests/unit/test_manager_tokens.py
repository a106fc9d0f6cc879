"""Manager-bound tokens (``role: manager`` with ``manager: <id>``) over every endpoint of the API, on the
real router with fakes behind it: the token places calls only as its manager, reads and ends only that
manager's calls, and everything else is 403 with an audit row."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridged.api import routes
from bridged.api.auth import PERMISSIONS, Principal, TokenRegistry
from bridged.api.openapi import document
from bridged.config import ApiToken

from .fakes import DownStore, FakeAri, make_config, make_order
from .test_api_calls import call_app

TOKENS = {
    # name: (role, token, bound manager)
    "anna-page": ("manager", "anna-token", "anna"),
    "boris-page": ("manager", "boris-token", "boris"),
    "shop-1": ("shop", "shop-token", None),
}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][1]}"}


@dataclass
class Served:
    client: TestClient
    ari: FakeAri
    store: DownStore

    async def post(self, who: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        resp = await self.client.post("/v1/calls", json=body, headers=auth(who))
        return resp.status, await resp.json()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    tokens = tuple(
        ApiToken(name=name, role=role, sha256=hashlib.sha256(token.encode()).hexdigest(), manager=manager)
        for name, (role, token, manager) in TOKENS.items()
    )
    config = make_config()
    config = replace(config, api=replace(config.api, tokens=tokens), policy="team")
    # 123 is anna's order, 124 boris's (same team "north"), 125 nobody's.
    orders = {
        "123": make_order("123", manager_id="anna"),
        "124": make_order("124", manager_id="boris"),
        "125": make_order("125", manager_id=None),
    }
    built = call_app(config, orders, middleware=False)  # routes.setup adds it
    app, ari, store, engine = built.app, built.ari, built.store, built.engine
    routes.setup(app)
    app[routes.TOKENS] = TokenRegistry(lambda: tokens)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Served(client, ari, store)
    finally:
        await client.close()
        await engine.shutdown()


async def test_a_manager_token_places_calls_only_as_its_manager(served: Served) -> None:
    # Omitted: its own manager. Its own id: the same. Under the policy of *77 (team: boris's order too).
    status, call = await served.post("anna-page", {"order_id": "123"})
    assert (status, call["manager_id"], call["order_id"]) == (202, "anna", "123"), call
    status, call = await served.post("anna-page", {"order_id": "124", "manager_id": "anna"})
    assert (status, call["manager_id"]) == (202, "anna"), call
    status, body = await served.post("anna-page", {"order_id": "125"})
    assert (status, body["error"]["id"]) == (403, "order_not_allowed")
    rows = sorted(served.store.rows.values(), key=lambda r: r["requested_at"])
    assert [(r["manager_id"], r["created_by"]) for r in rows] == [("anna", "anna-page")] * 3

    # Another manager: 403 other_manager, audited, nothing looked up or placed, the asked-for id not kept.
    made = len(served.ari.named("create_channel"))
    status, body = await served.post("anna-page", {"order_id": "124", "manager_id": "boris"})
    assert (status, body["error"]["id"]) == (403, "other_manager"), body
    status, body = await served.post("anna-page", {"order_id": "124", "manager_id": "+79161234567"})
    assert (status, body["error"]["id"]) == (403, "other_manager"), body
    denied = [a for a in served.store.audits if a["action"] == "api.denied"]
    assert [
        (a["actor"], a["outcome"], a["details"]["reason"], a["details"]["manager_id"]) for a in denied
    ] == [("anna-page", "forbidden", "other_manager", "anna")] * 2
    assert "boris" not in repr(denied) and "7916" not in repr(denied)
    assert len(served.ari.named("create_channel")) == made and len(served.store.rows) == 3

    # A shop token still has to name the manager.
    status, body = await served.post("shop-1", {"order_id": "123"})
    assert (status, body["error"]["id"]) == (422, "invalid_request")


async def test_a_manager_token_reads_and_ends_only_its_managers_calls(served: Served) -> None:
    _, annas = await served.post("anna-page", {"order_id": "123"})
    _, shops = await served.post("shop-1", {"order_id": "123", "manager_id": "anna"})
    _, boriss = await served.post("shop-1", {"order_id": "124", "manager_id": "boris"})
    served.store.add_row(id="annas-desk-call", manager_id="anna", state="bridged")  # dialled *77 herself
    served.store.add_row(id="boriss-desk-call", manager_id="boris", state="bridged")
    expected = {
        annas["id"]: 200,
        shops["id"]: 200,  # placed by the shop's backend, but anna's call
        "annas-desk-call": 200,
        boriss["id"]: 404,
        "boriss-desk-call": 404,
    }
    for call_id, status in expected.items():
        resp = await served.client.get(f"/v1/calls/{call_id}", headers=auth("anna-page"))
        assert resp.status == status, (call_id, await resp.text())
        if status == 404:  # as if it did not exist
            assert (await resp.json())["error"]["id"] == "call_not_found"
    # The shop token sees what it placed, not anna's own.
    resp = await served.client.get(f"/v1/calls/{annas['id']}", headers=auth("shop-1"))
    assert resp.status == 404
    # Ending: boris's call is not hers (nothing is hung up); hers is.
    resp = await served.client.delete(f"/v1/calls/{boriss['id']}", headers=auth("anna-page"))
    assert resp.status == 404 and not served.ari.hung_up()
    resp = await served.client.delete(f"/v1/calls/{annas['id']}", headers=auth("anna-page"))
    assert resp.status == 202, await resp.text()
    ends = [a["actor"] for a in served.store.audits if a["action"] == "call.end_requested"]
    assert ends == ["token:anna-page"]


# Every endpoint a manager token may not use: 403 forbidden with its api.denied audit row.
FORBIDDEN = [
    ("GET", "/v1/calls", "calls.list"),
    ("GET", "/v1/calls/any/recording", "recordings.listen"),
    ("HEAD", "/v1/calls/any/recording", "recordings.listen"),
    ("GET", "/v1/audit", "audit.read"),
    ("GET", "/v1/retention", "retention.read"),
    ("PUT", "/v1/retention", "retention.write"),
    ("DELETE", "/v1/retention", "retention.write"),
    ("POST", "/v1/retention/purge", "retention.write"),
]


@pytest.mark.parametrize(("method", "path", "permission"), FORBIDDEN)
async def test_a_manager_token_may_not_list_listen_or_administer(
    served: Served, method: str, path: str, permission: str
) -> None:
    resp = await served.client.request(method, path, headers=auth("anna-page"))
    assert resp.status == 403
    if method != "HEAD":
        assert (await resp.json())["error"]["id"] == "forbidden"
    [row] = served.store.audits
    assert (row["actor"], row["action"], row["outcome"]) == ("anna-page", "api.denied", "forbidden")
    assert (row["details"]["permission"], row["details"]["role"]) == (permission, "manager")


async def test_me_shows_the_binding(served: Served) -> None:
    resp = await served.client.get("/v1/me", headers=auth("anna-page"))
    assert await resp.json() == {
        "name": "anna-page",
        "role": "manager",
        "permissions": ["calls.create", "calls.end", "calls.read"],
        "manager_id": "anna",
    }
    resp = await served.client.get("/v1/me", headers=auth("shop-1"))
    assert "manager_id" not in await resp.json()


def test_the_permission_matrix() -> None:
    """Which role may do what, in one table (the e2e matrix checks it against the running daemon)."""
    assert {role: sorted(p) for role, p in PERMISSIONS.items()} == {
        "shop": ["calls.create", "calls.end", "calls.read"],
        "manager": ["calls.create", "calls.end", "calls.read"],
        "ops": [
            "calls.any_client",
            "calls.callback",
            "calls.list",
            "calls.read",
            "probing.read",
            "recordings.listen",
        ],
        "admin": [
            "audit.read",
            "calls.any_client",
            "calls.callback",
            "calls.list",
            "calls.read",
            "canaries.manage",
            "probing.read",
            "recordings.listen",
            "retention.read",
            "retention.write",
        ],
    }
    anna = Principal("anna-page", "manager", "anna")
    shop = Principal("shop-1", "shop")
    ops = Principal("ops-1", "ops")
    cases = [
        # (principal, call's manager, call's client) -> may read and end
        (anna, "anna", None, True),
        (anna, "anna", "shop-1", True),
        (anna, "anna", "link:anna", True),
        (anna, "boris", "anna-page", False),  # cannot happen (it places as anna only); still not hers
        (anna, "boris", None, False),
        (shop, "anna", "shop-1", True),
        (shop, "anna", None, False),
        (shop, "anna", "anna-page", False),
        (ops, "boris", None, True),
    ]
    for who, manager_id, created_by, expected in cases:
        assert who.owns(manager_id=manager_id, created_by=created_by) is expected, (
            who,
            manager_id,
            created_by,
        )


def test_a_manager_token_without_its_manager_authenticates_as_no_one() -> None:
    token = ApiToken("t", "manager", hashlib.sha256(b"x").hexdigest(), manager=None)
    assert TokenRegistry(lambda: (token,)).authenticate("Bearer x") is None
    bound = replace(token, manager="anna")
    assert TokenRegistry(lambda: (bound,)).authenticate("Bearer x") == Principal("t", "manager", "anna")
    # A manager binding on another role gives that token nothing more.
    shop = ApiToken("s", "shop", hashlib.sha256(b"y").hexdigest(), manager="anna")
    assert TokenRegistry(lambda: (shop,)).authenticate("Bearer y") == Principal("s", "shop", None)


def test_the_openapi_document_describes_manager_tokens() -> None:
    doc = document()
    create = doc["components"]["schemas"]["CreateCall"]
    by_order = create["oneOf"][0]
    assert by_order["required"] == ["order_id"] and "manager_id" in by_order["properties"]
    assert "manager token" in create["description"]
    me = doc["components"]["schemas"]["Me"]
    assert "manager" in me["properties"]["role"]["enum"] and "manager_id" in me["properties"]
    post = doc["paths"]["/v1/calls"]["post"]
    assert "other_manager" in post["responses"]["403"]["description"]
