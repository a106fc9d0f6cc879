"""The click-to-call handlers over fakes: 503 "overloaded" while Asterisk is behind, 503
"database_unavailable" while bridged's database is away, and calls scoped to the token that placed them."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from bridged import metrics
from bridged.api import calls as api_calls
from bridged.api import idempotency, openapi
from bridged.api.auth import TOKENS, TokenRegistry
from bridged.api.errors import ApiError, error_middleware
from bridged.appkeys import CONFIG, ENGINE, SERVICE, STORE
from bridged.ari import AriUnavailable
from bridged.calls.engine import CallEngine
from bridged.config import ApiToken, Config, ConfigHolder
from bridged.orders import Order
from bridged.outcomes import OUTCOME_ERRORS, REFUSALS, Refusal, Refused
from bridged.service import CallService
from bridged.store import Store
from bridged.store.base import DatabaseUnavailable

from .fakes import DownStore, FakeAri, make_config, make_order, wait_until
from .test_service import FakeDirectory

TOKEN = "shop-token"
TOKENS_BY_NAME = {
    "shop-1": ("shop", TOKEN),
    "shop-2": ("shop", "other-shop-token"),
    "ops-1": ("ops", "ops-token"),
}


def auth(name: str = "shop-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS_BY_NAME[name][1]}"}


@dataclass
class CallApp:
    """An aiohttp application with the real call service and engine over fakes (no routes yet)."""

    app: web.Application
    ari: FakeAri
    store: DownStore
    engine: CallEngine
    service: CallService
    directory: FakeDirectory


def call_app(config: Config, orders: dict[str, Order], *, middleware: bool = True) -> CallApp:
    ari, store = FakeAri(), DownStore()
    engine = CallEngine(ConfigHolder(config), ari, store, is_connected=lambda: True)  # type: ignore[arg-type]
    engine.ari.events = engine.on_event  # type: ignore[attr-defined]
    directory = FakeDirectory(orders)
    service = CallService(ConfigHolder(config), store, directory, engine, accepting_calls=lambda: True)  # type: ignore[arg-type]
    app = web.Application(middlewares=[error_middleware] if middleware else [])
    app[CONFIG] = ConfigHolder(config)
    app[STORE] = cast(Store, store)  # a fake standing in for the real Store
    app[ENGINE] = engine
    app[SERVICE] = service
    return CallApp(app, ari, store, engine, service, directory)


def with_calls_api(app: web.Application) -> None:
    """The call routes on ``app``, with the tokens of TOKENS_BY_NAME."""
    tokens = tuple(
        ApiToken(name=name, role=role, sha256=hashlib.sha256(token.encode()).hexdigest())
        for name, (role, token) in TOKENS_BY_NAME.items()
    )
    app[TOKENS] = TokenRegistry(lambda: tokens)
    api_calls.setup(app)


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, FakeAri, DownStore]]:
    config = make_config()
    config = replace(config, ari=replace(config.ari, max_request_wait=0.05))
    built = call_app(config, {"123": make_order("123", manager_id="anna")})
    app, ari, store, engine = built.app, built.ari, built.store, built.engine
    with_calls_api(app)
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
    assert ari.named("create_channel") == []
    [row] = store.rows.values()
    assert (row["order_id"], row["outcome"], row["direction"]) == ("124", "invalid_phone", "api")
    assert store.audits[-1]["reason"] == "invalid_phone" and store.audits[-1]["order_id"] == "124"
    assert metrics.CALLS_REFUSED.value("invalid_phone") == refused_before + 1


async def _place(client: TestClient, who: str = "shop-1") -> dict[str, Any]:
    resp = await client.post("/v1/calls", json={"order_id": "123", "manager_id": "anna"}, headers=auth(who))
    body = await resp.json()
    assert resp.status == 202, body
    return body


async def test_a_shop_token_reads_and_ends_only_the_calls_it_placed(served: Any) -> None:
    client, ari, store = served
    call = await _place(client)
    assert store.rows[call["id"]]["created_by"] == "shop-1"
    store.add_row(id="phone-call", state="bridged")  # dialled from a phone: no token's
    for who, call_id, status in [
        ("shop-1", call["id"], 200),
        ("shop-2", call["id"], 404),
        ("shop-1", "phone-call", 404),
        ("ops-1", call["id"], 200),
        ("ops-1", "phone-call", 200),
    ]:
        resp = await client.get(f"/v1/calls/{call_id}", headers=auth(who))
        body = await resp.json()
        assert resp.status == status, (who, call_id, body)
        if status == 404:
            assert body["error"]["id"] == "call_not_found"  # as if it did not exist
    # Another shop cannot end it either, and trying changes nothing.
    resp = await client.delete(f"/v1/calls/{call['id']}", headers=auth("shop-2"))
    assert (resp.status, (await resp.json())["error"]["id"]) == (404, "call_not_found")
    assert not ari.hung_up()
    assert store.rows[call["id"]]["state"] != "ended"
    # ops may read every call but end none (no calls.end), as before.
    resp = await client.delete(f"/v1/calls/{call['id']}", headers=auth("ops-1"))
    assert resp.status == 403
    resp = await client.delete(f"/v1/calls/{call['id']}", headers=auth("shop-1"))
    assert resp.status == 202


async def test_a_placed_call_whose_row_cannot_be_read_back_is_answered_from_what_the_daemon_knows(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _, store = served

    async def away(call_id: str) -> None:
        raise DatabaseUnavailable("ConnectionRefusedError")

    monkeypatch.setattr(store.calls, "get", away)
    call = await _place(client)
    assert call["id"] in store.rows  # it was placed: only reading its row back failed
    assert call.pop("requested_at")
    assert call == {
        "id": call["id"],
        "order_id": "123",
        "manager_id": "anna",
        "direction": "api",
        "state": call["state"],
        "outcome": None,
        "hangup_cause": None,
        "ended_by": None,
        "answered_at": None,
        "ended_at": None,
        "duration_seconds": None,
        "has_recording": False,
        "recording_state": None,
        "recording_purged_at": None,
        "caller_ref": None,
    }


@pytest.mark.parametrize("call_id", ["%00", "a%00b", "%ED%A0%80", "x" * 65, "%F0%9F%93%9E"])
async def test_a_path_id_that_cannot_be_an_id_is_404(served: Any, call_id: str) -> None:
    client, _, store = served
    resp = await client.get(f"/v1/calls/{call_id}", headers=auth())
    assert (resp.status, (await resp.json())["error"]["id"]) == (404, "call_not_found")


async def test_post_while_bridgeds_database_is_away_is_503_and_the_attempt_is_written_later(
    served: Any,
) -> None:
    client, ari, store = served
    from bridged.store.deferred import DeferredWrites

    service = client.app[SERVICE]
    service.deferred = service.refusals.deferred = DeferredWrites(delays=(0.01,) * 5)
    refused = metrics.CALLS_REFUSED.value("database_unavailable")
    store.down = True
    resp = await client.post("/v1/calls", json={"order_id": "123", "manager_id": "anna"}, headers=auth())
    body = await resp.json()
    assert (resp.status, body["error"]["id"]) == (503, "database_unavailable"), body
    assert resp.headers["Retry-After"] == "5"
    assert metrics.CALLS_REFUSED.value("database_unavailable") == refused + 1
    assert ari.named("create_channel") == []  # nobody was rung
    store.down = False
    await wait_until(lambda: store.rows)
    [row] = store.rows.values()
    assert (row["outcome"], row["direction"], row["created_by"]) == ("database_unavailable", "api", "shop-1")
    assert [(a["actor"], a["reason"]) for a in store.audits] == [("token:shop-1", "database_unavailable")]


async def test_reads_while_bridgeds_database_is_away_are_503(served: Any) -> None:
    client, _, store = served
    call = await _place(client)
    store.down = True
    for method in ("GET", "DELETE"):
        resp = await client.request(method, f"/v1/calls/{call['id']}", headers=auth())
        body = await resp.json()
        assert (resp.status, body["error"]["id"], resp.headers["Retry-After"]) == (
            503,
            "database_unavailable",
            "5",
        )


async def test_a_call_refused_while_asterisk_is_away_gets_its_row_audit_and_count(served: Any) -> None:
    # As on the phone path: a refused attempt on a well-formed order is a call attempt with its row.
    client, ari, store = served
    client.server.app[SERVICE].accepting_calls = lambda: False
    refused = metrics.CALLS_REFUSED.value("unavailable")
    resp = await client.post("/v1/calls", json={"order_id": "123", "manager_id": "anna"}, headers=auth())
    body = await resp.json()
    assert (resp.status, body["error"]["id"], resp.headers["Retry-After"]) == (
        503,
        "telephony_unavailable",
        "5",
    )
    assert ari.calls == []  # no registration check either
    [row] = store.rows.values()
    assert (row["outcome"], row["direction"], row["created_by"]) == ("unavailable", "api", "shop-1")
    assert [(a["actor"], a["outcome"], a["reason"]) for a in store.audits] == [
        ("token:shop-1", "refused", "unavailable")
    ]
    assert metrics.CALLS_REFUSED.value("unavailable") == refused + 1


async def test_an_unknown_manager_or_unregistered_phone_is_a_counted_refusal(served: Any) -> None:
    client, ari, store = served
    unknown = metrics.CALLS_REFUSED.value("unknown_manager")
    resp = await client.post("/v1/calls", json={"order_id": "123", "manager_id": "nobody"}, headers=auth())
    assert (resp.status, (await resp.json())["error"]["id"]) == (404, "unknown_manager")
    assert metrics.CALLS_REFUSED.value("unknown_manager") == unknown + 1

    async def offline(tech: str, resource: str) -> dict[str, Any]:
        return {"technology": tech, "resource": resource, "state": "offline", "channel_ids": []}

    ari.get_endpoint = offline
    unregistered = metrics.CALLS_REFUSED.value("manager_not_registered")
    resp = await client.post("/v1/calls", json={"order_id": "123", "manager_id": "anna"}, headers=auth())
    assert (resp.status, (await resp.json())["error"]["id"]) == (409, "manager_not_registered")
    assert metrics.CALLS_REFUSED.value("manager_not_registered") == unregistered + 1
    assert [a["reason"] for a in store.audits] == ["unknown_manager", "manager_not_registered"]
    assert store.rows == {}  # no order was looked up: these are audited attempts without a call row


async def test_a_manager_leg_that_cannot_be_rung_is_409_manager_unavailable(served: Any) -> None:
    client, ari, store = served
    ari.errors["create_channel"] = AriUnavailable("create_channel", 0, "timed out")
    resp = await client.post("/v1/calls", json={"order_id": "123", "manager_id": "anna"}, headers=auth())
    body = await resp.json()
    assert (resp.status, body["error"]["id"]) == (409, "manager_unavailable"), body
    row = store.rows[body["error"]["details"]["call_id"]]
    assert (row["state"], row["outcome"], row["ended_by"]) == ("ended", "manager_unavailable", "bridged")


# -- calling back a missed inbound call --------------------------------------------------------------------


def _missed(store: DownStore, call_id: str, **fields: Any) -> None:
    values = {
        "direction": "inbound",
        "state": "ended",
        "outcome": "missed",
        "order_id": "123",
        "manager_id": "anna",
        "caller_ref": "KXMRTPAW",
    }
    store.add_row(id=call_id, **{**values, **fields})


async def test_ops_calls_back_a_missed_call_with_its_order_and_manager_and_nothing_else(served: Any) -> None:
    """calls.callback: ops may have bridged call back the customer of a missed call (an ordinary masked
    call, the manager first); the order and the manager are the missed call's, never the client's."""
    client, ari, store = served
    _missed(store, "missed-1")
    resp = await client.post("/v1/calls", json={"callback_of": "missed-1"}, headers=auth("ops-1"))
    body = await resp.json()
    assert resp.status == 202, body
    assert (body["order_id"], body["manager_id"], body["direction"]) == ("123", "anna", "api")
    row = store.rows[body["id"]]
    assert row["created_by"] == "ops-1"
    accepted = store.audits[-1]
    assert (accepted["actor"], accepted["outcome"], accepted["details"]["callback_of"]) == (
        "token:ops-1",
        "accepted",
        "missed-1",
    )
    [made] = ari.named("create_channel")
    assert (
        made["endpoint"] == "PJSIP/anna"
        and made["variables"]["CALLERID(all)"] == '"Order 123 Ivan P." <*77123>'
    )
    # ops may not place any other call: calls.create stays with the shop's backend.
    resp = await client.post(
        "/v1/calls", json={"order_id": "123", "manager_id": "anna"}, headers=auth("ops-1")
    )
    assert (resp.status, (await resp.json())["error"]["id"]) == (403, "forbidden")
    assert store.audits[-1]["action"] == "api.denied"
    assert store.audits[-1]["details"]["permission"] == "calls.create"


@pytest.mark.parametrize(
    ("fields", "who", "status", "error"),
    [
        ({}, "shop-1", 404, "call_not_found"),  # a shop sees no inbound call: as if it did not exist
        ({"outcome": "completed"}, "ops-1", 409, "callback_not_possible"),
        ({"direction": "phone", "outcome": "customer_busy"}, "ops-1", 409, "callback_not_possible"),
        ({"order_id": None, "manager_id": None}, "ops-1", 409, "callback_not_possible"),  # no order
        ({"manager_id": None}, "ops-1", 409, "callback_not_possible"),
    ],
)
async def test_only_a_missed_call_with_an_order_and_a_manager_is_called_back(
    served: Any, fields: dict[str, Any], who: str, status: int, error: str
) -> None:
    client, ari, store = served
    _missed(store, "missed-2", **fields)
    resp = await client.post("/v1/calls", json={"callback_of": "missed-2"}, headers=auth(who))
    assert (resp.status, (await resp.json())["error"]["id"]) == (status, error)
    assert ari.named("create_channel") == []


@pytest.mark.parametrize(
    "body",
    [
        {"callback_of": "missed-3", "order_id": "1"},
        {"callback_of": "missed-3", "manager_id": "boris"},
        {"callback_of": 7},
        {"callback_of": "x y"},
        {"callback_of": "x" * 65},
    ],
)
async def test_callback_of_comes_alone_and_names_a_call(served: Any, body: dict[str, Any]) -> None:
    client, ari, store = served
    _missed(store, "missed-3")
    resp = await client.post("/v1/calls", json=body, headers=auth("ops-1"))
    assert (resp.status, (await resp.json())["error"]["id"]) == (422, "invalid_request")
    assert ari.named("create_channel") == []


# -- Idempotency-Key: which answers are the key's for good ----------------------------------------------


def _requests(store: DownStore) -> list[str | None]:
    """The reasons of the ``call.request`` audit rows (None: accepted), one per attempt that was made."""
    return [a["reason"] for a in store.audits if a["action"] == "call.request"]


def _past_the_budget(store: DownStore) -> None:
    for _ in range(60):  # the default budget's calls
        store.attempts.rows.append(
            {"manager_id": "anna", "outcome": "accepted", "order_id": "9", "at": datetime.now(UTC)}
        )


async def test_a_rate_limited_post_frees_its_key_and_the_retry_after_the_window_places_the_call(
    served: Any,
) -> None:
    """A 429 is not the key's answer: the shop retries with the same key after Retry-After, as the key is
    meant for, and the call is placed; then the key answers that call, without a second ring or audit row."""
    client, ari, store = served
    _past_the_budget(store)
    key = {**auth(), "Idempotency-Key": "order-123-1"}
    body = {"order_id": "123", "manager_id": "anna"}
    resp = await client.post("/v1/calls", json=body, headers=key)
    refused = await resp.json()
    assert (resp.status, refused["error"]["id"]) == (429, "rate_limited"), refused
    assert int(resp.headers["Retry-After"]) > 0
    assert store.idempotency.rows == {}
    store.attempts.rows.clear()  # the window moved on
    resp = await client.post("/v1/calls", json=body, headers=key)
    placed = await resp.json()
    assert resp.status == 202, placed
    assert "Idempotent-Replayed" not in resp.headers
    resp = await client.post("/v1/calls", json=body, headers=key)
    assert (resp.status, await resp.json(), resp.headers["Idempotent-Replayed"]) == (202, placed, "true")
    assert len(ari.named("create_channel")) == 1
    assert _requests(store) == ["rate_limited", None]


@pytest.mark.parametrize("down", ["telephony", "database"])
async def test_a_503_with_a_key_says_when_to_try_again_and_frees_the_key(served: Any, down: str) -> None:
    client, ari, store = served
    service = client.app[SERVICE]
    if down == "telephony":
        service.accepting_calls = lambda: False
    else:
        from bridged.store.deferred import DeferredWrites

        service.deferred = service.refusals.deferred = DeferredWrites(delays=(0.01,) * 5)
        store.down = True
    key = {**auth(), "Idempotency-Key": "order-123-1"}
    body = {"order_id": "123", "manager_id": "anna"}
    resp = await client.post("/v1/calls", json=body, headers=key)
    assert resp.status == 503, await resp.json()
    assert resp.headers["Retry-After"] == "5"
    service.accepting_calls, store.down = (lambda: True), False
    await wait_until(lambda: store.idempotency.rows == {} and _requests(store))
    resp = await client.post("/v1/calls", json=body, headers=key)
    assert resp.status == 202, await resp.json()
    assert len(ari.named("create_channel")) == 1


async def test_a_call_tried_is_the_keys_answer_replayed_without_another_attempt(served: Any) -> None:
    """409 manager_unavailable: the call went ahead and its manager's leg could not be rung. The key keeps
    it (naming that call): a retry is told so again, and Asterisk is not asked to ring the phone twice."""
    client, ari, store = served
    ari.errors["create_channel"] = AriUnavailable("create_channel", 0, "timed out")
    key = {**auth(), "Idempotency-Key": "order-123-1"}
    body = {"order_id": "123", "manager_id": "anna"}
    resp = await client.post("/v1/calls", json=body, headers=key)
    first = await resp.json()
    assert (resp.status, first["error"]["id"]) == (409, "manager_unavailable"), first
    tried = len(ari.named("create_channel"))
    del ari.errors["create_channel"]  # the phone could be rung now: the key still answers the call tried
    resp = await client.post("/v1/calls", json=body, headers=key)
    assert (resp.status, await resp.json(), resp.headers["Idempotent-Replayed"]) == (409, first, "true")
    assert "Retry-After" not in resp.headers
    assert first["error"]["details"]["call_id"] in store.rows and len(store.rows) == 1
    # The call a signed link kept after the same answer follows (bridged.callpage).
    assert idempotency.call_named(409, first) == first["error"]["details"]["call_id"]
    assert _requests(store) == [None]  # the one call, accepted before its leg failed
    assert len(ari.named("create_channel")) == tried


async def test_a_manager_not_registered_key_places_the_call_once_the_phone_registers(served: Any) -> None:
    """409 manager_not_registered rang nobody: the key is free, and the shop's retry with it once the
    manager's phone has registered places the call (each attempt with its own call.request audit row)."""
    client, ari, store = served
    get_endpoint = ari.get_endpoint

    async def offline(tech: str, resource: str) -> dict[str, Any]:
        return {"technology": tech, "resource": resource, "state": "offline", "channel_ids": []}

    ari.get_endpoint = offline
    key = {**auth(), "Idempotency-Key": "order-123-1"}
    body = {"order_id": "123", "manager_id": "anna"}
    resp = await client.post("/v1/calls", json=body, headers=key)
    refused = await resp.json()
    assert (resp.status, refused["error"]["id"]) == (409, "manager_not_registered"), refused
    assert store.idempotency.rows == {}
    ari.get_endpoint = get_endpoint  # the phone registered
    resp = await client.post("/v1/calls", json=body, headers=key)
    placed = await resp.json()
    assert resp.status == 202 and "Idempotent-Replayed" not in resp.headers, placed
    resp = await client.post("/v1/calls", json=body, headers=key)
    assert (resp.status, await resp.json(), resp.headers["Idempotent-Replayed"]) == (202, placed, "true")
    assert len(ari.named("create_channel")) == 1
    assert _requests(store) == ["manager_not_registered", None]


