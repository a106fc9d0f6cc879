"""CallEngine driven through ARI events shaped like Asterisk 22's, against a fake ARI and a fake store.

Every test also checks, on teardown, that the customer's number reached the fake ARI only as the
originate ``endpoint`` and never reached the store.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import bridged
from bridged.ari import AriBadRequest, AriConflict, AriError, AriUnavailable
from bridged.calls import legs as legs_module
from bridged.calls import rows as rows_module
from bridged.calls.engine import REACTIONS, CallEngine
from bridged.calls.model import (
    TRANSITIONS,
    Call,
    CallState,
    Event,
    InvalidTransition,
    PendingCall,
    caller_number,
    customer_leg_id,
)
from bridged.config import Config, ConfigHolder, RecordingConfig
from bridged.outcomes import Outcome
from bridged.redact import digits
from tests.unit.fakes import (
    NUMBER,
    NUMBER_TAIL,
    FakeAri,
    FakeStore,
    answered,
    caller_id_changed,
    channel_destroyed,
    dial,
    dial_answered,
    hangup_request,
    make_config,
    make_label,
    make_order,
    manager,
    not_found,
    playback_finished,
    settle,
    stasis_end,
    stasis_start,
    wait_until,
)

LABEL_CID = '"Order 123 Ivan P." <*77123>'
DIAL = f"PJSIP/{NUMBER}@carrier"


@dataclass
class Env:
    config: Config
    ari: FakeAri
    store: FakeStore
    engine: CallEngine
    connected: dict[str, bool]

    def row(self, call_id: str) -> dict[str, Any]:
        return self.store.rows[call_id]

    def expect(self, call_id: str, manager_channel: str | None, manager_id: str = "anna") -> None:
        # What CallService.request does before the manager's channel enters Stasis.
        self.store.add_row(
            id=call_id,
            manager_id=manager_id,
            manager_channel_id=manager_channel,
            customer_channel_id=customer_leg_id(call_id),
        )
        self.engine.expect(
            PendingCall(
                call_id=call_id,
                order=make_order(),
                manager=manager(self.config, manager_id),
                direction="phone",
                manager_channel_id=manager_channel,
                label=make_label("123", "Ivan Petrov"),
            )
        )

    async def ringing(self, call_id: str, manager_channel: str, state: str = "Ring") -> str:
        """Expect a call, bring its manager channel into Stasis; returns the customer channel id."""
        self.expect(call_id, manager_channel)
        self.engine.on_event(stasis_start(manager_channel, ["order", call_id], state=state))
        await wait_until(lambda: self.row(call_id)["state"] == "ringing_customer", what="ringing_customer")
        customer = await self._dialled(call_id)
        assert customer == self.row(call_id)["customer_channel_id"]
        return customer

    async def _dialled(self, call_id: str) -> str:
        """Waits for the customer's leg to be originated into [bridged-customer] and the application
        subscribed to it (it is in no application until answered: no StasisStart yet)."""
        customer = customer_leg_id(call_id)
        source = [f"channel:{customer}"]
        await wait_until(lambda: any(kw["event_sources"] == source for kw in self.ari.named("subscribe")))
        [rung] = [kw for kw in self.ari.named("originate_to_dialplan") if kw["channel_id"] == customer]
        assert (rung["context"], rung["extension"]) == ("bridged-customer", "s")
        assert rung["variables"]["BRIDGED_CALL"] == call_id
        return customer

    async def ringing_unpersisted(self, call_id: str, manager_channel: str) -> str:
        """As :meth:`ringing`, for when the row's writes fail: waits on the engine, not the row."""
        self.expect(call_id, manager_channel)
        self.engine.on_event(stasis_start(manager_channel, ["order", call_id], state="Ring"))
        return await self._dialled(call_id)

    async def bridged(self, call_id: str, manager_channel: str) -> str:
        customer = await self.ringing(call_id, manager_channel)
        self.engine.on_event(answered(customer))
        await wait_until(lambda: self.row(call_id)["state"] == "bridged", what="bridged")
        return customer

    async def ended(self, call_id: str) -> dict[str, Any]:
        await wait_until(lambda: self.row(call_id)["state"] == "ended", what=f"{call_id} ended")
        await wait_until(lambda: call_id not in self.engine.calls, what=f"{call_id} forgotten")
        return self.row(call_id)

    def play_for(self, channel_id: str) -> dict[str, Any]:
        plays = [kw for kw in self.ari.named("play") if kw["channel_id"] == channel_id]
        assert len(plays) == 1, plays
        return plays[0]


def assert_no_number_leak(ari: FakeAri, store: FakeStore) -> None:
    for method, kwargs in ari.calls:
        for name, value in kwargs.items():
            # The customer's number goes to Asterisk once: in the endpoint of the leg it dials.
            if method == "originate_to_dialplan" and name == "endpoint":
                assert value == DIAL
                continue
            text = digits(repr(value))
            assert NUMBER_TAIL not in text, f"number leaked in {method}({name}={value!r})"
    for row in store.rows.values():
        assert NUMBER_TAIL not in digits(repr(row)), row
    for entry in store.audits:
        assert NUMBER_TAIL not in digits(repr(entry)), entry


async def _make_env(config: Config) -> Env:
    ari, store = FakeAri(), FakeStore()
    connected = {"up": True}
    engine = CallEngine(ConfigHolder(config), ari, store, is_connected=lambda: connected["up"])  # type: ignore[arg-type]
    engine.ari.events = engine.on_event  # type: ignore[attr-defined]
    return Env(config, ari, store, engine, connected)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = await _make_env(make_config())
    yield e
    await e.engine.shutdown()
    assert_no_number_leak(e.ari, e.store)


# -- (a) the happy path ------------------------------------------------------------------------------


async def test_happy_path_customer_hangs_up(env: Env) -> None:
    customer = await env.ringing("call-a", "m-a")
    ari = env.ari

    # The customer leg: originated into [bridged-customer], which enters the application once it is
    # answered (and tries again while no daemon serves it): the number only in the endpoint, the shop's
    # identity as its caller id and connected line, an id chosen by us; then the application subscribed
    # to it, for its events while it rings in no application.
    [rung] = ari.named("originate_to_dialplan")
    assert rung["endpoint"] == DIAL
    shop = env.config.trunk.caller_id
    assert rung["caller_id"] == shop
    assert rung["variables"]["CONNECTEDLINE(all,i)"] == rung["variables"]["CALLERID(all)"] == shop
    assert rung["channel_id"] == customer == "call-a-customer"
    assert (rung["context"], rung["extension"]) == ("bridged-customer", "s")
    assert rung["variables"]["BRIDGED_LEG_APP"] == env.config.ari.app
    assert rung["variables"]["BRIDGED_CALL"] == "call-a"
    assert rung["timeout"] == env.config.trunk.ring_timeout
    assert rung["originator"] == "m-a"
    assert ari.named("subscribe") == [{"app": env.config.ari.app, "event_sources": [f"channel:{customer}"]}]
    assert ari.methods().index("originate_to_dialplan") < ari.methods().index("subscribe")
    assert ari.named("create_channel") == [] and ari.named("dial") == []

    # The manager's label, its connected line and the CONNECTED_LINE_SEND_SUB interception come with
    # the FastAGI reply, before Stasis (see test_agi.py): nothing about the manager is set here.
    assert ari.variables("m-a") == []
    assert ari.named("ring") == []  # the dialplan sent 180 Ringing before Stasis()
    assert ari.named("answer") == []

    # Some progress events on the way, as Asterisk sends them to the subscribed application: ringing,
    # and the Dial ANSWER, are not an answer (the leg is not in the application yet: no bridge for it).
    env.engine.on_event(dial(customer, ""))
    env.engine.on_event(dial(customer, "RINGING"))
    env.engine.on_event(dial_answered(customer))
    await settle()
    assert env.engine.calls["call-a"].state is CallState.RINGING_CUSTOMER
    assert ari.named("answer") == [] and ari.named("create_bridge") == []
    ari.calls.clear()
    env.engine.on_event(answered(customer))
    await wait_until(lambda: env.row("call-a")["state"] == "bridged")

    methods = ari.methods()
    assert ari.named("answer") == [{"channel_id": "m-a"}]
    assert ari.named("create_bridge") == [
        {"bridge_id": "call-a-bridge", "type": "mixing", "name": "bridged-call-a"}
    ]
    [add] = ari.named("add_channel")
    assert add["bridge_id"] == "call-a-bridge"
    assert sorted(add["channel_ids"]) == sorted(["m-a", customer])
    assert add["inhibit_connected_line_updates"] is True
    # This carrier sent no identity: the customer leg's caller id is left alone (no request for it).
    assert ari.variables(customer) == []
    assert methods.index("answer") < methods.index("add_channel")
    [rec] = ari.named("record_bridge")
    assert rec["bridge_id"] == "call-a-bridge"
    assert rec["format"] == "wav"
    assert rec["name"] == "bridged-call-a"

    row = env.row("call-a")
    assert row["bridge_id"] == "call-a-bridge"
    assert row["recording_name"] == "bridged-call-a"
    assert isinstance(row["answered_at"], datetime)

    ari.calls.clear()
    env.engine.on_event(hangup_request(customer, cause=16))
    row = await env.ended("call-a")
    assert "m-a" in ari.hung_up()
    assert ari.named("destroy_bridge") == [{"bridge_id": "call-a-bridge"}]
    assert row["outcome"] == "completed"
    assert row["ended_by"] == "customer"
    assert env.store.audits[-1] == {
        "actor": "anna",
        "action": "call.end",
        "outcome": "completed",
        "reason": "customer",
        "call_id": "call-a",
        "order_id": "123",
        "details": {},
    }
    # Late events for the finished call change nothing.
    before = len(ari.calls)
    for event in (
        stasis_end(customer),
        channel_destroyed(customer),
        stasis_end("m-a"),
        channel_destroyed("m-a"),
    ):
        env.engine.on_event(event)
    await settle()
    assert len(ari.calls) == before
    assert env.row("call-a")["outcome"] == "completed"


