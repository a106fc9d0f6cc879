"""The order label: all a manager's phone is ever shown about the other party.

One builder for every label, on every path and every leg (the FastAGI answer, the HTTP path's manager
leg, the customer leg's caller id put back, adopted calls, inbound calls): ``"Order 123 Ivan P." <*77123>``;
for an inbound caller without an order ``"Customer KXMRTPAW" <*77>``, for a withheld number
``"Anonymous" <anonymous>``.

The customer's name comes from the shop's database, where a large share of "names" are whatever
customers typed: a phone number, a number and a name, a SIP URI, digits of other scripts, control
characters. So the name part keeps letters only (of any script) and a little punctuation inside words;
no digit of any script survives, nor URI syntax, quotes or control characters, and it is bounded.
The order part holds only characters that are safe in SIP, AGI quoting and the dialplan's ``CUT`` on
``|``; the number part (``*77<order>``) redials the order from the phone's call history.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

DEFAULT_TEMPLATE = "Order {order} {name}"
# The default template in each of the config's languages (config ``language``); labels.template overrides.
DEFAULT_TEMPLATES = {"en": DEFAULT_TEMPLATE, "ru": "Заказ {order} {name}"}
# How the customer's name is shortened, by its words (those left after the digit-free sanitiser):
# - first_last_initial: the first word and the initial of the last ("Ivan Petrov" -> "Ivan P.",
#   "Иван Петров" -> "Иван П."), for names stored given name first;
# - last_first_initial: the first word and the initial of the second ("Иванов Иван Петрович" ->
#   "Иванов И."), for names stored family name first ("Фамилия Имя Отчество");
# - first_patronymic: of three words or more, the second and the third ("Иванов Иван Петрович" ->
#   "Иван Петрович", the polite Russian address), the third as an initial when both do not fit; of two,
#   the second ("Иванов Иван" -> "Иван"); of one, that word;
# - first_word: the first word alone ("Иван Петров" -> "Иван", "Иванов Иван Петрович" -> "Иванов").
NAME_STYLES = ("first_last_initial", "last_first_initial", "first_patronymic", "first_word")
DEFAULT_NAME_STYLE = "first_last_initial"

NAME_MAX = 24
ORDER_MAX = 24
TEMPLATE_MAX = 40  # the template as written, placeholders included
# The whole label: template text (at most TEMPLATE_MAX - len("{order}") characters) plus the order
# and name parts. Holds by construction; the builder also cuts to it.
LABEL_MAX = TEMPLATE_MAX + ORDER_MAX + NAME_MAX
DIAL_BACK_PREFIX = "*77"

# An order id shown and dialled back as it is: ASCII letters, digits and '.', '-', '_' only (valid in
# a SIP URI's user part and a caller id number, and nothing the dialplan or AGI quoting treats as syntax).
_SAFE_ORDER_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{ORDER_MAX}}}")
_SAFE_ORDER_CHAR_RE = re.compile(r"[^A-Za-z0-9._-]")
# Syntax of SIP URIs, SIP quoted strings, AGI quoting and the dialplan's CUT on '|'.
URI_CHARACTERS = frozenset('@<>:;/\\"%=?&|,')
# Characters that are never shown: controls, format characters (bidi overrides, zero-width joiners),
# surrogates, private use, unassigned; line and paragraph separators become spaces.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_BREAKS = frozenset({"Zs", "Zl", "Zp"})
# Punctuation kept inside a word of a name: "Anna-Maria", "O'Neil", "D'Arcy", "St. John".
_WORD_PUNCTUATION = frozenset("-'.\u2019")
# ...and besides those, in a template's own text.
_TEMPLATE_PUNCTUATION = frozenset("#")
# A token holding any of these is an address (SIP URI, e-mail, URL, "<sip:...>"), not part of a name.
_ADDRESS_MARKS = frozenset("@:/\\<>")


@dataclass(frozen=True)
class Label:
    """A call's label: ``text`` on the phone's screen, ``number`` (``*77<order>``) to redial."""

    text: str
    number: str

    @property
    def caller_id(self) -> str:
        """The label as a caller id string (``CALLERID(all)``, ``CONNECTEDLINE(all)``, originate)."""
        # No quote or backslash can be in the text (see is_forbidden): nothing to escape.
        return f'"{self.text}" <{self.number}>'


# What a manager's phone shows for an inbound caller without an order, and for a withheld number, in each
# of the config's languages (config ``language``).
CALLER_TEXTS = {"en": "Customer {ref}", "ru": "Клиент {ref}"}
ANONYMOUS_TEXTS = {"en": "Anonymous", "ru": "Номер скрыт"}
CALLER_TEXT = CALLER_TEXTS["en"]
ANONYMOUS = Label(text=ANONYMOUS_TEXTS["en"], number="anonymous")


@dataclass(frozen=True)
class Labeller:
    """Builds labels from the configured ``labels.template`` and ``labels.name_style``."""

    template: str = DEFAULT_TEMPLATE
    name_style: str = DEFAULT_NAME_STYLE
    language: str = "en"

    def __post_init__(self) -> None:
        problem = template_problem(self.template)
        if problem is not None:
            raise ValueError(f"label template {problem}")
        if self.name_style not in NAME_STYLES:
            raise ValueError(f"unknown name style {self.name_style!r}")

    def label(self, order_id: str, customer_name: str = "") -> Label:
        return Label(text=self.text(order_id, customer_name), number=dial_back(order_id))

    def caller(self, ref: str) -> Label:
        """An inbound caller without an order: ``"Customer KXMRTPAW" <*77>`` (bridged.callers makes the
        reference; only its ASCII letters are kept, so no digit can reach the phone through it). The
        number part asks for an order code when redialled: there is no order to call back."""
        letters = "".join(ch for ch in ref if ch.isascii() and ch.isalpha())[:NAME_MAX]
        text = CALLER_TEXTS.get(self.language, CALLER_TEXT).format(ref=letters)
        return Label(text=" ".join(text.split()), number=DIAL_BACK_PREFIX)

    def anonymous(self) -> Label:
        """An inbound caller who withholds their number."""
        return Label(text=ANONYMOUS_TEXTS.get(self.language, ANONYMOUS.text), number=ANONYMOUS.number)

    def of_caller(self, order_id: str | None, customer_name: str = "", ref: str | None = None) -> Label:
        """An inbound caller's label: their order's, else their reference's, else ``Anonymous``."""
        if order_id is not None:
            return self.label(order_id, customer_name)
        return self.caller(ref) if ref else self.anonymous()

    def text(self, order_id: str, customer_name: str = "") -> str:
        text = self.template.format(
            order=safe_order(order_id), name=safe_name(customer_name, self.name_style)
        )
        # An empty name leaves the template's spaces around it: collapsed and trimmed.
        return " ".join(text.split())[:LABEL_MAX]