@pytest.mark.parametrize(
    ("first", "error", "reason"),
    [
        (None, (404, "unknown_order"), "unknown_order"),  # the order reaches the shop's database
        (make_order("124", manager_id="boris"), (403, "order_not_allowed"), "denied"),  # given to anna
        (replace(make_order("124"), phone=None), (422, "invalid_phone"), "invalid_phone"),  # corrected
    ],
)
async def test_a_refusal_that_rang_nobody_frees_the_key_and_the_retry_with_it_asks_again(
    served: Any, first: Order | None, error: tuple[int, str], reason: str
) -> None:
    """The order as it was refused the call; as the shop then changes it, the retry with the same key is a
    new attempt, and places the call."""
    client, ari, store = served
    orders = client.app[SERVICE].directory.orders
    if first is not None:
        orders["124"] = first
    key = {**auth(), "Idempotency-Key": "order-124-1"}
    body = {"order_id": "124", "manager_id": "anna"}
    resp = await client.post("/v1/calls", json=body, headers=key)
    refused = await resp.json()
    assert (resp.status, refused["error"]["id"]) == error, refused
    assert store.idempotency.rows == {}
    orders["124"] = make_order("124", manager_id="anna")
    resp = await client.post("/v1/calls", json=body, headers=key)
    assert resp.status == 202 and "Idempotent-Replayed" not in resp.headers, await resp.json()
    assert _requests(store) == [reason, None]
    assert len(ari.named("create_channel")) == 1