def _customer_cid_sets(ari: FakeAri, customer: str) -> list[int]:
    return [
        i
        for i, (m, kw) in enumerate(ari.calls)
        if m == "set_variable" and kw["channel_id"] == customer and kw["variable"] == "CALLERID(all)"
    ]


async def test_carrier_identity_in_its_200_ok_is_replaced_by_the_label_before_the_bridge(env: Env) -> None:
    customer = await env.ringing("call-pai", "m-pai")
    ari = env.ari
    # The trunk trusted the PAI of the carrier's 200 OK: the leg, not yet in Stasis, carries the number.
    env.engine.on_event(caller_id_changed(customer, NUMBER, "Customer"))
    await settle()
    assert _customer_cid_sets(ari, customer) == []  # ARI cannot set variables before StasisStart
    env.engine.on_event(answered(customer))
    await wait_until(lambda: env.row("call-pai")["state"] == "bridged")
    sets = _customer_cid_sets(ari, customer)
    assert len(sets) == 1 and sets[0] < ari.methods().index("add_channel")
    assert ari.variables(customer) == [("CALLERID(all)", LABEL_CID)]


async def test_carrier_identity_mid_call_is_replaced_and_our_own_caller_ids_are_left_alone(env: Env) -> None:
    customer = await env.bridged("call-upd", "m-upd")
    ari = env.ari
    ari.calls.clear()
    # Asterisk reports the label we put back and the shop's caller id of the originate: nothing to do.
    env.engine.on_event(caller_id_changed(customer, "*77123", "Order 123 Ivan P."))
    env.engine.on_event(caller_id_changed(customer, caller_number(env.config.trunk.caller_id), "Shop"))
    await settle()
    assert ari.calls == []
    # A carrier's UPDATE with PAI, trusted by the trunk: the label goes back at once.
    env.engine.on_event(caller_id_changed(customer, NUMBER, "Customer"))
    await wait_until(lambda: bool(_customer_cid_sets(ari, customer)))
    assert ari.variables(customer) == [("CALLERID(all)", LABEL_CID)]
    # The manager's leg is never touched for it.
    env.engine.on_event(caller_id_changed("m-upd", NUMBER, "Customer"))
    await settle()
    assert ari.variables("m-upd") == []


async def test_a_leg_asterisk_already_hangs_up_is_not_hung_up_again(env: Env) -> None:
    customer = await env.ringing("call-a", "m-a")
    env.engine.on_event(answered(customer))
    await wait_until(lambda: env.row("call-a")["state"] == "bridged")
    env.ari.calls.clear()
    env.engine.on_event(hangup_request(customer, cause=16))
    await env.ended("call-a")
    assert env.ari.hung_up() == ["m-a"]


@pytest.mark.parametrize("leg", ["customer", "manager"])
async def test_a_bridged_leg_cut_off_ends_the_call_by_asterisk_without_a_cause(env: Env, leg: str) -> None:
    """ARI's DELETE of the leg by another program (or ``channel request hangup``) is a soft hangup request:
    its cause is the flag AST_SOFTHANGUP_EXPLICIT (32), not a Q.850 cause. Nobody on the phones hung up: the
    row says ``asterisk`` (before the change: the leg's side), and has no cause (before an earlier change:
    32). The leg is hung up again, as after any soft request (it may only have been interrupted)."""
    customer = await env.bridged("call-a", "m-a")
    channel = customer if leg == "customer" else "m-a"
    env.engine.on_event(hangup_request(channel, cause=32, soft=True))
    row = await env.ended("call-a")
    assert (row["outcome"], row["ended_by"], row["hangup_cause"]) == ("completed", "asterisk", None)
    assert set(env.ari.hung_up()) == {customer, "m-a"}


@pytest.mark.parametrize("leg", ["customer", "manager"])
async def test_a_leg_cut_off_while_the_customer_rings_cancels_the_call(env: Env, leg: str) -> None:
    """``channel request hangup`` on the customer's leg ringing from the dialplan (measured: a soft request
    32, Dial NOANSWER, ChannelDestroyed cause 0 "Unknown") or on the manager's phone: the call is cancelled
    at once, by ``asterisk``, the other leg hung up, no prompt. (Checked to fail before the change: the
    customer "did not answer", cause 0, after the manager heard the no-answer prompt; the manager's phone
    "abandoned" the call.)"""
    customer = await env.ringing("call-a", "m-a")
    env.engine.on_event(dial(customer, "RINGING"))
    channel = customer if leg == "customer" else "m-a"
    env.engine.on_event(hangup_request(channel, cause=32, state="Ringing", soft=True))
    env.engine.on_event(dial(customer, "NOANSWER"))
    env.engine.on_event(channel_destroyed(channel, cause=0))
    row = await env.ended("call-a")
    assert (row["outcome"], row["ended_by"], row["hangup_cause"]) == ("cancelled", "asterisk", None)
    assert env.ari.named("play") == []
    assert ("m-a" if leg == "customer" else customer) in env.ari.hung_up()


async def test_manager_already_up_is_not_answered_again(env: Env) -> None:
    customer = await env.ringing("call-a", "m-a", state="Up")
    assert env.ari.named("ring") == []
    env.engine.on_event(answered(customer))
    await wait_until(lambda: env.row("call-a")["state"] == "bridged")
    assert env.ari.named("answer") == []


# -- (b) (c) hangups ---------------------------------------------------------------------------------


async def test_manager_hangs_up_first_while_bridged(env: Env) -> None:
    customer = await env.bridged("call-a", "m-a")
    env.ari.calls.clear()
    env.engine.on_event(hangup_request("m-a"))
    row = await env.ended("call-a")
    assert customer in env.ari.hung_up()
    assert env.ari.named("destroy_bridge") == [{"bridge_id": "call-a-bridge"}]
    assert row["outcome"] == "completed"
    assert row["ended_by"] == "manager"


async def test_manager_hangs_up_while_customer_rings(env: Env) -> None:
    customer = await env.ringing("call-a", "m-a")
    env.engine.on_event(dial(customer, "RINGING"))
    env.engine.on_event(hangup_request("m-a"))
    row = await env.ended("call-a")
    assert customer in env.ari.hung_up()
    assert env.ari.named("create_bridge") == []
    assert env.ari.named("destroy_bridge") == []
    assert row["outcome"] == "manager_abandoned"
    assert row["ended_by"] == "manager"


async def test_customer_hangs_up_during_announcement() -> None:
    e = await _make_env(make_config(recording=RecordingConfig(enabled=True, announcement="beep&recorded")))
    try:
        customer = await e.ringing("call-a", "m-a")
        e.engine.on_event(answered(customer))
        await wait_until(lambda: e.row("call-a")["state"] == "announcing")
        play = e.play_for(customer)
        assert play["media"] == ["sound:beep", "sound:recorded"]
        assert e.ari.named("add_channel") == []
        e.engine.on_event(hangup_request(customer))
        row = await e.ended("call-a")
        assert row["outcome"] == "customer_abandoned"
        assert row["ended_by"] == "customer"
        assert "m-a" in e.ari.hung_up()
    finally:
        await e.engine.shutdown()
    assert_no_number_leak(e.ari, e.store)


async def test_announcement_then_bridge() -> None:
    e = await _make_env(make_config(recording=RecordingConfig(enabled=True, announcement="recorded")))
    try:
        customer = await e.ringing("call-a", "m-a")
        e.engine.on_event(answered(customer))
        await wait_until(lambda: e.row("call-a")["state"] == "announcing")
        play = e.play_for(customer)
        # A PlaybackFinished for some other playback does not start the bridge.
        e.engine.on_event(playback_finished("other", customer))
        await settle()
        assert e.ari.named("add_channel") == []
        e.engine.on_event(playback_finished(play["playback_id"], customer))
        await wait_until(lambda: e.row("call-a")["state"] == "bridged")
        assert len(e.ari.named("add_channel")) == 1
    finally:
        await e.engine.shutdown()
    assert_no_number_leak(e.ari, e.store)


