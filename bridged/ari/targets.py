"""What an ARI request is sent as: its target (path and query below the base URL) and its JSON body.

Worked out once per operation of :data:`bridged.ari.operations.OPERATIONS` (the path template's pieces, the
names it accepts), so that a request costs its client a few string joins (issue 19: the yarl ``URL`` and
urllib's ``quote`` per request were a tenth of the client's CPU per call). Raises ``ValueError``, naming no
value, for what Asterisk would silently ignore.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .operations import OPERATIONS, PATH_PARAM, Operation

__all__ = ["PLANS", "Plan", "encode_value", "quoted"]


def encode_value(value: Any) -> str:
    # ARI parses booleans only as lowercase words and allowMultiple parameters as comma-joined lists.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(encode_value(v) for v in value)
    return str(value)


# What urllib's quote(safe="") leaves as it is: an id or word made of these needs no quoting (most do).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
# quote(safe="") for one ASCII character, as a str.translate table: a whole text in one C call, where
# quote works byte by byte in Python.
_QUOTE_ASCII = {c: chr(c) if _UNRESERVED.fullmatch(chr(c)) else f"%{c:02X}" for c in range(128)}
_unreserved = _UNRESERVED.fullmatch


def quoted(text: str) -> str:
    """``quote(text, safe="")``: everything but the unreserved characters percent-encoded, "/" and "+"
    included (an id stays one path segment; "+" in a dial string reaches Asterisk as %2B, not a space)."""
    if _UNRESERVED.fullmatch(text):
        return text
    return text.translate(_QUOTE_ASCII) if text.isascii() else quote(text, safe="")


@dataclass(frozen=True, slots=True)
class Plan:
    """What one operation's requests share, worked out once: the path template's pieces, the names it
    accepts, their encoded forms. Every request of a call goes through :meth:`target`."""

    name: str
    op: Operation
    # The path template split around its parameters: literal, name, literal, ... literal.
    pieces: tuple[str, ...]
    # Each query parameter's name as it is sent, with its "=".
    query_names: dict[str, str]
    body_names: frozenset[str]

    @classmethod
    def of(cls, name: str, op: Operation) -> Plan:
        query = {p: quote(p, safe="") + "=" for p in op.all_params if p not in op.body_params}
        return cls(name, op, tuple(PATH_PARAM.split(op.path)), query, frozenset(op.body_params))

    def target(
        self, path_params: Mapping[str, Any], params: Mapping[str, Any], body: Mapping[str, Any] | None
    ) -> str:
        name, pieces = self.name, self.pieces
        for i in range(1, len(pieces), 2):
            if path_params.get(pieces[i]) in (None, ""):
                raise ValueError(f"ARI {name}: missing path parameter {pieces[i]}")
        for required in self.op.required:
            if params.get(required) is None and (not body or body.get(required) is None):
                raise ValueError(f"ARI {name}: missing required parameter {required}")
        # A misspelt name would be silently ignored by Asterisk; fail loudly instead. (Compared as sets:
        # the names are looked at one by one only to say which.)
        query_names = self.query_names
        if not query_names.keys() >= params.keys():
            key = next(k for k in params if k not in query_names)
            raise ValueError(f"ARI {name}: unknown query parameter {key}")
        if body and not self.body_names.issuperset(body):
            key = next(k for k in body if k not in self.body_names)
            raise ValueError(f"ARI {name}: unknown body parameter {key}")
        path = pieces[0]
        for i in range(1, len(pieces), 2):
            value = path_params[pieces[i]]
            if type(value) is not str:
                value = str(value)
            # Quote everything, "/" included: an id is one path segment.
            path += (value if _unreserved(value) else quoted(value)) + pieces[i + 1]
        # Encoded by hand so "+" in a dial string reaches Asterisk as %2B, never as a space. A loop, not a
        # generator, and most values (ids, words) need no quoting: asked here, without a call for it.
        query = []
        for key, value in params.items():
            if value is None:
                continue
            if type(value) is not str:
                value = encode_value(value)
            query.append(query_names[key] + (value if _unreserved(value) else quoted(value)))
        return f"{path}?{'&'.join(query)}" if query else path

    def json_body(self, body: Mapping[str, Any] | None) -> dict[str, Any] | None:
        json_body = {k: v for k, v in body.items() if v is not None} if body else None
        if self.op.body_whole and json_body:
            [json_body] = json_body.values()
        return json_body or None


PLANS = {name: Plan.of(name, op) for name, op in OPERATIONS.items()}