async def test_a_retry_while_the_first_request_is_handled_is_409_even_if_the_first_is_then_refused_429(
    served: Any,
) -> None:
    """A key a transient refusal frees is still held while its first request is handled: the concurrent
    duplicate is told so, and only the retry after the answer tries again."""
    client, ari, store = served
    service = client.app[SERVICE]
    place_from_api, let_go, entered = service.place_from_api, asyncio.Event(), asyncio.Event()

    async def held(*args: Any, **kwargs: Any) -> Refused:
        entered.set()
        await let_go.wait()
        return Refused(Refusal.RATE_LIMITED, retry_after=30)

    service.place_from_api = held
    key = {**auth(), "Idempotency-Key": "order-123-1"}
    body = {"order_id": "123", "manager_id": "anna"}
    first = asyncio.create_task(client.post("/v1/calls", json=body, headers=key))
    await entered.wait()
    resp = await client.post("/v1/calls", json=body, headers=key)
    assert (resp.status, (await resp.json())["error"]["id"]) == (409, "idempotency_key_in_use")
    let_go.set()
    resp = await first
    assert (resp.status, resp.headers["Retry-After"]) == (429, "30")
    service.place_from_api = place_from_api
    resp = await client.post("/v1/calls", json=body, headers=key)
    assert resp.status == 202, await resp.json()
    assert len(ari.named("create_channel")) == 1