def safe_order(order_id: str) -> str:
    """The order part of a label: the order id when it is safe as it is, else its safe characters
    (cut to ORDER_MAX with a trailing '…' that shows it was cut)."""
    if _SAFE_ORDER_RE.fullmatch(order_id):
        return order_id
    kept = _SAFE_ORDER_CHAR_RE.sub("", order_id)
    return kept if len(kept) <= ORDER_MAX else kept[: ORDER_MAX - 1] + "\u2026"


def default_template(language: str) -> str:
    """The label template of a language when labels.template is not set (English for any other)."""
    return DEFAULT_TEMPLATES.get(language, DEFAULT_TEMPLATE)


def safe_name(full_name: str, style: str = DEFAULT_NAME_STYLE) -> str:
    """The name part of a label: 'Ivan Petrov' -> 'Ivan P.'; '' when nothing of the name is a name.

    ``style`` (NAME_STYLES) picks the words shown, as a manager greets the customer; every style works on
    the words the sanitiser left, so none can bring back a digit, URI syntax or a control character.
    """
    if style not in NAME_STYLES:
        raise ValueError(f"unknown name style {style!r}")
    words = _words(full_name)
    if not words:
        return ""
    if len(words) == 1 or style == "first_word":
        return words[0][:NAME_MAX]
    if style == "first_patronymic":
        if len(words) == 2:
            return words[1][:NAME_MAX]
        given, patronymic = words[1], words[2]
        if len(given) + 1 + len(patronymic) <= NAME_MAX:
            return f"{given} {patronymic}"
        return _with_initial(given, patronymic)
    # first_last_initial: the initial of the last word; last_first_initial: of the second (the given
    # name after the family name; a patronymic after it is left out).
    return _with_initial(words[0], words[-1] if style == "first_last_initial" else words[1])


def _with_initial(word: str, other: str) -> str:
    """``word`` and the initial of ``other`` ("Ivan P."), ``word`` cut so that both fit NAME_MAX."""
    initial = f" {_initial(other)}."
    return word[: NAME_MAX - len(initial)] + initial


