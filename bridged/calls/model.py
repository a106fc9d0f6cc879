"""A masked call as data: its states and the transitions between them, the events it reacts to, the
call itself, and the ids of its legs.

A call links a manager's channel and a customer's channel in a mixing bridge. On an outbound call bridged
originates the customer's channel on the trunk, and the customer's number is used exactly once, in its
dial string. On an inbound call (direction ``inbound``) the customer's channel is the caller's, already
there; bridged rings managers' legs (several at once for a ring group) until one answers.
Everything a manager's channel can see is a label.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..config import Manager
from ..labels import Label
from ..orders import Order
from ..outcomes import CallEnd
from ..recording_state import RecordingState
from ..redact import redact
from ..routing import Route


class CallState(StrEnum):
    REQUESTED = "requested"
    RINGING_MANAGER = "ringing_manager"
    RINGING_CUSTOMER = "ringing_customer"
    ANNOUNCING = "announcing"
    BRIDGED = "bridged"
    # Before the hangup, the manager hears why the call did not go ahead (an inbound caller: that nobody
    # answered, or that bridged cannot take the call).
    ENDING = "ending"
    ENDED = "ended"


# Every state change a call may make (bridged.calls.steps makes them); anything else is a bug
# (InvalidTransition). Every live state may end: that is how a call is aborted.
TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.REQUESTED: frozenset(
        {CallState.RINGING_MANAGER, CallState.RINGING_CUSTOMER, CallState.ENDING, CallState.ENDED}
    ),
    # An outbound call rings the customer once the manager answered; an inbound call, whose caller is
    # already on the line, announces the recording or bridges at once.
    CallState.RINGING_MANAGER: frozenset(
        {
            CallState.RINGING_CUSTOMER,
            CallState.ANNOUNCING,
            CallState.BRIDGED,
            CallState.ENDING,
            CallState.ENDED,
        }
    ),
    CallState.RINGING_CUSTOMER: frozenset(
        {CallState.ANNOUNCING, CallState.BRIDGED, CallState.ENDING, CallState.ENDED}
    ),
    CallState.ANNOUNCING: frozenset({CallState.BRIDGED, CallState.ENDING, CallState.ENDED}),
    CallState.BRIDGED: frozenset({CallState.ENDED}),
    CallState.ENDING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


class InvalidTransition(Exception):
    pass


class Event(StrEnum):
    """What happened to a call, as its reactions are keyed (bridged.calls.engine.REACTIONS)."""

    ORIGINATE_MANAGER = "originate_manager"  # an HTTP call was accepted: ring the manager
    TERMINATE = "terminate"  # an API client asked to end the call
    RECONCILE = "reconcile"  # the event stream (re)connected: check the legs against Asterisk
    # A phone's own channel (it dialled the order's code) entered bridged's application.
    MANAGER_IN_STASIS = "manager_in_stasis"
    # The manager answered a leg bridged rang (an HTTP call's, or one of those an inbound call rings): the
    # Dial event of a leg made in the application, or the StasisStart of one an older release originated.
    MANAGER_ANSWERED = "manager_answered"
    # An inbound call: the caller's channel entered bridged's application.
    CUSTOMER_IN_STASIS = "customer_in_stasis"
    # The customer's leg bridged dialled was answered (it has been in the application since it was made).
    CUSTOMER_ANSWERED = "customer_answered"
    # A leg left: its hangup was requested or it left Stasis (its cause may still be to come) ...
    MANAGER_LEFT = "manager_left"
    CUSTOMER_LEFT = "customer_left"
    # ... or is gone (ChannelDestroyed, with its cause). A leg that is gone has left: where a state
    # has no reaction to *_GONE, its reaction to *_LEFT applies.
    MANAGER_GONE = "manager_gone"
    CUSTOMER_GONE = "customer_gone"
    # ... or was cut off: its hangup was asked of Asterisk by neither its phone nor bridged (an
    # administrator's ``channel request hangup``, AMI Hangup, another ARI application's DELETE: a soft
    # request on a leg no dial of bridged's rings, docs/asterisk.md). Where a state has no reaction to
    # *_CUT_OFF, its reaction to *_LEFT applies.
    MANAGER_CUT_OFF = "manager_cut_off"
    CUSTOMER_CUT_OFF = "customer_cut_off"
    ANNOUNCEMENT_DONE = "announcement_done"  # the recording announcement to the customer finished
    PROMPT_DONE = "prompt_done"  # the prompt to the manager (an inbound call: to the caller) finished
    CUSTOMER_CALLER_ID = "customer_caller_id"  # the trunk put someone's identity on the customer leg
    TRANSFER_ASKED = "transfer_asked"  # a leg sent a REFER
    RECORDING_ENDED = "recording_ended"  # Asterisk's last event about the call's recording
    # bridged's own timer on a canary call (ring, then answer; record, then end) or a canary order's call
    # (the customer "does not answer")
    CANARY_TIMER = "canary_timer"


# Where a state has no reaction to a leg being gone (or cut off), it reacts as to the leg having left.
LEFT_FOR_GONE = {
    Event.MANAGER_GONE: Event.MANAGER_LEFT,
    Event.CUSTOMER_GONE: Event.CUSTOMER_LEFT,
    Event.MANAGER_CUT_OFF: Event.MANAGER_LEFT,
    Event.CUSTOMER_CUT_OFF: Event.CUSTOMER_LEFT,
}

# bridged's own events (by their "type"), queued to a call's worker like Asterisk's.
INTERNAL_EVENTS = {
    "OriginateManager": Event.ORIGINATE_MANAGER,
    "Terminate": Event.TERMINATE,
    "Reconcile": Event.RECONCILE,
    "CanaryTimer": Event.CANARY_TIMER,
}


INBOUND = "inbound"  # the direction of a call a customer made to the shop's number


class ManagerLegFailed(Exception):
    """The manager's phone could not be called (HTTP path)."""


