"""The shop's phone value: a valid number becomes a dial string, anything else is refused, never dialled."""

from __future__ import annotations

import re

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridged.phones import DIAL_FORMATS, InvalidPhone, parse_phone

REGIONS = (None, "RU", "DE", "US", "GB", "IN")
_DIAL_STRING = re.compile(r"\+?[0-9]+")


@pytest.mark.parametrize(
    ("value", "region", "dial_format", "dialled"),
    [
        ("+7 916 123-45-67", None, "e164", "+79161234567"),
        ("+7 (916) 123-45-67", None, "e164", "+79161234567"),
        ("+79161234567", "DE", "e164", "+79161234567"),
        ("8 (916) 123-45-67", "RU", "e164", "+79161234567"),
        ("9161234567", "RU", "e164", "+79161234567"),
        ("8 10 49 30 55501234", "RU", "e164", "+493055501234"),  # RU's international prefix
        ("030/5550 1234", "DE", "e164", "+493055501234"),
        (
            "\uff0b\uff17 \uff19\uff11\uff16 \uff11\uff12\uff13 \uff14\uff15 \uff16\uff17",
            None,
            "e164",
            "+79161234567",
        ),
        ("+\u0667\u0669\u0661\u0666\u0661\u0662\u0663\u0664\u0665\u0666\u0667", None, "e164", "+79161234567"),
        ("+7\u00a0916\u2013123\u201045\u201067", None, "e164", "+79161234567"),
        ("+7 916 123-45-67", None, "e164_no_plus", "79161234567"),
        ("+7 916 123-45-67", "RU", "national", "89161234567"),
        ("+49 30 5550 1234", "RU", "national", "810493055501234"),
        ("+1 212 765 4321", "DE", "national", "0012127654321"),
    ],
)
def test_valid_numbers(value: str, region: str | None, dial_format: str, dialled: str) -> None:
    assert parse_phone(value, region=region, dial_format=dial_format).dialable() == dialled


MALFORMED = [
    "+7916123456@evil.example",
    "+79161234567@evil.example",
    "sip:+79161234567@evil.example",
    "tel:+79161234567",
    "1" * 60,
    "+" + "7" * 59,
    "9161234567",  # no country code and no default region
    "8 916 123-45-67",  # the same, national form
    "+1 800 FLOWERS",
    "+1-800-FLOWERS",
    "+7 916 123 45 67 ext. 12",
    "+7 916 123 45 67 x12",
    "+79161234567;ext=12",
    "+79161234567#12",
    "+79161234567,12",
    "+7 916 123-45-6",  # too short for RU
    "+7 916 123-45-678",  # too long for RU
    "+999 123 456 789",  # no such country code
    "+44 20 7946 095",  # too short for GB
    "+7 916 123 45 67 / +7 916 123 45 68",
    "+7 916 123 45 67\n",
    "\u00b2\u00b3",
    "++79161234567",
    "7+9161234567",
    "+",
    "",
    "   ",
    "none",
    "n/a",
    "+7 916 123 45 67 (Ivan)",
    "+7 916 123 45 67 ;",
    "+7 916 123 45 67\u202e",
    "+7 916 123 45 67\x00",
]


@pytest.mark.parametrize("value", MALFORMED)
@pytest.mark.parametrize("region", [None, "RU"])
def test_malformed_values_are_refused(value: str, region: str | None) -> None:
    if region == "RU" and value in ("9161234567", "8 916 123-45-67"):
        pytest.skip("a national number of the default region")
    with pytest.raises(InvalidPhone) as info:
        parse_phone(value, region=region)
    # The refusal never quotes the value.
    assert not any(ch.isdigit() for ch in str(info.value))


@settings(max_examples=500, deadline=None)
@given(
    value=st.text(st.characters(exclude_categories=()), max_size=60)
    | st.text(st.sampled_from("+0123456789 -().,;#x@:/ext"), max_size=40),
    region=st.sampled_from(REGIONS),
    dial_format=st.sampled_from(DIAL_FORMATS),
)
@example(value="69000", region="DE", dial_format="e164")  # a valid five-digit number: +4969000
def test_arbitrary_text_is_a_dial_string_or_refused(value: str, region: str | None, dial_format: str) -> None:
    if dial_format == "national" and region is None:
        dial_format = "e164"  # the config refuses national without a region
    try:
        number = parse_phone(value, region=region, dial_format=dial_format)
    except InvalidPhone:
        return
    assert _DIAL_STRING.fullmatch(number.dialable()), number.dialable()
    # Every digit dialled was given (a national or international prefix aside), none invented.
    if dial_format != "national":
        given_digits = "".join(str(int(ch)) for ch in value if ch.isdecimal())
        tail = min(6, len(given_digits))  # a short national number gets its country code in front
        assert number.dialable().lstrip("+")[-tail:] == given_digits[-tail:]


_ZEROS = ["0", "\uff10", "\u0660", "\u06f0", "\u0966"]


@st.composite
def formatted_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """A real number of some region (libphonenumber's example), written as people write it."""
    region = draw(st.sampled_from(["RU", "DE", "US", "GB", "FR", "IN", "BR", "AE", "CN", "IT"]))
    kind = draw(
        st.sampled_from([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
    )
    example = phonenumbers.example_number_for_type(region, kind)
    assert example is not None
    e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    zero = draw(st.sampled_from(_ZEROS))
    out = draw(st.sampled_from(["+", "+ ", " +"]))
    for ch in e164[1:]:
        out += draw(st.sampled_from(["", "", " ", "-", ".", "\u00a0"])) + chr(ord(zero) + int(ch))
    return out, e164


@settings(max_examples=200, deadline=None)
@given(case=formatted_numbers(), region=st.sampled_from(REGIONS))
def test_formatting_never_changes_the_number(case: tuple[str, str], region: str | None) -> None:
    value, e164 = case
    assert parse_phone(value, region=region).dialable() == e164


@settings(max_examples=200, deadline=None)
@given(
    case=formatted_numbers(),
    junk=st.sampled_from(["@evil.example", " ext. 12", " x 1", ";ext=1", "#", ",1", " a", "Ivan", "\x1b"]),
    before=st.booleans(),
)
def test_a_valid_number_with_anything_else_in_it_is_refused(
    case: tuple[str, str], junk: str, before: bool
) -> None:
    value, _ = case
    with pytest.raises(InvalidPhone):
        parse_phone(junk + value if before else value + junk, region=None)


def test_a_number_past_e164s_15_digits_is_refused_although_libphonenumber_calls_it_valid() -> None:
    """Hypothesis found +4980000000000000 (16 digits) accepted: a German 0800 range libphonenumber lets run
    to 14 national digits. Nothing longer than E.164's 15 digits is dialled."""
    with pytest.raises(InvalidPhone):
        parse_phone("+4980000000000000", region="RU")
    assert parse_phone("+498000000000000", region=None).dialable() == "+498000000000000"  # 15: kept
