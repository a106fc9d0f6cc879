"""Signed click-to-call links: ``/c?order=123&manager=anna&exp=1767225600&sig=<hex>``.

The shop's backend makes a link without asking bridged: ``sig`` is the lowercase hex HMAC-SHA256, keyed
with ``links.secret`` (its ASCII bytes), of the signed string

    order=<order>&manager=<manager>&exp=<exp>

the three fields in that order, their values exactly as they stand in the link. Orders and managers are
ids of 1-64 ``A-Z a-z 0-9 . _ -`` and ``exp`` is a Unix time in seconds, so no value needs escaping in a
URL and no two links share a signed string. A link is good until ``exp``, and one whose ``exp`` is further
ahead than ``links.max_age`` (and a minute for clocks that disagree) is refused too: a shop cannot mint
links that live for days by mistake.

This module only reads and checks links (no I/O); bridged.callpage serves them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from .ids import ID_RE

FIELDS = ("order", "manager", "exp", "sig")
_EXP_RE = re.compile(r"[0-9]{1,12}")
_SIG_RE = re.compile(r"[0-9a-fA-F]{64}")
# Seconds a shop's clock may run ahead of bridged's: a link made for exactly links.max_age is not refused
# for it.
CLOCK_SLACK = 60


class LinkProblem(StrEnum):
    """Why a link is refused; the values are stable ids (audit rows, the page)."""

    MALFORMED = "malformed"  # not the four fields, once each, in their formats
    BAD_SIGNATURE = "bad_signature"  # tampered, or signed with another secret
    EXPIRED = "expired"
    TOO_LONG = "too_long"  # exp further ahead than links.max_age


class LinkRefused(Exception):
    """A link that does not place a call. ``link`` is set only when its signature is valid: only then
    are its order and manager the shop's words rather than anyone's."""

    def __init__(self, problem: LinkProblem, link: SignedLink | None = None) -> None:
        super().__init__(problem.value)
        self.problem = problem
        self.link = link


@dataclass(frozen=True)
class SignedLink:
    order: str
    manager: str
    exp: str  # as given (it is what was signed)
    sig: str  # lowercase hex

    @property
    def expires(self) -> int:
        return int(self.exp)

    @property
    def key(self) -> str:
        """What the link is remembered by: the SHA-256 of its signature (the signature itself is a
        credential while the link lives, and is not stored)."""
        return hashlib.sha256(self.sig.encode("ascii")).hexdigest()


def signed_string(order: str, manager: str, exp: str | int) -> str:
    return f"order={order}&manager={manager}&exp={exp}"


def signature(secret: str, order: str, manager: str, exp: str | int) -> str:
    message = signed_string(order, manager, exp).encode("ascii")
    return hmac.new(secret.encode("ascii"), message, hashlib.sha256).hexdigest()


def make_link(base_url: str, secret: str, order: str, manager: str, exp: int) -> str:
    """The link as a shop's backend builds it (tests and the README's example use the same steps)."""
    sig = signature(secret, order, manager, exp)
    return f"{base_url.rstrip('/')}/c?{signed_string(order, manager, exp)}&sig={sig}"


def fields_of(values: Mapping[str, object], *, exactly: bool = True) -> SignedLink:
    """The link's fields from a query string or a JSON body (``name -> str``, or a list of them for a
    query string's repeated names): each of the four once, in its format; with ``exactly``, nothing
    else. Raises LinkRefused(MALFORMED)."""
    if exactly and set(values) - set(FIELDS):
        raise LinkRefused(LinkProblem.MALFORMED)
    found: dict[str, str] = {}
    for name in FIELDS:
        value = values.get(name)
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else None
        if not isinstance(value, str):
            raise LinkRefused(LinkProblem.MALFORMED)
        found[name] = value
    if not (
        ID_RE.fullmatch(found["order"])
        and ID_RE.fullmatch(found["manager"])
        and _EXP_RE.fullmatch(found["exp"])
        and _SIG_RE.fullmatch(found["sig"])
    ):
        raise LinkRefused(LinkProblem.MALFORMED)
    return SignedLink(found["order"], found["manager"], found["exp"], found["sig"].lower())


def verify(secret: str, link: SignedLink, *, now: float, max_age: int) -> SignedLink:
    """``link`` if it places a call now; else LinkRefused with the first problem: the signature (compared
    in constant time), then the expiry, then the lifetime."""
    expected = signature(secret, link.order, link.manager, link.exp)
    if not hmac.compare_digest(expected, link.sig):
        raise LinkRefused(LinkProblem.BAD_SIGNATURE)
    if link.expires <= now:
        raise LinkRefused(LinkProblem.EXPIRED, link)
    if link.expires - now > max_age + CLOCK_SLACK:
        raise LinkRefused(LinkProblem.TOO_LONG, link)
    return link


def capability(secret: str, link: SignedLink) -> str:
    """What the link's page follows and ends its call with, once the call is placed: derived from the link
    (so opening the link again gives the same one, and nothing needs storing but its hash) and useless
    without a placed call behind it. It keeps working after the link has expired, for the call's sake."""
    message = b"bridged call-link capability\n" + link.sig.encode("ascii")
    return hmac.new(secret.encode("ascii"), message, hashlib.sha256).hexdigest()


def capability_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