async def test_the_customer_leg_hears_the_announcement_in_the_shops_language() -> None:
    """The customer leg is originated with CHANNEL(language), so that Asterisk plays the announcement
    (and any prompt) from sounds/<language>/: the play request itself names no language."""
    config = make_config(language="ru", recording=RecordingConfig(enabled=True, announcement="custom/rec"))
    e = await _make_env(config)
    try:
        customer = await e.ringing("call-a", "m-a")
        [rung] = e.ari.named("originate_to_dialplan")
        assert rung["variables"]["CHANNEL(language)"] == "ru"
        e.engine.on_event(answered(customer))
        await wait_until(lambda: e.row("call-a")["state"] == "announcing")
        play = e.play_for(customer)
        assert (play["media"], play["lang"]) == (["sound:custom/rec"], None)
    finally:
        await e.engine.shutdown()
    assert_no_number_leak(e.ari, e.store)


async def test_a_stray_channel_hears_the_prompt_in_the_shops_language(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A channel that is no call's was not originated by bridged: its language is its endpoint's, so
    the play request names the language."""
    monkeypatch.setattr(legs_module, "STRAY_PROMPT_SECONDS", 0)
    e = await _make_env(make_config(language="ru"))
    try:
        await e.engine.legs.refuse_stray("stray-1")
        play = e.play_for("stray-1")
        assert (play["media"], play["lang"]) == ([f"sound:{e.config.prompts.unavailable}"], "ru")
    finally:
        await e.engine.shutdown()


async def test_recording_disabled_or_failing_still_bridges() -> None:
    e = await _make_env(make_config(recording=RecordingConfig(enabled=False)))
    try:
        await e.bridged("call-a", "m-a")
        assert e.ari.named("record_bridge") == []
        assert e.row("call-a")["recording_name"] is None
    finally:
        await e.engine.shutdown()

    e = await _make_env(make_config())
    e.ari.errors["record_bridge"] = AriUnavailable("record_bridge", 500, "ARI record_bridge failed: HTTP 500")
    try:
        await e.bridged("call-b", "m-b")
        assert len(e.ari.named("record_bridge")) == 1
        assert e.row("call-b")["recording_name"] is None
    finally:
        await e.engine.shutdown()


# -- (d) (e) the customer does not answer ------------------------------------------------------------


async def test_busy_plays_prompt_then_hangs_up_manager(env: Env) -> None:
    customer = await env.ringing("call-a", "m-a")
    env.engine.on_event(dial(customer, "RINGING"))
    env.engine.on_event(dial(customer, "BUSY"))
    # The hangup request carries no final answer yet: the engine waits for ChannelDestroyed.
    env.engine.on_event(hangup_request(customer, cause=17, state="Ring"))
    await settle()
    assert env.row("call-a")["state"] == "ringing_customer"
    assert env.ari.named("play") == []
    env.engine.on_event(channel_destroyed(customer, cause=17))
    await wait_until(lambda: env.row("call-a")["state"] == "ending")
    await wait_until(lambda: len(env.ari.named("play")) == 1)

    assert env.ari.named("answer") == [{"channel_id": "m-a"}]
    play = env.play_for("m-a")
    assert play["media"] == [f"sound:{p}" for p in env.config.prompts.busy.split("&")]
    assert play["media"] == ["sound:vm-theperson", "sound:vm-isonphone"]
    assert play["playback_id"]
    assert "m-a" not in env.ari.hung_up()

    env.engine.on_event(playback_finished(play["playback_id"], "m-a"))
    await wait_until(lambda: "m-a" in env.ari.hung_up())
    # Asterisk answers our hangup with the manager channel's own hangup events.
    env.engine.on_event(hangup_request("m-a"))
    env.engine.on_event(stasis_end("m-a"))
    row = await env.ended("call-a")
    assert row["outcome"] == "customer_busy"
    assert row["hangup_cause"] == 17
    assert env.ari.named("create_bridge") == []


@pytest.mark.parametrize(
    ("dialstatus", "cause", "outcome", "prompt"),
    [
        ("NOANSWER", 19, "customer_no_answer", "no_answer"),
        (None, 19, "customer_no_answer", "no_answer"),
        (None, 18, "customer_no_answer", "no_answer"),
        ("BUSY", 16, "customer_busy", "busy"),
        (None, 17, "customer_busy", "busy"),
        ("CONGESTION", 34, "customer_congestion", "congestion"),
        (None, 38, "customer_congestion", "congestion"),
        ("CHANUNAVAIL", 20, "customer_unavailable", "customer_unavailable"),
        (None, 1, "customer_unavailable", "customer_unavailable"),
    ],
)
async def test_unanswered_outcomes(
    env: Env, dialstatus: str | None, cause: int, outcome: str, prompt: str
) -> None:
    customer = await env.ringing("call-a", "m-a")
    if dialstatus:
        env.engine.on_event(dial(customer, dialstatus))
    env.engine.on_event(channel_destroyed(customer, cause=cause))
    await wait_until(lambda: len(env.ari.named("play")) == 1)
    play = env.play_for("m-a")
    assert play["media"] == [f"sound:{p}" for p in getattr(env.config.prompts, prompt).split("&")]
    # The manager hangs up during the prompt: same outcome.
    env.engine.on_event(hangup_request("m-a"))
    row = await env.ended("call-a")
    assert row["outcome"] == outcome
    assert row["hangup_cause"] == cause


async def test_a_dialled_leg_that_rang_out_is_no_answer() -> None:
    """What Asterisk sends for a made-and-dialled customer leg whose dial timed out (measured on the rig,
    docs/asterisk.md): a soft hangup request (its cause 32 the flag AST_SOFTHANGUP_EXPLICIT), StasisEnd, then
    ChannelDestroyed with cause 19. The destroyed leg's cause decides: no answer, not unavailable. (Checked to
    fail with the first cause kept.) Such a leg is one an earlier release made in the application, adopted
    while it rang: a leg rung from the dialplan rings out without a soft request (ChannelDestroyed, cause 19,
    alone), and a soft request on it is a cut-off."""
    e = await _make_env(make_config())
    try:
        _bridged_row(e, "call-r", answered=False, state="ringing_customer")
        made = {"id": "call-r-customer", "state": "Ring", "dialplan": {"app_name": "Stasis", "app_data": ""}}
        e.ari.channels = {"call-r-m": {"id": "call-r-m", "state": "Ring"}, "call-r-customer": made}
        e.ari.app_channel_ids = ["call-r-m", "call-r-customer"]
        await e.engine.reconciler.reconcile()
        customer = "call-r-customer"
        assert e.engine.calls["call-r"].customer_in_app
        e.engine.on_event(dial(customer, "RINGING"))
        e.engine.on_event(hangup_request(customer, cause=32, state="Ringing", soft=True))
        e.engine.on_event(stasis_end(customer, state="Ringing"))
        e.engine.on_event(channel_destroyed(customer, cause=19))
        await wait_until(lambda: len(e.ari.named("play")) == 1)
        assert e.play_for("call-r-m")["media"] == [
            f"sound:{p}" for p in e.config.prompts.no_answer.split("&")
        ]
        e.engine.on_event(hangup_request("call-r-m"))
        row = await e.ended("call-r")
        assert (row["outcome"], row["hangup_cause"]) == ("customer_no_answer", 19)
    finally:
        await e.engine.shutdown()


async def test_a_customer_leg_made_in_the_application_by_an_earlier_release_is_answered_by_its_dial(
    env: Env,
) -> None:
    """A call placed by a bridged that made the customer's leg in the application and dialled it, adopted
    while the customer rang: that leg is in Stasis already (state Down), and its answer is its Dial ANSWER.
    (A leg this release rings from the dialplan is answered by its StasisStart instead.)"""
    _bridged_row(env, "call-r", answered=False, state="ringing_customer")
    made = {"id": "call-r-customer", "state": "Down", "dialplan": {"app_name": "Stasis", "app_data": ""}}
    env.ari.channels = {"call-r-m": {"id": "call-r-m", "state": "Up"}, "call-r-customer": made}
    await env.engine.reconciler.reconcile()
    await wait_until(lambda: "call-r" in env.engine.calls)
    await settle()
    assert env.ari.named("create_bridge") == []
    env.engine.on_event(dial_answered("call-r-customer"))
    await wait_until(lambda: env.row("call-r")["state"] == "bridged")


# -- (f) the customer leg cannot be originated -------------------------------------------------------


async def test_originate_failure_plays_prompt(env: Env) -> None:
    """Asterisk did not answer the originate: the leg may exist, and is hung up; the manager hears the
    prompt."""
    env.ari.errors["originate_to_dialplan"] = AriUnavailable(
        "originate", 0, "ARI originate failed: Asterisk unreachable"
    )
    env.expect("call-a", "m-a")
    env.engine.on_event(stasis_start("m-a", ["order", "call-a"], state="Ring"))
    await wait_until(lambda: len(env.ari.named("play")) == 1)
    assert env.row("call-a")["state"] == "ending"
    assert "call-a-customer" in env.ari.hung_up() and env.ari.named("subscribe") == []
    play = env.play_for("m-a")
    assert play["media"] == ["sound:number-not-answering"]
    env.engine.on_event(playback_finished(play["playback_id"], "m-a"))
    await wait_until(lambda: "m-a" in env.ari.hung_up())
    env.engine.on_event(channel_destroyed("m-a"))
    row = await env.ended("call-a")
    assert row["outcome"] == "customer_unavailable"
    assert row["ended_by"] == "bridged"  # bridged ended it with a prompt


async def test_a_customer_leg_gone_before_its_subscription_ends_the_ring(env: Env) -> None:
    """The customer's leg ended (busy, refused) between its originate and the subscription to it, its
    hangup seen by nobody: the subscription's 422 says so, and the manager hears that the customer could
    not be reached. (Checked to fail without it: the call stayed ringing_customer.)"""
    env.ari.errors["subscribe"] = AriBadRequest("subscribe", 422, "ARI subscribe failed: HTTP 422")
    env.expect("call-a", "m-a")
    env.engine.on_event(stasis_start("m-a", ["order", "call-a"], state="Ring"))
    await wait_until(lambda: len(env.ari.named("play")) == 1)
    assert env.play_for("m-a")["media"] == ["sound:number-not-answering"]
    assert env.engine.calls["call-a"].state is CallState.ENDING


async def test_a_subscription_asterisk_did_not_answer_is_sent_again_and_the_leg_looked_at(
    env: Env, fast_sleep: None
) -> None:
    """The subscription to a ringing customer leg timed out: it is sent again, and the leg is then looked
    at (GET /channels/{id}), its events meanwhile being lost."""
    failures = iter([AriUnavailable("subscribe", 0, "timed out")])
    env.ari.errors["subscribe"] = lambda kw: next(failures, None)
    env.ari.channels["m-a"] = {"id": "m-a", "state": "Ring"}
    customer = await env.ringing("call-a", "m-a")
    await wait_until(lambda: {kw["channel_id"] for kw in env.ari.named("get_channel")} == {"m-a", customer})
    assert [kw["event_sources"] for kw in env.ari.named("subscribe")] == [[f"channel:{customer}"]] * 2
    await settle()
    assert env.engine.calls["call-a"].state is CallState.RINGING_CUSTOMER
    # Gone meanwhile, it would have been found so: a leg still there rings on.
    assert env.ari.hung_up() == []


async def test_a_subscription_to_an_application_that_is_gone_waits_for_the_reconnect(env: Env) -> None:
    """404: the application is not registered (its websocket dropped): not sent again here; the
    reconnect's Reconcile subscribes the leg that still rings in no application."""
    env.ari.errors["subscribe"] = not_found("subscribe")
    customer = await env.ringing("call-a", "m-a")
    await settle()
    assert len(env.ari.named("subscribe")) == 1
    assert env.engine.calls["call-a"].state is CallState.RINGING_CUSTOMER
    del env.ari.errors["subscribe"]
    ringing = {"id": customer, "state": "Ring", "dialplan": {"context": "bridged-customer", "app_name": ""}}
    env.ari.channels = {"m-a": {"id": "m-a", "state": "Ring"}, customer: ringing}
    await env.engine.reconciler.reconcile()
    await wait_until(lambda: len(env.ari.named("subscribe")) == 2)
    assert env.ari.named("create_bridge") == []


