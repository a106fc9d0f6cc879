"""Ops review over the real rig: recordings made by real calls (SIPp phones and carrier, Asterisk 22),
bridged as a subprocess, its PostgreSQL read as an operator would.

One daemon and a handful of calls are shared by the module (a call takes seconds); the tests only read
them, except the retention tests, which each purge a call of their own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rig import Asterisk, Postgres
from rig.asterisk import manager_endpoint_conf

from .conftest import ARTIFACTS
from .harness import (
    Bridged,
    ManagerPhone,
    add_order,
    assert_not_leaked,
    carrier,
    dial,
    new_customer_number,
    new_order_id,
    wait_for,
)

TOKENS = {
    "shop": ("shop-backend", "t-shop-5c1e0a"),
    "ops": ("ops-olga", "t-ops-7d2f11"),
    "admin": ("admin-ivan", "t-admin-93ab4c"),
}
WRONG_TOKEN = "t-nobody-000000"


def token_config() -> dict[str, Any]:
    return {
        "api": {
            "tokens": [
                {"name": name, "role": role, "sha256": hashlib.sha256(secret.encode()).hexdigest()}
                for role, (name, secret) in TOKENS.items()
            ]
        }
    }


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    daemon: Bridged,
    method: str,
    path: str,
    *,
    role: str | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> Response:
    all_headers = dict(headers or {})
    if role is not None:
        token = TOKENS[role][1]
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}{path}", data=data, method=method, headers=all_headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, err.headers, err.read())


@dataclass
class Rig:
    daemon: Bridged
    asterisk: Asterisk
    postgres: Postgres
    trace_dir: Path
    alloc: Any
    numbers: list[str]
    kept: dict[str, dict[str, Any]]  # name -> ended call row, recordings the read-only tests use
    refused: dict[str, Any]
    to_purge: list[dict[str, Any]]
    endpoint_files: list[str]

    def place_call(self, manager: ManagerPhone, name: str, *, hold_ms: int = 3000) -> dict[str, Any]:
        """A real answered call by order code; the ended row once its recording is judged and on disk."""
        order, number = new_order_id(), new_customer_number()
        self.numbers.append(number)
        add_order(self.postgres, order, number, "Review Customer", manager.id)
        calls_dir = self.trace_dir / name
        calls_dir.mkdir(parents=True, exist_ok=True)
        customer = carrier(calls_dir, self.alloc, hold_ms=30000)
        phone = dial(manager, calls_dir, f"*77{order}", hold_ms=hold_ms)
        assert phone.wait(timeout=60) == 0, phone.describe()
        customer.wait(timeout=20)
        row = wait_for(
            lambda: [
                r
                for r in self.daemon.call_rows(manager.id)
                if r["order_id"] == order and r["state"] == "ended" and r["recording_state"]
            ],
            15,
            f"ended row of {name}",
        )[-1]
        assert (row["outcome"], row["recording_state"]) == ("completed", "complete"), row
        wait_for(lambda: self.recording_path(row).exists(), 10, "recording file")
        return row

    def recording_path(self, row: dict[str, Any]) -> Path:
        return self.asterisk.recordings_dir / f"{row['recording_name']}.wav"


def _start_daemon(
    asterisk: Asterisk,
    shop: Postgres,
    workdir: Path,
    alloc: Any,
    managers: tuple[str, ...],
    extra: dict[str, Any],
    endpoint_files: list[str],
) -> Bridged:
    phones = [
        ManagerPhone(
            id=f"{m}{alloc.unique_name('')}",
            endpoint=alloc.unique_name("mgr"),
            sip_port=alloc.sip_port(),
            rtp_port=alloc.rtp_port(),
        )
        for m in managers
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    daemon = Bridged(asterisk, shop, workdir, phones, extra=extra)
    conf = "\n".join(
        manager_endpoint_conf(p.endpoint, p.sip_port, set_vars={"BRIDGED_AGI": daemon.agi_url})
        for p in phones
    )
    file_name = f"test_{phones[0].endpoint}"
    asterisk.add_endpoints(file_name, conf)
    endpoint_files.append(file_name)
    daemon.start()
    return daemon


@pytest.fixture(scope="module")
def rig(asterisk: Asterisk, shop: Postgres, rig_alloc) -> Iterator[Rig]:
    trace_dir = ARTIFACTS / "test_review_api"
    shutil.rmtree(trace_dir, ignore_errors=True)
    trace_dir.mkdir(parents=True)
    endpoint_files: list[str] = []
    daemon = _start_daemon(
        asterisk, shop, trace_dir, rig_alloc, ("rita", "rob"), token_config(), endpoint_files
    )
    rig = Rig(daemon, asterisk, shop, trace_dir, rig_alloc, [], {}, {}, [], endpoint_files)
    # The database is shared by the session: start from the config's retention whatever ran before.
    daemon.sql("DELETE FROM settings WHERE key = 'recording.retention_days'")
    try:
        rita, rob = daemon.managers
        rig.kept["rita1"] = rig.place_call(rita, "rita1")
        rig.kept["rita2"] = rig.place_call(rita, "rita2")
        rig.kept["rob1"] = rig.place_call(rob, "rob1")
        # A refused call (unknown order): a row without a recording.
        missing = new_order_id()
        phone = dial(rob, trace_dir / "refused", f"*77{missing}", hold_ms=20000, timeout_s=40)
        assert phone.wait(timeout=30) == 0, phone.describe()
        rig.refused = wait_for(
            lambda: [r for r in daemon.call_rows(rob.id) if r["order_id"] == missing], 10, "refused row"
        )[-1]
        rig.to_purge = [rig.place_call(rita, "purge1"), rig.place_call(rita, "purge2")]
        yield rig
    finally:
        daemon.stop()
        for name in endpoint_files:
            asterisk.remove_endpoints(name)


def _ids(page: dict[str, Any]) -> list[str]:
    return [c["id"] for c in page["items"]]


def _calls(rig: Rig, query: str, role: str = "ops") -> dict[str, Any]:
    resp = http(rig.daemon, "GET", f"/v1/calls?{query}", role=role)
    assert resp.status == 200, resp.body
    # No number of any customer of this module, in any formatting.
    assert_not_leaked_all(rig, resp.body.decode())
    return resp.json()


def assert_not_leaked_all(rig: Rig, text: str) -> None:
    for number in rig.numbers:
        assert_not_leaked(number, http_response=text)


def _db_ids(rig: Rig, where: str) -> list[str]:
    out = rig.daemon.sql(
        f"SELECT coalesce(json_agg(id ORDER BY requested_at DESC, id DESC), '[]') FROM calls WHERE {where}"
    )
    return json.loads(out.strip())


# -- the call list ----------------------------------------------------------------------------------


def test_call_list_filters(rig: Rig) -> None:
    rita, rob = rig.daemon.managers
    page = _calls(rig, f"manager={rita.id}")
    assert _ids(page) == _db_ids(rig, f"manager_id = '{rita.id}'")
    assert len(page["items"]) == 4 and page["next_cursor"] is None
    whole = (True, None, "complete")
    assert all(
        (c["has_recording"], c["recording_purged_at"], c["recording_state"]) == whole for c in page["items"]
    )
    first = page["items"][-1]
    assert first["id"] == rig.kept["rita1"]["id"]
    assert first["outcome"] == "completed" and first["duration_seconds"] > 1
    assert set(first) >= {"order_id", "manager_id", "requested_at", "answered_at", "ended_at", "ended_by"}
    assert not {"manager_channel_id", "customer_channel_id", "bridge_id", "recording_name"} & set(first)

    order = rig.kept["rob1"]["order_id"]
    assert _ids(_calls(rig, f"order={order}")) == [rig.kept["rob1"]["id"]]

    refused = _calls(rig, f"manager={rob.id}&has_recording=false")
    assert _ids(refused) == [rig.refused["id"]]
    assert refused["items"][0]["outcome"] == "unknown_order"
    listed = refused["items"][0]
    assert (listed["has_recording"], listed["recording_purged_at"], listed["recording_state"]) == (
        False,
        None,
        None,
    )
    assert _ids(_calls(rig, f"manager={rob.id}&outcome=unknown_order")) == [rig.refused["id"]]
    assert _ids(_calls(rig, f"manager={rob.id}&has_recording=true")) == [rig.kept["rob1"]["id"]]

    # Time range on requested_at: from is inclusive, to exclusive. Times as Postgres wrote them.
    rita2 = (
        rig.daemon.sql(f"SELECT to_json(requested_at) FROM calls WHERE id = '{rig.kept['rita2']['id']}'")
        .strip()
        .strip('"')
    )
    from_rita2 = _ids(_calls(rig, f"manager={rita.id}&from={urllib.parse.quote(rita2)}"))
    assert from_rita2[-1] == rig.kept["rita2"]["id"] and rig.kept["rita1"]["id"] not in from_rita2
    assert _ids(_calls(rig, f"manager={rita.id}&to={urllib.parse.quote(rita2)}")) == [rig.kept["rita1"]["id"]]


def test_call_list_pages_newest_first_without_gaps_or_repeats(rig: Rig) -> None:
    expected = _db_ids(rig, "true")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = _calls(rig, query, role="admin")
        seen.extend(_ids(page))
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 2
    assert seen == expected and pages == (len(expected) + 1) // 2
    bad = http(rig.daemon, "GET", "/v1/calls?cursor=bm9wZQ", role="ops")
    assert (bad.status, bad.json()["error"]["id"]) == (422, "invalid_cursor")
    too_many = http(rig.daemon, "GET", "/v1/calls?limit=201", role="ops")
    assert (too_many.status, too_many.json()["error"]["id"]) == (422, "invalid_parameter")


# -- listening ---------------------------------------------------------------------------------------


def _listens(rig: Rig, call_id: str) -> list[dict[str, Any]]:
    out = rig.daemon.sql(
        "SELECT coalesce(json_agg(a ORDER BY id), '[]') FROM audit a"
        f" WHERE call_id = '{call_id}' AND action IN ('recording.listen', 'recording.download')"
    )
    return json.loads(out.strip())


def test_recording_whole_and_ranges_match_the_file_and_each_listen_is_audited(rig: Rig) -> None:
    row = rig.kept["rita1"]
    data = rig.recording_path(row).read_bytes()
    size = len(data)
    path = f"/v1/calls/{row['id']}/recording"

    whole = http(rig.daemon, "GET", f"{path}?reason=dispute%20about%20delivery", role="ops")
    assert whole.status == 200
    assert whole.headers["Content-Type"] == "audio/wav"
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert int(whole.headers["Content-Length"]) == size
    assert whole.body == data and data[:4] == b"RIFF"

    first = http(rig.daemon, "GET", path, role="ops", headers={"Range": "bytes=0-99"})
    assert first.status == 206
    assert first.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert first.body == data[:100]
    middle = http(rig.daemon, "GET", path, role="admin", headers={"Range": f"bytes={size // 2}-"})
    assert (middle.status, middle.headers["Content-Range"]) == (206, f"bytes {size // 2}-{size - 1}/{size}")
    assert middle.body == data[size // 2 :]
    tail = http(rig.daemon, "GET", path, role="ops", headers={"Range": "bytes=-44"})
    assert (tail.status, tail.body) == (206, data[-44:])
    past = http(rig.daemon, "GET", path, role="ops", headers={"Range": f"bytes={size}-"})
    assert past.status == 416
    assert past.headers["Content-Range"] == f"bytes */{size}"
    assert past.json()["error"]["id"] == "range_not_satisfiable"
    # HEAD: GET's headers from Asterisk's file, no audio, no listen row.
    head = http(rig.daemon, "HEAD", path, role="ops")
    assert (head.status, int(head.headers["Content-Length"]), head.body) == (200, size, b"")

    listens = _listens(rig, row["id"])
    assert [(a["actor"], a["outcome"]) for a in listens] == [
        ("ops-olga", "granted"),
        ("ops-olga", "granted"),
        ("admin-ivan", "granted"),
        ("ops-olga", "granted"),
    ]
    assert listens[0]["reason"] == "dispute about delivery"
    assert listens[0]["order_id"] == row["order_id"]
    assert listens[0]["details"]["client"] == "127.0.0.1"
    assert listens[0]["details"]["range"] is None
    assert listens[0]["details"]["source"] == "ari"
    assert listens[1]["details"]["range"] == f"bytes 0-99/{size}"
    # The 416 and the HEAD served nothing and left no listen row.
    assert len(listens) == 4
    (rig.trace_dir / "served.wav").write_bytes(whole.body)


def test_download_is_audited_as_a_download(rig: Rig) -> None:
    row = rig.kept["rob1"]
    resp = http(rig.daemon, "GET", f"/v1/calls/{row['id']}/recording?download=true", role="admin")
    assert resp.status == 200 and resp.headers["Content-Disposition"].startswith("attachment;")
    assert resp.body == rig.recording_path(row).read_bytes()
    assert [a["action"] for a in _listens(rig, row["id"])] == ["recording.download"]


def test_no_audit_row_means_no_recording(rig: Rig) -> None:
    """If the listen cannot be audited, nothing is served (a trigger makes the insert fail for real)."""
    row = rig.kept["rita2"]
    rig.daemon.sql(
        "CREATE OR REPLACE FUNCTION review_test_refuse_listen() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN IF NEW.action = 'recording.listen' THEN RAISE EXCEPTION 'audit disk full'; END IF;"
        " RETURN NEW; END$$;"
        " CREATE TRIGGER review_test_refuse_listen BEFORE INSERT ON audit"
        " FOR EACH ROW EXECUTE FUNCTION review_test_refuse_listen();"
    )
    try:
        resp = http(rig.daemon, "GET", f"/v1/calls/{row['id']}/recording", role="ops")
    finally:
        rig.daemon.sql(
            "DROP TRIGGER review_test_refuse_listen ON audit; DROP FUNCTION review_test_refuse_listen();"
        )
    assert resp.status == 503
    assert resp.json()["error"]["id"] == "audit_unavailable"
    assert b"RIFF" not in resp.body
    assert _listens(rig, row["id"]) == []
    # With the audit back, the same request is served.
    assert http(rig.daemon, "GET", f"/v1/calls/{row['id']}/recording", role="ops").status == 200


def test_recording_errors(rig: Rig) -> None:
    refused = http(rig.daemon, "GET", f"/v1/calls/{rig.refused['id']}/recording", role="ops")
    assert (refused.status, refused.json()["error"]["id"]) == (404, "recording_not_found")
    unknown = http(rig.daemon, "GET", "/v1/calls/no-such-call/recording", role="ops")
    assert (unknown.status, unknown.json()["error"]["id"]) == (404, "call_not_found")


def test_folder_source_serves_the_same_bytes(rig: Rig, asterisk: Asterisk, shop: Postgres) -> None:
    """recording.source: folder, beside Asterisk: the same file, read from the spool folder."""
    files: list[str] = []
    extra = {**token_config(), "recording": {"source": "folder", "folder": str(asterisk.recordings_dir)}}
    daemon = _start_daemon(asterisk, shop, rig.trace_dir / "folder", rig.alloc, ("fay",), extra, files)
    try:
        row = rig.kept["rob1"]
        data = rig.recording_path(row).read_bytes()
        resp = http(daemon, "GET", f"/v1/calls/{row['id']}/recording", role="ops")
        assert (resp.status, resp.headers["Content-Type"], resp.body) == (200, "audio/wav", data)
        part = http(
            daemon, "GET", f"/v1/calls/{row['id']}/recording", role="ops", headers={"Range": "bytes=10-29"}
        )
        assert (part.status, part.headers["Content-Range"], part.body) == (
            206,
            f"bytes 10-29/{len(data)}",
            data[10:30],
        )
        assert [a["details"]["source"] for a in _listens(rig, row["id"])][-2:] == ["folder", "folder"]
    finally:
        daemon.stop()
        for name in files:
            asterisk.remove_endpoints(name)


# -- roles -------------------------------------------------------------------------------------------

ROLES = ("none", "wrong", "shop", "ops", "admin")


def _endpoints(rig: Rig) -> list[tuple[str, str, Any, str | None, dict[str, int]]]:
    """(method, path, body, permission, expected status per role)."""
    call = rig.kept["rob1"]["id"]
    read = {"none": 401, "wrong": 401, "shop": 403, "ops": 200, "admin": 200}
    admin = {"none": 401, "wrong": 401, "shop": 403, "ops": 403, "admin": 200}
    return [
        ("GET", "/v1/calls?limit=1", None, "calls.list", read),
        ("GET", f"/v1/calls/{call}/recording", None, "recordings.listen", read),
        ("GET", "/v1/audit?limit=1", None, "audit.read", admin),
        ("GET", "/v1/retention", None, "retention.read", admin),
        ("PUT", "/v1/retention", {"days": None}, "retention.write", admin),
        ("DELETE", "/v1/retention", None, "retention.write", admin),
        ("POST", "/v1/retention/purge", None, "retention.write", admin),
        ("GET", "/v1/me", None, None, {"none": 401, "wrong": 401, "shop": 200, "ops": 200, "admin": 200}),
    ]


def _denials_since(rig: Rig, since_id: int) -> list[dict[str, Any]]:
    out = rig.daemon.sql(
        "SELECT coalesce(json_agg(a ORDER BY id), '[]') FROM audit a"
        f" WHERE action = 'api.denied' AND id > {since_id}"
    )
    return json.loads(out.strip())


def test_role_matrix_and_every_denial_is_audited(rig: Rig) -> None:
    start = int(rig.daemon.sql("SELECT coalesce(max(id), 0) FROM audit").strip())
    expected_denials: list[tuple[str, str, str | None, str, str]] = []
    for method, path, body, permission, expected in _endpoints(rig):
        for role in ROLES:
            kwargs: dict[str, Any] = {"body": body}
            if role == "wrong":
                kwargs["token"] = WRONG_TOKEN
            elif role != "none":
                kwargs["role"] = role
            resp = http(rig.daemon, method, path, **kwargs)
            assert resp.status == expected[role], (method, path, role, resp.status, resp.body[:200])
            if resp.status >= 400:
                error = resp.json()["error"]
                assert error["id"] == {401: "unauthorized", 403: "forbidden"}[resp.status], error
                actor = "anonymous" if resp.status == 401 else TOKENS[role][0]
                outcome = "unauthenticated" if resp.status == 401 else "forbidden"
                expected_denials.append((actor, outcome, permission, method, path.split("?")[0]))
    rows = _denials_since(rig, start)
    got = [
        (
            r["actor"],
            r["outcome"],
            r["details"].get("permission"),
            r["details"]["method"],
            r["details"]["path"],
        )
        for r in rows
    ]
    assert got == expected_denials
    assert all(r["details"]["client"] == "127.0.0.1" for r in rows)
    tokens = {r["details"]["token"] for r in rows if r["actor"] == "anonymous"}
    assert tokens == {"none", "invalid"}
    assert WRONG_TOKEN not in json.dumps(rows)
    me = http(rig.daemon, "GET", "/v1/me", role="ops").json()
    assert me == {
        "name": "ops-olga",
        "role": "ops",
        "permissions": [
            "calls.any_client",
            "calls.callback",
            "calls.list",
            "calls.read",
            "probing.read",
            "recordings.listen",
        ],
    }


def test_audit_list_filters_and_pages(rig: Rig) -> None:
    row = rig.kept["rita1"]
    http(rig.daemon, "GET", f"/v1/calls/{row['id']}/recording?reason=audit%20list", role="ops")
    page = http(rig.daemon, "GET", f"/v1/audit?call={row['id']}&action=recording.listen", role="admin").json()
    assert page["items"] and all(e["call_id"] == row["id"] for e in page["items"])
    newest = page["items"][0]
    assert (newest["actor"], newest["reason"], newest["action"]) == (
        "ops-olga",
        "audit list",
        "recording.listen",
    )
    by_actor = http(rig.daemon, "GET", "/v1/audit?actor=anonymous&limit=200", role="admin").json()
    assert by_actor["items"] and {e["actor"] for e in by_actor["items"]} == {"anonymous"}

    expected = json.loads(
        rig.daemon.sql("SELECT coalesce(json_agg(id ORDER BY at DESC, id DESC), '[]') FROM audit").strip()
    )
    seen: list[int] = []
    cursor = None
    while True:
        page = http(
            rig.daemon, "GET", "/v1/audit?limit=7" + (f"&cursor={cursor}" if cursor else ""), role="admin"
        ).json()
        seen.extend(e["id"] for e in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Reading the audit list is not itself audited, so the trail did not move while we paged.
    assert seen == expected
    assert_not_leaked_all(rig, json.dumps(seen))
    since = http(
        rig.daemon,
        "GET",
        f"/v1/audit?from={urllib.parse.quote(newest['at'])}&call={row['id']}",
        role="admin",
    )
    assert newest["id"] in [e["id"] for e in since.json()["items"]]


# -- retention ---------------------------------------------------------------------------------------


def _age(rig: Rig, call_id: str, days: int) -> None:
    rig.daemon.sql(
        f"UPDATE calls SET requested_at = requested_at - interval '{days} days',"
        f" answered_at = answered_at - interval '{days} days', ended_at = ended_at - interval '{days} days'"
        f" WHERE id = '{call_id}'"
    )


def _ari_has(asterisk: Asterisk, name: str) -> bool:
    stored = json.loads(asterisk.ari_get("/recordings/stored"))
    return any(r["name"] == name for r in stored)


def test_retention_set_by_admin_survives_restart_and_purges_an_aged_recording(rig: Rig) -> None:
    row = rig.to_purge[0]
    daemon = rig.daemon
    assert http(daemon, "GET", "/v1/retention", role="admin").json()["days"] is None
    try:
        changed = http(daemon, "PUT", "/v1/retention", role="admin", body={"days": 30})
        assert changed.status == 200, changed.body
        assert (changed.json()["days"], changed.json()["source"], changed.json()["updated_by"]) == (
            30,
            "api",
            "admin-ivan",
        )
        bad = http(daemon, "PUT", "/v1/retention", role="admin", body={"days": 0})
        assert (bad.status, bad.json()["error"]["id"]) == (422, "invalid_retention")
        daemon.stop()
        daemon.start()
        assert http(daemon, "GET", "/v1/retention", role="admin").json()["days"] == 30

        # Nothing is 30 days old yet.
        assert http(daemon, "POST", "/v1/retention/purge", role="admin").json() == {"purged": 0}
        _age(rig, row["id"], 40)
        assert _ari_has(rig.asterisk, row["recording_name"])
        purged = http(daemon, "POST", "/v1/retention/purge", role="admin")
        assert purged.json() == {"purged": 1}, purged.body
    finally:
        http(daemon, "DELETE", "/v1/retention", role="admin")

    assert not rig.recording_path(row).exists()
    assert not _ari_has(rig.asterisk, row["recording_name"])
    listed = _calls(rig, f"order={row['order_id']}")["items"][0]
    assert listed["has_recording"] is False and listed["recording_purged_at"]
    assert listed["outcome"] == "completed" and listed["duration_seconds"] > 1  # metadata kept
    gone = http(daemon, "GET", f"/v1/calls/{row['id']}/recording", role="ops")
    assert (gone.status, gone.json()["error"]["id"]) == (410, "recording_purged")
    purges = http(daemon, "GET", f"/v1/audit?action=recording.purge&call={row['id']}", role="admin").json()
    assert [
        (e["actor"], e["outcome"], e["details"]["source"], e["details"]["file_found"])
        for e in purges["items"]
    ] == [("retention", "purged", "ari", True)]
    changes = http(daemon, "GET", "/v1/audit?action=retention.change&actor=admin-ivan", role="admin").json()
    assert [e["outcome"] for e in changes["items"][:2]] == ["reset", "changed"]
    # The other recordings are untouched.
    assert all(rig.recording_path(r).exists() for r in rig.kept.values())
    assert http(daemon, "GET", "/v1/retention", role="admin").json()["source"] == "config"

    # The config's retention is taken again on SIGHUP, without a restart.
    original = daemon.config_path.read_text()
    data = yaml.safe_load(original)
    data.setdefault("recording", {})["retention_days"] = 90
    try:
        daemon.config_path.write_text(yaml.safe_dump(data))
        _sighup(daemon)
        policy = http(daemon, "GET", "/v1/retention", role="admin").json()
        assert (policy["days"], policy["source"]) == (90, "config"), policy
    finally:
        daemon.config_path.write_text(original)
        _sighup(daemon)
    assert http(daemon, "GET", "/v1/retention", role="admin").json()["days"] is None


def _sighup(daemon: Bridged) -> None:
    """``systemctl reload``: wait until the daemon has applied the file."""
    before = daemon.log_text().count("reload: applied")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.log_text().count("reload: applied") > before, 10, "reload applied")


def test_scheduled_purge_from_the_folder(rig: Rig, asterisk: Asterisk, shop: Postgres) -> None:
    """A daemon with retention in its config and the folder source purges on its own schedule."""
    row = rig.to_purge[1]
    _age(rig, row["id"], 10)
    files: list[str] = []
    extra = {
        **token_config(),
        "recording": {
            "source": "folder",
            "folder": str(asterisk.recordings_dir),
            "retention_days": 7,
            "purge_interval": 1,
        },
    }
    daemon = _start_daemon(asterisk, shop, rig.trace_dir / "scheduled", rig.alloc, ("sid",), extra, files)
    try:
        purged_at = wait_for(
            lambda: rig.daemon.sql(
                f"SELECT recording_purged_at FROM calls WHERE id = '{row['id']}' AND recording_purged_at IS NOT NULL"
            ).strip(),
            15,
            "scheduled purge",
        )
        assert purged_at
        assert not rig.recording_path(row).exists()
        audit = json.loads(
            rig.daemon.sql(
                "SELECT coalesce(json_agg(a), '[]') FROM audit a"
                f" WHERE action = 'recording.purge' AND call_id = '{row['id']}'"
            ).strip()
        )
        assert [(a["actor"], a["details"]["source"]) for a in audit] == [("retention", "folder")]
        assert all(rig.recording_path(r).exists() for r in rig.kept.values())
    finally:
        daemon.stop()
        for name in files:
            asterisk.remove_endpoints(name)
