"""Inbound calls through the engine and the service, driven by Asterisk-shaped events against a fake ARI,
a fake store and a fake shop directory: identification, the ring plan, the answer, the missed call.

Every test also checks, on teardown, that the caller's number reached nothing: no ARI request (not even a
dial string: bridged never dials a customer on an inbound call), no row, no audit row, no sticky row.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridged.ari import AriError
from bridged.callers import identify, read_stasis_start
from bridged.calls.engine import INBOUND_REACTIONS, REACTIONS, CallEngine
from bridged.calls.model import Call, CallState, Event, Ringing
from bridged.config import Config, ConfigHolder, InboundConfig, Manager
from bridged.orders import CallerOrder, LookupFailed, Order
from bridged.redact import PhoneNumber, digits
from bridged.routing import route
from bridged.service import CallService
from bridged.store.base import DatabaseUnavailable
from bridged.store.callers import Sticky
from tests.unit.fakes import (
    FakeAri,
    FakeStore,
    answered,
    caller_id_changed,
    channel_destroyed,
    hangup_request,
    make_config,
    playback_finished,
    settle,
    stasis_start,
    wait_until,
)

CALLER = "+79163217654"
CALLER_TAIL = digits(CALLER)[-7:]
DID = "+15550100"
SECRET = "k" * 40
MANAGERS = (
    Manager("anna", "Anna", "anna", "north"),
    Manager("boris", "Boris", "boris", "north"),
    Manager("carol", "Carol", "carol", "south"),
    Manager("dave", "Dave", "dave", "south"),
)
LABEL = '"Order 123 Ivan P." <*77123>'


_BASE = make_config(managers=MANAGERS)


def inbound_config(**inbound: Any) -> Config:
    base = make_config()
    settings = {"numbers": (DID,), "fallback": ("carol",), "secret": SECRET, **inbound}
    return replace(
        base,
        managers=MANAGERS,
        inbound=InboundConfig(**settings),
        orders=replace(base.orders, default_region="RU", reverse_query="SELECT ... $1"),
    )


class FakeDirectory:
    """Mirrors OrderDirectory.reverse_lookup (the shop's orders by the caller's number in E.164) and
    lookup (by order id: what an adopting daemon asks for the caller's name)."""

    def __init__(self) -> None:
        self.orders: dict[str, CallerOrder] = {CALLER: CallerOrder("123", "Ivan Petrov", "anna")}
        self.by_id: dict[str, Order] = {"123": Order("123", PhoneNumber(CALLER), "Ivan Petrov", "anna")}
        self.fail = False
        self.asked: list[str] = []

    async def reverse_lookup(self, number: PhoneNumber) -> CallerOrder | None:
        self.asked.append(number.dialable())
        if self.fail:
            raise LookupFailed("ConnectionRefusedError")
        return self.orders.get(number.dialable())

    async def lookup(self, order_id: str) -> Order | None:
        self.asked.append(f"order {order_id}")
        if self.fail:
            raise LookupFailed("ConnectionRefusedError")
        return self.by_id.get(order_id)


@dataclass
class Env:
    config: Config
    ari: FakeAri
    store: FakeStore
    directory: FakeDirectory
    engine: CallEngine
    service: CallService
    accepting: dict[str, bool]
    published: list[tuple[str, CallState, str | None]]

    async def call_in(
        self,
        channel: str,
        number: str = CALLER,
        *,
        presentation: str = "allowed_not_screened",
        did: str = DID,
        redirected: bool = False,
    ) -> Call:
        """The carrier's call reaches [bridged-inbound]'s Stasis(): returns the call once it rings a
        manager or tells the caller why not."""
        event = stasis_start(channel, ["inbound", presentation], state="Ring", number=number)
        event["channel"]["dialplan"] = {"context": "bridged-inbound", "exten": did, "priority": 5}
        event["channel"]["caller"] = {"name": number, "number": number}
        if redirected:
            event["channel"]["caller_rdnis"] = number
        self.engine.on_event(event)
        await wait_until(lambda: self.call_of(channel) is not None, what="the inbound call")
        call = self.call_of(channel)
        assert call is not None
        await wait_until(lambda: call.state is not CallState.REQUESTED, what="the decision")
        await self.idle(call)
        return call

    async def idle(self, call: Call) -> None:
        """The call's worker has handled every event queued so far."""
        await wait_until(lambda: not call.handling and call.queue.empty(), what="the call's worker")

    def call_of(self, channel: str) -> Call | None:
        return next((c for c in self.engine.calls.values() if c.customer_channel_id == channel), None)

    def rung(self, call: Call) -> list[str]:
        """The managers' endpoints rung for the call, in order."""
        return [
            kw["endpoint"].removeprefix("PJSIP/")
            for kw in self.ari.named("create_channel")
            if kw["app_args"] == f"manager,{call.id}"
        ]

    def leg_of(self, call: Call, endpoint: str) -> str:
        """The leg rung for the manager (from what ARI answered: kept when a test clears the calls)."""
        return next(
            kw["channel_id"]
            for name, kw in self.ari.returned
            if name == "create_channel"
            if kw["app_args"] == f"manager,{call.id}" and kw["endpoint"] == f"PJSIP/{endpoint}"
        )

    async def answer(self, call: Call, endpoint: str) -> str:
        """The manager picks up: the leg made in the application and dialled is answered (Dial ANSWER)."""
        leg = self.leg_of(call, endpoint)
        self.engine.on_event(answered(leg))
        await wait_until(lambda: call.state is CallState.BRIDGED, what="bridged")
        await self.idle(call)
        return leg

    async def unanswered(self, call: Call, endpoint: str, cause: int) -> None:
        """The manager's phone refused (486: cause 17, 603: 21) or rang out (19)."""
        leg = self.leg_of(call, endpoint)
        before = len(self.ari.named("create_channel"))
        self.engine.on_event(hangup_request(leg, cause=cause, state="Ringing"))
        self.engine.on_event(channel_destroyed(leg, cause=cause))
        await wait_until(
            lambda: (
                len(self.ari.named("create_channel")) > before or call.state is not CallState.RINGING_MANAGER
            ),
            what="the next step",
        )
        await self.idle(call)

    def row(self, call: Call) -> dict[str, Any]:
        return self.store.rows[call.id]


def caller_id_of(env: Env, call: Call) -> str:
    """What the first manager's phone rung for the call is shown as the caller (the leg's identity)."""
    made = next(kw for kw in env.ari.named("create_channel") if kw["app_args"] == f"manager,{call.id}")
    variables = made["variables"]
    assert variables["CALLERID(all)"] == variables["CONNECTEDLINE(all,i)"] == variables["BRIDGED_LABEL"]
    return str(variables["CALLERID(all)"])


def _env(config: Config | None = None) -> Env:
    config = config or inbound_config()
    ari, store, directory = FakeAri(), FakeStore(), FakeDirectory()
    accepting = {"up": True}
    holder = ConfigHolder(config)
    engine = CallEngine(holder, ari, store, is_connected=lambda: True)  # type: ignore[arg-type]
    engine.ari.events = engine.on_event  # type: ignore[attr-defined]
    service = CallService(
        holder,
        store,  # type: ignore[arg-type]
        directory,  # type: ignore[arg-type]
        engine,
        accepting_calls=lambda: accepting["up"],
    )
    published: list[tuple[str, CallState, str | None]] = []
    engine.listeners.append(lambda c, s: published.append((c.id, s, c.outcome.value if c.outcome else None)))
    return Env(config, ari, store, directory, engine, service, accepting, published)


def assert_number_kept_nowhere(env: Env) -> None:
    for method, kwargs in env.ari.calls:
        assert CALLER_TAIL not in digits(repr(kwargs)), (method, kwargs)
    for row in env.store.rows.values():
        assert CALLER_TAIL not in digits(repr(row)), row
    for entry in env.store.audits:
        assert CALLER_TAIL not in digits(repr(entry)), entry
    for key, sticky in env.store.sticky.rows.items():
        assert CALLER_TAIL not in digits(key + repr(sticky))


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = _env()
    yield e
    await e.engine.shutdown()
    assert_number_kept_nowhere(e)


# -- a known customer ------------------------------------------------------------------------------------


async def test_a_known_customer_rings_their_orders_manager_showing_the_order_label(env: Env) -> None:
    call = await env.call_in("in-1")
    assert env.directory.asked == [CALLER]
    assert env.rung(call) == ["anna"]
    # The leg's StasisStart (state Down, as it was made: FakeAri sent it) is no answer.
    await settle()
    assert call.state is CallState.RINGING_MANAGER
    # The manager's leg is made in the application and dialled (a manager answering while the daemon is
    # dead is put through by the next one); none is originated.
    [made] = env.ari.named("create_channel")
    [dialled] = env.ari.named("dial")
    # The label as the leg's identity, with its interception; no originator: the caller's channel would
    # hand its redirecting party (the number) to the manager's INVITE.
    assert made["originator"] is None
    assert (dialled["channel_id"], dialled["timeout"]) == (
        made["channel_id"],
        env.config.inbound.ring_timeout,
    )
    assert made["variables"] == {
        "CHANNEL(language)": "en",  # the prompts a manager may hear, in the shop's language
        "CALLERID(all)": LABEL,
        "CONNECTEDLINE(all,i)": LABEL,
        "BRIDGED_LABEL": LABEL,
        "CONNECTED_LINE_SEND_SUB": "bridged-label,s,1",
        "PJSIP_TRANSFER_HANDLING()": "ari-only",
    }
    # The caller's channel carries the label from now on (caller id and ANI: the CDR ends without the
    # number); nothing is answered yet: the caller hears the dialplan's 180.
    assert sorted(env.ari.variables("in-1")) == [("CALLERID(all)", LABEL), ("CALLERID(ani-all)", LABEL)]
    assert env.ari.named("answer") == []
    row = env.row(call)
    assert (row["direction"], row["order_id"], row["manager_id"], row["state"]) == (
        "inbound",
        "123",
        "anna",
        "ringing_manager",
    )
    assert row["caller_ref"] == call.caller_ref and row["customer_channel_id"] == "in-1"
    [audit] = env.store.audits
    assert (audit["actor"], audit["action"], audit["outcome"]) == ("customer", "call.request", "accepted")
    assert audit["details"] == {"direction": "inbound", "identified_by": "their order"}

    env.ari.calls.clear()
    leg = await env.answer(call, "anna")
    methods = env.ari.methods()
    assert env.ari.named("answer") == [{"channel_id": "in-1"}]
    [add] = env.ari.named("add_channel")
    assert sorted(add["channel_ids"]) == sorted([leg, "in-1"]) and add["inhibit_connected_line_updates"]
    assert methods.index("answer") < methods.index("add_channel")
    assert env.ari.named("record_bridge")[0]["name"] == f"bridged-{call.id}"
    assert (env.row(call)["manager_channel_id"], env.row(call)["state"]) == (leg, "bridged")
    # Who talked to the caller is remembered under the caller's keyed hash, never the number.
    [(key, sticky)] = env.store.sticky.rows.items()
    assert key == identify(CALLER, "allowed", secret=SECRET, region="RU").key
    assert (sticky.manager_id, sticky.order_id) == ("anna", "123")

    env.engine.on_event(hangup_request("in-1", cause=16))
    await wait_until(lambda: env.row(call)["state"] == "ended")
    assert (env.row(call)["outcome"], env.row(call)["ended_by"]) == ("completed", "customer")
    assert leg in env.ari.hung_up()


async def test_the_callers_redirecting_party_is_emptied(env: Env) -> None:
    """A forwarded call (Diversion or History-Info) carries the number as the redirecting party."""
    await env.call_in("in-r", redirected=True)
    assert sorted(env.ari.variables("in-r")) == sorted(
        [
            ("REDIRECTING(from-all,i)", ""),
            ("REDIRECTING(to-all,i)", ""),
            ("REDIRECTING(count,i)", "0"),
            ("CALLERID(all)", LABEL),
            ("CALLERID(ani-all)", LABEL),
        ]
    )


async def test_the_carriers_identity_update_is_replaced_by_the_label_at_once(env: Env) -> None:
    call = await env.call_in("in-u")
    await env.answer(call, "anna")
    env.ari.calls.clear()
    env.engine.on_event(caller_id_changed("in-u", "*77123", "Order 123 Ivan P."))  # our own: left alone
    await settle()
    assert env.ari.calls == []
    env.engine.on_event(caller_id_changed("in-u", CALLER, "Customer"))
    await wait_until(lambda: len(env.ari.variables("in-u")) == 2)
    assert sorted(env.ari.variables("in-u")) == [("CALLERID(all)", LABEL), ("CALLERID(ani-all)", LABEL)]


# -- the ring plan ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "why"), [(17, "busy (486)"), (19, "rang out"), (21, "declined (603)"), (18, "no answer")]
)
async def test_a_manager_who_does_not_answer_passes_the_call_to_the_team_then_the_fallback(
    env: Env, cause: int, why: str
) -> None:
    call = await env.call_in("in-2")
    await env.unanswered(call, "anna", cause)
    assert env.rung(call) == ["anna", "boris"], why  # the rest of anna's team
    await env.unanswered(call, "boris", cause)
    assert env.rung(call) == ["anna", "boris", "carol"]  # the fallback
    await env.answer(call, "carol")
    assert env.row(call)["manager_id"] == "carol"
    assert call.ring is not None and call.ring.caller_key is not None
    assert env.store.sticky.rows[call.ring.caller_key].manager_id == "carol"