# -- (f2) MadeLegs: the manager legs bridged rings ---------------------------------------------------


def _make_manager_leg(env: Env) -> asyncio.Future[None]:
    call = _call_in(env.config, CallState.RINGING_MANAGER)
    assert call.manager is not None
    return asyncio.ensure_future(
        env.engine.made.make("call-a-manager", call, call.manager, app="bridged", ring_timeout=30)
    )


async def test_a_made_leg_that_cannot_be_dialled_is_hung_up(env: Env) -> None:
    """A leg made in the application whose dial failed: the made channel, which would sit in Stasis
    ringing nobody, is hung up, and the error raised."""
    env.ari.errors["dial"] = AriError("dial", 500, "ARI dial failed: HTTP 500")
    with pytest.raises(AriError):
        await _make_manager_leg(env)
    assert env.ari.hung_up() == ["call-a-manager"]


async def test_a_made_leg_refused_a_dial_is_dialled_again_once_in_the_application(env: Env) -> None:
    """ARI refuses to dial a made channel before its StasisStart (409, met on the rig in 2 of 6 calls): the
    dial goes out at once, and after a 409 again once the StasisStart is seen. (Checked to fail without
    the second dial.)"""
    env.ari.events = None  # Asterisk is slow to put the channel in the application
    made = _make_manager_leg(env)
    await wait_until(lambda: env.ari.named("dial"))
    await asyncio.sleep(0.05)
    assert len(env.ari.named("dial")) == 1 and not made.done()  # refused, waiting
    env.ari.entered.add("call-a-manager")
    env.engine.made.entered("call-a-manager")
    await made
    assert len(env.ari.named("dial")) == 2 and env.ari.hung_up() == []
    assert env.engine.made.waiting == 0


