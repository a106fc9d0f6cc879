"""Hostile ARI events through the call engine: generated events fed through the websocket's own entry
(CallEngine.on_event) to an engine holding a call of every kind, each in one of its states: a phone's
call (its customer ringing, bridged, or the manager hearing why it did not go ahead), an HTTP call
(its manager ringing, its customer ringing, bridged) and an inbound call (managers ringing, bridged).

Every value of an event can come from a SIP message a carrier or a caller controls (caller id name and
number, connected line, the dial string, channel variables, causes, the Stasis arguments, a REFER's
destination), or from another Asterisk version (fields missing, of another type). The events start as
Asterisk 22 sends them (tests/unit/fakes.py, docs/asterisk.md, "Events") about this call's legs, another
call's, or nobody's; then values are replaced by any JSON (the customer's number, in its usual spellings,
only where a SIP message can put it), fields dropped, unknown fields added.

Whatever comes: no exception escapes the dispatch; every call's worker still runs, or the call ended
along the transition table (with an outcome); once every leg is reported gone, every call has ended;
nothing logged (at debug) and no ARI request but the customer leg's originate endpoint holds the
customer's number, nor any row.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from bridged.calls import legs as legs_module
from bridged.calls.engine import EVENT_TYPES
from bridged.calls.model import TRANSITIONS, Call, CallState
from bridged.redact import digits
from tests.unit import test_calls, test_inbound
from tests.unit.fakes import (
    NUMBER,
    NUMBER_TAIL,
    answered,
    caller_id_changed,
    channel_destroyed,
    dial,
    hangup_request,
    make_order,
    playback_finished,
    recording_event,
    settle,
    stasis_end,
    stasis_start,
    wait_until,
)

CALLER = test_inbound.CALLER
TAILS = (NUMBER_TAIL, test_inbound.CALLER_TAIL)
# The customer leg's dial string: the one place the (outbound) customer's number may go.
DIAL = test_calls.DIAL

# -- the calls the events are about ------------------------------------------------------------------

PHONE_STATES = ("ringing_customer", "bridged", "ending")
HTTP_STATES = ("ringing_manager", "ringing_customer", "bridged")
INBOUND_STATES = ("ringing_manager", "bridged")


@dataclass
class World:
    """One engine with three live calls (its own FakeAri, store and shop directory: test_inbound's)."""

    env: test_inbound.Env
    calls: dict[str, Call]
    # Every state each call (by id) went through, from the one it was in when the events began.
    seen: dict[str, list[CallState]] = field(default_factory=dict)


async def _world(phone: str, http: str, inbound: str) -> World:
    env = test_inbound._env()
    # The HTTP call's order: the outbound customer's number (order 123 is the inbound caller's there).
    env.directory.by_id["124"] = make_order("124", manager_id="boris")
    outbound = test_calls.Env(env.config, env.ari, env.store, env.engine, {"up": True})

    customer = await (outbound.bridged if phone == "bridged" else outbound.ringing)("callp", "mp")
    phone_call = env.engine.calls["callp"]
    if phone == "ending":
        env.engine.on_event(dial(customer, "BUSY"))
        env.engine.on_event(channel_destroyed(customer, cause=17))
        await wait_until(lambda: phone_call.state is CallState.ENDING, what="the busy prompt")

    http_call = await env.service.place_from_api("shop-1", "boris", "124")
    assert isinstance(http_call, Call), http_call
    if http != "ringing_manager":
        env.engine.on_event(answered(f"{http_call.id}-manager"))
        await outbound._dialled(http_call.id)
    if http == "bridged":
        env.engine.on_event(answered(f"{http_call.id}-customer"))
        await wait_until(lambda: http_call.state is CallState.BRIDGED, what="the HTTP call bridged")

    inbound_call = await env.call_in("in-a")
    if inbound == "bridged":
        await env.answer(inbound_call, "anna")

    calls = {"phone": phone_call, "http": http_call, "inbound": inbound_call}
    for call in calls.values():
        await env.idle(call)
    world = World(env, calls, {call.id: [call.state] for call in calls.values()})
    # A call the events started (a caller's channel entering with its arguments) starts as every call.
    env.engine.listeners.append(
        lambda call, state: world.seen.setdefault(call.id, [CallState.REQUESTED]).append(state)
    )
    return world


# -- the events ----------------------------------------------------------------------------------------

# Whose channel an event names: a leg of one of the calls, a channel nobody owns, or none at all.
LEGS = ("phone-manager", "phone-customer", "http-manager", "http-customer", "caller", "ring", "stray", "none")
# The engine's own, and some it never asked for (Asterisk sends them to a subscribed channel's app).
KINDS = sorted(
    EVENT_TYPES | {"ChannelVarset", "ChannelStateChange", "ChannelDtmfReceived", "ChannelConnectedLine"}
)
DIAL_STATUSES = (
    "",
    "RINGING",
    "PROGRESS",
    "ANSWER",
    "BUSY",
    "NOANSWER",
    "CANCEL",
    "CHANUNAVAIL",
    "CONGESTION",
)
CAUSES = (16, 17, 18, 19, 21, 32, 34, 38, 127)


def _leg(world: World, which: str) -> str | None:
    calls = world.calls
    inbound = calls["inbound"]
    rung = inbound.ring.rung if inbound.ring is not None else []
    return {
        "phone-manager": calls["phone"].manager_channel_id,
        "phone-customer": calls["phone"].customer_channel_id,
        "http-manager": calls["http"].manager_channel_id,
        "http-customer": f"{calls['http'].id}-customer",
        "caller": inbound.customer_channel_id,
        "ring": rung[0] if rung else f"{inbound.id}-m1",
        "stray": "stray-leg",
        "none": None,
    }[which]


def _call_of(world: World, which: str) -> Call:
    return world.calls[
        "phone" if which.startswith("phone") else "http" if which.startswith("http") else "inbound"
    ]


def _base(world: World, kind: str, which: str, pick: int) -> dict[str, Any]:
    """The event as Asterisk 22 sends it (``pick`` chooses among its usual values)."""
    leg = _leg(world, which) or ""
    call = _call_of(world, which)
    if kind == "StasisStart":
        args: tuple[list[str], ...] = (
            ["order", call.id],
            ["customer", call.id],
            ["manager", call.id],
            ["inbound", "allowed_not_screened"],
            [],
        )
        event = stasis_start(leg, args[pick % len(args)], state=("Up", "Down", "Ring")[pick % 3])
    elif kind == "ChannelHangupRequest":
        event = hangup_request(leg, cause=CAUSES[pick % len(CAUSES)], soft=pick % 2 == 1)
        event["tech_cause"] = 486
    elif kind == "ChannelDestroyed":
        event = channel_destroyed(leg, cause=CAUSES[pick % len(CAUSES)])
        event["tech_cause"] = 486
    elif kind == "Dial":
        event = dial(leg, DIAL_STATUSES[pick % len(DIAL_STATUSES)], dialstring=f"{NUMBER}@carrier")
    elif kind == "ChannelCallerId":
        # The carrier's identity headers: the customer's number (an outbound customer's, a caller's).
        event = caller_id_changed(leg, (NUMBER, CALLER, call.label.number)[pick % 3], "Customer")
    elif kind == "PlaybackFinished":
        ids = (call.prompt_playback_id, call.announcement_playback_id, call.ringback_playback_id, "other")
        event = playback_finished(ids[pick % len(ids)] or "other", leg)
    elif kind.startswith("Recording"):
        name = f"bridged-{call.id}" if pick % 2 == 0 else "bridged-other"
        event = recording_event(
            kind, name, f"{call.id}-bridge", duration=pick if kind == "RecordingFinished" else None
        )
    elif kind == "ChannelTransfer":
        event = {
            "type": kind,
            "application": "bridged",
            "refer_to": {"requested_destination": {"destination": f"sip:{NUMBER}@pbx"}},
            "referred_by": {"source_channel": {"id": leg}, "bridge": {"id": f"{call.id}-bridge"}},
        }
        if pick % 2:
            event["state"] = "channel_declined"
    elif kind == "ApplicationReplaced":
        event = {"type": kind, "application": "bridged"}
    else:
        event = stasis_end(leg) | {"type": kind}
        if kind == "ChannelVarset":
            event |= {"variable": "CALLERID(num)", "value": CALLER}
        elif kind == "ChannelDtmfReceived":
            event |= {"digit": "7", "duration_ms": 100}
    if which == "none":
        event.pop("channel", None)
        event.pop("peer", None)
    return event


# The keys whose values a SIP message sets (or any value under them): only there can the customer's number
# come from outside. Everything else is Asterisk's own (ids, states, names), of whatever type.
SIP_KEYS = frozenset(
    {
        "caller",
        "connected",
        "caller_rdnis",
        "exten",
        "dialstring",
        "forward",
        "cause",
        "cause_txt",
        "tech_cause",
        "args",
        "protocol_id",
        "refer_to",
        "value",
        "digit",
    }
)


def _spellings(number: str) -> list[Any]:
    """How a SIP message may spell a number: E.164, national, grouped, in a URI, split by control
    characters, as an integer (a cause)."""
    d = digits(number)
    return [
        number,
        d,
        d[1:],
        f"+{d[0]} ({d[1:4]}) {d[4:7]}-{d[7:9]}-{d[9:]}",
        f"sip:{number}@carrier.example;user=phone",
        f"tel:{d[:4]}.{d[4:7]}.{d[7:]}",
        f"{d[:5]}\x00{d[5:]}",
        f"{d[:4]}\u200b{d[4:]}",
        int(d),
        int(d[-7:]),
    ]


NUMBERS = st.sampled_from([*_spellings(NUMBER), *_spellings(CALLER)])
_TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.from_regex(
    r"\+?[0-9 ()-]{7,16}", fullmatch=True
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 10**30])
    | st.floats()
    | _TEXT
    | st.sampled_from(["\x1b[31m\r\n", "Пётр", "Up", "ANSWER", "bridged"])
    | st.integers(1000, 30_000).map(lambda n: "x" * n)
)
VALUES = st.recursive(
    _SCALARS | NUMBERS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_TEXT, children, max_size=3),
    max_leaves=6,
)


