"""Several daemons and several Asterisk nodes, against the fakes: a call's ARI requests go to its node,
the phone path is placed on the node its channel is on, the HTTP path rings the manager where their phone
is registered, a daemon passes on what it cannot take, adopts another daemon's calls under that daemon's
application, stops serving an application another websocket took, and ends the rows of a lost node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from bridged import dialplan
from bridged.ari import AriError, AriUnavailable
from bridged.ari.client import AriClient
from bridged.ari.nodes import NodeClients, NodeNames, on_node
from bridged.calls.engine import CallEngine
from bridged.calls.model import CallState
from bridged.config import AriConfig, Config, ConfigHolder
from bridged.outcomes import Refusal
from bridged.service import CallService, NotStarted, Refused
from bridged.serving import Node, Serving
from tests.unit.fakes import (
    FakeAri,
    FakeStore,
    answered,
    channel_destroyed,
    hangup_request,
    make_config,
    make_order,
    settle,
    stasis_start,
    wait_until,
)
from tests.unit.test_service import FakeDirectory


def two_nodes(config: Config | None = None) -> Config:
    config = config or make_config()
    first = replace(config.ari, name="pbx1")
    second = replace(config.ari, name="pbx2", url="http://10.0.0.2:8088/ari")
    return replace(config, ari=first, ari_nodes=(first, second))


@dataclass
class Env:
    config: Config
    ari: FakeAri
    store: FakeStore
    engine: CallEngine
    service: CallService
    up: dict[str, bool]
    systemnames: dict[str, str]

    def of_channel(self, uniqueid: str | None) -> str | None:
        prefix = (uniqueid or "").rsplit("-", 1)[0]
        found = [node for node, name in self.systemnames.items() if name == prefix]
        return found[0] if found else None

    def connected(self, node: str) -> bool:
        return self.up.get(node, False)


def _env(config: Config) -> Env:
    ari, store = FakeAri(), FakeStore()
    up = {node.node: True for node in config.nodes}
    holder = ConfigHolder(config)

    def accepting() -> bool:
        return up[engine.nodes.current()]

    engine = CallEngine(holder, ari, store, is_connected=accepting)  # type: ignore[arg-type]
    engine.ari.events = engine.on_event  # type: ignore[attr-defined]
    directory = FakeDirectory({"123": make_order("123", manager_id="anna")})
    env = Env(config, ari, store, engine, None, up, {"pbx1": "pbx-a", "pbx2": "pbx-b"})  # type: ignore[arg-type]
    env.service = CallService(
        holder,
        store,  # type: ignore[arg-type]
        directory,  # type: ignore[arg-type]
        engine,
        accepting_calls=accepting,
        nodes=env,
    )
    return env


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = _env(two_nodes())
    yield e
    await e.engine.shutdown()


async def _no_code() -> str:
    return ""


def _nodes_of(ari: FakeAri, method: str) -> list[str | None]:
    return [node for name, node in ari.on_nodes if name == method]


# -- one ARI client per node ------------------------------------------------------------------------------


class _Recorder(AriClient):
    def __init__(self, name: str, seen: list[tuple[str, str]]) -> None:  # no HTTP session: never sends
        self.name, self.seen = name, seen

    async def _call(  # noqa: ANN401
        self, op_name: str, path_params: Any, params: Any, body: Any = None, *, decode: bool = True
    ) -> Any:
        self.seen.append((self.name, op_name))
        return {"id": "x"}


async def test_each_request_goes_to_the_node_of_the_context_and_to_the_first_without_one() -> None:
    seen: list[tuple[str, str]] = []
    clients = NodeClients({"pbx1": _Recorder("pbx1", seen), "pbx2": _Recorder("pbx2", seen)})
    await clients.answer("c")
    with on_node("pbx2"):
        await clients.answer("c")
        await asyncio.gather(clients.hangup("c"), asyncio.create_task(clients.ring("c")))
    with on_node("gone"):  # a node no longer configured: the first
        await clients.answer("c")
    # A task started inside the context (the ring) inherits its node.
    assert seen[:2] == [("pbx1", "answer"), ("pbx2", "answer")]
    assert sorted(seen[2:4]) == [("pbx2", "hangup"), ("pbx2", "ring")]
    assert seen[4:] == [("pbx1", "answer")]


def test_a_row_without_a_known_node_is_the_first_nodes() -> None:
    names = NodeNames(("pbx1", "pbx2"))
    assert names.holds("pbx1", None) and names.holds("pbx1", "pbx1") and names.holds("pbx1", "old")
    assert not names.holds("pbx2", None) and names.holds("pbx2", "pbx2") and not names.holds("pbx1", "pbx2")


# -- the phone path: the node its channel is on ---------------------------------------------------------


async def test_a_phone_call_is_placed_on_the_node_of_its_channel(env: Env) -> None:
    placed = await env.service.place_from_phone("anna", "123", "pbx-b-1767261600.17", read_code=_no_code)
    assert not isinstance(placed, Refused) and placed is not None
    assert placed.nodes == ("pbx2",)
    # The phone path's row is written in the background while the FastAGI answer goes out (issue 19).
    assert placed.row_written is not None and await placed.row_written
    [row] = env.store.rows.values()
    assert row["node"] == "pbx2"
    # Its channel enters Stasis on node 2's websocket: every request of the call goes there.
    with on_node("pbx2"):
        env.engine.on_event(stasis_start("pbx-b-1767261600.17", ["order", placed.call_id], state="Ring"))
    await wait_until(lambda: bool(env.ari.named("subscribe")))
    assert env.engine.calls[placed.call_id].node == "pbx2"
    # The customer's leg, and the subscription to it.
    assert _nodes_of(env.ari, "originate_to_dialplan") == _nodes_of(env.ari, "subscribe") == ["pbx2"]


async def test_a_phone_call_whose_node_is_not_known_is_refused(env: Env) -> None:
    placed = await env.service.place_from_phone("anna", "123", "1767261600.17", read_code=_no_code)
    assert placed == Refused(Refusal.UNAVAILABLE)
    assert env.store.rows == {}


async def test_a_node_this_daemon_is_not_connected_to_is_passed_on(env: Env) -> None:
    env.up["pbx2"] = False
    placed = await env.service.place_from_phone(
        "anna", "123", "pbx-b-1767261600.17", read_code=_no_code, others_follow=True
    )
    assert placed == Refused(Refusal.UNAVAILABLE)
    # Passed on: audited here, no call row (the daemon that takes the call writes it).
    assert env.store.rows == {}
    [entry] = env.store.audits
    assert (entry["outcome"], entry["reason"]) == ("passed_on", "unavailable")


async def test_the_last_daemon_keeps_the_refused_row_of_an_unavailable_call(env: Env) -> None:
    env.up["pbx1"] = False
    placed = await env.service.place_from_phone("anna", "123", "pbx-a-1.2", read_code=_no_code)
    assert isinstance(placed, Refused) and placed.reason is Refusal.UNAVAILABLE
    [row] = env.store.rows.values()
    assert row["outcome"] == "unavailable"


async def test_a_daemon_that_cannot_take_the_call_does_not_ask_for_the_code_first(env: Env) -> None:
    env.up["pbx1"] = False
    asked: list[bool] = []

    async def read_code() -> str:
        asked.append(True)
        return "123"

    placed = await env.service.place_from_phone(
        "anna", "", "pbx-a-1.2", read_code=read_code, others_follow=True
    )
    assert placed == Refused(Refusal.UNAVAILABLE) and asked == []


# -- the HTTP path: where the manager's phone is registered ---------------------------------------------


async def _api_call(env: Env) -> Any:
    return await env.service.place_from_api("shop", "anna", "123")


async def test_the_manager_is_rung_on_the_node_where_the_phone_is_registered(env: Env) -> None:
    env.ari.endpoint_states[("pbx1", "anna")] = "offline"
    call = await _api_call(env)
    assert not isinstance(call, Refused | NotStarted)
    assert call.node == "pbx2"
    assert set(_nodes_of(env.ari, "get_endpoint")) == {"pbx1", "pbx2"}
    assert _nodes_of(env.ari, "create_channel") == _nodes_of(env.ari, "dial") == ["pbx2"]
    assert env.store.rows[call.id]["node"] == "pbx2"


async def test_a_phone_registered_nowhere_is_refused_and_a_disconnected_node_is_not_asked(env: Env) -> None:
    env.up["pbx2"] = False
    env.ari.endpoint_states[("pbx1", "anna")] = "offline"
    call = await _api_call(env)
    assert call == Refused(Refusal.MANAGER_NOT_REGISTERED)
    assert _nodes_of(env.ari, "get_endpoint") == ["pbx1"]


async def test_allocation_failed_on_one_node_rings_the_phone_on_the_next(env: Env) -> None:
    # Both nodes say the phone may be reached (a static contact without qualify is always "online"),
    # the first cannot build the channel.
    env.ari.errors["create_channel"] = lambda kw: (
        AriError("create_channel", 500, "ARI create_channel failed: HTTP 500: Allocation failed")
        if len(env.ari.named("create_channel")) == 1
        else None
    )
    call = await _api_call(env)
    assert not isinstance(call, Refused | NotStarted)
    assert _nodes_of(env.ari, "create_channel") == ["pbx1", "pbx2"]
    assert _nodes_of(env.ari, "dial") == ["pbx2"]
    assert env.ari.hung_up() == []  # nothing was made on pbx1: no hangup sent there
    assert call.node == "pbx2" and env.store.rows[call.id]["node"] == "pbx2"
    # The rest of the call happens there too.
    env.engine.on_event(answered(f"{call.id}-manager"))
    await wait_until(lambda: env.ari.named("subscribe"))
    assert _nodes_of(env.ari, "originate_to_dialplan") == _nodes_of(env.ari, "subscribe") == ["pbx2"]


async def test_another_error_than_allocation_is_not_retried_elsewhere(env: Env) -> None:
    env.ari.errors["create_channel"] = AriError("create_channel", 400, "ARI create_channel failed: HTTP 400")
    call = await _api_call(env)
    assert isinstance(call, NotStarted)
    assert _nodes_of(env.ari, "create_channel") == ["pbx1"]


# -- adopted calls, another daemon's application --------------------------------------------------------


def _bridged_row(env: Env, call_id: str, *, app: str, node: str | None, state: str = "bridged") -> None:
    env.store.add_row(
        id=call_id,
        ari_app=app,
        state=state,
        manager_channel_id=f"{call_id}-m",
        customer_channel_id=f"{call_id}-customer",
        bridge_id=f"{call_id}-bridge",
        answered_at=datetime.now(UTC),
        recording_name=f"bridged-{call_id}",
        node=node,
    )


async def test_a_survivor_adopts_the_calls_of_the_application_it_took_over_on_each_node(env: Env) -> None:
    _bridged_row(env, "c1", app="dead", node="pbx1")
    _bridged_row(env, "c2", app="dead", node="pbx2")
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("c1-m", "c1-customer")}
    env.ari.live_recordings["bridged-c1"] = {"name": "bridged-c1", "state": "recording"}
    with on_node("pbx1"):
        await env.engine.reconciler.reconcile("dead")
    # Node 1's call only; subscribed under the dead daemon's application, audited as adopted by this one.
    assert set(env.engine.calls) == {"c1"}
    call = env.engine.calls["c1"]
    assert (call.app, call.node, call.state) == ("dead", "pbx1", CallState.BRIDGED)
    [sub] = env.ari.named("subscribe")
    assert sub["app"] == "dead"
    assert [flt["app"] for flt in env.ari.named("allow_events")] == ["dead"]
    adopt = [a for a in env.store.audits if a["action"] == "call.adopt"]
    assert [(a["actor"], a["call_id"], a["details"]["from_app"]) for a in adopt] == [
        ("bridged:bridged", "c1", "dead")
    ]
    # The customer hangs up: the adopter ends the call as the owner would have.
    env.engine.on_event(hangup_request("c1-customer"))
    await wait_until(lambda: env.store.rows["c1"]["state"] == "ended")
    assert (env.store.rows["c1"]["outcome"], env.store.rows["c1"]["ended_by"]) == ("completed", "customer")
    assert "c1-m" in env.ari.hung_up()
    assert env.store.rows["c2"]["state"] == "bridged"  # node 2's: its own websocket reconciles it


async def test_a_leg_that_went_on_to_another_daemons_stasis_is_not_hung_up(env: Env) -> None:
    # The dead daemon answered the FastAGI request and wrote its row; Stasis() into its application
    # failed and the dialplan took the phone to the next daemon, whose call it is now.
    env.store.add_row(id="c1", ari_app="dead", state="requested", manager_channel_id="pbx-a-1.5", node="pbx1")
    env.ari.channels = {
        "pbx-a-1.5": {
            "id": "pbx-a-1.5",
            "state": "Ring",
            "dialplan": {"app_name": "Stasis", "app_data": "bridged,order,c9"},
        }
    }
    await env.engine.reconciler.reconcile("dead")
    assert env.store.rows["c1"]["state"] == "ended" and env.store.rows["c1"]["outcome"] == "failed"
    assert env.ari.hung_up() == []


async def test_no_new_call_is_taken_under_an_adopted_application(env: Env) -> None:
    event = stasis_start("in-1", ["inbound", "allowed"]) | {"application": "dead"}
    env.engine.on_event(event)
    await wait_until(lambda: bool(env.ari.named("continue_in_dialplan")))
    assert env.ari.named("continue_in_dialplan")[0]["channel_id"] == "in-1"
    assert env.ari.hung_up() == []
    env.engine.on_event(stasis_start("m-9", ["order", "c9"]) | {"application": "dead"})
    await wait_until(lambda: len(env.ari.named("continue_in_dialplan")) == 2)
    assert env.engine.calls == {}


async def test_stopping_to_serve_an_application_forgets_its_calls_without_ending_them(env: Env) -> None:
    _bridged_row(env, "c1", app="dead", node="pbx1")
    _bridged_row(env, "c2", app="bridged", node="pbx1")
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("c1-m", "c1-customer", "c2-m", "c2-customer")}
    await env.engine.reconciler.reconcile("dead")
    await env.engine.reconciler.reconcile()
    assert set(env.engine.calls) == {"c1", "c2"}
    forgotten = env.engine.stop_serving("pbx1", "dead")
    assert [c.id for c in forgotten] == ["c1"] and set(env.engine.calls) == {"c2"}
    await settle()
    assert env.store.rows["c1"]["state"] == "bridged"
    env.engine.on_event(channel_destroyed("c1-customer"))  # now someone else's event
    await settle()
    assert env.store.rows["c1"]["state"] == "bridged" and "c1-m" not in env.ari.hung_up()


# -- bridged.serving: node identity, ApplicationReplaced, a lost node --------------------------------------


class _Stream:
    """An event stream that never connects (the tests drive the handler)."""

    made: list[_Stream] = []

    def __init__(self, session: Any, access: Any, app: str, **kwargs: Any) -> None:
        self.app, self.kwargs, self.closed, self.connected = app, kwargs, False, False
        _Stream.made.append(self)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def serving(env: Env) -> AsyncIterator[Serving]:
    _Stream.made = []
    found = Serving(ConfigHolder(env.config), None, env.engine, stream_factory=_Stream)  # type: ignore[arg-type]
    yield found
    await found.close()


async def test_a_channel_is_placed_on_a_node_by_the_systemname_its_unique_id_starts_with(
    env: Env, serving: Serving
) -> None:
    env.ari.info = {"pbx1": ("rig", "t1"), "pbx2": ("rig-2", "t1")}
    for name in ("pbx1", "pbx2"):
        with on_node(name):
            await serving._identify(serving.nodes[name])
    assert serving.of_channel("rig-2-1767261600.17") == "pbx2"
    assert serving.of_channel("rig-1767261600.17") == "pbx1"
    assert serving.of_channel("1767261600.17") is None  # no systemname: cannot tell
    assert serving.of_channel("rig-3-1767261600.17") is None
    assert serving.of_channel(None) is None


async def test_application_replaced_stops_serving_that_application_on_that_node(
    env: Env, serving: Serving
) -> None:
    serving.serve_own()
    serving.adopt("dead")
    _bridged_row(env, "c1", app="dead", node="pbx1")
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("c1-m", "c1-customer")}
    with on_node("pbx1"):
        await env.engine.reconciler.reconcile("dead")
    adopted = next(s for s in _Stream.made if s.app == "dead")
    adopted.kwargs["handler"]({"type": "ApplicationReplaced", "application": "dead"})
    await settle()
    assert adopted.closed and env.engine.calls == {}
    assert serving.adopted_apps() == {"dead"}  # node 2's websocket for it is still open
    # The own application replaced on node 2: not served there any more, and not taken back at once.
    own = next(s for s in _Stream.made if s.app == "bridged" and s is serving.nodes["pbx2"].own.events)  # type: ignore[union-attr]
    own.kwargs["handler"]({"type": "ApplicationReplaced", "application": "bridged"})
    await settle()
    assert own.closed and serving.nodes["pbx2"].own is None
    count = len(_Stream.made)
    serving.serve_own()
    assert len(_Stream.made) == count


async def test_a_lost_node_ends_the_rows_of_its_calls_only(env: Env, serving: Serving) -> None:
    _bridged_row(env, "c1", app="bridged", node="pbx2")
    _bridged_row(env, "c2", app="bridged", node="pbx1")
    env.store.add_row(id="c3", ari_app="bridged", state="ringing_customer", node="pbx2")
    node: Node = serving.nodes["pbx2"]
    await serving.lose(node)
    assert node.lost
    assert [
        (r["id"], r["outcome"], r["ended_by"]) for r in env.store.rows.values() if r["state"] == "ended"
    ] == [
        ("c1", "completed", "unknown"),
        ("c3", "failed", "unknown"),
    ]
    assert env.store.rows["c1"]["recording_state"] == "unknown"
    assert env.store.rows["c2"]["state"] == "bridged"
    reasons = {a["call_id"]: a["reason"] for a in env.store.audits if a["action"] == "call.end"}
    assert reasons == {"c1": "Asterisk node pbx2 lost", "c3": "Asterisk node pbx2 lost"}


def test_with_one_node_the_config_and_rows_need_no_node_name() -> None:
    config = make_config()
    assert config.nodes == (config.ari,) and config.ari.node == "127.0.0.1:8088"
    assert AriConfig("http://u:p@pbx:8088/ari", "u", "p").node == "pbx:8088"


def test_a_node_named_is_its_client_and_an_unknown_one_the_current_nodes() -> None:
    seen: list[tuple[str, str]] = []
    first, second = _Recorder("pbx1", seen), _Recorder("pbx2", seen)
    clients = NodeClients({"pbx1": first, "pbx2": second})
    assert clients.client("pbx2") is second and clients.client() is first
    assert clients.client("gone") is first
    with on_node("pbx2"):
        assert clients.client() is second and clients.client("gone") is second
        assert clients.client("pbx1") is first


# -- the dialplan's version (an upgrade whose dialplan was not copied to Asterisk) ---------------------------


async def test_no_call_is_taken_on_a_node_whose_dialplan_is_not_the_one_this_daemon_needs(
    env: Env, serving: Serving, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import bridged.serving

    monkeypatch.setattr(bridged.serving, "DIALPLAN_RECHECK_SECONDS", 0.01)
    caplog.set_level("INFO", "bridged.serving")
    env.ari.info = {"pbx1": ("rig", "t1"), "pbx2": ("rig-2", "t1")}
    env.ari.globals = {}  # the dialplan of the release before: no BRIDGED_DIALPLAN
    with on_node("pbx2"):
        await serving._identify(serving.nodes["pbx2"])
    with on_node("pbx1"):
        env.ari.globals = {dialplan.VERSION_VARIABLE: dialplan.VERSION}
        await serving._identify(serving.nodes["pbx1"])
        assert serving.dialplan_current()
    with on_node("pbx2"):
        assert not serving.dialplan_current()
    assert "pbx2: Asterisk's dialplan is older (BRIDGED_DIALPLAN not set)" in caplog.text
    # Asked again (in pbx2's context) until the admin has copied the file and reloaded the dialplan.
    env.ari.globals = {dialplan.VERSION_VARIABLE: "1"}
    await asyncio.sleep(0.05)
    with on_node("pbx2"):
        assert not serving.dialplan_current()
    env.ari.globals = {dialplan.VERSION_VARIABLE: dialplan.VERSION}
    await wait_until(lambda: not serving.nodes["pbx2"].dialplan_outdated, what="the dialplan read again")
    with on_node("pbx2"):
        assert serving.dialplan_current()
    assert ("get_global", "pbx2") in env.ari.on_nodes
    assert f"pbx2: the dialplan is version {dialplan.VERSION} now: calls are taken again" in caplog.text
    assert caplog.text.count("Asterisk's dialplan is") == 1  # said once, not at every read


async def test_a_dialplan_version_that_cannot_be_read_does_not_stop_calls(env: Env, serving: Serving) -> None:
    async def unreadable(variable: str) -> str:
        raise AriUnavailable("get_global", 0, "Asterisk unreachable")

    env.ari.get_global = unreadable  # type: ignore[method-assign]
    with on_node("pbx1"):
        await serving._identify(serving.nodes["pbx1"])
        assert serving.dialplan_current()
