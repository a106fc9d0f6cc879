"""Ops review without the rig: cursors, byte ranges, the folder source, config keys, and the recording
endpoint's audit-before-bytes rule over an in-memory store (aiohttp test server on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from bridged.api import routes
from bridged.api.auth import DENIED_LIMITER
from bridged.api.calls import SCHEMAS, call_json
from bridged.api.cursors import CursorCodec
from bridged.api.errors import InvalidCursor
from bridged.api.limits import DeniedAuditLimiter
from bridged.appkeys import CONFIG, STORE
from bridged.calls.model import CallState
from bridged.config import LANGUAGES, ApiToken, ConfigError, ConfigHolder
from bridged.configfile import parse_config
from bridged.ops import choose_language
from bridged.recordings import (
    ByteRange,
    FolderRecordings,
    OpenRecording,
    RangeNotSatisfiable,
    RecordingMissing,
    content_type,
    parse_range,
)
from bridged.retention import OUTBOX_KEEP_DAYS, RECORDINGS, RETENTION, ROWS_BATCH, Retention
from bridged.store import Store
from bridged.store.base import DatabaseUnavailable, Window
from bridged.store.calls import CallFilter, CallRow
from bridged.store.settings import Setting

from .fakes import FakeAuditTrail, example_data, make_config

# -- cursors (more, generated, in test_params.py) ----------------------------------------------------

CODEC = CursorCodec("0123456789abcdef" * 4)


def test_cursor_round_trip_keeps_microseconds_and_id() -> None:
    at = datetime(2026, 3, 1, 10, 20, 30, 123456, tzinfo=UTC)
    cursor = CODEC.encode("calls", at, "c-123")
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor  # URL-safe as it is
    assert CODEC.decode_calls(cursor) == (at, "c-123")
    assert CODEC.decode_audit(CODEC.encode("audit", at, 42)) == (at, 42)


@pytest.mark.parametrize(
    "cursor",
    ["", "not base64!", "e30", "WyJjYWxscyJd", CODEC.encode("audit", datetime.now(UTC), 1)],
)
def test_bad_or_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        CODEC.decode_calls(cursor)


def test_cursor_with_a_naive_time_or_wrong_id_type_is_refused_even_when_signed() -> None:
    import base64
    import json

    def signed(fields: list[Any]) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
        return f"{payload}.{CODEC._sign(payload)}"

    assert CODEC.decode_calls(signed(["calls", "2026-01-01T00:00:00+00:00", "x"]))[1] == "x"
    for fields in (
        ["calls", "0001-01-01T00:00:00+05:00", "x"],  # before 1970 (and no datetime in UTC)
        ["calls", "2026-01-01T00:00:00", "x\u0000"],
        ["audit", "2026-01-01T00:00:00+00:00", "7"],
        ["audit", "2026-01-01T00:00:00+00:00", True],
        ["audit", "2026-01-01T00:00:00+00:00", 2**63],
    ):
        with pytest.raises(InvalidCursor):
            (CODEC.decode_audit if fields[0] == "audit" else CODEC.decode_calls)(signed(fields))
    # Signed with another secret: refused whatever it holds.
    with pytest.raises(InvalidCursor):
        CODEC.decode_calls(CursorCodec("f" * 64).encode("calls", datetime.now(UTC), "x"))


# -- byte ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, ByteRange(0, 9)),
        ("bytes=10-", 100, ByteRange(10, 99)),
        ("bytes=-10", 100, ByteRange(90, 99)),
        ("bytes=-500", 100, ByteRange(0, 99)),
        ("bytes=90-500", 100, ByteRange(90, 99)),
        ("bytes=99-99", 100, ByteRange(99, 99)),
        ("BYTES = 5 - 6", 100, ByteRange(5, 6)),
        # Not understood or not one range: ignored, the whole file is sent (RFC 9110 allows it).
        ("bytes=0-1,5-6", 100, None),
        ("items=0-1", 100, None),
        ("bytes=9-2", 100, None),
        ("bytes=-", 100, None),
        ("bytes=a-b", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=0-", 0)]
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_content_range_and_types() -> None:
    assert ByteRange(10, 19).content_range(100) == "bytes 10-19/100"
    assert ByteRange(10, 19).length == 10
    assert content_type("wav") == "audio/wav"
    assert content_type("wav49") == "audio/wav"
    assert content_type("gsm") == "audio/x-gsm"
    assert content_type("nonsense") == "application/octet-stream"


# -- the folder source ------------------------------------------------------------------------------


async def test_folder_source_slices_and_deletes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    (tmp_path / "bridged-c1.wav").write_bytes(data)
    source = FolderRecordings(tmp_path, "wav")
    opened = await source.open("bridged-c1")
    try:
        assert opened.size == len(data) and opened.content_type == "audio/wav"
        assert b"".join([c async for c in opened.chunks(1000, 200_000)]) == data[1000:200_001]
        assert b"".join([c async for c in opened.chunks(0, len(data) - 1)]) == data
    finally:
        await opened.close()
    assert await source.delete("bridged-c1") is True
    assert not (tmp_path / "bridged-c1.wav").exists()
    assert await source.delete("bridged-c1") is False
    with pytest.raises(RecordingMissing):
        await source.open("bridged-c1")


async def test_folder_source_never_leaves_its_folder(tmp_path: Path) -> None:
    inside = tmp_path / "recording"
    inside.mkdir()
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    source = FolderRecordings(inside, "wav")
    with pytest.raises(RecordingMissing):
        await source.open("../secret")
    assert await source.delete("../secret") is False
    assert (tmp_path / "secret.wav").exists()


async def test_folder_source_finds_other_formats(tmp_path: Path) -> None:
    (tmp_path / "bridged-c2.gsm").write_bytes(b"\x00" * 33)
    opened = await FolderRecordings(tmp_path, "wav").open("bridged-c2")
    assert opened.content_type == "audio/x-gsm" and opened.size == 33
    await opened.close()


# -- config -----------------------------------------------------------------------------------------


def _recording_config(**keys: Any) -> Any:
    data = copy.deepcopy(example_data())
    data["recording"].update(keys)
    return parse_config(data)


def test_recording_review_keys_default_and_parse() -> None:
    config = parse_config(copy.deepcopy(example_data()))
    assert (config.recording.source, config.recording.folder) == ("ari", None)
    assert config.recording.retention_days is None and config.recording.require_reason is False
    config = _recording_config(source="folder", folder="/var/spool/asterisk/recording", retention_days=90)
    assert config.recording.folder == "/var/spool/asterisk/recording"
    assert config.recording.retention_days == 90


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"source": "s3"}, "recording.source"),
        ({"source": "folder"}, "recording.folder"),
        ({"source": "folder", "folder": "relative/dir"}, "recording.folder"),
        ({"retention_days": 0}, "recording.retention_days"),
        ({"retention_days": "30"}, "recording.retention_days"),
        ({"require_reason": "yes"}, "recording.require_reason"),
        ({"purge_interval": 0}, "recording.purge_interval"),
        ({"retention": 30}, "recording.retention"),
    ],
)
def test_recording_review_key_errors_name_the_key(keys: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _recording_config(**keys)
    assert raised.value.key == key


# -- the recording endpoint over an in-memory store -------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class ReviewStore:
    """The store the review endpoints use, in memory: its calls, audit and settings parts (each mirrors
    the real aggregate, ``test_fakes_match`` checks it)."""

    def __init__(self) -> None:
        self.rows: dict[str, CallRow] = {}
        self.audits: list[dict[str, Any]] = []
        self.calls = ReviewCalls(self.rows)
        self.audit = FakeAuditTrail(self.audits)
        self.settings = ReviewSettings()


class ReviewCalls:
    """Mirrors ``CallRows``' reads over the rows a test set."""

    def __init__(self, rows: dict[str, CallRow]) -> None:
        self.rows = rows

    async def get(self, call_id: str) -> CallRow | None:
        return self.rows.get(call_id)

    async def page(self, window: Window, only: CallFilter) -> list[CallRow]:
        # As the real one's SQL: a filter given (not None) must hold; newest first, after ``before``.
        since, until, before = window.since, window.until, window.before
        manager_id, order_id, outcome, has_recording = (
            only.manager_id,
            only.order_id,
            only.outcome,
            only.has_recording,
        )
        rows = [
            r
            for r in self.rows.values()
            if manager_id in (None, r.manager_id)
            and order_id in (None, r.order_id)
            and outcome in (None, r.outcome)
            and (since is None or r.requested_at >= since)
            and (until is None or r.requested_at < until)
            and has_recording in (None, r.recording_available)
            and (before is None or (r.requested_at, r.id) < before)
        ]
        rows.sort(key=lambda r: (r.requested_at, r.id), reverse=True)
        return rows[: window.limit]