def test_the_document_marks_as_replayed_only_the_answers_a_key_keeps() -> None:
    """Idempotent-Replayed is documented on the 202 and on the 409 (manager_unavailable), the statuses of
    the answers idempotency.final keeps, and on no other."""
    responses = openapi.document()["paths"]["/v1/calls"]["post"]["responses"]
    marked = {
        status for status, answer in responses.items() if "Idempotent-Replayed" in answer.get("headers", {})
    }
    kept = {"202"} | {str(http.status) for http in OUTCOME_ERRORS.values()}
    assert marked == kept == {"202", "409"}
    for http in OUTCOME_ERRORS.values():
        assert idempotency.final(http.status, {"error": {"id": http.error_id}}, None), http
    for meaning in REFUSALS.values():  # every refusal rings nobody
        assert not idempotency.final(meaning.http.status, {"error": {"id": meaning.http.error_id}}, None)


# Answers an attempt may get: the call placed, the call tried (manager_unavailable), a refusal of the
# catalogue (bridged.outcomes) or any other error, each with or without Retry-After.
_ERRORS = [
    (http.status, http.error_id) for http in (*(m.http for m in REFUSALS.values()), *OUTCOME_ERRORS.values())
]
_ANSWERS = st.one_of(
    st.just((202, None, None)),
    st.tuples(
        st.one_of(
            st.sampled_from(_ERRORS),
            st.tuples(
                st.sampled_from([400, 403, 404, 409, 410, 422, 429, 500, 502, 503, 504]), st.just("other")
            ),
        ),
        st.one_of(st.none(), st.integers(1, 3600)),
    ).map(lambda answer: (*answer[0], answer[1])),
)


