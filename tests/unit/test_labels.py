"""The label builder: no digit of any script, no URI syntax, no control character ever comes from a name.

Property-based: names are arbitrary text (every Unicode category, surrogates included) and generated
dirty shapes as shops hold them (the number in many formattings and scripts, SIP URIs, control
characters, very long strings), order ids are arbitrary text too.
"""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridged.labels import (
    DEFAULT_TEMPLATE,
    DEFAULT_TEMPLATES,
    LABEL_MAX,
    NAME_MAX,
    NAME_STYLES,
    ORDER_MAX,
    URI_CHARACTERS,
    Labeller,
    _keeps,
    _plain,
    _without_leading_marks,
    _words,
    default_template,
    dial_back,
    is_digit_like,
    safe_name,
    safe_order,
    template_problem,
)

# Zero of each script's decimal digits a customer's keyboard may type a number in.
_ZEROS = [
    "0",
    "\uff10",  # fullwidth
    "\u0660",  # Arabic-Indic
    "\u06f0",  # Extended Arabic-Indic (Persian)
    "\u0966",  # Devanagari
    "\u09e6",  # Bengali
    "\u0e50",  # Thai
    "\U0001d7ce",  # mathematical bold
]
_SEPARATORS = ["", " ", "-", ".", "(", ")", "/", "\u00a0", "\u2010", "\u2013", "\t", "\u200b"]
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}

any_text = st.text(st.characters(exclude_categories=()), max_size=200)


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    """A number as customers write it: any script's digits, separators, brackets, a leading + or 8."""
    digits = draw(st.lists(st.integers(0, 9), min_size=7, max_size=15))
    zero = draw(st.sampled_from(_ZEROS))
    out = draw(st.sampled_from(["", "+", "+ ", "8", "00", "\uff0b"]))
    for d in digits:
        out += draw(st.sampled_from(_SEPARATORS)) + chr(ord(zero) + d)
    return out


