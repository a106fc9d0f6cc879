"""bridged.outcomes: every refusal and outcome has its prompt and its HTTP error, each id stable and unique."""

from __future__ import annotations

import dataclasses

import pytest

from bridged import dialplan
from bridged.api.errors import outcome_error, refusal_error
from bridged.config import Prompts
from bridged.outcomes import (
    OUTCOME_ERRORS,
    PASSED_ON,
    REFUSALS,
    Outcome,
    Refusal,
    outcome_for_unanswered,
    outcome_prompt,
    refusal_prompt,
)

PROMPT_FIELDS = {f.name for f in dataclasses.fields(Prompts)}


def test_every_refusal_has_a_prompt_and_an_http_error_with_a_stable_id() -> None:
    assert set(REFUSALS) == set(Refusal)
    assert {meaning.prompt for meaning in REFUSALS.values()} <= PROMPT_FIELDS
    ids = [meaning.http.error_id for meaning in REFUSALS.values()]
    assert len(set(ids)) == len(ids)
    prompts = Prompts()
    assert refusal_prompt(prompts, Refusal.DENIED) == prompts.denied
    assert refusal_prompt(prompts, Refusal.INVALID_CODE) == prompts.invalid_code
    assert refusal_prompt(prompts, Refusal.INVALID_PHONE) == "cannot-complete-as-dialed"


# The dialplan's answer to each refusal on the phone path: only a daemon's own state (no Asterisk, stopping;
# Asterisk behind) is one another daemon may take; every decision on the call is final.
DIALPLAN_KINDS = {
    Refusal.UNKNOWN_MANAGER: dialplan.REFUSED,
    Refusal.MANAGER_NOT_REGISTERED: dialplan.REFUSED,
    Refusal.INVALID_CODE: dialplan.REFUSED,
    Refusal.UNKNOWN_ORDER: dialplan.REFUSED,
    Refusal.DENIED: dialplan.REFUSED,
    Refusal.LOOKUP_FAILED: dialplan.REFUSED,
    Refusal.UNAVAILABLE: dialplan.UNAVAILABLE,
    Refusal.OVERLOADED: dialplan.OVERLOADED,
    Refusal.INVALID_PHONE: dialplan.REFUSED,
    Refusal.DATABASE_UNAVAILABLE: dialplan.REFUSED,
    Refusal.RATE_LIMITED: dialplan.REFUSED,
}


@pytest.mark.parametrize("reason", list(Refusal))
def test_every_refusal_has_its_dialplan_answer(reason: Refusal) -> None:
    assert REFUSALS[reason].reply_kind == DIALPLAN_KINDS[reason]
    assert REFUSALS[reason].reply_kind in dialplan.REPLY_KINDS - {dialplan.OK}


def test_the_refusals_passed_on_are_those_the_dialplan_takes_to_the_next_daemon() -> None:
    assert set(DIALPLAN_KINDS) == set(Refusal)
    assert PASSED_ON == {reason for reason in Refusal if DIALPLAN_KINDS[reason] in dialplan.PASS_ON}
    assert PASSED_ON == {Refusal.UNAVAILABLE, Refusal.OVERLOADED}


@pytest.mark.parametrize("reason", list(Refusal))
def test_a_refusal_over_http_is_its_error(reason: Refusal) -> None:
    error = refusal_error(reason)
    http = REFUSALS[reason].http
    assert (error.status, error.error_id, error.message, error.retry_after) == (
        http.status,
        http.error_id,
        http.message,
        http.retry_after,
    )
    assert 400 <= error.status < 600
    # only a 503 and a 429 say when to retry
    assert (error.retry_after is not None) == (error.status in (429, 503))


def test_the_known_http_errors_of_refusals() -> None:
    overloaded = refusal_error(Refusal.OVERLOADED)
    assert (overloaded.status, overloaded.error_id, overloaded.retry_after) == (503, "overloaded", 2)
    assert refusal_error(Refusal.DATABASE_UNAVAILABLE).error_id == "database_unavailable"
    assert refusal_error(Refusal.INVALID_CODE).error_id == "invalid_order_id"
    failed = outcome_error(Outcome.MANAGER_UNAVAILABLE, details={"call_id": "c"})
    assert (failed.status, failed.error_id, failed.details) == (409, "manager_unavailable", {"call_id": "c"})
    assert set(OUTCOME_ERRORS) == {Outcome.MANAGER_UNAVAILABLE}


def test_outcome_prompts() -> None:
    prompts = Prompts()
    assert outcome_prompt(prompts, Outcome.CUSTOMER_BUSY) == prompts.busy
    assert outcome_prompt(prompts, Outcome.CUSTOMER_NO_ANSWER) == prompts.no_answer
    assert outcome_prompt(prompts, Outcome.CUSTOMER_CONGESTION) == prompts.congestion
    assert outcome_prompt(prompts, Outcome.FAILED) == prompts.customer_unavailable


def test_outcome_for_unanswered_prefers_dialstatus() -> None:
    assert outcome_for_unanswered(17, "NOANSWER") is Outcome.CUSTOMER_NO_ANSWER
    assert outcome_for_unanswered(19, "RINGING") is Outcome.CUSTOMER_NO_ANSWER
    assert outcome_for_unanswered(None, None) is Outcome.CUSTOMER_UNAVAILABLE
    assert outcome_for_unanswered(16, "") is Outcome.CUSTOMER_UNAVAILABLE
