"""bridged.dialplan against dialplan/bridged.conf: every name the module holds is used there, and every
name there is one the module knows."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridged import dialplan
from bridged.calls.legs import leg_variables
from bridged.config import DEFAULT_PROMPTS, LANGUAGES
from tests.unit.fakes import make_config

CONF = Path(__file__).resolve().parents[2] / "dialplan" / "bridged.conf"
TEXT = CONF.read_text(encoding="utf-8")
# The dialplan without its comments: what Asterisk runs.
CODE = "\n".join(line.split(";", 1)[0] for line in TEXT.splitlines())


def test_every_bridged_variable_is_known_and_used() -> None:
    assert set(re.findall(r"\bBRIDGED_[A-Z_]+\b", TEXT)) == dialplan.VARIABLES
    for name in dialplan.VARIABLES:
        assert re.search(rf"\b{name}\b", CODE), f"{name} is not used by the dialplan"


def test_the_file_says_the_version_the_daemon_needs_in_globals() -> None:
    sections = re.split(r"^\[", CODE, flags=re.M)
    [globals_] = [s for s in sections if s.startswith("globals]")]
    assert re.findall(r"^\s*(\w+)\s*=\s*(\S*)\s*$", globals_.split("]", 1)[1], flags=re.M) == [
        (dialplan.VERSION_VARIABLE, dialplan.VERSION)
    ]


def test_the_fastagi_script_is_the_one_bridged_serves() -> None:
    pattern = r"AGI\([^)]*/([A-Za-z_]+),\$\{" + dialplan.CODE + r"\},\$\{" + dialplan.MORE + r"\}\)"
    scripts = re.findall(pattern, CODE)
    assert scripts and set(scripts) == {dialplan.AGI_SCRIPT}
    assert len(scripts) == len(re.findall(r"\bAGI\(", CODE))  # no other AGI() call


def test_a_dialled_code_reaches_agi_uri_encoded() -> None:
    """AGI() splits its arguments at commas and strips quotes and backslashes: every code the dialplan
    takes from the dialled extension is URI-encoded before it becomes an argument."""
    values = re.findall(r"Set\(" + dialplan.CODE + r"=([^\n]*)\)\s*$", CODE, flags=re.M)
    from_exten = [v for v in values if v]
    assert from_exten == ["${URIENCODE(${EXTEN:3})}"]
    assert set(values) == {"", "${URIENCODE(${EXTEN:3})}"}


@given(st.text())
def test_code_from_arg_gives_back_what_was_dialled(dialled: str) -> None:
    # What Asterisk's URIENCODE sends (every byte outside the unreserved set as %XX): decoded whole.
    assert dialplan.code_from_arg(urllib.parse.quote(dialled, safe="")) == dialled
    # No '%', nothing to decode: the argument as it came, spaces and separators kept (never trimmed).
    assert dialplan.code_from_arg(dialled.replace("%", "")) == dialled.replace("%", "")


@pytest.mark.parametrize(
    ("arg", "code"),
    [
        ("10002%2C1", "10002,1"),
        ("%2210002%22", '"10002"'),
        ("%2010002", " 10002"),
        ("1%5C0002", "1\\0002"),
        ("%FF12", "\ufffd12"),  # not UTF-8: no code pattern takes U+FFFD
        ("", ""),
    ],
)
def test_code_from_arg_decodes_separators_and_keeps_what_no_code_has(arg: str, code: str) -> None:
    assert dialplan.code_from_arg(arg) == code


def test_the_targets_are_tried_in_order_and_the_daemon_is_told_whether_another_follows() -> None:
    order = CODE.split("[bridged-order]", 1)[1].split("\n[", 1)[0]
    # BRIDGED_AGI (or the default), then BRIDGED_AGI_2, _3, ...: the target after the one asked.
    assert "Set(BRIDGED_TARGET=agi://127.0.0.1:4573)" in order
    assert "Set(BRIDGED_TARGET=${BRIDGED_AGI_${BRIDGED_TRY}})" in order
    assert 'Set(BRIDGED_MORE=${IF($["${BRIDGED_AGI_$[${BRIDGED_TRY} + 1]}" = ""]?0:1)})' in order
    lines = [line.strip() for line in order.splitlines() if line.strip()]
    # Only ok and refused stop the search; back from Stasis() with the channel up: the next daemon.
    decide = lines.index('same => n,GotoIf($["${BRIDGED_RESULT}" = "ok"]?stasis)')
    assert lines[decide + 1] == 'same => n,GotoIf($["${BRIDGED_RESULT}" = "refused"]?refused)'
    assert lines[decide + 2].startswith("same => n(next),")
    stasis = next(i for i, line in enumerate(lines) if "n,Stasis(" in line)
    assert lines[stasis + 1] == "same => n,Goto(next)"
    # The last target's pass-on answers keep their meaning: its prompt, or 503 for a ringing phone.
    assert 'same => n(last),GotoIf($["${BRIDGED_RESULT}" = "unavailable"]?refused)' in lines
    assert dialplan.PASS_ON == {dialplan.UNAVAILABLE, dialplan.OVERLOADED}


def test_every_answer_kind_is_handled_and_no_other() -> None:
    kinds = set(re.findall(r'"\$\{' + dialplan.RESULT + r'\}" = "([a-z]+)"', CODE))
    assert kinds == dialplan.REPLY_KINDS
    assert f"Set({dialplan.RESULT}=${{CUT({dialplan.REPLY},|,1)}})" in CODE


def _cut(reply: str, spec: str) -> str:
    """Asterisk's ${CUT(var,|,N)} and ${CUT(var,|,N-)}."""
    fields = reply.split(dialplan.SEPARATOR)
    if spec.endswith("-"):
        return dialplan.SEPARATOR.join(fields[int(spec[:-1]) - 1 :])
    return fields[int(spec) - 1]