async def test_a_phone_that_cannot_be_rung_is_skipped_at_once(env: Env) -> None:
    """An unregistered phone: Asterisk answers the create 500 Allocation failed and rings nothing."""
    env.ari.errors["create_channel"] = lambda kw: (
        AriError("create_channel", 500, "ARI create_channel failed: HTTP 500: Allocation failed")
        if kw["endpoint"] in ("PJSIP/anna", "PJSIP/boris")
        else None
    )
    call = await env.call_in("in-3")
    assert env.rung(call) == ["anna", "boris", "carol"]
    assert list(call.ring.legs.values()) == [MANAGERS[2]]  # type: ignore[union-attr]
    assert env.engine.owned_channels() == {"in-3", env.leg_of(call, "carol")}


async def test_a_phone_cut_off_while_it_rings_passes_the_call_on_as_one_that_stopped_ringing(
    env: Env,
) -> None:
    """An administrator's ``channel request hangup`` on one manager's ringing phone (soft 32, then the leg
    destroyed with 16: measured on an HTTP call's made leg): that phone stops, the caller still waits, and
    the call goes on to the next managers, as after a decline. Ending the call would drop a customer who
    is still on the line; whoever means to end it hangs up the caller's channel (``missed``, by
    ``asterisk``). This pins what was so before (no change)."""
    call = await env.call_in("in-cut")
    leg = env.leg_of(call, "anna")
    env.engine.on_event(hangup_request(leg, cause=32, state="Ringing", soft=True))
    env.engine.on_event(channel_destroyed(leg, cause=16, state="Ringing"))
    await wait_until(lambda: env.rung(call) == ["anna", "boris"], what="the next manager rung")
    await env.idle(call)
    assert call.state is CallState.RINGING_MANAGER and env.row(call)["state"] == "ringing_manager"
    assert "in-cut" not in env.ari.hung_up()