async def test_a_made_leg_never_in_the_application_is_hung_up(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A made channel whose StasisStart never comes (the event stream in trouble) is not waited for long:
    AriUnavailable, and the leg is hung up."""
    monkeypatch.setattr("bridged.calls.legs.MADE_WITHIN", 0.2)
    env.ari.events = None  # Asterisk sends no StasisStart
    with pytest.raises(AriUnavailable):
        await _make_manager_leg(env)
    assert len(env.ari.named("dial")) == 1 and env.ari.hung_up() == ["call-a-manager"]
    assert env.engine.made.waiting == 0


async def test_prompt_to_a_vanished_manager_finishes_the_call(env: Env) -> None:
    env.ari.errors["originate_to_dialplan"] = AriUnavailable("originate", 0, "ARI originate failed")
    env.ari.errors["play"] = not_found("play")
    env.expect("call-a", "m-a")
    env.engine.on_event(stasis_start("m-a", ["order", "call-a"], state="Up"))
    row = await env.ended("call-a")
    assert row["outcome"] == "customer_unavailable"


async def test_not_connected_refuses_without_originate(env: Env) -> None:
    env.connected["up"] = False
    env.expect("call-a", "m-a")
    env.engine.on_event(stasis_start("m-a", ["order", "call-a"], state="Ring"))
    await wait_until(lambda: len(env.ari.named("play")) == 1)
    assert env.play_for("m-a")["media"] == [f"sound:{env.config.prompts.unavailable}"]
    assert env.ari.named("originate_to_dialplan") == []
    env.engine.on_event(hangup_request("m-a"))
    row = await env.ended("call-a")
    assert row["outcome"] == "failed"


async def test_failing_step_aborts_the_call(env: Env) -> None:
    # A step fails unexpectedly (a bug, not Asterisk being away) while the customer is dialled: the
    # call is aborted cleanly, both legs hung up, and the row still gets its end.
    env.ari.errors["originate_to_dialplan"] = RuntimeError("unexpected")
    env.expect("call-a", "m-a")
    env.engine.on_event(stasis_start("m-a", ["order", "call-a"], state="Ring"))
    row = await env.ended("call-a")
    assert row["outcome"] == "failed"
    [rung] = env.ari.named("originate_to_dialplan")
    assert set(env.ari.hung_up()) == {"m-a", rung["channel_id"]}
    assert row["customer_channel_id"] == rung["channel_id"]


async def test_the_database_failing_mid_call_does_not_cut_the_call(
    env: Env, fast_sleep: None, caplog: pytest.LogCaptureFixture
) -> None:
    # bridged's PostgreSQL goes away as the customer is dialled: the call goes on and is bridged; the
    # row's writes are kept and retried in their order once the database is back.
    down = True
    real_set_state, real_mark_bridged = env.store.calls.set_state, env.store.calls.mark_bridged

    async def set_state(call_id: str, state: str) -> None:
        if down:
            raise OSError("database gone")
        await real_set_state(call_id, state)

    async def mark_bridged(call_id: str, **kw: Any) -> None:
        if down:
            raise OSError("database gone")
        await real_mark_bridged(call_id, **kw)

    env.store.calls.set_state = set_state  # type: ignore[method-assign]
    env.store.calls.mark_bridged = mark_bridged  # type: ignore[method-assign]
    with caplog.at_level("INFO", logger="bridged.calls"):
        customer = await env.ringing_unpersisted("call-a", "m-a")
        env.engine.on_event(answered(customer))
        await wait_until(lambda: env.engine.calls["call-a"].state is CallState.BRIDGED)
        assert len(env.ari.named("add_channel")) == 1 and env.ari.hung_up() == []
        assert env.row("call-a")["state"] == "requested"  # nothing written yet
        down = False
        await wait_until(lambda: env.row("call-a")["state"] == "bridged", what="row caught up")
    assert env.row("call-a")["bridge_id"] and env.row("call-a")["answered_at"]
    assert any("row written on retry" in r.getMessage() for r in caplog.records)
    env.engine.on_event(hangup_request("m-a"))
    row = await env.ended("call-a")
    assert (row["outcome"], row["ended_by"]) == ("completed", "manager")


async def test_asterisk_timing_out_aborts_the_call_with_one_line(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    customer = await env.ringing("call-a", "m-a")
    env.ari.errors["answer"] = AriUnavailable(
        "answer", 0, "ARI answer failed: Asterisk unreachable (TimeoutError)"
    )
    with caplog.at_level("WARNING", logger="bridged.calls"):
        env.engine.on_event(answered(customer))
        row = await env.ended("call-a")
    assert row["outcome"] == "failed"
    assert {"m-a", customer} <= set(env.ari.hung_up())
    [record] = [r for r in caplog.records if "call-a" in r.getMessage() and r.levelname != "INFO"]
    assert record.levelname == "WARNING" and record.exc_info is None
    assert "Asterisk unreachable" in record.getMessage()


async def test_a_hangup_asterisk_did_not_answer_is_retried(
    env: Env, fast_sleep: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Under overload a hangup can time out; lost, it would leave the customer's line up for good.
    customer = await env.ringing("call-a", "m-a")
    env.engine.on_event(answered(customer))
    await wait_until(lambda: env.row("call-a")["state"] == "bridged")
    failures = iter(
        [AriUnavailable("hangup", 0, "ARI hangup failed: Asterisk unreachable (TimeoutError)")] * 2
    )
    env.ari.errors["hangup"] = lambda kw: next(failures, None) if kw["channel_id"] == customer else None
    env.ari.calls.clear()
    with caplog.at_level("INFO", logger="bridged.calls"):
        env.engine.on_event(hangup_request("m-a"))
        await env.ended("call-a")
        await wait_until(lambda: env.ari.hung_up().count(customer) == 3, what="two retries")
    assert any(m == "hangup" and kw["channel_id"] == customer for m, kw in env.ari.returned)
    assert any("done on retry 2" in r.getMessage() for r in caplog.records)


async def test_a_row_the_database_would_not_end_is_ended_on_retry_with_the_real_end_time(
    env: Env, fast_sleep: None, caplog: pytest.LogCaptureFixture
) -> None:
    # bridged's database away when the call ends: the legs go down at once, the row follows later
    # (else the call would show as going on, in the API and /ops/, until the next restart).
    customer = await env.bridged("call-a", "m-a")
    real = env.store.calls.finish_audited
    failures = [OSError("database gone"), OSError("database gone")]
    attempts: list[dict[str, Any]] = []

    async def flaky(call_id: str, **kw: Any) -> None:
        attempts.append(kw)
        if failures:
            raise failures.pop()
        await real(call_id, **kw)

    env.store.calls.finish_audited = flaky  # type: ignore[method-assign]
    with caplog.at_level("INFO", logger="bridged.calls"):
        env.engine.on_event(hangup_request("m-a"))
        await wait_until(lambda: customer in env.ari.hung_up(), what="customer leg hung up")
        row = await env.ended("call-a")
    assert (row["outcome"], row["ended_by"]) == ("completed", "manager")
    assert len(attempts) == 3
    assert attempts[0]["ended_at"] == attempts[2]["ended_at"] == row["ended_at"]  # when it really ended
    assert [a["outcome"] for a in env.store.audits if a["action"] == "call.end"] == ["completed"]
    assert any("row written on retry 2" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("back", [True, False], ids=["database-back", "database-still-away"])
async def test_stopping_gives_waiting_row_writes_a_last_try(
    env: Env, caplog: pytest.LogCaptureFixture, back: bool
) -> None:
    await env.bridged("call-a", "m-a")
    real = env.store.calls.finish_audited
    down = True

    async def finish_audited(call_id: str, **kw: Any) -> None:
        if down:
            raise OSError("database gone")
        await real(call_id, **kw)

    env.store.calls.finish_audited = finish_audited  # type: ignore[method-assign]
    env.engine.on_event(hangup_request("m-a"))
    await wait_until(lambda: "call-a" not in env.engine.calls, what="call over")
    assert env.row("call-a")["state"] == "bridged"
    down = not back
    with caplog.at_level("INFO", logger="bridged.calls"):
        # Before the first retry is due (1 s): only the last try can write the row.
        await asyncio.wait_for(env.engine.shutdown(), timeout=rows_module.LAST_ROW_WRITES_SECONDS + 1)
    # Behind the end waits the recording's state: stopped before Asterisk reported its end, unknown.
    if back:
        assert (env.row("call-a")["state"], env.row("call-a")["outcome"]) == ("ended", "completed")
        assert env.row("call-a")["recording_state"] == "unknown"
        assert any("rows brought up to date before stopping" in r.getMessage() for r in caplog.records)
    else:
        assert env.row("call-a")["state"] == "bridged"  # the next start's reconcile ends it
        assert any("2 writes to call rows not done" in r.getMessage() for r in caplog.records)


async def test_shutdown_does_not_wait_for_hangups_being_retried(env: Env) -> None:
    customer = await env.ringing("call-a", "m-a")
    env.engine.on_event(answered(customer))
    await wait_until(lambda: env.row("call-a")["state"] == "bridged")
    env.ari.errors["hangup"] = AriUnavailable(
        "hangup", 0, "ARI hangup failed: Asterisk unreachable (TimeoutError)"
    )
    env.engine.on_event(hangup_request("m-a"))
    await env.ended("call-a")
    await asyncio.wait_for(env.engine.shutdown(), timeout=1)


async def test_the_stray_sweep_hangs_up_a_channel_without_a_call_found_twice(env: Env) -> None:
    customer = await env.ringing("call-a", "m-a")
    env.ari.app_channel_ids = ["m-a", customer, "stray-1"]
    suspects = await env.engine.reconciler.sweep_strays(set())
    assert suspects == {"stray-1"} and env.ari.hung_up() == []
    env.ari.app_channel_ids = ["m-a", customer, "stray-1", "new-2"]
    suspects = await env.engine.reconciler.sweep_strays(suspects)
    assert env.ari.hung_up() == ["stray-1"]  # new-2 is only a suspect yet; the call's legs are owned
    assert suspects == {"new-2"}


async def test_a_transfer_request_is_declined_and_the_call_goes_on(env: Env) -> None:
    customer = await env.ringing("call-a", "m-a")
    [rung] = env.ari.named("originate_to_dialplan")
    shop = env.config.trunk.caller_id
    assert rung["variables"] == {
        "PJSIP_TRANSFER_HANDLING()": "ari-only",
        "CHANNEL(language)": "en",
        "CALLERID(all)": shop,
        "CONNECTEDLINE(all,i)": shop,
        "BRIDGED_LEG_APP": "bridged",
        "BRIDGED_CALL": "call-a",
    }
    env.engine.on_event(answered(customer))
    await wait_until(lambda: env.row("call-a")["state"] == "bridged")
    env.engine.on_event(
        {
            "type": "ChannelTransfer",
            "refer_to": {"requested_destination": {"destination": "sip:0049301234@pbx"}},
            "referred_by": {"source_channel": {"id": "m-a"}, "bridge": {"id": "call-a-bridge"}},
        }
    )
    await wait_until(lambda: env.ari.named("transfer_progress"))
    # Asterisk echoes the progress we reported as another ChannelTransfer, with a state: not a new REFER.
    env.engine.on_event(
        {
            "type": "ChannelTransfer",
            "state": "channel_declined",
            "referred_by": {"source_channel": {"id": "m-a"}},
        }
    )
    await settle()
    assert env.ari.named("transfer_progress") == [{"channel_id": "m-a", "states": "channel_declined"}]
    await wait_until(lambda: any(a["action"] == "call.transfer" for a in env.store.audits))
    [audit] = [a for a in env.store.audits if a["action"] == "call.transfer"]
    assert (audit["actor"], audit["outcome"], audit["call_id"]) == ("anna", "refused", "call-a")
    assert "0049301234" not in repr(env.store.audits)
    assert env.row("call-a")["state"] == "bridged" and env.ari.hung_up() == []


# -- (g) strays ---------------------------------------------------------------------------------------


@pytest.fixture
def fast_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    real = asyncio.sleep

    async def quick(delay: float, result: Any = None) -> Any:
        return await real(0, result)

    monkeypatch.setattr(legs_module.asyncio, "sleep", quick)


async def test_stasis_start_for_unknown_call_is_hung_up(env: Env, fast_sleep: None) -> None:
    env.engine.on_event(stasis_start("m-x", ["order", "no-such-call"], state="Ring"))
    await wait_until(lambda: "m-x" in env.ari.hung_up())
    assert env.ari.named("originate_to_dialplan") == []
    assert env.engine.calls == {}
    assert env.store.rows == {}


async def test_stasis_start_from_another_channel_is_refused(env: Env, fast_sleep: None) -> None:
    env.expect("call-a", "m-a")
    env.engine.on_event(stasis_start("m-intruder", ["order", "call-a"], state="Ring"))
    await wait_until(lambda: "m-intruder" in env.ari.hung_up())
    assert env.ari.named("originate_to_dialplan") == []
    assert "call-a" not in env.engine.calls


async def test_stasis_start_without_args_is_hung_up(env: Env) -> None:
    env.engine.on_event(stasis_start("m-y", []))
    env.engine.on_event(stasis_start("m-z", ["customer", "call-unknown"]))
    await wait_until(lambda: {"m-y", "m-z"} <= set(env.ari.hung_up()))
    assert env.ari.named("originate_to_dialplan") == []


async def test_pending_call_without_channel_id_accepts_any_channel(env: Env) -> None:
    env.expect("call-api", None)
    env.engine.on_event(stasis_start("m-api", ["order", "call-api"], state="Ring"))
    await wait_until(lambda: len(env.ari.named("originate_to_dialplan")) == 1)
    assert env.engine.calls["call-api"].manager_channel_id == "m-api"


# -- (h) reconcile after a reconnect -----------------------------------------------------------------


def _bridged_row(env: Env, call_id: str, answered: bool = True, state: str = "bridged") -> dict[str, Any]:
    return env.store.add_row(
        id=call_id,
        state=state,
        manager_channel_id=f"{call_id}-m",
        customer_channel_id=f"{call_id}-customer",
        bridge_id=f"{call_id}-bridge" if answered else None,
        answered_at=datetime.now(UTC) if answered else None,
        recording_name=f"bridged-{call_id}" if answered else None,
    )


async def test_reconcile_adopts_a_live_call(env: Env) -> None:
    _bridged_row(env, "call-r")
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("call-r-m", "call-r-customer")}
    env.ari.app_channel_ids = ["call-r-m", "call-r-customer", "stray-1"]
    await env.engine.reconciler.reconcile()

    assert env.ari.named("subscribe") == [
        {
            "app": "bridged",
            "event_sources": ["channel:call-r-m", "channel:call-r-customer", "bridge:call-r-bridge"],
        }
    ]
    call = env.engine.calls["call-r"]
    assert call.state is CallState.BRIDGED
    assert call.order is None and call.manager is not None and call.manager.id == "anna"
    assert env.ari.hung_up() == ["stray-1"]
    # The adopted call checks its legs once more, finds both, and waits.
    await wait_until(lambda: len(env.ari.named("get_channel")) == 2)
    await settle()
    assert env.ari.hung_up() == ["stray-1"]
    assert env.row("call-r")["state"] == "bridged"

    env.engine.on_event(hangup_request("call-r-customer"))
    row = await env.ended("call-r")
    assert "call-r-m" in env.ari.hung_up()
    assert {"bridge_id": "call-r-bridge"} in env.ari.named("destroy_bridge")
    assert row["outcome"] == "completed"
    assert row["ended_by"] == "customer"


@pytest.mark.parametrize("state", ["requested", "ringing_manager"])
async def test_reconcile_adopts_a_call_whose_ringing_state_never_landed(env: Env, state: str) -> None:
    # The daemon stopped right after originating the customer leg, before the row's state update
    # (sent along with the originate) landed: both legs are up, so the customer is being rung.
    _bridged_row(env, "call-r", answered=False, state=state)
    env.ari.channels = {
        "call-r-m": {"id": "call-r-m", "state": "Up"},
        "call-r-customer": {"id": "call-r-customer", "state": "Ringing"},
    }
    await env.engine.reconciler.reconcile()
    call = env.engine.calls["call-r"]
    assert call.state is CallState.RINGING_CUSTOMER
    await settle()
    assert env.ari.hung_up() == []
    assert env.row("call-r")["state"] != "ended"


async def test_reconcile_asks_asterisk_for_the_events_the_engine_uses_only(env: Env) -> None:
    await env.engine.reconciler.reconcile()
    [flt] = env.ari.named("allow_events")
    assert flt["app"] == "bridged"
    assert set(flt["event_types"]) >= {"StasisStart", "StasisEnd", "ChannelHangupRequest", "ChannelDestroyed"}
    assert "ChannelVarset" not in flt["event_types"]
    assert env.ari.methods()[0] == "allow_events"


async def test_reconcile_goes_on_when_the_event_filter_fails(env: Env) -> None:
    _bridged_row(env, "call-r")
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("call-r-m", "call-r-customer")}
    env.ari.errors["allow_events"] = AriError("filter_events", 500, "boom")
    await env.engine.reconciler.reconcile()
    assert env.engine.calls["call-r"].state is CallState.BRIDGED


async def test_reconcile_leg_gone_between_listing_and_subscription(env: Env) -> None:
    _bridged_row(env, "call-r")
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("call-r-m", "call-r-customer")}

    async def vanish(app: str, event_sources: list[str]) -> None:
        env.ari.calls.append(("subscribe", {"app": app, "event_sources": event_sources}))
        env.ari.channels.pop("call-r-customer")

    env.ari.subscribe = vanish  # type: ignore[method-assign]
    await env.engine.reconciler.reconcile()
    row = await env.ended("call-r")
    assert row["outcome"] == "completed"
    assert "call-r-m" in env.ari.hung_up()


async def test_reconcile_one_leg_gone(env: Env) -> None:
    _bridged_row(env, "call-r")
    env.ari.channels = {"call-r-m": {"id": "call-r-m", "state": "Up"}}
    await env.engine.reconciler.reconcile()
    row = env.row("call-r")
    assert row["state"] == "ended"
    assert row["outcome"] == "completed"
    assert row["ended_by"] == "unknown"
    assert env.ari.hung_up() == ["call-r-m"]
    assert env.ari.named("destroy_bridge") == [{"bridge_id": "call-r-bridge"}]
    assert env.ari.named("subscribe") == []
    assert "call-r" not in env.engine.calls
    assert env.store.audits[-1]["actor"] == "bridged"
    assert env.store.audits[-1]["call_id"] == "call-r"


@pytest.mark.parametrize(
    ("answered", "state", "outcome"),
    [(True, "bridged", "completed"), (False, "ringing_customer", "failed"), (False, "requested", "failed")],
)
async def test_reconcile_both_legs_gone(env: Env, answered: bool, state: str, outcome: str) -> None:
    _bridged_row(env, "call-r", answered=answered, state=state)
    env.store.add_row(id="call-done", state="ended", outcome="completed")
    await env.engine.reconciler.reconcile()
    row = env.row("call-r")
    assert row["state"] == "ended"
    assert row["outcome"] == outcome
    assert env.ari.hung_up() == []
    assert env.row("call-done")["outcome"] == "completed"
    assert env.engine.calls == {}


async def test_reconcile_a_phone_call_stopped_between_its_row_and_the_customer_leg(env: Env) -> None:
    """The daemon stopped after a phone call's row was written (in state ringing_customer, issue 19) and
    before the customer was dialled: the restart hangs the manager's channel up and ends the row."""
    _bridged_row(env, "call-r", answered=False, state="ringing_customer")
    env.ari.channels = {"call-r-m": {"id": "call-r-m", "state": "Ring"}}
    env.ari.app_channel_ids = ["call-r-m"]
    await env.engine.reconciler.reconcile()
    assert (env.row("call-r")["state"], env.row("call-r")["outcome"]) == ("ended", "failed")
    assert set(env.ari.hung_up()) == {"call-r-m"}
    assert env.ari.named("originate_to_dialplan") == [] and env.engine.calls == {}


async def test_reconcile_a_phone_call_stopped_before_its_row_was_written(env: Env) -> None:
    """The daemon stopped after its FastAGI answer and before the call's row was written: the manager's
    channel entered Stasis with no call; the restart's reconcile hangs it up (nobody was dialled)."""
    env.ari.channels = {"m-x": {"id": "m-x", "state": "Ring"}}
    env.ari.app_channel_ids = ["m-x"]
    await env.engine.reconciler.reconcile()
    assert env.ari.hung_up() == ["m-x"]
    assert env.ari.named("originate_to_dialplan") == [] and env.store.rows == {}


async def test_reconcile_row_of_a_removed_manager_is_finished(env: Env) -> None:
    env.store.add_row(
        id="call-r",
        manager_id="carol",
        state="bridged",
        manager_channel_id="call-r-m",
        customer_channel_id="call-r-customer",
        answered_at=datetime.now(UTC),
    )
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("call-r-m", "call-r-customer")}
    await env.engine.reconciler.reconcile()
    assert env.row("call-r")["state"] == "ended"
    assert sorted(env.ari.hung_up()) == ["call-r-customer", "call-r-m"]


