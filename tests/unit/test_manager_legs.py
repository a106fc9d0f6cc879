"""The HTTP path's manager leg, made in the application and dialled as the customer's is: its answer (a
Dial event, or an older release's originated leg entering answered), how it ends unanswered, and a call
adopted while it rang (its daemon died): resumed, its order looked up again once the manager answers.
Over the real service and engine, a fake ARI, store and shop directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from bridged.calls.model import Call, CallState
from bridged.outcomes import Refusal
from bridged.service import CallService
from tests.unit.fakes import (
    NUMBER,
    NUMBER_TAIL,
    answered,
    channel_destroyed,
    hangup_request,
    playback_finished,
    settle,
    stasis_end,
    stasis_start,
    wait_until,
)
from tests.unit.test_service import Env, _env

LABEL = '"Order 123 Ivan P." <*77123>'


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = _env()
    yield e
    await e.engine.shutdown()
    for method, kwargs in e.ari.calls:
        if method == "originate_to_dialplan":
            assert NUMBER_TAIL not in repr({k: v for k, v in kwargs.items() if k != "endpoint"})
            continue  # the customer's leg: the number is its endpoint, and nowhere else
        assert NUMBER_TAIL not in repr(kwargs), (method, kwargs)
    for row in e.store.rows.values():
        assert NUMBER_TAIL not in repr(row), row


async def _ringing_manager(env: Env) -> Call:
    call = await env.service.place_from_api("shop-1", "anna", "123")
    assert isinstance(call, Call)
    return call


def _customer_made(env: Env, call_id: str) -> list[dict[str, Any]]:
    """The customer's leg rung (originated into [bridged-customer] for the call)."""
    rung = env.ari.named("originate_to_dialplan")
    return [kw for kw in rung if kw["variables"].get("BRIDGED_CALL") == call_id]


async def test_the_manager_leg_is_made_and_dialled_and_the_customer_is_rung_on_its_dial_answer(
    env: Env,
) -> None:
    """Checked to fail without the change: the manager's leg was originated (no create, no dial)."""
    call = await _ringing_manager(env)
    ari = env.ari
    leg = f"{call.id}-manager"
    [made] = ari.named("create_channel")
    assert (made["channel_id"], made["endpoint"], made["app"], made["originator"]) == (
        leg,
        "PJSIP/anna",
        "bridged",
        None,
    )
    assert made["app_args"] == f"manager,{call.id}"
    # The label is the leg's identity (create has no callerId), with the interception; every leg's
    # variables stay: transfers handed to bridged, the shop's language.
    assert made["variables"] == {
        "CHANNEL(language)": "en",
        "PJSIP_TRANSFER_HANDLING()": "ari-only",
        "CALLERID(all)": LABEL,
        "CONNECTEDLINE(all,i)": LABEL,
        "BRIDGED_LABEL": LABEL,
        "CONNECTED_LINE_SEND_SUB": "bridged-label,s,1",
    }
    assert ari.named("dial") == [{"channel_id": leg, "timeout": env.config.api.manager_ring_timeout}]
    # Its StasisStart (state Down, as it was made: FakeAri sent it) is not an answer.
    await settle()
    assert call.state is CallState.RINGING_MANAGER and _customer_made(env, call.id) == []
    assert env.store.rows[call.id]["state"] == "ringing_manager"

    env.engine.on_event(answered(leg))
    await wait_until(lambda: len(_customer_made(env, call.id)) == 1, what="the customer rung")
    [customer] = _customer_made(env, call.id)
    assert customer["originator"] == leg and customer["variables"]["BRIDGED_LEG_APP"] == "bridged"
    assert call.state is CallState.RINGING_CUSTOMER and call.manager_up
    # The manager, up, hears that the customer is being rung; nobody answers their channel again.
    await wait_until(lambda: any(kw["media"] == "tone:ring" for kw in ari.named("play")))
    assert {"channel_id": leg} not in ari.named("answer")


async def test_a_manager_leg_an_older_release_originated_entering_answered_rings_the_customer(
    env: Env,
) -> None:
    """A call placed by a bridged that still originated manager legs, adopted by this one: the leg enters
    Stasis as it is answered (StasisStart, state Up), which is the manager's answer."""
    call = await _ringing_manager(env)
    env.engine.on_event(stasis_start(f"{call.id}-manager", ["manager", call.id], state="Up"))
    await wait_until(lambda: len(_customer_made(env, call.id)) == 1, what="the customer made")
    assert call.state is CallState.RINGING_CUSTOMER