@settings(max_examples=80, deadline=None)
@given(answers=st.lists(_ANSWERS, min_size=1, max_size=5), replays=st.integers(1, 3))
def test_a_key_keeps_the_call_placed_or_tried_and_is_free_after_any_other_answer(
    answers: list[tuple[int, str | None, int | None]], replays: int
) -> None:
    """Generated answers to successive attempts with one key: each request is a new attempt, answered with
    its Retry-After if it has one, until an answer to a request that had an effect (the call placed, a
    2xx; or tried, 409 manager_unavailable; never with Retry-After); from then on every request gets that
    answer replayed, without another attempt. With no such answer the key is free at the end."""

    def is_final(status: int, error_id: str | None, retry_after: int | None) -> bool:
        return retry_after is None and (status < 300 or error_id == "manager_unavailable")

    first_final = next((i for i, answer in enumerate(answers) if is_final(*answer)), None)
    attempts = len(answers) if first_final is None else first_final + 1

    async def check() -> None:
        built = call_app(make_config(), {})
        with_calls_api(built.app)
        tried: list[int] = []

        async def place(request: web.Request, client: str, *args: Any, **kwargs: Any) -> tuple[int, Any]:
            assert len(tried) < len(answers), "an attempt the key should have answered"
            status, error_id, retry_after = answers[len(tried)]
            tried.append(status)
            if status < 300:
                return status, {"id": f"call-{len(tried)}"}
            error = ApiError(f"answer {len(tried)}", details={"call_id": f"call-{len(tried)}"})
            error.status, error.error_id, error.retry_after = status, str(error_id), retry_after
            raise error

        key = {**auth(), "Idempotency-Key": "k"}
        try:
            with mock.patch.object(api_calls, "place", place):
                async with TestClient(TestServer(built.app)) as client:
                    seen = []
                    for _ in range(attempts + (0 if first_final is None else replays)):
                        resp = await client.post(
                            "/v1/calls", json={"order_id": "1", "manager_id": "m"}, headers=key
                        )
                        seen.append((resp.status, await resp.json(), dict(resp.headers)))
        finally:
            await built.engine.shutdown()
        assert len(tried) == attempts
        for (status, body, headers), (answer, _, retry_after) in zip(
            seen[:attempts], answers[:attempts], strict=True
        ):
            assert status == answer and "Idempotent-Replayed" not in headers, (status, body, headers)
            assert headers.get("Retry-After") == (None if retry_after is None else str(retry_after))
        replayed = seen[attempts:]
        for status, body, headers in replayed:
            assert (status, body) == seen[attempts - 1][:2]
            assert headers["Idempotent-Replayed"] == "true" and "Retry-After" not in headers
        assert bool(built.store.idempotency.rows) == (first_final is not None)

    asyncio.run(check())