async def test_reconcile_live_call_whose_customer_left(env: Env) -> None:
    customer = await env.bridged("call-a", "m-a")
    env.ari.channels = {"m-a": {"id": "m-a", "state": "Up"}}
    env.ari.app_channel_ids = ["m-a"]
    await env.engine.reconciler.reconcile()
    row = await env.ended("call-a")
    assert row["outcome"] == "completed"
    assert row["ended_by"] == "customer"
    assert "m-a" in env.ari.hung_up()
    assert customer not in env.ari.app_channel_ids


async def test_reconcile_live_call_customer_answered_meanwhile(env: Env) -> None:
    """The customer answered and entered the application while the websocket was down (its StasisStart
    lost): found Up in Stasis, it is bridged."""
    customer = await env.ringing("call-a", "m-a")
    in_app = {
        "id": customer,
        "state": "Up",
        "dialplan": {"app_name": "Stasis", "app_data": "bridged,customer"},
    }
    env.ari.channels = {"m-a": {"id": "m-a", "state": "Ring"}, customer: in_app}
    env.ari.app_channel_ids = ["m-a", customer]
    await env.engine.reconciler.reconcile()
    await wait_until(lambda: env.row("call-a")["state"] == "bridged")
    assert env.ari.hung_up() == []


async def test_reconcile_a_customer_answered_but_not_yet_in_the_application_waits_for_it(env: Env) -> None:
    """The customer answered while the websocket was down and waits in [bridged-customer] between two tries
    of Stasis(): Up, but not bridgeable yet (a bridge needs the leg in the application). Its StasisStart
    is the answer. (Checked to fail without it: the call tried the bridge at once.)"""
    customer = await env.ringing("call-a", "m-a")
    waiting = {"id": customer, "state": "Up", "dialplan": {"context": "bridged-customer", "app_name": "Wait"}}
    env.ari.channels = {"m-a": {"id": "m-a", "state": "Ring"}, customer: waiting}
    env.ari.app_channel_ids = ["m-a"]
    await env.engine.reconciler.reconcile()
    await settle()
    assert env.ari.named("create_bridge") == [] and env.ari.hung_up() == []
    env.engine.on_event(answered(customer))
    await wait_until(lambda: env.row("call-a")["state"] == "bridged")