def manager_leg_id(call_id: str) -> str:
    """The channel id of an HTTP call's manager leg (bridged makes and dials it)."""
    return f"{call_id}-manager"


def ring_leg_id(call_id: str, number: int) -> str:
    """The channel id of the ``number``-th manager leg an inbound call rings (from 1)."""
    return f"{call_id}-m{number}"


CUSTOMER_LEG_SUFFIX = "-customer"


def customer_leg_id(call_id: str) -> str:
    """The channel id of a call's customer leg: known, and in the row, before the leg exists."""
    return f"{call_id}{CUSTOMER_LEG_SUFFIX}"


def new_call_id() -> str:
    """A random call id that the log redaction leaves readable.

    About half of all hex UUIDs hold a run of 7+ digits, which the phone-number mask would blank out
    in every log line about that call; those are drawn again.
    """
    while True:
        candidate = uuid.uuid4().hex
        if redact(candidate) == candidate:
            return candidate


def caller_number(value: str) -> str:
    """The number part of a caller id string (``"Name" <number>`` or a bare number)."""
    match = re.search(r"<([^<>]*)>\s*$", value)
    return (match[1] if match else value).strip()


RowWrite = Callable[[], Awaitable[None]]


@dataclass
class Ringing:
    """Whom an inbound call rings: the steps still to try (each rung at once: one manager, or a whole ring
    group), and the legs ringing now."""

    steps: collections.deque[tuple[Manager, ...]]
    # The caller's keyed hash (bridged.callers), to remember who talked to them; None: withheld.
    caller_key: str | None = None
    legs: dict[str, Manager] = field(default_factory=dict)  # channel id -> the manager it rings
    rung: list[str] = field(default_factory=list)  # every leg rung, to forget with the call
    causes: dict[str, int] = field(default_factory=dict)  # a leg gone unanswered -> its hangup cause
    # How many steps of the plan have been rung (the call's row keeps it, for a daemon adopting the call).
    tried: int = 0

    def next_step(self) -> tuple[Manager, ...]:
        """The next step of the plan, counted as rung."""
        self.tried += 1
        return self.steps.popleft()


