"""What a leg's end events note on its call (bridged.calls.events note_leg_end, note_ring_end): which legs
Asterisk hangs up itself, and the Q.850 cause that says why a leg ended.

A soft ChannelHangupRequest carries no Q.850 cause: Asterisk 22's ``ast_softhangup`` (main/channel.c)
publishes ``{"cause": <its AST_SOFTHANGUP_* flag>, "soft": true}``, and ARI's ``DELETE /channels/{id}`` and
a dial's ``timeout`` are such requests, with the flag ``AST_SOFTHANGUP_EXPLICIT`` (32); the cause given to
the DELETE is set on the channel and comes with its ChannelDestroyed. Only a hard request (a cause queued
with the hangup) and ChannelDestroyed say why."""

from __future__ import annotations

import collections
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from bridged.calls.events import Q850_MAX, cut_off, note_leg_end, note_ring_end
from bridged.calls.model import Call, CallState, Ringing
from bridged.labels import Labeller

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_KINDS = st.sampled_from(["ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"])


def _call(state: CallState, *, ring: Ringing | None = None) -> Call:
    return Call(
        id="c1",
        manager=None,
        order_id="123",
        direction="api",
        order=None,
        label=Labeller().label("123"),
        state=state,
        manager_channel_id="c1-manager",
        customer_channel_id="c1-customer",
        ring=ring,
    )


def _event(kind: str, channel: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "channel": {"id": channel}, **fields}


def _q850(kind: str, fields: dict[str, Any]) -> int | None:
    """The Q.850 cause an event gives, if any: a hard request's or a destroyed channel's integer cause, in
    Q.850's range (1-127; 0, Asterisk's "Unknown", is none)."""
    cause = fields.get("cause")
    hard = kind == "ChannelDestroyed" or (kind == "ChannelHangupRequest" and not fields.get("soft"))
    return cause if hard and type(cause) is int and 0 < cause <= Q850_MAX else None


_FIELDS = st.fixed_dictionaries({}, optional={"cause": _JSON, "soft": _JSON})


@given(kind=_KINDS, fields=_FIELDS, manager=st.booleans(), state=st.sampled_from(list(CallState)))
@example(
    kind="ChannelHangupRequest", fields={"cause": 32, "soft": True}, manager=False, state=CallState.BRIDGED
)
@example(
    kind="ChannelHangupRequest",
    fields={"cause": 16, "soft": True},
    manager=True,
    state=CallState.RINGING_MANAGER,
)
@example(kind="ChannelDestroyed", fields={"cause": True}, manager=False, state=CallState.RINGING_CUSTOMER)
@example(kind="ChannelDestroyed", fields={"cause": 0}, manager=False, state=CallState.RINGING_CUSTOMER)
@example(kind="ChannelDestroyed", fields={"cause": 7654321}, manager=False, state=CallState.RINGING_CUSTOMER)
@example(kind="ChannelHangupRequest", fields={"cause": 2**40}, manager=True, state=CallState.RINGING_MANAGER)
def test_a_leg_end_notes_only_a_q850_cause(
    kind: str, fields: dict[str, Any], manager: bool, state: CallState
) -> None:
    """Any shape of cause and soft: a cause is noted only from a hard request or a destroyed channel, and
    only a positive integer (a bool is none; 0 is Asterisk's "Unknown", what a leg hung up by ``channel
    request hangup`` while it rang is destroyed with). Checked to fail before the change: a soft request's
    flag (32, 16) was taken as the leg's cause, and True as cause 1; later, 0 was kept as a cause."""
    call = _call(state)
    leg = call.manager_channel_id if manager else call.customer_channel_id
    assert leg is not None
    note_leg_end(call, _event(kind, leg, fields), manager)
    cause = _q850(kind, fields)
    if manager:
        assert call.manager_cause == cause
        assert call.hangup_cause == (cause if state is CallState.RINGING_MANAGER else None)
    else:
        assert (call.hangup_cause, call.manager_cause) == (cause, None)
    hard = kind == "ChannelDestroyed" or (kind == "ChannelHangupRequest" and not fields.get("soft"))
    assert call.gone == ({leg} if hard else set())


@given(first=_FIELDS, manager=st.booleans())
def test_a_soft_request_after_a_hard_one_keeps_the_hard_ones_cause(
    first: dict[str, Any], manager: bool
) -> None:
    """A hard request's cause stays until the destroyed channel's; a soft request in between changes
    nothing (before the change it did nothing either: only the first cause is kept; this pins that)."""
    call = _call(CallState.RINGING_MANAGER)
    leg = "c1-manager" if manager else "c1-customer"
    note_leg_end(call, _event("ChannelHangupRequest", leg, {"cause": 17}), manager)
    note_leg_end(call, _event("ChannelHangupRequest", leg, {**first, "soft": True}), manager)
    assert (call.manager_cause if manager else call.hangup_cause) == 17
    note_leg_end(call, _event("ChannelDestroyed", leg, {"cause": 19}), manager)
    assert (call.manager_cause if manager else call.hangup_cause) == 19


@given(kind=_KINDS, fields=_FIELDS)
@example(kind="ChannelHangupRequest", fields={"cause": 32, "soft": True})
@example(kind="ChannelHangupRequest", fields={"cause": False})
def test_a_ringing_phone_notes_only_a_q850_cause(kind: str, fields: dict[str, Any]) -> None:
    """The same for a manager's phone rung for an inbound call: its cause (busy, declined, rang out) is a
    Q.850 cause or none. Checked to fail before the change with the soft request's 32."""
    call = _call(CallState.RINGING_MANAGER, ring=Ringing(steps=collections.deque()))
    assert call.ring is not None
    note_ring_end(call, _event(kind, "c1-m1", fields))
    cause = _q850(kind, fields)
    assert call.ring.causes == ({} if cause is None else {"c1-m1": cause})
    assert call.hangup_cause is None and call.manager_cause is None


@given(
    soft=st.booleans(), cause=st.integers(min_value=0, max_value=127), state=st.sampled_from(list(CallState))
)
@example(soft=True, cause=19, state=CallState.RINGING_MANAGER)
@example(soft=True, cause=16, state=CallState.RINGING_MANAGER)
@example(soft=False, cause=16, state=CallState.RINGING_MANAGER)
def test_a_manager_leg_destroyed_while_it_rings_after_a_soft_request_was_cut_off_unless_it_rang_out(
    soft: bool, cause: int, state: CallState
) -> None:
    """The manager's leg bridged rings for an HTTP call: a soft request then its ChannelDestroyed. The
    dial's timeout gives 19 (measured, three ways: the phone ringing, sending only 100 Trying, silent); any
    other cause after a soft request is someone else's (measured: 16), and the call keeps no cause. Without
    a soft request (a busy or declining phone's is hard), or in another state, the destroyed leg is no
    cut-off. A customer's leg is never told this way."""
    call = _call(state)
    leg = "c1-manager"
    if soft:
        note_leg_end(call, _event("ChannelHangupRequest", leg, {"cause": 32, "soft": True}), True)
    destroyed = _event("ChannelDestroyed", leg, {"cause": cause})
    note_leg_end(call, destroyed, True)
    was_cut_off = soft and state is CallState.RINGING_MANAGER and cause != 19
    assert cut_off(call, destroyed, True) is was_cut_off
    assert cut_off(call, destroyed, False) is False
    ringing = state is CallState.RINGING_MANAGER and not was_cut_off
    assert call.hangup_cause == (cause if ringing and cause > 0 else None)