@pytest.mark.parametrize(
    ("requested", "soft", "destroyed", "outcome"),
    [
        # rang out: the dial's timeout (measured: 32, then 19), a soft request (32: AST_SOFTHANGUP_EXPLICIT)
        (32, True, 19, "manager_no_answer"),
        (17, False, 17, "manager_no_answer"),  # busy (486)
        (21, False, 21, "manager_no_answer"),  # declined (603)
        (38, False, 38, "manager_unavailable"),  # the network
    ],
)
async def test_a_manager_leg_ending_unanswered_ends_the_call_by_its_destroyed_cause(
    env: Env, requested: int, soft: bool, destroyed: int, outcome: str
) -> None:
    """A made leg is asked to hang up first (softly when it rang out), then destroyed with the cause that
    says why. Checked to fail without the change for the rang-out case (manager_unavailable)."""
    call = await _ringing_manager(env)
    leg = f"{call.id}-manager"
    for event in (
        hangup_request(leg, cause=requested, state="Ringing", soft=soft),
        stasis_end(leg, state="Ringing"),
        channel_destroyed(leg, cause=destroyed),
    ):
        env.engine.on_event(event)
    await wait_until(lambda: env.store.rows[call.id]["state"] == "ended", what="the call ended")
    row = env.store.rows[call.id]
    assert (row["outcome"], row["ended_by"], row["hangup_cause"]) == (outcome, "manager", destroyed)
    assert _customer_made(env, call.id) == []


@pytest.mark.parametrize(
    "destroyed",
    [
        16,  # measured: ``channel request hangup``, or another program's DELETE, while the phone rang
        17,  # another program's DELETE with reason=busy: a soft request all the same, not the phone's 486
        0,  # "Unknown": no Q.850 cause
    ],
)
async def test_a_manager_leg_cut_off_while_it_rings_cancels_the_call_by_asterisk(
    env: Env, destroyed: int
) -> None:
    """Someone other than the phone or bridged hangs up the manager's ringing leg: the same soft request
    as the dial's timeout (32), but the leg is destroyed with a cause other than the timeout's 19. The
    call is cancelled at once, by ``asterisk``, with no cause; the customer is never rung. Checked to fail
    before the change: ``manager_no_answer`` (``manager_unavailable`` for 0), by ``manager``, with
    the destroyed leg's cause."""
    call = await _ringing_manager(env)
    leg = f"{call.id}-manager"
    for event in (
        hangup_request(leg, cause=32, state="Ringing", soft=True),
        stasis_end(leg, state="Ringing"),
        channel_destroyed(leg, cause=destroyed),
    ):
        env.engine.on_event(event)
    await wait_until(lambda: env.store.rows[call.id]["state"] == "ended", what="the call ended")
    row = env.store.rows[call.id]
    assert (row["outcome"], row["ended_by"], row["hangup_cause"]) == ("cancelled", "asterisk", None)
    assert _customer_made(env, call.id) == [] and env.ari.named("play") == []
    # A leg Asterisk destroyed is not hung up again.
    assert leg not in env.ari.hung_up()


# -- a call adopted while its manager's phone rang ---------------------------------------------------------


def _ringing_row(env: Env, call_id: str, *, app: str = "dead", manager_state: str = "Ringing") -> str:
    """The row of an HTTP call whose daemon (of application ``app``) died while its manager's phone rang,
    and that leg in Asterisk, in the dead daemon's application."""
    leg = f"{call_id}-manager"
    env.store.add_row(
        id=call_id,
        ari_app=app,
        direction="api",
        state="ringing_manager",
        manager_channel_id=leg,
        customer_channel_id=f"{call_id}-customer",
    )
    dialplan = {"context": "", "exten": "", "priority": 1, "app_name": "Stasis", "app_data": f"{app},manager"}
    env.ari.channels = {leg: {"id": leg, "state": manager_state, "dialplan": dialplan}}
    return leg


async def test_a_call_adopted_while_its_manager_rang_rings_the_customer_once_they_answer(env: Env) -> None:
    """Checked to fail without the change: the adopter ended such a call (failed) and hung the manager up."""
    leg = _ringing_row(env, "c1")
    await env.engine.reconciler.reconcile("dead")
    call = env.engine.calls["c1"]
    assert (call.state, call.app, call.order) == (CallState.RINGING_MANAGER, "dead", None)
    assert env.ari.named("subscribe") == [{"app": "dead", "event_sources": [f"channel:{leg}"]}]
    await settle()
    assert env.ari.hung_up() == [] and env.store.rows["c1"]["state"] == "ringing_manager"

    env.engine.on_event(answered(leg))
    await wait_until(lambda: len(_customer_made(env, "c1")) == 1, what="the customer made")
    [customer] = _customer_made(env, "c1")
    # The number was kept nowhere: the order is looked up again, and the leg rung for the application
    # the call is in (the dead daemon's, which it finds there when it is back).
    assert env.directory.lookups == ["123"]
    assert customer["endpoint"] == f"PJSIP/{NUMBER}@carrier"
    assert (customer["variables"]["BRIDGED_LEG_APP"], customer["originator"]) == ("dead", leg)
    assert env.ari.named("subscribe")[-1] == {"app": "dead", "event_sources": ["channel:c1-customer"]}
    assert call.label.caller_id == LABEL  # the customer's name is back in the label
    await wait_until(lambda: env.store.rows["c1"]["state"] == "ringing_customer")

    env.engine.on_event(answered("c1-customer"))
    await wait_until(lambda: env.store.rows["c1"]["state"] == "bridged", what="bridged")