@st.composite
def dirty_names(draw: st.DrawFn) -> str:
    number = draw(phone_numbers())
    name = draw(st.sampled_from(["", "Ivan", "Иван Петров", "Olga S.", "محمد", "张伟", "Anna-Maria O'Neil"]))
    shape = draw(
        st.sampled_from(
            [
                "{n}",
                "{name} {n}",
                "{n} {name}",
                "{name}{n}",
                "{name} ({n})",
                "sip:{n}@evil.example",
                "<sip:{n}@10.0.0.1;user=phone>",
                '"{name}" <sip:{n}@host>',
                "tel:{n};ext=12",
                "{name}\x1b[31m{n}\x1b[0m",
                "{name}\r\n{n}",
                "{name}\u202e{n}",
                "{name}|{n}|",
                "{name}, call {n}; or {n}",
            ]
        )
    )
    text = shape.format(n=number, name=name)
    repeat = draw(st.sampled_from([1, 1, 1, 10_000 // max(len(text), 1)]))
    return text * repeat


names = st.one_of(any_text, dirty_names())
order_ids = st.one_of(st.from_regex(r"[0-9]{1,12}", fullmatch=True), any_text)


@st.composite
def templates(draw: st.DrawFn) -> str:
    words = st.text(st.characters(categories=("L", "M", "Zs")) | st.sampled_from("-'.#"), max_size=8)
    pieces = ["{order}"] + (["{name}"] if draw(st.booleans()) else [])
    pieces = draw(st.permutations(pieces))
    template = draw(words) + "".join(p + draw(words) for p in pieces)
    return template


def _assert_clean_name_part(part: str) -> None:
    assert len(part) <= NAME_MAX
    for text in (part, unicodedata.normalize("NFKC", part)):
        for ch in text:
            assert not is_digit_like(ch), (part, ch)
            assert ch not in URI_CHARACTERS, (part, ch)
            assert unicodedata.category(ch) not in _INVISIBLE_CATEGORIES, (part, ch)


@settings(max_examples=500, deadline=None)
@given(name=names)
@example(name="+7 916 123-45-67")
@example(name="8(916)1234567")
@example(name="sip:+79161234567@evil")
@example(name="\uff0b\uff17\uff19\uff11\uff16\uff11\uff12\uff13\uff14\uff15\uff16\uff17")
@example(
    name="\u2167 \u2460\u2461 \u00b2 \u00bd \u4e09"
)  # Roman, circled, superscript, fraction, CJK numerals
@example(name="x" * 10_000)
def test_the_name_part_holds_no_digit_uri_or_control_character(name: str) -> None:
    for style in NAME_STYLES:
        _assert_clean_name_part(safe_name(name, style))


@settings(max_examples=300, deadline=None)
@given(name=names, style=st.sampled_from(NAME_STYLES))
@example(name="A\u00b8B", style="first_last_initial")  # NFKC: "A \u0327B", a word that began with a mark
@example(name="B0'A", style="first_last_initial")  # "B 'A" once the digit is gone: a word began with "'"
def test_every_style_shows_only_words_of_the_name(name: str, style: str) -> None:
    """Whatever the style, the name part is made of the sanitised words (or their initials): a style
    cannot bring back anything the sanitiser dropped, nor invent a letter."""
    words = _words(name)
    shown = safe_name(name, style)
    if not words:
        assert shown == ""
        return
    for piece in shown.split():
        assert any(w.startswith(piece.removesuffix(".")) for w in words), (name, style, shown)


@settings(max_examples=500, deadline=None)
@given(
    order_id=order_ids,
    name=names,
    template=st.one_of(st.sampled_from(sorted(DEFAULT_TEMPLATES.values())), templates()),
    style=st.sampled_from(NAME_STYLES),
)
def test_the_label_holds_no_digit_beyond_the_order_ids_own(
    order_id: str, name: str, template: str, style: str
) -> None:
    if template_problem(template) is not None:
        return
    labeller = Labeller(template=template, name_style=style)
    label = labeller.label(order_id, name)
    order_part = safe_order(order_id)
    assert len(label.text) <= LABEL_MAX
    assert len(order_part) <= ORDER_MAX
    # The order part: ASCII letters, digits and . - _ (and the mark of a cut) only.
    assert all((ch.isascii() and (ch.isalnum() or ch in "._-")) or ch == "\u2026" for ch in order_part)
    assert order_part in label.text
    rest = label.text.replace(order_part, "", 1)
    assert not [ch for ch in rest if is_digit_like(ch)], label
    assert not [ch for ch in label.text if ch in URI_CHARACTERS], label
    assert not [ch for ch in label.text if unicodedata.category(ch) in _INVISIBLE_CATEGORIES], label
    assert label.text == " ".join(label.text.split())
    # The number part redials the order itself or asks for the code: ASCII, no stray digit.
    assert label.number in ("*77", f"*77{order_id}")
    assert label.number.isascii() and all(ch.isalnum() or ch in "*._-" for ch in label.number)
    # The caller id string parses back into exactly this label and number.
    assert label.caller_id == f'"{label.text}" <{label.number}>'
    assert label.caller_id.count('"') == 2 and label.caller_id.count("<") == 1


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Ivan Petrov", "Ivan P."),
        ("Иван Петров", "Иван П."),
        ("Иванов Иван Петрович", "Иванов П."),
        ("Anna-Maria O'Neil", "Anna-Maria O."),
        ("Ivan", "Ivan"),
        ("  ", ""),
        ("+7 916 123-45-67", ""),
        ("8(916)1234567", ""),
        ("sip:+79161234567@evil", ""),
        ("Ivan <sip:+79161234567@evil>", "Ivan"),
        ("Ivan +7 916 123-45-67", "Ivan"),
        ("Ivan Petrov 89161234567", "Ivan P."),
        ("\uff29\uff56\uff41\uff4e \uff17\uff19\uff11\uff16", "Ivan"),  # fullwidth letters and digits
        ("مُحَمَّد ٧٩١٦١٢٣٤٥٦٧", "مُحَمَّد"),
        ("Ivan\u202e7654321", "Ivan"),
        ("Ivan\x1b[31m", "Ivan m."),
        ("Wolfeschlegelsteinhausenbergerdorff Hubert", "Wolfeschlegelsteinhau H."),
    ],
)
def test_name_parts(name: str, shown: str) -> None:
    assert safe_name(name) == shown


# One row per name, one column per style (NAME_STYLES order): first_last_initial, last_first_initial,
# first_patronymic, first_word.
STYLED = [
    ("Иван Петров", "Иван П.", "Иван П.", "Петров", "Иван"),
    ("Иванов Иван Петрович", "Иванов П.", "Иванов И.", "Иван Петрович", "Иванов"),
    ("Иванов Иван", "Иванов И.", "Иванов И.", "Иван", "Иванов"),
    ("Иванов И. П.", "Иванов П.", "Иванов И.", "И. П.", "Иванов"),
    ("Иванов", "Иванов", "Иванов", "Иванов", "Иванов"),
    (
        "Петров-Водкин Кузьма Сергеевич",
        "Петров-Водкин С.",
        "Петров-Водкин К.",
        "Кузьма Сергеевич",
        "Петров-Водкин",
    ),
    # The patronymic becomes an initial when both do not fit NAME_MAX.
    (
        "Константинопольская Александра Константиновна",
        "Константинопольская К.",
        "Константинопольская А.",
        "Александра К.",
        "Константинопольская",
    ),
    ("Ivan Petrov", "Ivan P.", "Ivan P.", "Petrov", "Ivan"),
    ("  ", "", "", "", ""),
    # The sanitiser first: a number, an address, digits inside a word never reach any style.
    ("+7 916 123-45-67", "", "", "", ""),
    ("Иванов +7 916 123-45-67 Иван", "Иванов И.", "Иванов И.", "Иван", "Иванов"),
    ("Иванов <sip:+79161234567@evil> Иван Петрович", "Иванов П.", "Иванов И.", "Иван Петрович", "Иванов"),
    ("Иванов Иван8916 Петрович", "Иванов П.", "Иванов И.", "Иван Петрович", "Иванов"),
]


@pytest.mark.parametrize(("name", "shown"), [(row[0], row[1:]) for row in STYLED])
def test_name_styles(name: str, shown: tuple[str, ...]) -> None:
    assert tuple(safe_name(name, style) for style in NAME_STYLES) == shown


def test_an_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown name style"):
        safe_name("Ivan Petrov", "full")
    with pytest.raises(ValueError, match="unknown name style"):
        Labeller(name_style="full")


def test_the_default_template_follows_the_language() -> None:
    assert default_template("en") == DEFAULT_TEMPLATE == "Order {order} {name}"
    assert default_template("ru") == "Заказ {order} {name}"
    for template in DEFAULT_TEMPLATES.values():
        assert template_problem(template) is None
    label = Labeller(default_template("ru"), "last_first_initial").label("123", "Иванов Иван Петрович")
    assert label.caller_id == '"Заказ 123 Иванов И." <*77123>'
    assert (
        Labeller(default_template("ru")).label("123", "+7 916 123-45-67").caller_id == '"Заказ 123" <*77123>'
    )


def test_labels_as_the_manager_sees_them() -> None:
    labeller = Labeller()
    assert labeller.label("123", "Ivan Petrov").caller_id == '"Order 123 Ivan P." <*77123>'
    # A name that is the customer's number: the label is the order alone.
    assert labeller.label("123", "+7 916 123-45-67").caller_id == '"Order 123" <*77123>'
    assert Labeller("Заказ {order} {name}").label("42", "Иван Петров").text == "Заказ 42 Иван П."
    assert Labeller("{name} # {order}").label("42", "").text == "# 42"
    # An order id a configured code_pattern let through with unsafe characters: shown without them,
    # never dialled back as some other order.
    assert safe_order("AB/12") == "AB12" and dial_back("AB/12") == "*77"
    assert safe_order("7" * 40) == "7" * (ORDER_MAX - 1) + "\u2026" and dial_back("7" * 40) == "*77"
    assert dial_back("A-12.b_3") == "*77A-12.b_3"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("Order {order} {name}", None),
        ("Заказ № {order} {name}", None),
        ("#{order} {name}", None),
        ("{name}", "must contain {order}"),
        ("Order", "must contain {order}"),
        ("Order {order} {order}", "may use each placeholder once"),
        ("Order {order} {phone}", "may use only the {order} and {name} placeholders"),
        ("Order {order!r}", "may use only the {order} and {name} placeholders"),
        ("Order {order:>10}", "may use only the {order} and {name} placeholders"),
        ("Order {0}", "may use only the {order} and {name} placeholders"),
        ("Order {}", "may use only the {order} and {name} placeholders"),
        ("Order {order.x}", "may use only the {order} and {name} placeholders"),
        ("Order 1 {order}", "may hold only letters, spaces and - ' . # besides {order} and {name}"),
        ("Order ① {order}", "may hold only letters, spaces and - ' . # besides {order} and {name}"),
        ("Order: {order}", "may hold only letters, spaces and - ' . # besides {order} and {name}"),
        ("<{order}>", "may hold only letters, spaces and - ' . # besides {order} and {name}"),
        ("Order {{{order}}}", "may hold only letters, spaces and - ' . # besides {order} and {name}"),
        ("Order\t{order}", "may hold only letters, spaces and - ' . # besides {order} and {name}"),
        ("Order\u202e{order}", "may hold only letters, spaces and - ' . # besides {order} and {name}"),
        ("Order | {order}", "may hold only letters, spaces and - ' . # besides {order} and {name}"),
        ("{order} {", "is not a valid template (a '{' or '}' without its pair; use only {order} and {name})"),
        ("Order {order} " + "x" * 40, "must be at most 40 characters"),
    ],
)
def test_template_validation(template: str, problem: str | None) -> None:
    assert template_problem(template) == problem


