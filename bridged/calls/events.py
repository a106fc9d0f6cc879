"""What an ARI event says about a call's legs (bridged.calls.engine.CallEngine reads each with these):
which channel it names, which leg a StasisStart says it is, how a leg bridged rang is doing (Dial), and
the hangup causes of the legs that end."""

from __future__ import annotations

from typing import Any

from .. import dialplan
from .model import Call, CallState, Event


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


def leg_of(event: dict[str, Any]) -> dialplan.Leg | None:
    """Which leg a StasisStart's arguments say the channel is."""
    args = event.get("args")
    parsed = dialplan.parse_app_args(args) if isinstance(args, list) else None
    return None if parsed is None else parsed[0]


def note_leg_end(call: Call, event: dict[str, Any], manager: bool) -> None:
    kind = event.get("type")
    if kind == "ChannelDestroyed" or (kind == "ChannelHangupRequest" and not event.get("soft")):
        # Asterisk hangs this leg up itself. Not so after StasisEnd (a channel leaving Stasis may stay up)
        # or a soft hangup request (it may only interrupt the channel).
        call.gone.add(channel_of(event) or "")
    cause = event.get("cause")
    if not isinstance(cause, int):
        return
    if not manager and (call.hangup_cause is None or kind == "ChannelDestroyed"):
        # The destroyed leg's cause is the last word: a dialled leg that rang out is asked to hang up
        # with cause 32 first, and destroyed with 19 (no answer).
        call.hangup_cause = cause
    if manager and (call.manager_cause is None or kind == "ChannelDestroyed"):
        # As the customer's: a manager leg that rang out is asked to hang up with cause 32 first.
        call.manager_cause = cause
        if call.state is CallState.RINGING_MANAGER:
            call.hangup_cause = cause


def note_ring_end(call: Call, event: dict[str, Any]) -> None:
    """A manager's phone rung for an inbound call is going: its cause says why (busy, declined, rang out),
    and it is the leg's alone (the call's hangup cause is the caller's)."""
    assert call.ring is not None
    channel = channel_of(event) or ""
    kind = event.get("type")
    if kind == "ChannelDestroyed" or (kind == "ChannelHangupRequest" and not event.get("soft")):
        call.gone.add(channel)
    cause = event.get("cause")
    if isinstance(cause, int) and not isinstance(cause, bool):
        # The destroyed leg's cause is the last word (one that rang out: 32 first, then 19).
        if channel not in call.ring.causes or kind == "ChannelDestroyed":
            call.ring.causes[channel] = cause


def state_of(event: dict[str, Any]) -> str | None:
    channel = event.get("channel")
    return channel.get("state") if isinstance(channel, dict) else None


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
