"""Reading ARI's JSON: orjson when it is installed (a dependency), the standard library's ``json`` if not.

Every ARI event and REST answer is read here, about 20 per call: orjson reads them in a fifth of the time.
Both raise :class:`ValueError` for what is not JSON (orjson's ``JSONDecodeError`` is a
``json.JSONDecodeError``), bytes that are not UTF-8 included, which is what the callers catch.

One difference: an integer above 64 bits (beyond ``2**64 - 1``, or below ``-2**63``) comes back from orjson
as a float, rounded, where ``json`` keeps it exact. Nothing ARI sends is that large (ids are strings;
counts, causes and durations are small), and no caller decides anything on such a number.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["BACKEND", "loads"]

loads: Callable[[bytes | str], Any]
try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; json is the fallback
    loads = json.loads
    BACKEND = "json"
else:
    loads = orjson.loads
    BACKEND = "orjson"