@dataclass(frozen=True)
class TurnedAway:
    """An inbound call bridged does not take (its attempt's row, if any, is the service's): the caller
    hears ``prompt`` and is hung up."""

    prompt: str


@dataclass(frozen=True)
class InboundPlan:
    """An inbound call the service took (bridged.service.CallService.take_inbound): whom it rings and
    what their phones show. ``write_row`` writes its row, in state ``ringing_manager`` (while the first
    phones are rung); it answers TurnedAway if bridged's database did not take it."""

    write_row: Callable[[], Awaitable[TurnedAway | None]]
    # Whom it rings, and the manager the call is for (its row's until someone answers).
    route: Route
    order_id: str | None
    label: Label
    caller_key: str | None
    caller_ref: str | None


@dataclass(frozen=True)
class CanaryPlan:
    """A call from outside to a canary number (bridged.canaries): nobody is rung; the caller hears ringing,
    a greeting, and is recorded. ``write_row`` writes its row (``canary``), its audit row and the alert."""

    write_row: Callable[[], Awaitable[TurnedAway | None]]
    manager: Manager | None  # the canary's manager (whose segment held it)
    order_id: str
    label: Label
    caller_ref: str | None


@dataclass
class Call:
    id: str
    # An inbound call's manager is the one it is for until someone answers, then who answered; None for a
    # caller bridged cannot tell, until someone answers.
    manager: Manager | None
    # None only for an inbound caller without an order (caller_ref names them, if their number is known).
    order_id: str | None
    direction: str
    order: Order | None  # None for a call adopted after a restart: its number is never needed again
    # What the manager's phone is shown as the other party (bridged.labels; the name is not kept in
    # the row, so an adopted call's label is the order alone).
    label: Label = field(kw_only=True)
    # An inbound caller without an order: letters derived from the keyed hash of their number (the row's).
    caller_ref: str | None = field(default=None, kw_only=True)
    state: CallState = CallState.REQUESTED
    manager_channel_id: str | None = None
    customer_channel_id: str | None = None
    bridge_id: str | None = None
    # The Asterisk node its channels are on ("": the first node) and the Stasis application they are in
    # ("": this daemon's own; another daemon's when this one adopted the call).
    node: str = ""
    app: str = ""
    # An HTTP call: other nodes where the manager's phone may be rung, should this one fail to allocate it.
    other_nodes: tuple[str, ...] = ()
    recording_name: str | None = None
    outcome: CallEnd | None = None
    hangup_cause: int | None = None
    dialstatus: str | None = None
    ended_by: str | None = None
    requested_at: float = field(default_factory=time.monotonic)
    answered_at: datetime | None = None
    manager_up: bool = False
    prompt_playback_id: str | None = None
    announcement_playback_id: str | None = None
    ringback_playback_id: str | None = None
    manager_cause: int | None = None
    # The manager's leg bridged rang for an HTTP call was asked softly to hang up while it rang: by its
    # dial's timeout, or by someone else (its ChannelDestroyed tells which: bridged.calls.events.cut_off).
    manager_asked_to_hang_up: bool = False
    # The recording's clock (host time): from the answer to its request (an adopted call: from the
    # answer) to bridged stopping it; and what it was judged to hold, once known.
    recording_started_at: datetime | None = None
    recording_stopped_at: datetime | None = None
    recording_state: RecordingState | None = None
    # The customer's leg is in the application: its answer is then a Dial event (a leg made there by an
    # earlier release, adopted). A leg bridged rings now is originated into the dialplan and enters the
    # application once answered: its StasisStart (state Up) is its answer (bridged.calls.steps.Steps.
    # originate_customer).
    customer_in_app: bool = False
    # The customer leg's caller id was changed by the trunk (a carrier's identity headers) before the
    # leg entered Stasis: the label goes back in before the bridge.
    customer_caller_id_dirty: bool = False
    # Legs Asterisk already hangs up (ChannelHangupRequest/ChannelDestroyed seen): not hung up again.
    gone: set[str] = field(default_factory=set)
    # Resolved once the manager leg of an HTTP-triggered call is ringing (or could not be rung).
    started: asyncio.Future[None] | None = None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    # True while the worker handles an event: a SIGTERM drain waits for the step to finish.
    handling: bool = False
    # True while the worker waits for the call's next event (its queue empty); an event that comes then is
    # read at once by the engine (bridged.calls.engine.CallEngine._deliver), what it means kept here for the
    # worker: the event, and the Event (or the exception) its reading gave.
    waiting: bool = False
    read_ahead: tuple[dict[str, Any], Event | Exception] | None = None
    # Writes to the call's row the database did not take yet, oldest first (bridged.calls.rows).
    unwritten: collections.deque[tuple[str, RowWrite]] = field(default_factory=collections.deque)
    # An inbound call: whom it rings (None on other calls, and once the plan is not known yet).
    ring: Ringing | None = None
    # False for an inbound call bridged turned away: the service wrote its attempt's row; the call writes
    # nothing (and sends no webhook) while the caller hears why.
    has_row: bool = True
    # An inbound call to a canary number (the alarm): answered as a voicemail, nobody rung.
    canary: bool = False
    # A manager's call to a canary order: it rings out as an unanswered customer, the carrier never dialled.
    canary_touch: bool = False
    # A call dialled from a phone: its row being written (in state ringing_customer) while the manager's
    # channel enters Stasis; True once written, False if bridged's database did not take it (the service
    # wrote the refusal's row, and the call ends with the manager's prompt and the customer's leg hung up).
    row_written: asyncio.Future[bool] | None = None
    # A call dialled from a phone whose customer was rung at the decision (bridged.calls.engine.expect's
    # ring_now): the customer's originate, sent before the manager's channel entered Stasis.
    originating: asyncio.Future[Any] | None = None

    @property
    def inbound(self) -> bool:
        return self.direction == INBOUND


