"""Why a call did not go ahead and how a call ended, and what each means on a phone and over HTTP.

A :class:`Refusal` is decided by the service before any leg is dialled; an :class:`Outcome` is how a call
that went ahead ended (the call row's ``outcome``; a refused attempt's row holds its refusal there). This
module is the one place that says which prompt a manager hears for each (a key of the config's
``prompts``), which answer the dialplan gets for a refusal (final, or one another daemon may take), and
which HTTP error an API client gets (status, stable id, message): the phone path and the HTTP path only
look them up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from . import dialplan
from .config import Prompts


class Refusal(StrEnum):
    """Why a call does not go ahead; the values are stable ids (audit rows, call rows, metrics)."""

    UNKNOWN_MANAGER = "unknown_manager"
    # HTTP path: the manager's phone is not registered (it would only ring into the void).
    MANAGER_NOT_REGISTERED = "manager_not_registered"
    INVALID_CODE = "invalid_code"
    UNKNOWN_ORDER = "unknown_order"
    DENIED = "denied"
    LOOKUP_FAILED = "lookup_failed"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    INVALID_PHONE = "invalid_phone"
    # bridged's own database did not take the call's row: the call is not placed.
    DATABASE_UNAVAILABLE = "database_unavailable"
    # The manager is past one of their budgets (bridged.limits) until the window frees a slot.
    RATE_LIMITED = "rate_limited"


class Outcome(StrEnum):
    COMPLETED = "completed"
    CUSTOMER_BUSY = "customer_busy"
    CUSTOMER_NO_ANSWER = "customer_no_answer"
    CUSTOMER_UNAVAILABLE = "customer_unavailable"
    CUSTOMER_CONGESTION = "customer_congestion"
    CUSTOMER_ABANDONED = "customer_abandoned"
    MANAGER_ABANDONED = "manager_abandoned"
    MANAGER_NO_ANSWER = "manager_no_answer"
    MANAGER_UNAVAILABLE = "manager_unavailable"
    CANCELLED = "cancelled"
    FAILED = "failed"
    # An inbound call nobody answered: every manager rung was unreachable, busy or let it ring out, or
    # the caller hung up while they rang. The shop calls the customer back (webhook call.missed, /ops/).
    MISSED = "missed"


# What a call that went ahead ends with: how it ended, or why it could not go on after all (a call adopted
# while its manager's phone rang, whose order may not be called any more: bridged.calls.steps._order_again).
CallEnd = Outcome | Refusal

# The refusals a refused attempt's call row can hold as its outcome. The others are decided before there
# is a manager or an order code to put in a row (bridged.service): the audit trail alone has them.
ROW_REFUSALS = tuple(
    reason
    for reason in Refusal
    if reason not in (Refusal.UNKNOWN_MANAGER, Refusal.MANAGER_NOT_REGISTERED, Refusal.INVALID_CODE)
)


@dataclass(frozen=True)
class HttpError:
    """What an API client is answered: ``{"error": {"id": error_id, "message": message}}``."""

    status: int
    error_id: str
    message: str
    # Seconds, sent as Retry-After: when trying again makes sense.
    retry_after: int | None = None


@dataclass(frozen=True)
class RefusalMeaning:
    prompt: str  # the Prompts field the manager hears
    http: HttpError
    # The kind of the phone path's answer (bridged.dialplan.reply_refused): ``refused``, a decision on the
    # call; or ``unavailable``/``overloaded``, this daemon's own state, which the dialplan takes to the next
    # daemon if there is one.
    reply_kind: str = dialplan.REFUSED


REFUSALS: dict[Refusal, RefusalMeaning] = {
    Refusal.UNKNOWN_MANAGER: RefusalMeaning(
        "unknown_manager", HttpError(404, "unknown_manager", "no such manager")
    ),
    # Only the HTTP path refuses this one (a phone that dialled is registered); its prompt is for form's sake.
    Refusal.MANAGER_NOT_REGISTERED: RefusalMeaning(
        "unavailable", HttpError(409, "manager_not_registered", "the manager's phone is not registered")
    ),
    Refusal.INVALID_CODE: RefusalMeaning(
        "invalid_code", HttpError(422, "invalid_order_id", "the order id is not well-formed")
    ),
    Refusal.UNKNOWN_ORDER: RefusalMeaning("unknown_order", HttpError(404, "unknown_order", "no such order")),
    Refusal.DENIED: RefusalMeaning(
        "denied", HttpError(403, "order_not_allowed", "this manager may not call this order's customer")
    ),
    Refusal.LOOKUP_FAILED: RefusalMeaning(
        "lookup_failed",
        HttpError(503, "order_lookup_failed", "the shop's order database did not answer", retry_after=5),
    ),
    Refusal.UNAVAILABLE: RefusalMeaning(
        "unavailable",
        HttpError(503, "telephony_unavailable", "Asterisk is not connected", retry_after=5),
        dialplan.UNAVAILABLE,
    ),
    # The guard lets calls through again as soon as Asterisk has caught up, within a second or two.
    Refusal.OVERLOADED: RefusalMeaning(
        "overloaded",
        HttpError(
            503,
            "overloaded",
            "Asterisk is behind on bridged's requests; try again in a few seconds",
            retry_after=2,
        ),
        dialplan.OVERLOADED,
    ),
    # The order exists, but its phone value is not a valid number: it is never dialled.
    Refusal.INVALID_PHONE: RefusalMeaning(
        "invalid_phone",
        HttpError(422, "invalid_phone", "the order's phone number is not a valid number; it was not dialled"),
    ),
    Refusal.DATABASE_UNAVAILABLE: RefusalMeaning(
        "unavailable",
        HttpError(
            503, "database_unavailable", "bridged's database did not answer; try again shortly", retry_after=5
        ),
    ),
    # Retry-After is the seconds until the window frees a slot (the refusal carries it): this is a fallback.
    Refusal.RATE_LIMITED: RefusalMeaning(
        "rate_limited",
        HttpError(429, "rate_limited", "this manager is past a call budget; try again later", retry_after=60),
    ),
}

# A daemon's own state, not a decision on the call: the refusals another daemon may take the call after.
PASSED_ON = frozenset(reason for reason in Refusal if REFUSALS[reason].reply_kind in dialplan.PASS_ON)

# The one outcome an API client is answered with as an error: the manager's phone could not be called,
# so the POST that asked for the call did not start one.
OUTCOME_ERRORS: dict[Outcome, HttpError] = {
    Outcome.MANAGER_UNAVAILABLE: HttpError(
        409, "manager_unavailable", "the manager's phone could not be called"
    ),
}

# What the manager hears when the customer leg ends unanswered (any other outcome: customer_unavailable).
_OUTCOME_PROMPTS = {
    Outcome.CUSTOMER_BUSY: "busy",
    Outcome.CUSTOMER_NO_ANSWER: "no_answer",
    Outcome.CUSTOMER_CONGESTION: "congestion",
}


def refusal_prompt(prompts: Prompts, reason: Refusal) -> str:
    prompt: str = getattr(prompts, REFUSALS[reason].prompt)
    return prompt


def outcome_prompt(prompts: Prompts, outcome: Outcome) -> str:
    prompt: str = getattr(prompts, _OUTCOME_PROMPTS.get(outcome, "customer_unavailable"))
    return prompt


# -- how an unanswered leg ended, from what Asterisk says -------------------------------------------

# Q.850 causes of a customer leg that never answered.
_CAUSE_OUTCOMES = {
    17: Outcome.CUSTOMER_BUSY,
    18: Outcome.CUSTOMER_NO_ANSWER,
    19: Outcome.CUSTOMER_NO_ANSWER,
    34: Outcome.CUSTOMER_CONGESTION,
    38: Outcome.CUSTOMER_CONGESTION,
    41: Outcome.CUSTOMER_CONGESTION,
    42: Outcome.CUSTOMER_CONGESTION,
    44: Outcome.CUSTOMER_CONGESTION,
}
_DIALSTATUS_OUTCOMES = {
    "BUSY": Outcome.CUSTOMER_BUSY,
    "NOANSWER": Outcome.CUSTOMER_NO_ANSWER,
    "CONGESTION": Outcome.CUSTOMER_CONGESTION,
    "CHANUNAVAIL": Outcome.CUSTOMER_UNAVAILABLE,
}
# Causes of a manager leg (HTTP path) that was not answered: rang out, declined or busy.
_MANAGER_NO_ANSWER_CAUSES = {16, 17, 18, 19, 21}


def manager_outcome_for_unanswered(cause: int | None) -> Outcome:
    return Outcome.MANAGER_NO_ANSWER if cause in _MANAGER_NO_ANSWER_CAUSES else Outcome.MANAGER_UNAVAILABLE


def outcome_for_unanswered(cause: int | None, dialstatus: str | None) -> Outcome:
    """Why the customer leg ended before answer, from the Dial status or else the hangup cause."""
    if dialstatus and dialstatus in _DIALSTATUS_OUTCOMES:
        return _DIALSTATUS_OUTCOMES[dialstatus]
    if cause is not None and cause in _CAUSE_OUTCOMES:
        return _CAUSE_OUTCOMES[cause]
    return Outcome.CUSTOMER_UNAVAILABLE


# -- what the service answers (bridged.service.CallService) ------------------------------------------


@dataclass(frozen=True)
class Refused:
    reason: Refusal
    call_id: str | None = None  # the refused attempt's row, when it has one
    # Seconds until trying again makes sense (rate_limited: until the window frees a slot).
    retry_after: int | None = None


@dataclass(frozen=True)
class NotStarted:
    """An HTTP call that ended before it began: its manager leg could not be rung."""

    outcome: Outcome
    call_id: str


# What the service tells the shop besides calls' state changes (bridged.webhooks publish_event): the event
# type, what the event is about (an id for the outbox) and its data. No number in any of them.
Alert = Callable[[str, str, dict[str, object]], None]