async def test_nobody_answers_the_caller_hears_the_missed_prompt_and_the_call_ends_missed(env: Env) -> None:
    call = await env.call_in("in-4")
    for endpoint in ("anna", "boris", "carol"):
        await env.unanswered(call, endpoint, 19)
    await wait_until(lambda: call.state is CallState.ENDING)
    assert env.ari.named("answer") == [{"channel_id": "in-4"}]
    [play] = env.ari.named("play")
    assert play["channel_id"] == "in-4" and play["media"] == ["sound:vm-nobodyavail"]
    env.engine.on_event(playback_finished(play["playback_id"], "in-4"))
    await wait_until(lambda: "in-4" in env.ari.hung_up())
    env.engine.on_event(channel_destroyed("in-4", cause=16))
    await wait_until(lambda: env.row(call)["state"] == "ended")
    row = env.row(call)
    assert (row["outcome"], row["ended_by"], row["order_id"], row["manager_id"]) == (
        "missed",
        "bridged",
        "123",
        "anna",
    )
    assert (call.id, CallState.ENDED, "missed") in env.published
    assert env.store.sticky.rows == {}  # nobody talked to them


@pytest.mark.parametrize(
    ("request_fields", "ended_by"),
    [({"cause": 127}, "customer"), ({"cause": 32, "soft": True}, "asterisk")],
    ids=["the-caller-cancels", "cut-off-in-asterisk"],
)
async def test_the_caller_hanging_up_while_managers_ring_is_missed_and_stops_the_ringing(
    request_fields: dict[str, Any], ended_by: str
) -> None:
    """The caller's CANCEL (a hard request), or ``channel request hangup`` on their channel (a soft one:
    nobody on a phone hung up; checked to fail before the change: ``customer``)."""
    env = _env(inbound_config(ring_group="simultaneous"))
    call = await env.call_in("in-5")
    await env.unanswered(call, "anna", 17)
    ringing = list(call.ring.legs)  # type: ignore[union-attr]
    assert env.rung(call) == ["anna", "boris"]  # the rest of the team, all at once (one here)
    env.engine.on_event(hangup_request("in-5", state="Ring", **request_fields))
    await wait_until(lambda: env.row(call)["state"] == "ended")
    assert (env.row(call)["outcome"], env.row(call)["ended_by"]) == ("missed", ended_by)
    assert set(ringing) <= set(env.ari.hung_up())
    assert env.ari.named("answer") == []
    await env.engine.shutdown()
    assert_number_kept_nowhere(env)