def _holds_number(value: Any) -> bool:
    text = digits(repr(value))
    return any(tail in text for tail in TAILS)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path in an event to a value (dict keys, list indices), the root's fields first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


def _containers(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The paths of an event's dicts (the root's too): where an unknown field may be added."""
    if isinstance(node, dict):
        yield prefix
        for key, value in node.items():
            yield from _containers(value, (*prefix, key))


def _at(event: dict[str, Any], path: tuple[Any, ...]) -> Any:
    node: Any = event
    for key in path:
        node = node[key]
    return node


# A mutation: what is done (a value replaced, a field dropped, an unknown field added), whether to a field
# of the event itself (most of what bridged reads is there) or anywhere in it, which one (modulo their
# number), the value, and the name of an added field.
Mutation = tuple[str, bool, int, Any, str]
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["replace", "drop", "add"]),
        st.booleans(),
        st.integers(0, 60),
        NUMBERS | VALUES,
        _TEXT,
    ),
    max_size=5,
)


def _sip(path: tuple[Any, ...]) -> bool:
    return any(part in SIP_KEYS for part in path if isinstance(part, str))


def _mutate(event: dict[str, Any], mutations: list[Mutation]) -> dict[str, Any]:
    for op, top, index, value, key in mutations:
        if op == "add":
            # A field bridged does not know (a newer Asterisk's).
            places = [()] if top else list(_containers(event))
            path = (*places[index % len(places)], key)
        else:
            places = [path for path in _paths(event) if len(path) == 1 or not top]
            if not places:
                continue
            path = places[index % len(places)]
        if _holds_number(value) and not _sip(path):
            # The number goes where a SIP message puts it, if the event has such a field.
            sip = [path for path in _paths(event) if _sip(path)]
            path = sip[index % len(sip)] if sip else path
            value = value if sip else None
        parent = _at(event, path[:-1])
        if op == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return event


EVENTS = st.lists(
    st.tuples(st.sampled_from(KINDS), st.sampled_from(LEGS), st.integers(0, 100), MUTATIONS, st.booleans()),
    min_size=1,
    max_size=10,
)


# -- what must hold ------------------------------------------------------------------------------------


def _assert_told_nothing(world: World, records: list[logging.LogRecord]) -> None:
    """Neither customer's number in any log line (its traceback included) at any level, in any ARI
    request but the outbound customer leg's endpoint, in any row or audit row."""
    for record in records:
        # QueueHandler.prepare: the message formatted, with the exception's traceback.
        assert not any(tail in digits(record.getMessage()) for tail in TAILS), record.getMessage()
    for method, kwargs in world.env.ari.calls:
        for name, value in kwargs.items():
            if method == "originate_to_dialplan" and name == "endpoint":
                assert value == DIAL
                continue
            assert not _holds_number(value), f"{method}({name}={value!r})"
    for row in world.env.store.rows.values():
        assert not any(_holds_number(v) for v in row.values() if isinstance(v, str | int)), row
    for entry in world.env.store.audits:
        assert not _holds_number(entry), entry