async def test_reconcile_adopts_a_call_whose_customer_rings_from_the_dialplan(env: Env) -> None:
    """A restart while the customer rang: the leg is in no application (originated into the dialplan),
    the adopted call subscribes to it, and its StasisStart, once answered, is the answer."""
    _bridged_row(env, "call-r", answered=False, state="ringing_customer")
    ringing = {"id": "call-r-customer", "state": "Ring", "dialplan": {"context": "bridged-customer"}}
    env.ari.channels = {"call-r-m": {"id": "call-r-m", "state": "Ring"}, "call-r-customer": ringing}
    env.ari.app_channel_ids = ["call-r-m"]
    await env.engine.reconciler.reconcile()
    assert env.ari.named("subscribe") == [
        {"app": "bridged", "event_sources": ["channel:call-r-m", "channel:call-r-customer"]}
    ]
    assert env.ari.hung_up() == [] and not env.engine.calls["call-r"].customer_in_app
    env.engine.on_event(dial_answered("call-r-customer"))  # picked up, not in the application yet
    await settle()
    assert env.ari.named("create_bridge") == []
    env.engine.on_event(answered("call-r-customer"))
    await wait_until(lambda: env.row("call-r")["state"] == "bridged")


async def test_reconcile_hangs_up_a_customer_leg_ringing_for_this_application_without_a_call(
    env: Env,
) -> None:
    """A daemon killed before its call's row was written leaves the customer's leg ringing from the
    dialplan, in no application (not among the application's channels): the reconcile finds it by its id
    and BRIDGED_LEG_APP and hangs it up; another daemon's leg (another application) is left alone.
    (Checked to fail without it: nothing was hung up.)"""
    for call_id, app in (("call-x", "bridged"), ("call-y", "bridged-other")):
        leg = f"{call_id}-customer"
        env.ari.channels[leg] = {"id": leg, "state": "Ring", "dialplan": {"context": "bridged-customer"}}
        env.ari.channel_variables[leg] = {"BRIDGED_LEG_APP": app, "BRIDGED_CALL": call_id}
    env.ari.channels["other"] = {"id": "other", "state": "Up"}  # not a customer leg: not asked about
    await env.engine.reconciler.reconcile()
    assert env.ari.hung_up() == ["call-x-customer"]
    assert [kw["channel_id"] for kw in env.ari.named("get_variable")] == [
        "call-x-customer",
        "call-y-customer",
    ]


# -- (i) the transition table ------------------------------------------------------------------------


def _call_in(config: Config, state: CallState) -> Call:
    return Call(
        id="t",
        manager=manager(config),
        order_id="1",
        direction="phone",
        order=None,
        state=state,
        label=make_label("1"),
        manager_channel_id="t-m",
        customer_channel_id="t-customer",
    )


def test_every_transition_outside_the_table_is_refused() -> None:
    config = make_config()
    engine = CallEngine(ConfigHolder(config), FakeAri(), FakeStore(), is_connected=lambda: True)  # type: ignore[arg-type]
    engine.ari.events = engine.on_event  # type: ignore[attr-defined]
    seen: list[CallState] = []
    engine.listeners.append(lambda call, state: seen.append(state))
    assert set(TRANSITIONS) == set(CallState)
    assert TRANSITIONS[CallState.ENDED] == frozenset()
    refused = allowed = 0
    for old in CallState:
        for new in CallState:
            call = _call_in(config, old)
            if new in TRANSITIONS[old]:
                engine.steps._transition(call, new)
                assert call.state is new and seen[-1] is new
                allowed += 1
            else:
                with pytest.raises(InvalidTransition):
                    engine.steps._transition(call, new)
                assert call.state is old
                refused += 1
    assert allowed == sum(len(v) for v in TRANSITIONS.values()) == len(seen)
    assert refused == len(CallState) ** 2 - allowed
    # Every live state can end.
    assert all(CallState.ENDED in TRANSITIONS[s] for s in CallState if s is not CallState.ENDED)


def test_nothing_but_the_transition_sets_a_calls_state() -> None:
    # Every state change goes through the table: one assignment to .state in the whole package.
    package = Path(bridged.__file__).parent
    found = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(r"\.state\s*=(?!=)", line)
    ]
    assert len(found) == 1 and found[0].startswith("calls/steps.py:"), found
    assert "call.state = new" in (package / "calls" / "steps.py").read_text(encoding="utf-8")


LIVE_STATES = [s for s in CallState if s is not CallState.ENDED]


def test_the_reaction_table_has_no_row_for_an_ended_call() -> None:
    assert all(state is not CallState.ENDED for state, _ in REACTIONS)
    assert {event for _, event in REACTIONS} <= set(Event)


@pytest.mark.parametrize("state", LIVE_STATES)
@pytest.mark.parametrize("event", [Event.MANAGER_GONE, Event.TERMINATE])
async def test_in_every_live_state_the_managers_leg_gone_or_an_end_request_ends_the_call(
    state: CallState, event: Event
) -> None:
    e = await _make_env(make_config())
    call = _call_in(e.config, state)
    call.started = asyncio.get_running_loop().create_future()  # an HTTP call's POST may wait on it
    await e.engine.react(call, event, {})
    assert call.state is CallState.ENDED
    assert e.store.audits == [] or e.store.audits[-1]["action"] == "call.end"
    await e.engine.shutdown()


@pytest.mark.parametrize("state", LIVE_STATES)
async def test_an_abort_in_any_live_state_ends_the_call_through_the_table(state: CallState) -> None:
    e = await _make_env(make_config())
    seen: list[CallState] = []
    e.engine.listeners.append(lambda call, new: seen.append(new))
    call = _call_in(e.config, state)
    await e.engine.steps.abort(call)
    assert call.state is CallState.ENDED and seen == [CallState.ENDED]
    assert call.outcome is Outcome.FAILED
    await e.engine.shutdown()


# -- (j) ordering and independence -------------------------------------------------------------------