async def test_a_ring_group_rings_at_once_and_the_first_answer_takes_the_call() -> None:
    env = _env(inbound_config(ring_group="simultaneous", fallback=("carol", "dave")))
    env.directory.orders.clear()  # an unknown caller: straight to the fallback, all at once
    call = await env.call_in("in-6")
    assert sorted(env.rung(call)) == ["carol", "dave"]
    losing = env.leg_of(call, "carol")
    await env.answer(call, "dave")
    [loser] = [kw for kw in env.ari.named("hangup") if kw["channel_id"] == losing]
    assert loser["reason"] == "answered_elsewhere"
    assert env.row(call)["manager_id"] == "dave"
    # The loser's own hangup events change nothing.
    env.engine.on_event(channel_destroyed(losing, cause=26))
    await settle()
    assert call.state is CallState.BRIDGED
    await env.engine.shutdown()
    assert_number_kept_nowhere(env)


# -- who is calling ----------------------------------------------------------------------------------------


async def test_an_unknown_caller_rings_the_fallback_as_customer_ref_and_keeps_their_ref(env: Env) -> None:
    env.directory.orders.clear()
    first = await env.call_in("in-7")
    ref = first.caller_ref
    assert ref is not None and ref.isalpha()
    assert env.rung(first) == ["carol"]
    assert caller_id_of(env, first) == f'"Customer {ref}" <*77>'
    row = env.row(first)
    assert (row["order_id"], row["manager_id"], row["caller_ref"]) == (None, None, ref)
    env.engine.on_event(hangup_request("in-7", cause=127, state="Ring"))
    await wait_until(lambda: env.row(first)["state"] == "ended")
    assert env.row(first)["outcome"] == "missed"
    # The same number written another way: the same reference on the next call.
    second = await env.call_in("in-8", "8 (916) 321-76-54")
    assert second.caller_ref == ref


async def test_a_withheld_number_is_anonymous_and_never_looked_up(env: Env) -> None:
    call = await env.call_in("in-9", presentation="prohib_not_screened")
    assert env.directory.asked == []
    assert env.rung(call) == ["carol"]
    assert caller_id_of(env, call) == '"Anonymous" <anonymous>'
    assert call.caller_ref is None and env.row(call)["caller_ref"] is None
    assert env.store.audits[0]["details"]["identified_by"] == "nothing (number withheld)"
    await env.answer(call, "carol")
    assert env.store.sticky.rows == {}  # nothing to remember them by


async def test_the_manager_who_last_talked_to_the_caller_comes_first_within_the_window(env: Env) -> None:
    first = await env.call_in("in-10")
    await env.unanswered(first, "anna", 17)
    await env.answer(first, "boris")
    env.engine.on_event(hangup_request("in-10"))
    await wait_until(lambda: env.row(first)["state"] == "ended")
    second = await env.call_in("in-11")
    assert env.rung(second)[:1] == ["boris"]  # then the order's manager
    assert env.row(second)["manager_id"] == "boris"
    env.engine.on_event(hangup_request("in-11", cause=127, state="Ring"))
    await wait_until(lambda: env.row(second)["state"] == "ended")
    # Past inbound.sticky_days the order's manager comes first again.
    assert second.ring is not None and second.ring.caller_key is not None
    key = second.ring.caller_key
    old = env.store.sticky.rows[key]
    env.store.sticky.rows[key] = replace(old, last_at=datetime.now(UTC) - timedelta(days=31))
    third = await env.call_in("in-12")
    assert env.rung(third)[:1] == ["anna"]


async def test_the_shops_database_down_rings_the_fallback_with_a_neutral_label(env: Env) -> None:
    env.directory.fail = True
    call = await env.call_in("in-13")
    assert env.rung(call) == ["carol"]
    assert caller_id_of(env, call) == f'"Customer {call.caller_ref}" <*77>'


async def test_bridgeds_database_down_turns_the_caller_away_with_a_prompt(env: Env) -> None:
    async def down(**kwargs: Any) -> None:
        raise DatabaseUnavailable("ConnectionRefusedError")

    env.store.calls.insert_audited = down  # type: ignore[method-assign]
    call = await env.call_in("in-14")
    # The row is written while the first phone rings (no database round trip before the INVITE); not
    # taken, the phone stops at once and nobody else is rung.
    assert env.rung(call) == ["anna"]
    assert env.leg_of(call, "anna") in env.ari.hung_up()
    assert call.ring is not None and call.ring.legs == {}
    [play] = env.ari.named("play")
    assert play["channel_id"] == "in-14" and play["media"] == ["sound:please-try-call-later"]
    env.engine.on_event(playback_finished(play["playback_id"], "in-14"))
    await wait_until(lambda: "in-14" in env.ari.hung_up())
    env.engine.on_event(channel_destroyed("in-14"))
    await wait_until(lambda: call.state is CallState.ENDED)
    assert not call.has_row  # no row of its own: nothing written, no webhook (test_webhooks.py)
    assert env.store.rows == {}
    assert env.service.deferred.pending == 1  # its refused row, written once the database is back


async def test_a_number_that_is_not_the_shops_is_turned_away_without_a_row(env: Env) -> None:
    call = await env.call_in("in-15", did="+15559999")
    assert call.state is CallState.ENDING and not call.has_row
    assert env.rung(call) == [] and env.store.rows == {} and env.directory.asked == []


async def test_a_draining_daemon_takes_no_inbound_call(env: Env) -> None:
    env.accepting["up"] = False
    call = await env.call_in("in-16")
    assert env.rung(call) == [] and env.directory.asked == []
    [row] = env.store.rows.values()
    assert (row["id"], row["outcome"], row["direction"], row["caller_ref"]) == (
        call.id,
        "unavailable",
        "inbound",
        call.caller_ref or identify(CALLER, "allowed", secret=SECRET, region="RU").ref,
    )