def _cuts_of(target: str) -> list[str]:
    """The CUT field specs the dialplan applies to BRIDGED_REPLY where it reads ``target``."""
    return re.findall(target + r"\$\{CUT\(" + dialplan.REPLY + r",\|,([0-9]+-?)\)\}", CODE)


@given(
    call_id=st.text("0123456789abcdef", min_size=1, max_size=32),
    label=st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    language=st.sampled_from(LANGUAGES),
)
def test_the_dialplan_takes_the_ok_answer_apart_as_bridged_builds_it(
    call_id: str, label: str, language: str
) -> None:
    stasis_args = f"bridged,{dialplan.app_args(dialplan.Leg.ORDER, call_id)}"
    reply = dialplan.reply_ok(language, stasis_args, label)
    [label_spec] = _cuts_of(re.escape(f"Set({dialplan.LABEL}="))
    [stasis_spec] = _cuts_of(re.escape("Stasis("))
    [language_spec] = _cuts_of(re.escape(f"Set({dialplan.CHANNEL_LANGUAGE}="))
    assert _cut(reply, "1") == dialplan.OK
    assert _cut(reply, language_spec) == language
    assert _cut(reply, stasis_spec) == stasis_args
    assert _cut(reply, label_spec) == label  # even with a "|" in it: the label is last


@pytest.mark.parametrize("kind", sorted(dialplan.REPLY_KINDS - {dialplan.OK}))
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_dialplan_plays_the_prompt_of_a_refusal_in_the_answers_language(kind: str, language: str) -> None:
    reply = dialplan.reply_refused(language, "im-sorry&feature-not-avail-line", kind=kind)
    [prompt_spec] = _cuts_of(re.escape("Playback("))
    [language_spec] = _cuts_of(re.escape(f"Set({dialplan.CHANNEL_LANGUAGE}="))
    assert _cut(reply, "1") == kind
    assert _cut(reply, prompt_spec) == "im-sorry&feature-not-avail-line"
    assert _cut(reply, language_spec) == language


def test_the_language_is_set_before_any_prompt_and_the_fallback_prompt_exists_in_each_language() -> None:
    lines = CODE.splitlines()
    [set_language] = [i for i, line in enumerate(lines) if f"Set({dialplan.CHANNEL_LANGUAGE}=" in line]
    plays = [i for i, line in enumerate(lines) if "Playback(" in line]
    assert plays and min(plays) > set_language
    # What the dialplan plays on its own when bridged cannot: each language's "try later" by its name.
    fallback = next(line for line in lines if "(unavailable),Playback(" in line)
    assert f"?{DEFAULT_PROMPTS['ru'].unavailable}:{DEFAULT_PROMPTS['en'].unavailable})" in fallback


def test_the_label_subroutine_and_the_transfer_handling() -> None:
    assert f"Set({dialplan.SEND_SUB}={dialplan.LABEL_SUB})" in CODE
    assert f"[{dialplan.LABEL_CONTEXT}]" in CODE
    context, extension, priority = dialplan.LABEL_SUB.split(",")
    routine = CODE.split(f"[{context}]", 1)[1]
    assert f"exten => {extension},{priority},Set(CONNECTEDLINE(all,i)=${{{dialplan.LABEL}}})" in routine
    [(name, value)] = dialplan.NO_TRANSFERS.items()
    assert f"Set({name}={value})" in CODE
    # What bridged sets on a manager leg it originates is what the dialplan sets on a phone's channel.
    config = make_config(language="ru")
    assert leg_variables(config, dialplan.label_variables('"Order 1" <*771>')) == {
        dialplan.LABEL: '"Order 1" <*771>',
        dialplan.SEND_SUB: dialplan.LABEL_SUB,
        name: value,
        dialplan.CHANNEL_LANGUAGE: "ru",
    }