async def test_events_in_order_while_ari_is_slow_and_other_calls_proceed(env: Env) -> None:
    ari = env.ari
    ari.delays["originate_to_dialplan"] = lambda kw: 0.2 if kw["channel_id"] == "call-a-customer" else 0

    env.expect("call-a", "m-a")
    env.expect("call-b", "m-b")
    env.engine.on_event(stasis_start("m-a", ["order", "call-a"], state="Ring"))
    await wait_until(lambda: len(ari.named("originate_to_dialplan")) == 1)
    # A's customer leg is being rung; its next events queue up behind it.
    env.engine.on_event(answered("call-a-customer"))
    env.engine.on_event(hangup_request("call-a-customer"))

    env.engine.on_event(stasis_start("m-b", ["order", "call-b"], state="Ring"))
    await wait_until(
        lambda: any(
            kw["channel_id"] == "call-b-customer" for m, kw in ari.returned if m == "originate_to_dialplan"
        )
    )
    a_returned = [
        kw for m, kw in ari.returned if m == "originate_to_dialplan" and kw["channel_id"] == "call-a-customer"
    ]
    assert a_returned == [], "call B should not wait for call A's slow originate"
    assert env.row("call-a")["state"] == "ringing_customer"
    assert ari.named("create_bridge") == []

    row = await env.ended("call-a")
    # Answered, bridged, then hung up: processed in the order they arrived.
    assert row["outcome"] == "completed"
    assert row["ended_by"] == "customer"
    assert row["answered_at"] is not None
    a_methods = [
        m
        for m, kw in ari.calls
        if "call-a" in repr(kw) or kw.get("channel_id") == "m-a" or "m-a" in kw.get("channel_ids", [])
    ]
    first = a_methods.index("create_bridge")
    assert (
        a_methods.index("originate_to_dialplan")
        < a_methods.index("subscribe")
        < first
        < a_methods.index("add_channel")
        < a_methods.index("destroy_bridge")
    )
    assert env.row("call-b")["state"] == "ringing_customer"
    assert env.engine.calls["call-b"].state is CallState.RINGING_CUSTOMER


async def test_slow_hangup_of_one_call_does_not_block_another(env: Env) -> None:
    customer_a = await env.bridged("call-a", "m-a")
    env.ari.delays["hangup"] = lambda kw: 0.2 if kw["channel_id"] == "m-a" else 0
    env.engine.on_event(hangup_request(customer_a))
    await wait_until(lambda: "m-a" in env.ari.hung_up())
    customer_b = await env.bridged("call-b", "m-b")
    assert env.row("call-a")["state"] == "bridged"  # still tearing down
    env.engine.on_event(hangup_request(customer_b))
    await env.ended("call-a")
    await env.ended("call-b")


def _queued(call: Call) -> list[str]:
    """The types of the events put into the call's queue from now on (they still go in)."""
    queued: list[str] = []
    put = call.queue.put_nowait

    def spy(event: dict[str, Any]) -> None:
        queued.append(str(event.get("type")))
        put(event)

    call.queue.put_nowait = spy  # type: ignore[method-assign,assignment]
    return queued


async def test_events_that_mean_nothing_to_an_idle_call_are_read_at_once_and_never_queued(env: Env) -> None:
    """Most of a call's events change nothing (issue 19): a ringing leg's Dial, a caller id that is ours,
    its legs' events once it has ended. Those that come while its worker is idle are read as they come
    (what they tell is kept: the last Dial's status decides an unanswered outcome) and never wake it;
    the others are queued in their order, the first one read already."""
    customer = await env.ringing("call-a", "m-a")
    call = env.engine.calls["call-a"]
    await wait_until(lambda: not call.handling and call.queue.empty(), what="the worker idle")
    queued = _queued(call)
    env.engine.on_event(dial(customer, ""))
    env.engine.on_event(dial(customer, "RINGING"))
    env.engine.on_event(caller_id_changed(customer, caller_number(env.config.trunk.caller_id), "Shop"))
    env.engine.on_event(dial(customer, "BUSY"))
    assert queued == [] and call.dialstatus == "BUSY"
    # Asterisk hangs the busy leg up: the request (read at once, and queued), then its end (behind it).
    env.engine.on_event(hangup_request(customer, cause=17, state="Ringing"))
    env.engine.on_event(channel_destroyed(customer, cause=17))
    assert customer in call.gone
    await wait_until(lambda: len(env.ari.named("play")) == 1)
    env.engine.on_event(hangup_request("m-a"))
    row = await env.ended("call-a")
    assert (row["outcome"], row["hangup_cause"]) == ("customer_busy", 17)
    env.engine.on_event(stasis_end("m-a"))
    env.engine.on_event(channel_destroyed(customer, cause=17))
    assert queued == ["ChannelHangupRequest", "ChannelDestroyed", "ChannelHangupRequest"]


async def test_an_event_an_idle_call_cannot_read_ends_it_as_in_its_worker(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    customer = await env.ringing("call-a", "m-a")
    call = env.engine.calls["call-a"]
    await wait_until(lambda: not call.handling and call.queue.empty(), what="the worker idle")
    with caplog.at_level("DEBUG", logger="bridged"):
        env.engine.on_event({"type": ["not", "a", "type", NUMBER_TAIL], "channel": {"id": customer}})
        row = await env.ended("call-a")
    assert row["outcome"] == "failed"
    assert customer in env.ari.hung_up() and "m-a" in env.ari.hung_up()
    # The worker's line names the type as it reads it: a type that is no string is not logged.
    assert "call call-a: failed handling None in state" in caplog.text
    assert NUMBER_TAIL not in caplog.text


def test_prompts_are_media_lists() -> None:
    assert legs_module.media("a&b&&c") == ["sound:a", "sound:b", "sound:c"]


async def test_label_of_an_adopted_call_has_no_customer_name(env: Env) -> None:
    # The row keeps the order id only: an adopted call's label is the order alone, built by the
    # engine's one labeller (what a ChannelCallerId restore then puts on the customer leg).
    _bridged_row(env, "call-r")
    env.store.rows["call-r"]["order_id"] = "42"
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("call-r-m", "call-r-customer")}
    await env.engine.reconciler.reconcile()
    call = env.engine.calls["call-r"]
    assert call.label.text == "Order 42"
    assert call.label.caller_id == '"Order 42" <*7742>'
    assert env.engine.labeller.label("42", 'Ivan "the" Petrov').caller_id == '"Order 42 Ivan P." <*7742>'


async def test_pending_call_whose_manager_never_reaches_stasis_is_closed(env: Env) -> None:
    env.engine.PENDING_TTL = 0.05
    env.expect("call-x", "m-x")
    row = await env.ended("call-x")
    assert (row["outcome"], row["ended_by"]) == ("manager_abandoned", "manager")
    # A late StasisStart for it is refused: nothing is originated.
    env.engine.on_event(stasis_start("m-x", ["order", "call-x"], state="Ring"))
    await wait_until(lambda: "m-x" in env.ari.hung_up() or env.ari.named("answer"), what="refusal")
    assert not env.ari.named("originate_to_dialplan")


async def test_reconcile_adopts_only_this_apps_calls(env: Env) -> None:
    env.store.add_row(
        id="mine",
        manager_id="anna",
        manager_channel_id="m1",
        customer_channel_id="c1",
        state="bridged",
        bridge_id="b1",
    )
    env.store.add_row(
        id="theirs", manager_id="anna", state="bridged", manager_channel_id="m2", ari_app="another-app"
    )
    env.ari.channels = {
        "m1": {"id": "m1", "state": "Up"},
        "c1": {"id": "c1", "state": "Up"},
        "m2": {"id": "m2", "state": "Up"},
    }
    await env.engine.reconciler.reconcile()
    assert "mine" in env.engine.calls
    assert "theirs" not in env.engine.calls
    assert "m2" not in env.ari.hung_up()


async def test_manager_already_up_hears_a_ringback_tone_and_no_label_request(env: Env) -> None:
    # Asterisk runs ARI commands on a channel only after its current playback, and the ringback tone
    # never ends by itself: the label comes with the FastAGI reply, nothing is set after the tone.
    await env.ringing("call-t", "m-t", state="Up")
    assert [kw["media"] for kw in env.ari.named("play")] == ["tone:ring"]
    assert not [kw for kw in env.ari.named("set_variable") if kw["channel_id"] == "m-t"]


async def test_an_adopted_call_whose_bridge_the_dead_daemon_had_made_is_bridged_in_it(env: Env) -> None:
    # The daemon died between creating the call's bridge and joining the legs (found on the rig: SIGKILL
    # under a stream of calls): the adopter's create_bridge answers 409, and the call goes on in it.
    _bridged_row(env, "call-r", answered=False, state="ringing_customer")
    in_app = {"app_name": "Stasis", "app_data": "bridged"}
    env.ari.channels = {
        c: {"id": c, "state": "Up", "dialplan": in_app} for c in ("call-r-m", "call-r-customer")
    }
    env.ari.errors["create_bridge"] = AriConflict("create_bridge", 409, "Bridge with this ID already exists")
    await env.engine.reconciler.reconcile()
    await wait_until(lambda: env.row("call-r")["state"] == "bridged")
    assert env.ari.named("add_channel")[0]["bridge_id"] == "call-r-bridge"
    assert env.row("call-r")["bridge_id"] == "call-r-bridge"