async def test_a_transfer_asked_by_the_carrier_is_declined(env: Env) -> None:
    call = await env.call_in("in-17")
    await env.answer(call, "anna")
    env.engine.on_event(
        {"type": "ChannelTransfer", "referred_by": {"source_channel": {"id": "in-17"}}, "refer_to": {}}
    )
    await wait_until(lambda: bool(env.ari.named("transfer_progress")))
    assert env.ari.named("transfer_progress") == [{"channel_id": "in-17", "states": "channel_declined"}]
    assert call.state is CallState.BRIDGED


# -- the ring plan, on its own ----------------------------------------------------------------------------


def _ids(steps: tuple[tuple[Manager, ...], ...]) -> list[list[str]]:
    return [[m.id for m in step] for step in steps]


@pytest.mark.parametrize(
    ("settings", "sticky", "order", "expected", "first"),
    [
        ({}, None, "anna", [["anna"], ["boris"], ["carol"]], "anna"),
        ({}, "boris", "anna", [["boris"], ["anna"], ["carol"]], "boris"),
        ({}, "carol", "anna", [["carol"], ["anna"], ["dave"]], "carol"),  # carol's team is south
        ({}, None, None, [["carol"]], None),
        ({"ring_team": False}, None, "anna", [["anna"], ["carol"]], "anna"),
        (
            {"ring_group": "simultaneous", "fallback": ("carol", "dave")},
            None,
            "anna",
            [["anna"], ["boris"], ["carol", "dave"]],
            "anna",
        ),
        ({"fallback": ("anna", "gone")}, None, "anna", [["anna"], ["boris"]], "anna"),
        ({}, "gone", "nobody", [["carol"]], None),  # managers the config no longer has
    ],
)
def test_whom_an_inbound_call_rings(
    settings: dict[str, Any],
    sticky: str | None,
    order: str | None,
    expected: list[list[str]],
    first: str | None,
) -> None:
    found = route(inbound_config(**settings), sticky=sticky, order_manager=order)
    assert _ids(found.steps) == expected
    assert (found.first.id if found.first else None) == first


# -- the reaction table ----------------------------------------------------------------------------------


def test_the_inbound_table_shares_the_conversation_with_the_outbound_one() -> None:
    assert all(state is not CallState.ENDED for state, _ in INBOUND_REACTIONS)
    for key in ((CallState.BRIDGED, Event.MANAGER_LEFT), (CallState.ANNOUNCING, Event.ANNOUNCEMENT_DONE)):
        assert INBOUND_REACTIONS[key] is REACTIONS[key]
    # Rows an outbound call has and an inbound one must not: ringing the customer, the manager's prompt.
    assert (CallState.REQUESTED, Event.MANAGER_IN_STASIS) not in INBOUND_REACTIONS
    assert (
        INBOUND_REACTIONS[(CallState.ENDING, Event.PROMPT_DONE)]
        is not REACTIONS[(CallState.ENDING, Event.PROMPT_DONE)]
    )


async def test_after_a_reconnect_a_phone_that_stopped_ringing_meanwhile_passes_the_call_on(env: Env) -> None:
    call = await env.call_in("in-18")
    leg = env.leg_of(call, "anna")
    # The websocket was down while anna's phone rang out: its ChannelDestroyed is lost.
    env.ari.channels = {"in-18": {"id": "in-18", "state": "Ring"}}
    call.queue.put_nowait({"type": "Reconcile", "alive": {"in-18"}, "states": {"in-18": "Ring"}})
    await wait_until(lambda: env.rung(call) == ["anna", "boris"])
    assert leg not in call.ring.legs  # type: ignore[union-attr]


def test_a_calls_ringing_state_holds_no_number() -> None:
    ringing = Ringing(collections.deque([(MANAGERS[0],)]), caller_key="ab" * 32)
    assert CALLER_TAIL not in digits(repr(ringing))


# -- a restart in the middle -----------------------------------------------------------------------------


async def test_a_restarted_daemon_adopts_an_inbound_call_in_conversation_with_its_label(env: Env) -> None:
    env.store.add_row(
        id="in-a",
        direction="inbound",
        state="bridged",
        order_id=None,
        manager_id="carol",
        caller_ref="KXMRTPAW",
        manager_channel_id="in-a-m1",
        customer_channel_id="1764413784.12",
        bridge_id="in-a-bridge",
        answered_at=datetime.now(UTC),
    )
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("in-a-m1", "1764413784.12")}
    await env.engine.reconciler.reconcile()
    call = env.engine.calls["in-a"]
    assert (call.state, call.inbound, call.label.caller_id) == (
        CallState.BRIDGED,
        True,
        '"Customer KXMRTPAW" <*77>',
    )
    env.engine.on_event(caller_id_changed("1764413784.12", CALLER, "Customer"))
    await wait_until(lambda: len(env.ari.variables("1764413784.12")) == 2)
    env.engine.on_event(hangup_request("in-a-m1"))
    await wait_until(lambda: env.row(call)["state"] == "ended")
    assert env.row(call)["outcome"] == "completed"


async def test_a_restarted_daemon_ends_an_inbound_call_whose_phones_no_longer_ring_as_missed(
    env: Env,
) -> None:
    """No phone rings for the caller any more (the ring groups still to try are not in the row): the
    caller is hung up."""
    env.store.add_row(
        id="in-b",
        direction="inbound",
        state="ringing_manager",
        manager_id="anna",
        customer_channel_id="1764413784.13",
    )
    env.ari.channels = {"1764413784.13": {"id": "1764413784.13", "state": "Ring"}}
    await env.engine.reconciler.reconcile()
    assert env.ari.hung_up() == ["1764413784.13"]
    row = env.store.rows["in-b"]
    assert (row["state"], row["outcome"]) == ("ended", "missed")
    assert "in-b" not in env.engine.calls