def _assert_alive_or_ended(world: World) -> None:
    """Each call's worker runs, or the call ended with an outcome, every state change along TRANSITIONS."""
    for call in (*world.calls.values(), *world.env.engine.calls.values()):
        assert call.task is not None
        if call.state is CallState.ENDED:
            assert call.outcome is not None, call.id
            assert world.env.store.rows[call.id]["state"] == "ended" or not call.has_row
            assert not call.task.done() or call.task.exception() is None
        else:
            assert not call.task.done(), f"call {call.id}'s worker is gone in state {call.state}"
        states = world.seen.get(call.id, [])
        for before, after in zip(states, states[1:], strict=False):
            assert after in TRANSITIONS[before], (call.id, states)


def _live(world: World) -> list[Call]:
    calls = {call.id: call for call in (*world.calls.values(), *world.env.engine.calls.values())}
    return [call for call in calls.values() if call.state is not CallState.ENDED]


async def _quiet(world: World) -> None:
    """Every live call's worker has handled what it was sent, and what that started has run."""
    await settle()
    await wait_until(
        lambda: all(not c.handling and c.queue.empty() for c in _live(world)), what="the workers idle"
    )
    await settle()


async def _all_legs_gone(world: World) -> None:
    """Asterisk reports every leg of every call gone (a hung-up phone, a dropped trunk), as often as new
    legs are rung (an inbound call rings the next managers): then every call has ended."""
    for _ in range(6):
        live = _live(world)
        if not live:
            return
        for call in live:
            ringing = list(call.ring.legs) if call.ring is not None else []
            for leg in (call.customer_channel_id, call.manager_channel_id, *ringing):
                if leg:
                    # Without a cause: the one the events gave, if any, stays the call's.
                    gone = channel_destroyed(leg)
                    del gone["cause"]
                    world.env.engine.on_event(gone)
        await _quiet(world)
    assert not _live(world), [(c.id, c.state) for c in _live(world)]


