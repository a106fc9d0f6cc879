"""The shop's ``phone`` value turned into a number to dial, or refused.

A value that is not a valid number is never dialled: dialling what is left of ``+7916123456@evil``, of
60 digits or of a number without its country code reaches a stranger. The value is parsed with
libphonenumber's metadata (the ``phonenumbers`` package), and strictly: phonenumbers itself is lenient
(it skips leading and trailing junk, reads extensions and vanity letters), so the value may hold only
digits, spaces and the usual separators before it is parsed, and the parsed number must be valid for
its region, carry no extension and account for every digit that was given.
"""

from __future__ import annotations

import unicodedata

import phonenumbers

from .redact import PhoneNumber

# Formats of the dial string (``trunk.dial``'s ``{number}``):
#   e164          +79161234567 (the default; what most SIP carriers take)
#   e164_no_plus  79161234567
#   national      89161234567 for a number of orders.default_region, international prefix and
#                 country code for any other (81049301234567 from RU): dialled as from that country
DIAL_FORMATS = ("e164", "e164_no_plus", "national")

# Longer is no phone number in any formatting (E.164 has 15 digits at most).
MAX_LENGTH = 40
# Separators people write between digits; anything else (letters, '@', ';', '#', ',', 'x') is refused.
_SEPARATORS = frozenset(" -.()/\u00a0")


class InvalidPhone(ValueError):
    """The value is not a valid phone number. Its message never holds the value."""


def region_known(region: str) -> bool:
    return region in phonenumbers.SUPPORTED_REGIONS


# ITU-T E.164: an international number has at most 15 digits, country code included.
E164_MAX_DIGITS = 15


def parse_phone(value: str, *, region: str | None, dial_format: str = "e164") -> PhoneNumber:
    """The number to dial for the shop's ``value``; raises :class:`InvalidPhone`.

    Without a ``region`` the value must carry its country code (``+...``); with one, national
    numbers of that region (``8 916 ...`` for RU) are read too.
    """
    if dial_format not in DIAL_FORMATS:
        raise ValueError(f"unknown dial format {dial_format!r}")
    if len(value) > MAX_LENGTH:
        raise InvalidPhone("too long")
    given = _ascii_digits(value)
    if given is None:
        raise InvalidPhone("holds characters that are no part of a phone number")
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        raise InvalidPhone("not a phone number") from None
    if number.extension:
        raise InvalidPhone("has an extension")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid number for its region")
    national = phonenumbers.national_significant_number(number)
    # What came before the national number must be a prefix (country code, national or international
    # prefix, carrier code); a digit phonenumbers dropped elsewhere means it read some other number.
    if not given.endswith(national) or len(given) - len(national) > 7:
        raise InvalidPhone("holds digits that are no part of the number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(e164) - 1 > E164_MAX_DIGITS:
        # libphonenumber's metadata accepts some longer ones (German +49 80... with 14 national digits):
        # no carrier routes past E.164's 15 digits, and a value that long is more likely two run together.
        raise InvalidPhone("longer than the 15 digits of an international number")
    if dial_format == "e164_no_plus":
        return PhoneNumber(e164[1:])
    if dial_format == "national" and region is not None:
        # A number of the region in its national form, any other as dialled from there.
        dialled = phonenumbers.format_out_of_country_calling_number(number, region)
        digits = "".join(ch for ch in dialled if ch.isascii() and ch.isdigit())
        # Regions with no single international prefix get "+" from libphonenumber: kept.
        return PhoneNumber(("+" if dialled.lstrip().startswith("+") else "") + digits)
    return PhoneNumber(e164)


def _ascii_digits(value: str) -> str | None:
    """The value's digits as ASCII (any script's decimal digits count), or None if it holds anything
    but digits, separators, spaces and one leading '+'."""
    out = []
    for index, ch in enumerate(value):
        if ch in "+\uff0b" and not value[:index].strip():
            continue
        decimal = unicodedata.decimal(ch, None)
        if decimal is not None:
            out.append(str(decimal))
        elif not (ch in _SEPARATORS or unicodedata.category(ch) in ("Zs", "Pd")):
            return None
    return "".join(out)