async def test_a_manager_who_answered_while_no_daemon_listened_is_put_through_on_adoption(env: Env) -> None:
    """The Dial event of the answer was lost with the dead daemon's websocket: the leg found up is the
    answer."""
    _ringing_row(env, "c2", manager_state="Up")
    await env.engine.reconciler.reconcile("dead")
    await wait_until(lambda: len(_customer_made(env, "c2")) == 1, what="the customer made")
    assert env.engine.calls["c2"].state is CallState.RINGING_CUSTOMER


async def test_a_call_restarted_while_its_manager_rang_is_resumed_in_its_own_application(env: Env) -> None:
    leg = _ringing_row(env, "c3", app="bridged")
    await env.engine.reconciler.reconcile()
    assert env.engine.calls["c3"].app == ""
    env.engine.on_event(answered(leg))
    await wait_until(lambda: len(_customer_made(env, "c3")) == 1, what="the customer made")
    assert _customer_made(env, "c3")[0]["variables"]["BRIDGED_LEG_APP"] == "bridged"


@pytest.mark.parametrize(
    ("why", "prompt"),
    [
        ("order gone", "unknown_order"),
        ("no valid number", "invalid_phone"),
        ("another manager's", "denied"),
        ("lookup failed", "lookup_failed"),
    ],
)
async def test_an_adopted_call_whose_order_cannot_be_called_any_more_tells_the_manager_why(
    env: Env, why: str, prompt: str
) -> None:
    """The manager has picked up: they hear what a new call to the order would be refused with, and the
    call ends with that refusal, as a new call's row would (the customer was never rung: not
    customer_unavailable, which it ended with before the change)."""
    order = env.directory.orders["123"]
    if why == "order gone":
        del env.directory.orders["123"]
    elif why == "no valid number":
        env.directory.orders["123"] = replace(order, phone=None)
    elif why == "another manager's":
        env.directory.orders["123"] = replace(order, manager_id="boris")
    else:
        env.directory.fail = True
    leg = _ringing_row(env, "c4")
    await env.engine.reconciler.reconcile("dead")
    env.engine.on_event(answered(leg))
    await wait_until(lambda: env.store.rows["c4"]["state"] == "ending", what="the prompt")
    assert _customer_made(env, "c4") == []
    [play] = env.ari.named("play")
    heard = getattr(env.config.prompts, prompt)
    assert heard != env.config.prompts.customer_unavailable
    assert play["channel_id"] == leg and play["media"] == [f"sound:{s}" for s in heard.split("&")]
    # The prompt's name is the refusal's id.
    assert env.engine.calls["c4"].outcome is Refusal(prompt)
    env.engine.on_event(playback_finished(play["playback_id"], leg))
    await wait_until(lambda: leg in env.ari.hung_up(), what="the manager hung up")
    env.engine.on_event(channel_destroyed(leg, cause=16))
    await wait_until(lambda: env.store.rows["c4"]["state"] == "ended", what="the call ended")
    row = env.store.rows["c4"]
    assert (row["outcome"], row["ended_by"], row["hangup_cause"]) == (prompt, "bridged", None)


async def test_an_adopted_call_to_a_canary_order_dials_nobody(env: Env) -> None:
    from bridged.canaries import Canary

    canary = Canary(id="canary-anna", manager_id="anna", team=None, order_id="123", last_digits="21")
    env.service.canaries.of_order = lambda order, orders, secret: canary  # type: ignore[method-assign]
    leg = _ringing_row(env, "c5")
    await env.engine.reconciler.reconcile("dead")
    env.engine.on_event(answered(leg))
    await wait_until(lambda: env.store.rows["c5"]["state"] == "ringing_customer")
    await settle()
    assert _customer_made(env, "c5") == []


async def test_an_adopted_call_whose_manager_leg_is_gone_is_ended(env: Env) -> None:
    _ringing_row(env, "c6")
    env.ari.channels = {}
    await env.engine.reconciler.reconcile("dead")
    assert "c6" not in env.engine.calls
    assert (env.store.rows["c6"]["state"], env.store.rows["c6"]["outcome"]) == ("ended", "failed")


async def test_the_order_again_is_looked_up_only_for_the_calls_manager(env: Env) -> None:
    """CallService.order_again, alone: the order's number as the shop has it now, under the policy."""
    service: CallService = env.service
    call = Call(
        id="c7",
        manager=None,
        order_id="123",
        direction="api",
        order=None,
        label=env.engine.labeller.anonymous(),
    )
    # No manager (removed from the config since): nothing to check the order against.
    assert await service.order_again(call) is Refusal.UNKNOWN_MANAGER
    call.manager = env.config.manager_by_id("anna")
    found = await service.order_again(call)
    assert not isinstance(found, Refusal) and found[0].phone is not None and found[1] is False
    call.manager = env.config.manager_by_id("boris")  # not the order's manager
    assert await service.order_again(call) is Refusal.DENIED
    call.manager, call.order_id = env.config.manager_by_id("anna"), None
    assert await service.order_again(call) is Refusal.UNKNOWN_ORDER
