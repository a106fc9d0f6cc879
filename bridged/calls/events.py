"""What an ARI event says about a call's legs (bridged.calls.engine.CallEngine reads each with these):
which channel it names, which leg a StasisStart says it is, how a leg bridged rang is doing (Dial), and
the hangup causes of the legs that end."""

from __future__ import annotations

from typing import Any

from .. import dialplan
from .model import Call, CallState, Event

# The highest Q.850 cause (127, "Interworking, unspecified": a cancelled INVITE's).
Q850_MAX = 127


def dialled(call: Call, event: dict[str, Any]) -> Event | None:
    """A Dial event: how a leg bridged rang is doing. Its dial string (the customer's number) is never
    kept: only the status of the customer's leg (its outcome, if it is not answered)."""
    peer, status = channel_of(event, "peer"), event.get("dialstatus")
    if peer == call.customer_channel_id and not call.inbound:
        if status:
            call.dialstatus = str(status)
        # A leg rung from the dialplan is answered once it is in the application (its StasisStart): the
        # bridge needs it there.
        return Event.CUSTOMER_ANSWERED if status == "ANSWER" and call.customer_in_app else None
    ringing = peer == call.manager_channel_id or (call.ring is not None and peer in call.ring.legs)
    return Event.MANAGER_ANSWERED if ringing and status == "ANSWER" else None


def app_args(event: dict[str, Any]) -> tuple[dialplan.Leg, str] | None:
    """A StasisStart's arguments, as bridged.dialplan.parse_app_args reads them (None unless a list)."""
    args = event.get("args")
    return dialplan.parse_app_args(args) if isinstance(args, list) else None


def leg_of(event: dict[str, Any]) -> dialplan.Leg | None:
    """Which leg a StasisStart's arguments say the channel is."""
    parsed = app_args(event)
    return None if parsed is None else parsed[0]


def _asterisk_ends(event: dict[str, Any]) -> tuple[bool, int | None]:
    """Whether Asterisk hangs the event's leg up itself, and the Q.850 cause it gives for it, if any.

    Not so after StasisEnd (a channel leaving Stasis may stay up) or a soft hangup request (it may only
    interrupt the channel). A soft request's ``cause`` is no Q.850 cause either: Asterisk 22's
    ``ast_softhangup`` sends its AST_SOFTHANGUP_* flag there (32, EXPLICIT, for ARI's DELETE and for a
    dial's timeout; 16, APPUNLOAD, would read as normal clearing); the cause a DELETE gives comes with the
    channel's ChannelDestroyed. A cause that is not an integer (a bool is none) is no cause, nor is 0
    (AST_CAUSE_NOTDEFINED, "Unknown": the ChannelDestroyed of a leg hung up by ``channel request hangup``
    while it rang), nor one outside Q.850's 1-127 (AST_CAUSE_*): a SIP message's Reason header may carry
    any number, and the row and the API keep the cause (a customer's number there would be shown; one past
    2**31 not written at all)."""
    kind = event.get("type")
    hard = kind == "ChannelDestroyed" or (kind == "ChannelHangupRequest" and not event.get("soft"))
    cause = event.get("cause")
    return hard, cause if hard and type(cause) is int and 0 < cause <= Q850_MAX else None


# The Q.850 cause a made leg rung out by its dial's timeout is destroyed with ("User alerting, no answer").
RANG_OUT = 19


def cut_off(call: Call, event: dict[str, Any], manager: bool) -> bool:
    """Whether a leg's hangup was asked of Asterisk by neither its phone nor bridged: a soft request (a
    phone's BYE or CANCEL comes as a hard one) on a leg no dial of bridged's rings. A dial's timeout is a
    soft request too, on a manager's leg bridged rings and on a customer's leg an earlier release made in
    the application, while they ring: why they ended comes with their ChannelDestroyed (a manager's leg
    bridged rang for an HTTP call cut off so is told by it). bridged's own hangups come once the call ends
    (its prompt, its finish), where they are reacted to as legs that left."""
    if event.get("type") == "ChannelDestroyed":
        return manager and _ring_cut_off(call, event)
    if event.get("type") != "ChannelHangupRequest" or not event.get("soft"):
        return False
    if manager:
        return call.state is not CallState.RINGING_MANAGER
    return not (call.state is CallState.RINGING_CUSTOMER and call.customer_in_app)


