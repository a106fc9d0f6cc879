"""Who is calling the shop, told without keeping their number.

A customer calling the shop's number arrives with their number on the inbound channel (its caller id,
and Diversion/History-Info as its redirecting party). bridged reads it once, from the channel's
StasisStart, and turns it into what it may keep:

- the number normalised as the order lookup reads phone values (bridged.phones, ``orders.default_region``),
  so ``8 916 ...``, ``+7 916 ...`` and ``7916...`` are one caller; used for the shop's reverse lookup
  only (as a :class:`~bridged.redact.PhoneNumber`, which never prints), then dropped;
- a keyed hash of it (HMAC-SHA256 under ``inbound.secret``): what bridged remembers a caller by (the
  sticky manager). Phone numbers are few enough to be tried one by one, so an unkeyed hash would be the
  number itself to whoever read the table: the key stays in the config file;
- a short reference derived from that hash, letters only (``Customer KXMRTPAW``), so a manager can tell
  a repeat caller apart and nothing shown could be read as digits of the number.

A withheld number (presentation ``prohib*``, or a caller id that is no number at all) is a caller
without a hash: ``Anonymous``.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .phones import InvalidPhone, parse_phone
from .redact import PhoneNumber

# The reference's letters: A-Z without I and O (read as 1 and 0 over the phone), 24 of them.
REF_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ"
# 24^8 (about 1.1e11) references: two of a shop's callers sharing one is rare.
REF_LENGTH = 8
# Longer is no caller id worth reading (E.164 has 15 digits; libphonenumber takes 40 characters).
_MAX_NUMBER = 64
# Caller ids that say there is no number (the carrier's, or Asterisk's for a withheld caller).
_NO_NUMBER = frozenset({"", "anonymous", "unknown", "unavailable", "restricted", "private", "withheld"})


@dataclass(frozen=True)
class Caller:
    """An inbound caller as bridged keeps them: never the number itself."""

    # HMAC-SHA256 (hex) of the normalised number; None for a withheld number.
    key: str | None
    # The short reference shown for a caller without an order; None for a withheld number.
    ref: str | None
    # The number in E.164 for the shop's reverse lookup, when it is a valid number; never stored or logged.
    number: PhoneNumber | None = None

    @property
    def withheld(self) -> bool:
        return self.key is None


ANONYMOUS = Caller(key=None, ref=None)


@dataclass(frozen=True)
class InboundCaller:
    """What the inbound channel's StasisStart says about the call, read once and never logged or kept."""

    # The caller id number as Asterisk has it (the customer's number, for all but a withheld caller).
    number: str = field(repr=False)
    # CALLERID(pres), which the dialplan passes as the Stasis argument after "inbound".
    presentation: str
    # The shop's number that was called (the extension of [bridged-inbound]).
    did: str
    # The channel has a redirecting party (the carrier's Diversion or History-Info): a number too.
    redirected: bool


def read_stasis_start(event: dict[str, Any]) -> InboundCaller:
    """The inbound caller of a StasisStart event of [bridged-inbound] (docs/asterisk.md, "Inbound calls":
    ``channel.caller``, ``channel.dialplan.exten``, ``channel.caller_rdnis`` when there is one)."""
    channel = event.get("channel")
    channel = channel if isinstance(channel, dict) else {}
    caller = channel.get("caller")
    number = caller.get("number") if isinstance(caller, dict) else None
    dialplan = channel.get("dialplan")
    did = dialplan.get("exten") if isinstance(dialplan, dict) else None
    args = event.get("args")
    presentation = args[1] if isinstance(args, list) and len(args) > 1 else None
    return InboundCaller(
        number=number if isinstance(number, str) else "",
        presentation=presentation if isinstance(presentation, str) else "",
        did=did if isinstance(did, str) else "",
        redirected=bool(channel.get("caller_rdnis")),
    )


def is_shop_number(numbers: tuple[str, ...], did: str) -> bool:
    """Whether ``did`` is one of the shop's numbers (``inbound.numbers``), compared by their digits."""
    digits = _ascii_digits(did)
    return bool(digits) and any(_ascii_digits(number) == digits for number in numbers)


def withheld_presentation(presentation: str) -> bool:
    """``CALLERID(pres)`` of a caller who withholds their number: ``prohib*`` or ``unavailable``."""
    value = presentation.strip().lower()
    return value.startswith("prohib") or value == "unavailable"


def identify(number: str, presentation: str, *, secret: str, region: str | None) -> Caller:
    """The caller whose caller id number is ``number``, presented as ``presentation``.

    A valid number is normalised to E.164 as the order lookup would read it; a number that is not one
    (too short, an internal extension, junk) is still told apart by its digits, but never looked up.
    """
    text = number.strip()[:_MAX_NUMBER]
    digits = _ascii_digits(text)
    if withheld_presentation(presentation) or text.lower() in _NO_NUMBER or not digits:
        return ANONYMOUS
    try:
        e164: PhoneNumber | None = parse_phone(text, region=region, dial_format="e164")
    except InvalidPhone:
        e164 = None
    # Different prefixes keep a valid number and an unparsed digit string from ever sharing a key.
    material = f"e164:{e164.dialable()}" if e164 is not None else f"digits:{digits}"
    key = caller_key(secret, material)
    return Caller(key=key, ref=caller_ref(key), number=e164)


def caller_key(secret: str, material: str) -> str:
    return hmac.new(secret.encode("utf-8"), material.encode("utf-8"), hashlib.sha256).hexdigest()


def caller_ref(key: str) -> str:
    """Letters of REF_ALPHABET derived from a caller's key (the first 64 bits of the hash)."""
    value = int(key[:16], 16)
    letters = []
    for _ in range(REF_LENGTH):
        value, index = divmod(value, len(REF_ALPHABET))
        letters.append(REF_ALPHABET[index])
    return "".join(letters)


def _ascii_digits(text: str) -> str:
    return "".join(str(d) for ch in text if (d := unicodedata.decimal(ch, None)) is not None)