def _ringing_inbound_row(env: Env, call_id: str, caller: str, legs: dict[str, str], **row: Any) -> None:
    """An inbound call whose daemon died while managers' phones rang: its row (the ringing legs are not
    in it) and what Asterisk still has, the caller's channel and the legs (``{leg: endpoint}``)."""
    env.store.add_row(
        **row,
        id=call_id,
        ari_app="dead",
        direction="inbound",
        state="ringing_manager",
        manager_id="anna",
        customer_channel_id=caller,
    )
    env.ari.channels = {caller: {"id": caller, "name": "PJSIP/carrier-00000001", "state": "Ring"}}
    for leg, endpoint in legs.items():
        env.ari.channels[leg] = {"id": leg, "name": f"PJSIP/{endpoint}-0000000a", "state": "Ringing"}


async def test_an_inbound_call_adopted_while_phones_rang_puts_through_whoever_answers(env: Env) -> None:
    """The managers' legs are made in the application: they wait there for the next daemon, which finds
    them by their ids and puts the caller through to the one who answers (the others stop ringing).
    Checked to fail without the change: the adopter ended the call as missed."""
    _ringing_inbound_row(env, "in-c", "1764413784.14", {"in-c-m2": "boris", "in-c-m3": "dave"})
    await env.engine.reconciler.reconcile("dead")
    call = env.engine.calls["in-c"]
    assert call.state is CallState.RINGING_MANAGER
    assert call.ring is not None and call.ring.legs == {"in-c-m2": MANAGERS[1], "in-c-m3": MANAGERS[3]}
    [sub] = env.ari.named("subscribe")
    assert sub["event_sources"] == ["channel:1764413784.14", "channel:in-c-m2", "channel:in-c-m3"]
    await settle()
    assert env.ari.hung_up() == [] and env.row(call)["state"] == "ringing_manager"

    env.engine.on_event(answered("in-c-m3"))
    await wait_until(lambda: env.row(call)["state"] == "bridged", what="bridged")
    assert (env.row(call)["manager_id"], env.row(call)["manager_channel_id"]) == ("dave", "in-c-m3")
    assert env.ari.named("hangup") == [
        {"channel_id": "in-c-m2", "reason": "answered_elsewhere"}
    ]  # the other phone
    assert {"channel_id": "1764413784.14"} in env.ari.named("answer")


async def test_an_inbound_call_whose_manager_answered_while_no_daemon_listened_is_put_through(
    env: Env,
) -> None:
    _ringing_inbound_row(env, "in-d", "1764413784.15", {"in-d-m1": "anna"})
    env.ari.channels["in-d-m1"]["state"] = "Up"
    await env.engine.reconciler.reconcile("dead")
    call = env.engine.calls["in-d"]
    await wait_until(lambda: env.row(call)["state"] == "bridged", what="bridged")
    assert env.row(call)["manager_id"] == "anna"


async def test_an_adopted_inbound_call_whose_last_phone_rings_out_is_missed(env: Env) -> None:
    _ringing_inbound_row(env, "in-e", "1764413784.16", {"in-e-m1": "anna"})
    await env.engine.reconciler.reconcile("dead")
    call = env.engine.calls["in-e"]
    env.engine.on_event(hangup_request("in-e-m1", cause=32, state="Ringing", soft=True))
    env.engine.on_event(channel_destroyed("in-e-m1", cause=19))
    await wait_until(lambda: call.state is CallState.ENDING, what="the missed prompt")
    [play] = env.ari.named("play")
    env.engine.on_event(playback_finished(play["playback_id"], "1764413784.16"))
    await wait_until(lambda: "1764413784.16" in env.ari.hung_up())
    env.engine.on_event(channel_destroyed("1764413784.16", cause=16))
    await wait_until(lambda: env.row(call)["state"] == "ended")
    assert env.row(call)["outcome"] == "missed"


async def _adopted(env: Env, call: Call) -> CallEngine:
    """The call's daemon dies while its phones ring (the call is let go of, nothing is ended); a second
    daemon on the same Asterisk and database takes over its application and adopts the call."""
    env.engine.stop_serving(env.engine.nodes.first)
    caller = call.customer_channel_id or ""
    env.ari.channels[caller] = {"id": caller, "name": "PJSIP/carrier-00000001", "state": "Ring"}
    holder = ConfigHolder(replace(env.config, ari=replace(env.config.ari, app="second")))
    adopter = CallEngine(holder, env.ari, env.store, is_connected=lambda: True)  # type: ignore[arg-type]
    # Its service: what it asks the audit trail and the shop of an adopted caller (their name).
    CallService(holder, env.store, env.directory, adopter, accepting_calls=lambda: True)  # type: ignore[arg-type]
    env.ari.events = adopter.on_event
    await adopter.reconciler.reconcile(env.config.ari.app)
    return adopter


async def test_an_inbound_call_adopted_while_its_first_phone_rang_goes_on_to_the_next_group(env: Env) -> None:
    """anna's phone rings when her daemon dies; the next daemon adopts the call, anna does not answer, and
    the plan goes on as it would have (her team: boris), who takes the call. Checked to fail without the
    change: the adopter knew no group to try after anna's, and the call ended missed. boris's phone shows
    the caller as anna's did, the name included (looked up again: the caller was identified by the order);
    on main (e56f4bf) it showed "Order 123" without it."""
    call = await env.call_in("in-g")
    anna = env.leg_of(call, "anna")
    adopter = await _adopted(env, call)
    adopted = adopter.calls[call.id]
    env.ari.calls.clear()
    adopter.on_event(hangup_request(anna, cause=19, state="Ringing"))
    adopter.on_event(channel_destroyed(anna, cause=19))
    await wait_until(lambda: env.rung(call) == ["boris"], what="boris rung")
    [made] = env.ari.named("create_channel")
    # A leg of its own (numbered after anna's), in the dead daemon's application the adopter serves, with
    # the label and no originator (the caller's channel would hand the number over).
    assert (made["channel_id"], made["app"], made["originator"]) == (f"{call.id}-m2", "bridged", None)
    assert made["variables"]["CALLERID(all)"] == LABEL
    assert env.directory.asked[-1] == "order 123"
    boris = made["channel_id"]
    adopter.on_event(answered(boris))
    await wait_until(lambda: adopted.state is CallState.BRIDGED, what="bridged")
    assert (env.row(call)["manager_id"], env.row(call)["manager_channel_id"]) == ("boris", boris)
    adopter.on_event(hangup_request(boris))
    await wait_until(lambda: env.row(call)["state"] == "ended")
    assert env.row(call)["outcome"] == "completed"
    await adopter.shutdown()