async def _run(
    states: tuple[str, str, str], events: list[tuple[str, str, int, list[Mutation], bool]]
) -> list[str]:
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(records)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("bridged")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        world = await _world(*states)
        sent_events = []
        for kind, which, pick, mutations, pause in events:
            sent = _mutate(_base(world, kind, which, pick), mutations)
            sent_events.append(sent)
            world.env.engine.on_event(sent)  # the websocket reader's call: nothing may escape it
            if pause:
                await settle(5)
        await _quiet(world)
        _assert_alive_or_ended(world)
        await _all_legs_gone(world)
        _assert_alive_or_ended(world)
        await world.env.engine.shutdown()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    logged = []
    while not records.empty():
        logged.append(records.get())
    _assert_told_nothing(world, logged)
    # Only an event a call cannot read at all (its type no string: no event Asterisk sends) ends it as
    # failed; no value of any other field does.
    failed = sum("failed handling" in record.getMessage() for record in logged)
    assert failed == 0 or not all(isinstance(sent.get("type"), str) for sent in sent_events), failed
    # What the example did (--hypothesis-show-statistics): how the calls ended, on how many events one failed.
    return [f"{name} ended {call.outcome}" for name, call in world.calls.items()] + [f"{failed} failed on"]


STATES = st.tuples(
    st.sampled_from(PHONE_STATES), st.sampled_from(HTTP_STATES), st.sampled_from(INBOUND_STATES)
)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(states=STATES, events=EVENTS)
@example(
    # A bridged call ends; the end of its recording comes with a type that is no string: it escaped the
    # dispatch (TypeError, unhashable type: 'list').
    states=("bridged", "ringing_manager", "ringing_manager"),
    events=[
        ("ChannelDestroyed", "phone-manager", 0, [], True),
        ("RecordingFailed", "phone-manager", 0, [("replace", True, 0, [], "")], False),
    ],
)
@example(
    # A PlaybackFinished naming no channel, its playback an integer: AttributeError escaped the dispatch.
    states=("ringing_customer", "ringing_manager", "ringing_manager"),
    events=[("PlaybackFinished", "none", 0, [("replace", True, 2, 1, "")], False)],
)
@example(
    # A StasisStart whose arguments are an integer: TypeError (len) escaped the dispatch.
    states=("ringing_customer", "ringing_manager", "ringing_manager"),
    events=[("StasisStart", "stray", 0, [("replace", True, 3, 5, "")], False)],
)
@example(
    # The customer's leg destroyed with a cause that is the customer's number: kept in the row (and the API).
    states=("ringing_customer", "ringing_manager", "ringing_manager"),
    events=[("ChannelDestroyed", "phone-customer", 0, [("replace", True, 2, 7654321, "")], False)],
)
@example(
    # A phone's StasisStart whose call id (its Stasis arguments) is the customer's number: logged raw.
    states=("ringing_customer", "ringing_manager", "ringing_manager"),
    events=[("StasisStart", "stray", 0, [("replace", False, 5, NUMBER, "")], False)],
)
def test_hostile_events_neither_break_a_call_nor_tell_the_number(
    states: tuple[str, str, str], events: list[tuple[str, str, int, list[Mutation], bool]]
) -> None:
    # A stray channel hears its prompt for no time here.
    with mock.patch.object(legs_module, "STRAY_PROMPT_SECONDS", 0):
        for seen in asyncio.run(_run(states, events)):
            event(seen)
