"""bridged.ari.jsontext: what orjson reads, against the standard library's json it replaced."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridged.ari import jsontext

EVENT = (
    '{"type":"StasisStart","timestamp":"2026-12-03T06:00:00.000+0000","args":["dial","42"],'
    '"channel":{"id":"1764741600.12","name":"PJSIP/anna-00000001","state":"Ring",'
    '"caller":{"name":"Заказ 42","number":"+4930123456789"},"creationtime":"2026-12-03T06:00:00.000+0000",'
    '"language":"en","channelvars":{"BRIDGED_CALL":"c-1"}},"asterisk_id":"52:54:00:12:34:56",'
    '"application":"bridged"}'
)


def test_orjson_is_what_reads_ari() -> None:
    """orjson is a dependency (pyproject.toml, requirements/constraints.txt): json is only a fallback."""
    assert jsontext.BACKEND == "orjson"


@pytest.mark.parametrize(
    "text", [EVENT, "[]", "null", '{"a":[1,2.5,true,false,null,"\\u00e9"]}', "-0", "1e3"]
)
def test_reads_what_json_reads(text: str) -> None:
    expected = json.loads(text)
    assert jsontext.loads(text) == expected
    assert jsontext.loads(text.encode()) == expected


def test_an_integer_above_64_bits_comes_back_as_a_float() -> None:
    """orjson reads integers in [-2**63, 2**64 - 1] exactly and any larger one as a rounded float
    (json keeps it exact). ARI sends none that large."""
    assert jsontext.loads(str(2**64 - 1)) == 2**64 - 1
    assert jsontext.loads(str(-(2**63))) == -(2**63)
    big: Any = jsontext.loads(str(2**64))
    assert isinstance(big, float) and big == float(2**64)
    small: Any = jsontext.loads(str(-(2**63) - 1))
    assert isinstance(small, float)
    assert isinstance(jsontext.loads("123456789012345678901234567890"), float)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",  # not UTF-8
        b'{"a": "\xc3"}',  # a cut multi-byte character
        '{"a": "\ud800"}',  # a lone surrogate in a str
        b"{",
        b"",
        b"NaN",  # json reads NaN; orjson does not: an error either way is fine for ARI
        b'{"a": 1} trailing',
    ],
)
def test_what_is_not_json_raises_a_value_error(raw: bytes | str) -> None:
    """The callers (the event reader, the REST client) catch ValueError: orjson's error is one."""
    with pytest.raises(ValueError):
        jsontext.loads(raw)


@pytest.mark.parametrize(
    "value",
    [
        {"variables": {"CALLERID(name)": "Заказ 42 Иван П.", "BRIDGED_CALL": "c-1", "X": 'a "b" \\ c'}},
        {"manager_id": "anna", "direction": "phone", "callback_of": None},
        [["anna", "boris"], ["team:support"]],
        {"a": [1, 2.5, True, False, None, "\u00e9\u202e\x00"]},
    ],
)
def test_writes_what_json_reads_back_the_same(value: Any) -> None:
    written = jsontext.dumps(value)
    assert isinstance(written, bytes)
    assert json.loads(written) == value == json.loads(json.dumps(value))


@pytest.mark.parametrize("value", [{"s": "lone \ud800 surrogate"}, {1: "a key that is no string"}, [2**64]])
def test_what_orjson_refuses_is_written_as_json_wrote_it(value: Any) -> None:
    assert jsontext.dumps(value) == json.dumps(value).encode()