@dataclass
class PendingCall:
    """A call accepted by the service, waiting for its manager channel to enter Stasis."""

    call_id: str
    order: Order
    manager: Manager
    direction: str
    manager_channel_id: str | None
    label: Label = field(kw_only=True)
    created: float = field(default_factory=time.monotonic)
    # The node the call is decided for ("": the first), and (HTTP path) the next ones to try.
    nodes: tuple[str, ...] = field(default=(), kw_only=True)
    # The order's phone is a canary number (bridged.canaries): the customer is never dialled.
    canary: bool = field(default=False, kw_only=True)
    row_written: asyncio.Future[bool] | None = field(default=None, kw_only=True)  # as Call.row_written
    # The call, its customer rung already (bridged.calls.engine.expect's ring_now), until the manager's
    # channel enters Stasis.
    early: Call | None = field(default=None, kw_only=True)

    def row_being_written(self, written: asyncio.Future[bool]) -> None:
        self.row_written = written
        if self.early is not None:
            self.early.row_written = written

    def labelled(self, label: Label) -> None:
        """The call's label, decided once its customer's originate was sent (bridged.service)."""
        self.label = label
        if self.early is not None:
            self.early.label = label

    def call(self, manager_channel_id: str | None) -> Call:
        """The call this becomes, its manager's leg being ``manager_channel_id``."""
        return Call(
            id=self.call_id,
            manager=self.manager,
            order_id=self.order.id,
            direction=self.direction,
            order=self.order,
            label=self.label,
            manager_channel_id=manager_channel_id,
            node=self.nodes[0] if self.nodes else "",
            other_nodes=self.nodes[1:],
            canary_touch=self.canary,
            row_written=self.row_written,
        )


def channel_id_of(event: dict[str, Any]) -> str:
    """The id of the channel an ARI event is about ("" when it names none)."""
    channel = event.get("channel")
    value = channel.get("id") if isinstance(channel, dict) else None
    return value if isinstance(value, str) else ""


def answered_leg(event: dict[str, Any]) -> str:
    """The leg a manager answered: the dialled channel (``peer``) of a Dial event, the channel of any
    other ("" when the event names none)."""
    peer = event.get("peer")
    return channel_id_of({"channel": peer} if event.get("type") == "Dial" else event)