async def _next_phone_after_adoption(env: Env, call: Call, endpoint: str) -> str:
    """The call is adopted while ``endpoint``'s phone rings; it rings out, and the next group is rung:
    what the next phone shows as the caller."""
    leg = env.leg_of(call, endpoint)
    adopter = await _adopted(env, call)
    env.ari.calls.clear()
    adopter.on_event(hangup_request(leg, cause=19, state="Ringing"))
    adopter.on_event(channel_destroyed(leg, cause=19))
    await wait_until(lambda: len(env.ari.named("create_channel")) == 1, what="the next group")
    [made] = env.ari.named("create_channel")
    assert env.row(call)["state"] == "ringing_manager"
    await adopter.shutdown()
    return str(made["variables"]["CALLERID(all)"])


async def test_an_adopted_caller_known_by_who_last_talked_to_them_is_shown_without_a_name(env: Env) -> None:
    """The shop has no order for the caller's number; boris talked to them about order 123 last week. The
    first phones showed the order without its customer's name (the caller may not be that customer), and
    the adopter's do too: the shop is not asked for the order. Checked to fail with a fix that asks it
    whatever the audit row says ("Order 123 Ivan P.")."""
    env.directory.orders.clear()
    key = identify(CALLER, "allowed", secret=SECRET, region="RU").key
    assert key is not None
    env.store.sticky.rows[key] = Sticky("boris", "123", datetime.now(UTC) - timedelta(days=7))
    call = await env.call_in("in-g2")
    assert env.rung(call) == ["boris"] and caller_id_of(env, call) == '"Order 123" <*77123>'
    assert env.store.audits[0]["details"]["identified_by"] == "the manager who last talked to them"
    assert await _next_phone_after_adoption(env, call, "boris") == '"Order 123" <*77123>'
    assert "order 123" not in env.directory.asked


@pytest.mark.parametrize(
    "failure", ["shop down", "order gone", "audit row missing", "bridged's database down"]
)
async def test_an_adopted_caller_whose_name_is_not_known_now_is_rung_on_without_it(
    env: Env, failure: str
) -> None:
    """The name cannot be had again: the adopter rings the next phones with the label without it, at once.
    The shop's cases checked to fail on main (e56f4bf): it never asked the shop (asked[-1] was the
    caller's number); the others checked to fail with the fix's except clause left out (the adoption
    raised and no phone was rung)."""
    call = await env.call_in(f"in-g3-{failure.split()[0]}")
    assert caller_id_of(env, call) == LABEL
    if failure == "shop down":
        env.directory.fail = True
    elif failure == "order gone":
        env.directory.by_id.clear()
    elif failure == "audit row missing":
        env.store.audits.clear()
    else:
        env.store.audit.error = DatabaseUnavailable("ConnectionRefusedError")
    shown = await _next_phone_after_adoption(env, call, "anna")
    env.store.audit.error = None
    assert shown == '"Order 123" <*77123>'
    assert (env.directory.asked[-1] == "order 123") is failure.startswith(("shop", "order"))


async def test_an_adopted_callers_name_holding_their_number_shows_none_of_its_digits(env: Env) -> None:
    """A hostile name (the customer's number typed into it) looked up again: bridged.labels keeps its
    letters and none of its digits. Checked to fail on main (e56f4bf): "Order 123" without the name."""
    hostile = "Ivan +7 (916) 321-76-54"
    env.directory.orders[CALLER] = CallerOrder("123", hostile, "anna")
    env.directory.by_id["123"] = replace(env.directory.by_id["123"], customer_name=hostile)
    call = await env.call_in("in-g4")
    first = caller_id_of(env, call)
    shown = await _next_phone_after_adoption(env, call, "anna")
    assert shown == '"Order 123 Ivan" <*77123>' == first
    assert CALLER_TAIL not in digits(shown)


async def test_an_inbound_call_answered_after_its_adoption_remembers_who_talked_to_the_caller(
    env: Env,
) -> None:
    """The caller's next call rings the manager who took this one, though another daemon put it through.
    Checked to fail without the change: the adopter did not know the caller's key, and kept nobody."""
    call = await env.call_in("in-h")
    anna = env.leg_of(call, "anna")
    adopter = await _adopted(env, call)
    adopter.on_event(answered(anna))
    await wait_until(lambda: env.row(call)["state"] == "bridged", what="bridged")
    key = identify(CALLER, "allowed", secret=SECRET, region="RU").key
    assert key is not None and env.store.sticky.rows[key].manager_id == "anna"
    await adopter.shutdown()


async def test_an_inbound_call_whose_phones_stopped_ringing_before_its_adoption_rings_the_next_group(
    env: Env,
) -> None:
    """anna's phone rang out (or refused) while no daemon listened: the adopter finds the caller waiting
    and no phone ringing, and rings the next group of the plan. Checked to fail without the change: the
    call ended missed at the adoption."""
    call = await env.call_in("in-i")
    await env.unanswered(call, "anna", cause=17)  # boris is rung (step 2 of the plan)
    before = len(env.rung(call))
    for endpoint in ("anna", "boris"):  # anna's leg is gone; boris's phone is busy as the daemon dies
        env.ari.channels.pop(env.leg_of(call, endpoint), None)
    adopter = await _adopted(env, call)
    await wait_until(lambda: len(env.rung(call)) > before, what="the next group")
    assert env.rung(call)[before:] == ["carol"]  # the fallback; anna and boris are not rung again
    assert env.ari.named("create_channel")[-1]["channel_id"] == f"{call.id}-m3"
    assert env.row(call)["state"] == "ringing_manager"
    await adopter.shutdown()