# -- the plain names' short cut (issue 19) ------------------------------------------------------------


def _words_character_by_character(name: str) -> list[str]:
    """_words as it was before its short cut for plain names: every character looked at."""
    text = unicodedata.normalize("NFKC", name)
    tokens = [t for t in text.split() if not set("@:/\\<>").intersection(t)]
    cleaned = "".join(ch if _keeps(ch) else " " for ch in " ".join(tokens))
    words = [_without_leading_marks(w) for w in unicodedata.normalize("NFKC", cleaned).split()]
    return [w for w in words if any(unicodedata.category(ch)[0] == "L" for ch in w) and all(map(_keeps, w))]


def test_every_letter_that_is_no_number_is_kept() -> None:
    """What the short cut rests on, for every code point: a letter (``isalpha``) that is not a number
    (CJK numerals are letters and numbers) is kept in a word, as the word's punctuation is."""
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        if _plain(ch):
            assert ch.isalpha() and _keeps(ch), hex(code)
        if ch.isalpha() and not ch.isnumeric():
            assert _keeps(ch), hex(code)
    assert all(_keeps(ch) for ch in "-'.\u2019")
    assert not _plain("") and not _plain(" -'.") and not _plain("\u4e00") and not _plain("Anna1")


_NAME_CHARACTERS = st.characters(
    categories=("Lu", "Ll", "Lo", "Lm", "Mn", "Nd", "No", "Nl", "Zs", "Pd", "Po", "Cf", "Cc", "Sm")
)


@settings(max_examples=2000)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=_NAME_CHARACTERS, max_size=40),
        st.lists(st.sampled_from(["Ivan", "Иван", "O'Neil", "Анна-Мария", "一", "3", "@x", "\u0301a"])).map(
            " ".join
        ),
    )
)
@example("Ivan Petrov")
@example("Иван Петрович Сидоров")
@example("Mária Ñúñez-O'Brien")
@example("李 一二三")
@example("Anna \u2167")
def test_plain_names_read_as_character_by_character(name: str) -> None:
    assert _words(name) == _words_character_by_character(name)