def _ring_cut_off(call: Call, event: dict[str, Any]) -> bool:
    """Whether the manager's leg bridged rang for an HTTP call, destroyed while it rang after a soft
    request, was cut off. The dial's timeout and someone else's request (``channel request hangup``,
    another program's DELETE) are the same soft request; the destroyed leg tells them apart: the
    timeout's cause is 19, always (measured on the rig: rung out while the phone rang, sent only 100
    Trying, or never answered at all), the others' another (measured: 16, a DELETE's ``reason`` its own).
    A busy or declining phone sends a hard request, and no soft one. A DELETE with ``reason=no_answer``
    reads as the phone having rung out: it says so itself."""
    return (
        call.state is CallState.RINGING_MANAGER
        and call.manager_asked_to_hang_up
        and event.get("type") == "ChannelDestroyed"
        and event.get("cause") != RANG_OUT
    )


def note_leg_end(call: Call, event: dict[str, Any], manager: bool) -> None:
    hard, cause = _asterisk_ends(event)
    if hard:
        call.gone.add(channel_of(event) or "")
    elif manager and event.get("type") == "ChannelHangupRequest" and call.state is CallState.RINGING_MANAGER:
        call.manager_asked_to_hang_up = True  # a soft request: why comes with the leg's ChannelDestroyed
    if cause is None:
        return
    destroyed = event.get("type") == "ChannelDestroyed"
    if not manager and (call.hangup_cause is None or destroyed):
        # The destroyed leg's cause is the last word: a hard request's may differ from it.
        call.hangup_cause = cause
    if manager and (call.manager_cause is None or destroyed):
        call.manager_cause = cause
        # A leg cut off says nothing of the manager's phone: the call has no cause (as other cut-offs).
        if call.state is CallState.RINGING_MANAGER and not _ring_cut_off(call, event):
            call.hangup_cause = cause


def note_ring_end(call: Call, event: dict[str, Any]) -> None:
    """A manager's phone rung for an inbound call is going: its cause says why (busy, declined, rang out),
    and it is the leg's alone (the call's hangup cause is the caller's)."""
    assert call.ring is not None
    channel = channel_of(event) or ""
    hard, cause = _asterisk_ends(event)
    if hard:
        call.gone.add(channel)
    # The destroyed leg's cause is the last word.
    if cause is not None and (channel not in call.ring.causes or event.get("type") == "ChannelDestroyed"):
        call.ring.causes[channel] = cause


def state_of(event: dict[str, Any]) -> str | None:
    channel = event.get("channel")
    return channel.get("state") if isinstance(channel, dict) else None


def kind_of(event: dict[str, Any]) -> str | None:
    """An event's type; None for one that is not a string (no event Asterisk sends has such a type)."""
    kind = event.get("type")
    return kind if isinstance(kind, str) else None


def playback_of(event: dict[str, Any]) -> dict[str, Any]:
    """A playback event's playback ({} when it has none that is an object)."""
    playback = event.get("playback")
    return playback if isinstance(playback, dict) else {}


def played_on(event: dict[str, Any]) -> str | None:
    """The channel a playback event's playback plays to (``target_uri`` ``channel:<id>``), if any."""
    target = playback_of(event).get("target_uri")
    return target[len("channel:") :] if isinstance(target, str) and target.startswith("channel:") else None


def channel_of(event: dict[str, Any], key: str = "channel") -> str | None:
    channel = event.get(key)
    if isinstance(channel, dict):
        value = channel.get("id")
        return value if isinstance(value, str) else None
    return None


def in_stasis(channel: dict[str, Any]) -> bool:
    """Whether a channel (its snapshot) is in a Stasis application (any one)."""
    dialplan = channel.get("dialplan")
    return isinstance(dialplan, dict) and dialplan.get("app_name") == "Stasis"