class ReviewSettings:
    """Mirrors ``Settings.cursor_secret``."""

    async def cursor_secret(self) -> str:
        return "0123456789abcdef" * 4


def _call(call_id: str, minutes_ago: int, **kw: Any) -> CallRow:
    at = NOW - timedelta(minutes=minutes_ago)
    values: dict[str, Any] = {
        "id": call_id,
        "order_id": "123",
        "manager_id": "anna",
        "direction": "phone",
        "state": "ended",
        "outcome": "completed",
        "hangup_cause": 16,
        "requested_at": at,
        "answered_at": at + timedelta(seconds=5),
        "ended_at": at + timedelta(seconds=65),
        "ended_by": "manager",
        "recording_name": f"bridged-{call_id}",
        "recording_purged_at": None,
        "manager_channel_id": None,
        "customer_channel_id": None,
        "bridge_id": None,
    }
    values.update(kw)
    return CallRow(**values)


TOKENS_PLAIN = {"shop-token": "shop", "ops-token": "ops", "admin-token": "admin"}
WAV = b"RIFF" + bytes(range(256)) * 40


@pytest.fixture
async def served(tmp_path: Path):
    store = ReviewStore()
    store.rows["c1"] = _call("c1", 10)
    store.rows["c2"] = _call("c2", 5, recording_name=None, outcome="customer_busy")
    store.rows["c3"] = _call("c3", 1, recording_purged_at=NOW)
    (tmp_path / "bridged-c1.wav").write_bytes(WAV)
    config = make_config()
    config = replace(config, recording=replace(config.recording, source="folder", folder=str(tmp_path)))
    tokens = tuple(
        ApiToken(name=f"{role}-1", role=role, sha256=hashlib.sha256(t.encode()).hexdigest())
        for t, role in TOKENS_PLAIN.items()
    )
    config = replace(config, api=replace(config.api, tokens=tokens))
    app = web.Application()
    app[CONFIG] = ConfigHolder(config)
    app[STORE] = cast(Store, store)  # a fake standing in for the real Store
    source = FolderRecordings(tmp_path, "wav")
    app[RECORDINGS] = source
    app[RETENTION] = Retention(store, source, lambda: None)  # type: ignore[arg-type]
    routes.setup(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, store, app
    finally:
        await client.close()


def _auth(role: str) -> dict[str, str]:
    token = next(t for t, r in TOKENS_PLAIN.items() if r == role)
    return {"Authorization": f"Bearer {token}"}


async def test_listen_is_audited_then_served(served) -> None:
    client, store, _ = served
    resp = await client.get("/v1/calls/c1/recording?reason=dispute%2042", headers=_auth("ops"))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/wav"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == WAV
    assert [(a["actor"], a["action"], a["call_id"], a["reason"]) for a in store.audits] == [
        ("ops-1", "recording.listen", "c1", "dispute 42")
    ]
    assert store.audits[0]["details"]["client"] == "127.0.0.1"


async def test_head_answers_the_headers_without_audio_or_a_listen_row(served) -> None:
    client, store, _ = served
    resp = await client.head("/v1/calls/c1/recording", headers=_auth("ops"))
    assert resp.status == 200
    assert (resp.headers["Content-Length"], resp.headers["Content-Type"]) == (str(len(WAV)), "audio/wav")
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == b""
    ranged = await client.head("/v1/calls/c1/recording", headers={**_auth("ops"), "Range": "bytes=4-19"})
    assert (ranged.status, ranged.headers["Content-Range"]) == (206, f"bytes 4-19/{len(WAV)}")
    assert ranged.headers["Content-Length"] == "16"
    # The same refusals as GET; a missing token is audited as a denial, a HEAD that passes is not.
    assert (await client.head("/v1/calls/c3/recording", headers=_auth("ops"))).status == 410
    assert (await client.head("/v1/calls/c1/recording", headers=_auth("shop"))).status == 403
    assert (await client.head("/v1/calls/c1/recording")).status == 401
    assert store.audits and not [a for a in store.audits if a["action"].startswith("recording.")]
    # A GET after it is a listen, and the only one.
    assert await (await client.get("/v1/calls/c1/recording", headers=_auth("ops"))).read() == WAV
    assert [a["action"] for a in store.audits if a["action"].startswith("recording.")] == ["recording.listen"]


async def test_the_client_behind_a_trusted_proxy_is_the_forwarded_address(served) -> None:
    client, store, app = served
    config = app[CONFIG].current
    forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9", **_auth("ops")}
    # Not trusted (the default): the peer, whatever the header says.
    await client.get("/v1/calls/c1/recording", headers=forwarded)
    trusted = replace(config.http, trusted_proxies=(ip_network("127.0.0.1"), ip_network("203.0.113.0/24")))
    app[CONFIG].current = replace(config, http=trusted)
    # Trusted: the last address before the trusted hops (the first one could be made up by the client).
    await client.get("/v1/calls/c1/recording", headers=forwarded)
    await client.get("/v1/calls/c1/recording", headers={"X-Forwarded-For": "not-an-ip", **_auth("ops")})
    assert [a["details"]["client"] for a in store.audits] == ["127.0.0.1", "198.51.100.1", "127.0.0.1"]


async def test_no_audit_row_no_recording(served) -> None:
    client, store, _ = served
    store.audit.error = DatabaseUnavailable("ConnectionRefusedError")
    resp = await client.get("/v1/calls/c1/recording", headers=_auth("ops"))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    body = await resp.json()
    assert body["error"]["id"] == "audit_unavailable"
    assert b"RIFF" not in await resp.read()


async def test_range_request_gets_206_with_the_slice(served) -> None:
    client, store, _ = served
    resp = await client.get("/v1/calls/c1/recording", headers={**_auth("admin"), "Range": "bytes=4-19"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 4-19/{len(WAV)}"
    assert await resp.read() == WAV[4:20]
    resp = await client.get("/v1/calls/c1/recording", headers={**_auth("admin"), "Range": "bytes=999999-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(WAV)}"
    assert (await resp.json())["error"]["id"] == "range_not_satisfiable"
    assert [a["details"]["range"] for a in store.audits] == [f"bytes 4-19/{len(WAV)}"]


async def test_recording_errors(served) -> None:
    client, store, _ = served
    cases = {
        "c2": (404, "recording_not_found"),
        "c3": (410, "recording_purged"),
        "nope": (404, "call_not_found"),
    }
    for call_id, (status, error_id) in cases.items():
        resp = await client.get(f"/v1/calls/{call_id}/recording", headers=_auth("ops"))
        assert (resp.status, (await resp.json())["error"]["id"]) == (status, error_id), call_id
        assert "Retry-After" not in resp.headers  # only a 503 says when to try again
    assert store.audits == []


async def test_the_recordings_state_is_shown_and_a_failed_one_is_not_served(served) -> None:
    client, store, app = served
    store.rows["c4"] = _call("c4", 8, recording_state="truncated")
    store.rows["c5"] = _call("c5", 7, recording_state="failed")
    folder = Path(app[CONFIG].current.recording.folder or "")
    (folder / "bridged-c4.wav").write_bytes(WAV)
    (folder / "bridged-c5.wav").write_bytes(b"")  # what a full disk leaves: an empty file
    page = await (await client.get("/v1/calls", headers=_auth("ops"))).json()
    recordings = {
        c["id"]: (c["has_recording"], c["recording_purged_at"], c["recording_state"]) for c in page["items"]
    }
    assert recordings["c4"] == (True, None, "truncated")
    assert recordings["c5"] == (False, None, "failed")
    assert recordings["c2"] == (False, None, None)
    # A truncated recording is served (what there is of it); a failed one holds nothing to serve.
    assert (await client.get("/v1/calls/c4/recording", headers=_auth("ops"))).status == 200
    resp = await client.get("/v1/calls/c5/recording", headers=_auth("ops"))
    assert (resp.status, (await resp.json())["error"]["id"]) == (404, "recording_not_found")
    assert [a["call_id"] for a in store.audits] == ["c4"]


def test_one_call_json_says_whether_a_recording_is_there_to_hear() -> None:
    row = _call("c1", 1, recording_state="truncated", state="ending", hangup_cause=17)
    shown = call_json(row)
    assert (shown["has_recording"], shown["recording_state"], shown["recording_purged_at"]) == (
        True,
        "truncated",
        None,
    )
    assert (shown["state"], shown["hangup_cause"], shown["duration_seconds"]) == ("ending", 17, 60.0)
    assert not {
        "recording_name",
        "manager_channel_id",
        "customer_channel_id",
        "bridge_id",
        "created_by",
    } & set(shown)
    row = replace(row, recording_state="failed")
    assert (call_json(row)["has_recording"], call_json(row)["recording_state"]) == (False, "failed")
    row = replace(row, recording_state="complete", recording_purged_at=NOW)
    assert (call_json(row)["has_recording"], call_json(row)["recording_purged_at"]) == (
        False,
        NOW.isoformat(),
    )
    row = replace(row, recording_name=None, recording_state=None, recording_purged_at=None)
    assert (call_json(row)["has_recording"], call_json(row)["recording_state"]) == (False, None)


async def test_reason_required_by_config(served) -> None:
    client, store, app = served
    config = app[CONFIG].current
    app[CONFIG].current = replace(config, recording=replace(config.recording, require_reason=True))
    resp = await client.get("/v1/calls/c1/recording", headers=_auth("ops"))
    assert resp.status == 422 and (await resp.json())["error"]["id"] == "reason_required"
    resp = await client.get("/v1/calls/c1/recording?reason=quality%20check", headers=_auth("ops"))
    assert resp.status == 200


async def test_denials_are_audited(served) -> None:
    client, store, _ = served
    resp = await client.get("/v1/calls/c1/recording", headers=_auth("shop"))
    assert resp.status == 403
    resp = await client.get("/v1/calls", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    resp = await client.get("/v1/audit")
    assert resp.status == 401
    rows = [(a["actor"], a["action"], a["outcome"], a["details"].get("permission")) for a in store.audits]
    assert rows == [
        ("shop-1", "api.denied", "forbidden", "recordings.listen"),
        ("anonymous", "api.denied", "unauthenticated", "calls.list"),
        ("anonymous", "api.denied", "unauthenticated", "audit.read"),
    ]
    assert "wrong" not in repr(store.audits)  # a presented token is never stored


async def test_call_list_pages(served) -> None:
    client, _, _ = served
    resp = await client.get("/v1/calls?limit=2", headers=_auth("ops"))
    page = await resp.json()
    assert [c["id"] for c in page["items"]] == ["c3", "c2"] and page["next_cursor"]
    assert page["items"][0]["has_recording"] is False and page["items"][0]["recording_purged_at"]
    resp = await client.get(f"/v1/calls?limit=2&cursor={page['next_cursor']}", headers=_auth("ops"))
    page = await resp.json()
    assert [c["id"] for c in page["items"]] == ["c1"] and page["next_cursor"] is None
    assert page["items"][0]["duration_seconds"] == 60.0


async def test_the_history_shows_each_call_as_reading_it_alone_does(served) -> None:
    # One representation of a call (issue 12): GET /v1/calls and GET /v1/calls/{id}, field for field.
    client, store, _ = served
    store.rows["c4"] = _call("c4", 0, state="ending", outcome=None, ended_at=None, answered_at=None)
    page = await (await client.get("/v1/calls", headers=_auth("ops"))).json()
    assert [c["id"] for c in page["items"]] == ["c4", "c3", "c2", "c1"]
    for listed in page["items"]:
        alone = await client.get(f"/v1/calls/{listed['id']}", headers=_auth("ops"))
        assert alone.status == 200 and await alone.json() == listed


def test_a_call_state_has_one_name_everywhere() -> None:
    # The states the API documents are the engine's, each once ("ending", never "refusing" beside it).
    documented = SCHEMAS["Call"]["properties"]["state"]["enum"]
    assert documented == [state.value for state in CallState]


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=201", "limit=x", "from=yesterday", "has_recording=maybe", "cursor=zzz", "manger=anna"],
)
async def test_call_list_refuses_bad_parameters(served, query: str) -> None:
    client, _, _ = served
    resp = await client.get(f"/v1/calls?{query}", headers=_auth("ops"))
    assert resp.status == 422
    assert (await resp.json())["error"]["id"] in ("invalid_parameter", "invalid_cursor")


async def test_time_filter_accepts_an_unencoded_plus(served) -> None:
    client, _, _ = served
    resp = await client.get("/v1/calls?from=2026-03-01T11:00:00+00:00", headers=_auth("ops"))
    assert resp.status == 200


async def test_ops_page_carries_no_data_and_strict_headers(served) -> None:
    client, _, _ = served
    resp = await client.get("/ops/")
    assert resp.status == 200
    text = await resp.text()
    assert 'id="signin-form"' in text and "{{" not in text
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Cache-Control"] == "no-store"
    resp = await client.get("/ops/static/ops.js")
    assert resp.status == 200 and resp.content_type == "text/javascript"
    sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)">', text)
    assert sheets == ["/ops/static/base.css", "/ops/static/ops.css"]
    for sheet in sheets:
        resp = await client.get(sheet)
        assert resp.status == 200 and resp.content_type == "text/css", sheet
    resp = await client.get("/ops/static/../__init__.py")
    assert resp.status == 404


async def test_ops_page_language_follows_accept_language(served) -> None:
    client, _, _ = served
    cases = {
        "ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7": "ru",
        "en-GB,en;q=0.9,ru;q=0.8": "en",
        "de-DE,de;q=0.9,ru;q=0.5,en;q=0.4": "ru",
        "en;q=0.2, ru;q=0.8": "ru",
        "de-DE": "en",  # neither: the shop's language (en in the example config)
    }
    for header, language in cases.items():
        resp = await client.get("/ops/", headers={"Accept-Language": header})
        assert f'<html lang="{language}">' in await resp.text(), header
        assert resp.headers["Vary"] == "Accept-Language"


@pytest.mark.parametrize(
    ("header", "fallback", "chosen"),
    [
        (None, "ru", "ru"),
        ("", "en", "en"),
        ("*", "ru", "ru"),
        ("RU", "en", "ru"),
        ("ru;q=0", "en", "en"),  # q=0: not acceptable
        ("ru;q=abc, en", "ru", "en"),
        ("ru;q=2", "en", "en"),
        ("en, ru", "ru", "en"),  # equal q: the first
        (";;,,;q=;", "en", "en"),
        ("\x00ru\u202e, \U0001f600", "en", "en"),
        ("x" * 5000 + ",ru", "en", "en"),  # past the first 1000 characters
    ],
)
def test_choose_language(header: str | None, fallback: str, chosen: str) -> None:
    assert choose_language(header, fallback) == chosen


@given(st.text(max_size=300), st.sampled_from(LANGUAGES))
def test_choose_language_takes_any_text(header: str, fallback: str) -> None:
    assert choose_language(header, fallback) in LANGUAGES


class _BrokenRecording:
    size = 1000
    content_type = "audio/wav"
    closed = False

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        yield b"RIFF" + b"\x00" * 96
        raise OSError("Asterisk went away")

    async def close(self) -> None:
        type(self).closed = True


class _BrokenSource:
    name = "ari"

    async def open(self, recording_name: str) -> OpenRecording:
        return _BrokenRecording()

    async def delete(self, recording_name: str) -> bool:
        from bridged.recordings import SourceUnavailable

        raise SourceUnavailable("Asterisk unreachable")


async def test_source_failing_mid_stream_cuts_the_connection(served) -> None:
    import aiohttp

    client, store, app = served
    app._state[RECORDINGS] = _BrokenSource()
    resp = await client.get("/v1/calls/c1/recording", headers=_auth("ops"))
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert _BrokenRecording.closed
    assert len(store.audits) == 1  # the listen was audited before the first byte


class _Purged:
    """A table's purge: what it was asked to delete."""

    def __init__(self, deleted: int = 0) -> None:
        self.asked: list[tuple[datetime, int]] = []
        self.deleted = deleted
        self.done = asyncio.Event()

    async def purge(self, before: datetime, batch: int) -> int:
        self.asked.append((before, batch))
        self.done.set()
        return self.deleted


class _RetentionStore:
    """The store Retention uses: its settings (the days a recording is kept), the calls' recordings,
    the tables it purges."""

    def __init__(self, days: int | None) -> None:
        self.settings = _RetentionSettings(days)
        self.calls = _RetentionCalls()
        self.attempts = _Purged(3)
        self.outbox = _Purged(2)


class _RetentionSettings:
    """Mirrors ``Settings.get``: the retention days an admin set, or none."""

    def __init__(self, days: int | None) -> None:
        self.days = days

    async def get(self, key: str) -> Setting | None:
        return None if self.days is None else Setting(key, self.days, NOW, "admin-1")


class _RetentionCalls:
    """Mirrors ``CallRows``' recordings past the retention: two due, marked purged once each."""

    def __init__(self) -> None:
        self.due = [("c1", "bridged-c1"), ("c2", "bridged-c2")]
        self.marked: list[str] = []
        self.cutoff: datetime | None = None
        self.listing_fails = False

    async def recordings_due(self, older_than: datetime, limit: int) -> list[tuple[str, str]]:
        if self.listing_fails:
            raise RuntimeError("the recordings could not be listed")
        self.cutoff = older_than
        return [d for d in self.due if d[0] not in self.marked][:limit]

    async def mark_recording_purged(
        self, call_id: str, *, actor: str, details: dict[str, Any]
    ) -> datetime | None:
        if call_id in self.marked:  # as the real one: None if it already was
            return None
        self.marked.append(call_id)
        return NOW


async def test_retention_purges_past_the_cutoff_and_keeps_rows_when_the_source_is_down(
    tmp_path: Path,
) -> None:
    store = _RetentionStore(30)
    (tmp_path / "bridged-c1.wav").write_bytes(b"RIFF")
    retention = Retention(store, FolderRecordings(tmp_path, "wav"), lambda: None)  # type: ignore[arg-type]
    assert await retention.purge(now=NOW) == 2
    assert store.calls.cutoff == NOW - timedelta(days=30)
    assert store.calls.marked == ["c1", "c2"] and not (tmp_path / "bridged-c1.wav").exists()

    down = _RetentionStore(30)
    assert await Retention(down, _BrokenSource(), lambda: None).purge(now=NOW) == 0  # type: ignore[arg-type]
    assert down.calls.marked == []  # the rows still say the recordings exist, which is true

    assert await Retention(_RetentionStore(None), _BrokenSource(), lambda: None).purge() == 0  # type: ignore[arg-type]
    policy = await Retention(_RetentionStore(None), _BrokenSource(), lambda: 90).policy()  # type: ignore[arg-type]
    assert (policy.days, policy.source) == (90, "config")


async def test_the_rows_past_their_keeping_are_deleted_in_batches() -> None:
    store = _RetentionStore(None)
    retention = Retention(store, _BrokenSource(), lambda: None, lambda: 14)  # type: ignore[arg-type]
    assert await retention.purge_rows(now=NOW) == (3, 2)
    assert store.attempts.asked == [(NOW - timedelta(days=14), ROWS_BATCH)]
    assert store.outbox.asked == [(NOW - timedelta(days=OUTBOX_KEEP_DAYS), ROWS_BATCH)]


async def test_the_retention_loop_deletes_the_rows_even_when_the_recordings_pass_fails() -> None:
    store = _RetentionStore(30)
    store.calls.listing_fails = True
    retention = Retention(store, _BrokenSource(), lambda: None, lambda: 14)  # type: ignore[arg-type]
    task = asyncio.create_task(retention.run(3600))
    try:
        # The bound only ends a hang (the loop not calling it); nothing here is timed.
        await asyncio.wait_for(asyncio.gather(store.attempts.done.wait(), store.outbox.done.wait()), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(store.attempts.asked) == len(store.outbox.asked) == 1


async def test_refusals_beyond_a_clients_quota_are_folded_into_its_next_row(served) -> None:
    client, store, app = served
    clock = [0.0]
    app._state[DENIED_LIMITER] = DeniedAuditLimiter(per_minute=2, clock=lambda: clock[0])
    for _ in range(5):
        resp = await client.get("/v1/calls", headers={"Authorization": "Bearer wrong"})
        assert resp.status == 401  # every request is refused; only the audit rows are capped
    assert len(store.audits) == 2
    clock[0] += 60
    resp = await client.get("/v1/audit")
    assert resp.status == 401
    assert len(store.audits) == 3
    assert store.audits[-1]["details"]["suppressed_before"] == 3
    assert "suppressed_before" not in store.audits[0]["details"]
