"""What the call page says: a call's state and outcome, and a refusal, in the shop's words (no I/O).

The page shows a call as its phase in words, never a call id, a channel or a number.
"""

from __future__ import annotations

from typing import Any

from ..outcomes import Outcome
from ..store.calls import CallRow

# What the page says for a call the service did not place (by the API's error id); any other error shows
# the API's own message.
REFUSAL_WORDS = {
    "order_not_allowed": "You may not call the customer of order {order}.",
    "unknown_order": "There is no order {order}.",
    "invalid_order_id": "{order} is not an order number bridged accepts.",
    "invalid_phone": "The customer of order {order} has no valid phone number; nobody was called.",
    "unknown_manager": "This link names a manager bridged does not know; ask for a new one.",
    "manager_not_registered": "Your phone is not connected; switch it on and open this link again.",
    "manager_unavailable": "Your phone could not be called.",
    "telephony_unavailable": "bridged cannot place calls right now; try again in a minute.",
    "overloaded": "bridged is busy right now; try again in a few seconds.",
    "order_lookup_failed": "The shop's order database did not answer; try again in a minute.",
    "database_unavailable": "bridged cannot place calls right now; try again in a minute.",
}

# The call's state, as the page shows it: (phase, words). "ended" adds the outcome in words.
PHASES = {
    "requested": ("ringing_manager", "Ringing your phone"),
    "ringing_manager": ("ringing_manager", "Ringing your phone"),
    "ringing_customer": ("ringing_customer", "Ringing the customer"),
    "announcing": ("connecting", "The customer answered; connecting"),
    "bridged": ("connected", "Connected"),
    "ending": ("ending", "Ending the call"),
    "ended": ("ended", "Ended"),
}
LIVE_STATES = frozenset({"requested", "ringing_manager", "ringing_customer", "announcing", "bridged"})
OUTCOME_WORDS = {
    Outcome.COMPLETED: "call completed",
    Outcome.CUSTOMER_BUSY: "the customer's line was busy",
    Outcome.CUSTOMER_NO_ANSWER: "the customer did not answer",
    Outcome.CUSTOMER_UNAVAILABLE: "the customer could not be reached",
    Outcome.CUSTOMER_CONGESTION: "the network was busy; try again later",
    Outcome.CUSTOMER_ABANDONED: "the customer hung up before you were connected",
    Outcome.MANAGER_ABANDONED: "you hung up before the customer answered",
    Outcome.MANAGER_NO_ANSWER: "your phone was not answered",
    Outcome.MANAGER_UNAVAILABLE: "your phone could not be called",
    Outcome.CANCELLED: "the call was cancelled",
    Outcome.FAILED: "the call failed",
    Outcome.MISSED: "nobody answered the customer's call",  # inbound only: no link places one
}


def progress(state: str, outcome: str | None, order_id: str | None) -> dict[str, Any]:
    """A call as the page shows it: no id, no channel, no number; its phase, in words."""
    phase, words = PHASES.get(state, ("unknown", state.replace("_", " ")))
    if state == "ended" and outcome:
        try:
            outcome_words = OUTCOME_WORDS[Outcome(outcome)]
        except ValueError:
            outcome_words = outcome.replace("_", " ")
        words = f"Ended: {outcome_words}"
    return {
        "order_id": order_id,
        "state": state,
        "outcome": outcome,
        "phase": phase,
        "text": words,
        "live": state in LIVE_STATES,
    }


def progress_of(row: CallRow) -> dict[str, Any]:
    return progress(row.state, row.outcome, row.order_id)