@pytest.mark.parametrize("leg", list(dialplan.Leg))
def test_stasis_arguments_round_trip(leg: dialplan.Leg) -> None:
    assert dialplan.parse_app_args(dialplan.app_args(leg, "c0ffee").split(",")) == (leg, "c0ffee")


@pytest.mark.parametrize("args", [[], ["order"], ["dial", "1"], [5, "1"]])
def test_other_stasis_arguments_are_no_call(args: list[object]) -> None:
    assert dialplan.parse_app_args(args) is None  # type: ignore[arg-type]


def _context(name: str) -> str:
    """One context of the dialplan (without comments), up to the next one."""
    return CODE.split(f"[{name}]", 1)[1].split("\n[", 1)[0]


def test_inbound_calls_enter_bridgeds_application_with_the_presentation_only() -> None:
    inbound = _context(dialplan.INBOUND_CONTEXT)
    stasis = re.findall(r"Stasis\(([^,]+),(.*)\)$", inbound, re.M)
    assert stasis == [(f"${{{dialplan.TARGET}}}", f"{dialplan.Leg.INBOUND.value},${{CALLERID(pres)}}")]
    # BRIDGED_APP (or the default application), then BRIDGED_APP_2, _3, ... while Stasis() comes back.
    assert (
        f'Set(BRIDGED_TARGET=${{IF($["${{BRIDGED_APP}}" = ""]?{dialplan.DEFAULT_APP}:${{BRIDGED_APP}})}})'
        in inbound
    )
    assert "Set(BRIDGED_TARGET=${BRIDGED_APP_${BRIDGED_TRY}})" in inbound
    assert 'GotoIf($["${BRIDGED_TARGET}" != ""]?enter)' in inbound
    assert inbound.index("n(enter),Stasis(") < inbound.index("BRIDGED_TRY=$[${BRIDGED_TRY} + 1]")
    assert dialplan.parse_app_args(["inbound", "prohib_not_screened"]) == (
        dialplan.Leg.INBOUND,
        "prohib_not_screened",
    )
    # The caller hears ringing, a REFER goes to bridged, and a Stasis() no daemon took is a prompt.
    [(name, value)] = dialplan.NO_TRANSFERS.items()
    assert f"Set({name}={value})" in inbound
    assert inbound.index("Ringing()") < inbound.index("Stasis(")
    assert inbound.index("?enter)") < inbound.index("Playback(please-try-call-later)")


def test_nothing_in_the_inbound_context_dials_or_copies_the_callers_identity() -> None:
    """No Dial(), no Local/ channel, no caller id number in any application's data (CDR lastdata)."""
    inbound = _context(dialplan.INBOUND_CONTEXT)
    for forbidden in (
        "Dial(",
        "Local/",
        "CALLERID(num",
        "CALLERID(all",
        "CALLERID(ani",
        "REDIRECTING(",
        "AGI(",
    ):
        assert forbidden not in inbound, forbidden
    assert re.search(r"^exten => _\[\+0-9\]\.,1,", inbound, re.M)


def test_the_customer_leg_enters_the_calls_application_once_answered_and_tries_again_bounded() -> None:
    """[bridged-customer]: the customer's leg bridged originates there (bridged.calls.steps) enters
    Stasis(<BRIDGED_LEG_APP>,customer,<BRIDGED_CALL>), the arguments a customer leg's StasisStart is read
    with; back from it (no daemon serves the application, or one handed it back), it waits half a second
    and tries again, 40 times at most, then hangs up. Nothing else: no Dial(), no caller id."""
    customer = _context(dialplan.CUSTOMER_CONTEXT)
    assert re.search(rf"^exten => {dialplan.CUSTOMER_EXTEN},1,", customer, re.M)
    [(app, args)] = re.findall(r"Stasis\(([^,]+),(.*)\)$", customer, re.M)
    assert app == f"${{{dialplan.LEG_APP}}}"
    assert args == dialplan.app_args(dialplan.Leg.CUSTOMER, f"${{{dialplan.LEG_CALL}}}")
    variables = dialplan.customer_leg_variables("bridged-a", "c1")
    assert variables == {dialplan.LEG_APP: "bridged-a", dialplan.LEG_CALL: "c1"}
    lines = [line.strip() for line in customer.splitlines() if line.strip()]
    enter = next(i for i, line in enumerate(lines) if "n(enter),Stasis(" in line)
    assert lines[enter + 1 :] == [
        "same => n,Set(BRIDGED_TRY=$[${BRIDGED_TRY} + 1])",
        "same => n,GotoIf($[${BRIDGED_TRY} >= 40]?done)",
        "same => n,Wait(0.5)",
        "same => n,Goto(enter)",
        "same => n(done),Hangup()",
    ]
    for forbidden in ("Dial(", "Local/", "CALLERID(", "AGI(", "Answer("):
        assert forbidden not in customer, forbidden