def _words(name: str) -> list[str]:
    """The words of a name that hold at least one letter, after NFKC; addresses are left out whole."""
    text = unicodedata.normalize("NFKC", name)
    tokens = [t for t in text.split() if not _ADDRESS_MARKS.intersection(t)]
    joined = " ".join(tokens)
    cleaned = joined if _plain(joined) else "".join(ch if _keeps(ch) else " " for ch in joined)
    # NFKC once more: a combining mark left alone after a removed character could compose anew, and
    # the result must be as stable as what it was built from.
    words = [_without_leading_marks(w) for w in unicodedata.normalize("NFKC", cleaned).split()]
    return [
        w
        for w in words
        if _plain(w) or (any(unicodedata.category(ch)[0] == "L" for ch in w) and all(map(_keeps, w)))
    ]


# Spaces and the punctuation a word keeps, left out of what _plain looks at.
_PLAIN_SEPARATORS = str.maketrans("", "", " " + "".join(_WORD_PUNCTUATION))


def _plain(text: str) -> bool:
    """Whether every character of ``text`` is a space, a word's punctuation or a letter that is no number
    (``isalpha``: categories L*; ``isnumeric`` rules out the letters that are numbers, CJK numerals), and
    one at least is such a letter: then :func:`_keeps` keeps each of its characters (a space is a break
    either way), which ``test_labels`` checks for every code point. Most names are such text; what is
    not is looked at character by character (issue 19: safe_name took 20-34 us a name, once a call; 7-12)."""
    letters = text.translate(_PLAIN_SEPARATORS)
    return letters.isalpha() and not any(map(str.isnumeric, letters))


def _without_leading_marks(word: str) -> str:
    """A word begins with a letter: a combining mark at its start belongs to nothing ("A\u00b8B" is
    "A \u0327B" after NFKC), and punctuation there is what is left of something removed ("B0'A" is "B 'A"
    once the digit is gone). Dropped, so a word's initial is its first character."""
    start = 0
    while start < len(word) and (
        unicodedata.category(word[start])[0] == "M" or word[start] in _WORD_PUNCTUATION
    ):
        start += 1
    return word[start:]


def _keeps(ch: str) -> bool:
    """What a word of a name may hold: letters and combining marks of any script, and a little
    punctuation. Anything else (digits, symbols, URI syntax, controls) ends the word."""
    if is_forbidden(ch):
        return False
    category = unicodedata.category(ch)
    return category[0] in ("L", "M") or ch in _WORD_PUNCTUATION


def is_forbidden(ch: str) -> bool:
    """Never part of a label's text: digits of any script, URI syntax, control and format characters."""
    return (
        is_digit_like(ch)
        or ch in URI_CHARACTERS
        or unicodedata.category(ch) in _INVISIBLE
        or unicodedata.category(ch) in ("Zl", "Zp")
    )


def is_digit_like(ch: str) -> bool:
    """A digit or number of any script: decimal digits, fullwidth, Arabic-Indic, superscripts,
    circled and Roman numerals, CJK numerals."""
    return unicodedata.category(ch) in ("Nd", "No", "Nl") or ch.isdigit() or ch.isnumeric()


def _initial(word: str) -> str:
    return next(ch for ch in word if unicodedata.category(ch)[0] == "L")


def dial_back(order_id: str) -> str:
    """The label's number part: ``*77<order>``, which redials the order from the phone's history.

    An order id that is not safe as it is (a configured ``orders.code_pattern`` may allow anything)
    gets plain ``*77`` (which asks for the code) rather than a cut-down id that could be another order.
    """
    if _SAFE_ORDER_RE.fullmatch(order_id):
        return DIAL_BACK_PREFIX + order_id
    return DIAL_BACK_PREFIX


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot be a label template (the config error's message), or None."""
    if len(template) > TEMPLATE_MAX:
        return f"must be at most {TEMPLATE_MAX} characters"
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError:
        return "is not a valid template (a '{' or '}' without its pair; use only {order} and {name})"
    fields: list[str] = []
    for literal, field_name, spec, conversion in pieces:
        if not all(map(_template_keeps, literal)):
            return "may hold only letters, spaces and - ' . # besides {order} and {name}"
        if field_name is None:
            continue
        if field_name not in ("order", "name") or spec or conversion:
            return "may use only the {order} and {name} placeholders"
        fields.append(field_name)
    if "order" not in fields:
        return "must contain {order}"
    if len(fields) != len(set(fields)):
        return "may use each placeholder once"
    return None


def _template_keeps(ch: str) -> bool:
    """What a template's own text may hold: letters, spaces and a little punctuation, as written and
    after NFKC ("№" is "No"); no digits, URI syntax, braces or control characters."""
    return not is_forbidden(ch) and all(
        c == " " or c in _TEMPLATE_PUNCTUATION or _keeps(c) for c in unicodedata.normalize("NFKC", ch)
    )