async def test_the_row_of_an_ended_inbound_call_forgets_the_callers_key(env: Env) -> None:
    """The key is kept in the row only while the call may be adopted: the sticky table holds the window."""
    call = await env.call_in("in-j")
    assert env.row(call)["caller_key"] == call.ring.caller_key  # type: ignore[union-attr]
    assert env.row(call)["ring_plan"] == '[["anna"], ["boris"], ["carol"]]'
    await env.answer(call, "anna")
    env.engine.on_event(hangup_request(env.leg_of(call, "anna")))
    await wait_until(lambda: env.row(call)["state"] == "ended")
    assert env.row(call)["caller_key"] is None


async def test_an_adopted_call_goes_on_after_the_step_its_ringing_leg_belongs_to(env: Env) -> None:
    """The count of steps rung had not reached the row when the daemon died (boris rang as step 2; the
    row says 1): the leg ringing tells the step under way, and the plan goes on after it."""
    plan = '[["anna"], ["boris"], ["carol", "dave"]]'
    _ringing_inbound_row(env, "in-k", "1764413784.17", {"in-k-m2": "boris"}, ring_plan=plan, ring_rung=1)
    await env.engine.reconciler.reconcile("dead")
    env.engine.on_event(hangup_request("in-k-m2", cause=17, state="Ringing"))
    env.engine.on_event(channel_destroyed("in-k-m2", cause=17))
    await wait_until(lambda: len(env.ari.named("create_channel")) == 2, what="the next group")
    made = env.ari.named("create_channel")
    assert [(kw["channel_id"], kw["endpoint"]) for kw in made] == [
        ("in-k-m3", "PJSIP/carol"),
        ("in-k-m4", "PJSIP/dave"),
    ]
    assert env.store.rows["in-k"]["ring_rung"] == 3


@pytest.mark.parametrize("plan", ["not json", '{"steps": 1}', "[[1]]", '["anna"]', '[["gone"]]'])
async def test_an_adopted_call_with_a_ring_plan_it_cannot_use_is_put_through_or_missed(
    env: Env, plan: str
) -> None:
    _ringing_inbound_row(env, "in-l", "1764413784.18", {"in-l-m1": "anna"}, ring_plan=plan, ring_rung=1)
    await env.engine.reconciler.reconcile("dead")
    env.engine.on_event(hangup_request("in-l-m1", cause=19, state="Ringing"))
    env.engine.on_event(channel_destroyed("in-l-m1", cause=19))
    await wait_until(lambda: env.engine.calls["in-l"].state is CallState.ENDING, what="the missed prompt")
    assert env.ari.named("create_channel") == []


async def test_a_managers_leg_an_older_release_originated_entering_answered_takes_the_call(env: Env) -> None:
    """A call of a bridged that still originated managers' legs, adopted: the leg enters Stasis as it is
    answered (StasisStart, state Up), which is the answer."""
    call = await env.call_in("in-f")
    leg = env.leg_of(call, "anna")
    env.engine.on_event(stasis_start(leg, ["manager", call.id], state="Up"))
    await wait_until(lambda: call.state is CallState.BRIDGED, what="bridged")


# -- generated input -------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=12,
)


@given(
    event=st.fixed_dictionaries(
        {},
        optional={
            "args": _JSON,
            "channel": st.fixed_dictionaries(
                {}, optional={"caller": _JSON, "dialplan": _JSON, "caller_rdnis": _JSON, "id": _JSON}
            )
            | _JSON,
        },
    )
)
def test_any_stasis_start_shape_is_read_without_failing(event: dict[str, Any]) -> None:
    """Events are Asterisk's, but their fields are read defensively: any shape gives strings or empties."""
    caller = read_stasis_start(event)
    assert isinstance(caller.number, str) and isinstance(caller.presentation, str)
    assert isinstance(caller.did, str) and isinstance(caller.redirected, bool)
    assert "number=" not in repr(caller)  # never printed


@given(
    sticky=st.sampled_from([None, "anna", "boris", "carol", "dave", "gone"]),
    order=st.sampled_from([None, "anna", "boris", "carol", "dave", "gone"]),
    fallback=st.lists(st.sampled_from(["anna", "boris", "carol", "dave", "gone"]), max_size=4),
    ring_group=st.sampled_from(["sequential", "simultaneous"]),
    ring_team=st.booleans(),
)
@example(sticky=None, order=None, fallback=["anna", "anna"], ring_group="sequential", ring_team=False)
@settings(deadline=None)
def test_every_ring_plan_rings_each_manager_once_and_ends_with_the_fallback(
    sticky: str | None, order: str | None, fallback: list[str], ring_group: str, ring_team: bool
) -> None:
    inbound = InboundConfig(
        numbers=(DID,), fallback=tuple(fallback), secret=SECRET, ring_group=ring_group, ring_team=ring_team
    )
    config = replace(_BASE, inbound=inbound)
    found = route(config, sticky=sticky, order_manager=order)
    rung = [m.id for step in found.steps for m in step]
    assert len(rung) == len(set(rung)) and "gone" not in rung
    assert all(step for step in found.steps)
    known = {m.id for m in MANAGERS}
    firsts = [m for m in dict.fromkeys((sticky, order)) if m in known]
    assert rung[: len(firsts)] == firsts  # the sticky manager, then the order's, each alone
    assert all(len(step) == 1 for step in found.steps[: len(firsts)])
    assert set(m for m in fallback if m in known) <= set(rung)
    if ring_group == "sequential":
        assert all(len(step) == 1 for step in found.steps)
    assert (found.first.id if found.first else None) == (firsts[0] if firsts else None)
