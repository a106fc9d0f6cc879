"""Hostile HTTP clients against the real daemon and its real PostgreSQL: no input gives a 500, aiohttp's
own refusals answer in JSON without echoing the request, slow clients are cut off, greedy ones capped,
and bridged's database going away gives 503 database_unavailable with the attempt kept.

Each test starts its own bridged (tests/e2e/harness.py). Generated input (Hypothesis) goes over real
HTTP; every answer is checked for a status under 500 and bridged's error body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import resource
import socket
import time
import urllib.parse
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import Bridged, add_order, new_customer_number, new_order_id, wait_for
from .test_http_calls import TOKENS, api_daemon, http

NUMBER_IN_REQUESTS = "+79161234567"  # stands for anything a client may send


def raw_http(daemon: Bridged, request: bytes, *, source: str = "127.0.0.1", timeout: float = 10) -> bytes:
    """Send bytes as they are; the whole answer, up to the server closing the connection."""
    with socket.create_connection(
        ("127.0.0.1", daemon.http_port), timeout=timeout, source_address=(source, 0)
    ) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return (
        int(lines[0].split()[1]),
        {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])},
        body,
    )


def get(daemon: Bridged, path: str, role: str) -> tuple[int, dict[str, Any]]:
    """GET with the path sent byte for byte as given (already percent-encoded)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS[role]}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    status, headers, body = split(raw_http(daemon, request))
    assert headers.get("content-type", "").startswith("application/json"), (path, headers)
    return status, json.loads(body)


def unsigned_cursor(fields: list[Any]) -> str:
    """A cursor in the unsigned form bridged used to give out (base64 JSON): crafted by hand."""
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()


def assert_no_server_error(daemon: Bridged, *, tracebacks: bool = False) -> None:
    """No 500 was logged (and, unless ``tracebacks``, no traceback at all: the database-down test lets
    asyncpg's pool log its reconnection failures)."""
    log = daemon.log_text()
    assert "unhandled error" not in log and "failed outside the API's handlers" not in log, log[-3000:]
    assert tracebacks or "Traceback" not in log, log[-3000:]
    assert daemon.alive()


# -- values PostgreSQL or asyncpg refuse ------------------------------------------------------------


def test_hostile_values_are_refused_with_4xx_never_500(make_bridged) -> None:
    daemon = api_daemon(make_bridged, "olga")
    q = urllib.parse.quote
    deep_cursor = unsigned_cursor(["calls", "0001-01-01T00:00:00+05:00", "x"])
    nul_cursor = unsigned_cursor(["calls", "2026-01-01T00:00:00+00:00", "x\x00"])
    cases = [
        # path ids: NUL, an invalid UTF-8 sequence, too long
        ("shop", "/v1/calls/%00", 404, "call_not_found"),
        ("shop", "/v1/calls/a%00b", 404, "call_not_found"),
        ("admin", "/v1/calls/%ED%A0%80", 404, "call_not_found"),
        ("ops", "/v1/calls/%00/recording", 404, "call_not_found"),
        ("ops", "/v1/calls/" + "x" * 65 + "/recording", 404, "call_not_found"),
        # text filters with NUL or control characters
        ("ops", "/v1/calls?manager=%00", 422, "invalid_parameter"),
        ("ops", "/v1/calls?order=1%002", 422, "invalid_parameter"),
        ("ops", "/v1/calls?outcome=%1B%5B31m", 422, "invalid_parameter"),
        ("admin", "/v1/audit?actor=a%00", 422, "invalid_parameter"),
        ("admin", "/v1/audit?call=%00", 422, "invalid_parameter"),
        ("ops", "/v1/calls/x/recording?reason=a%00b", 422, "invalid_parameter"),
        # digits that are not ASCII: "١٢".isdigit() is True
        ("ops", "/v1/calls?limit=" + q("١٢"), 422, "invalid_parameter"),
        ("admin", "/v1/audit?limit=" + q("１２"), 422, "invalid_parameter"),
        ("ops", "/v1/calls?limit=99999999999999999999", 422, "invalid_parameter"),
        # times no timestamptz/datetime pair can hold, or before 1970
        ("ops", "/v1/calls?from=" + q("0001-01-01T00:00:00+05:00"), 422, "invalid_parameter"),
        ("ops", "/v1/calls?to=" + q("9999-12-31T23:00:00-05:00"), 422, "invalid_parameter"),
        ("admin", "/v1/audit?from=1900-01-01T00:00:00Z", 422, "invalid_parameter"),
        ("admin", "/v1/audit?to=" + q("２０２６-01-01"), 422, "invalid_parameter"),
        # cursors crafted by hand (the unsigned form bridged gave out before)
        ("ops", "/v1/calls?cursor=" + deep_cursor, 422, "invalid_cursor"),
        ("ops", "/v1/calls?cursor=" + nul_cursor, 422, "invalid_cursor"),
        (
            "admin",
            "/v1/audit?cursor=" + unsigned_cursor(["audit", "2026-01-01T00:00:00+00:00", 2**70]),
            422,
            "invalid_cursor",
        ),
        ("admin", "/v1/audit?cursor=" + q("x.y"), 422, "invalid_cursor"),
    ]
    for role, path, status, error_id in cases:
        got, body = get(daemon, path, role)
        assert (got, body.get("error", {}).get("id")) == (status, error_id), (path, body)

    # JSON bodies: nested past the interpreter's recursion, NUL and lone surrogates in strings.
    deep = b"[" * 8000 + b"]" * 8000
    for raw, status, error_id in [
        (deep, 400, "invalid_json"),
        (b'{"order_id": "1\\u0000", "manager_id": "olga"}', 422, "invalid_request"),
        (b'{"order_id": "\\ud800", "manager_id": "olga"}', 422, "invalid_request"),
        (b'{"\\u0000": 1}', 422, "invalid_request"),
    ]:
        got, body, _ = http(
            daemon, "POST", "/v1/calls", raw=raw, headers={"Idempotency-Key": "k-" + str(len(raw))}
        )
        assert (got, body["error"]["id"]) == (status, error_id), (raw[:40], body)
        got, body, _ = http(daemon, "PUT", "/v1/retention", raw=raw, token=TOKENS["admin"])
        assert got in (400, 413, 422), body  # 413: the deep one is over this endpoint's 1 KiB
    assert_no_server_error(daemon)


# -- generated input, over real HTTP ----------------------------------------------------------------

# (role, path template, parameter): every query parameter and path id of the API.
TARGETS = [
    *(
        ("ops", "/v1/calls?{}", name)
        for name in ("manager", "order", "outcome", "from", "to", "has_recording", "limit", "cursor")
    ),
    *(
        ("admin", "/v1/audit?{}", name)
        for name in ("actor", "action", "call", "from", "to", "limit", "cursor")
    ),
    *(("ops", "/v1/calls/x/recording?{}", name) for name in ("reason", "download")),
    ("shop", "/v1/calls/{}", None),
    ("admin", "/v1/calls/{}", None),
    ("ops", "/v1/calls/{}/recording", None),
]
# Raw bytes, percent-encoded as they are: NUL, control characters, invalid UTF-8, digits of every script.
VALUES = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        ["١٢", "٠", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-01:00", "1e3", "-1", "true\x00"]
    ).map(str.encode),
)
EXAMPLES_PER_TARGET = 40


def test_generated_values_in_every_parameter_never_give_a_500(make_bridged) -> None:
    daemon = api_daemon(make_bridged, "pavel")
    started = time.monotonic()
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES_PER_TARGET * len(TARGETS),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.sampled_from(TARGETS), VALUES)
    def check(target: tuple[str, str, str | None], value: bytes) -> None:
        role, template, name = target
        encoded = urllib.parse.quote_from_bytes(value, safe="")
        path = template.format(f"{name}={encoded}" if name else (encoded or "%00"))
        status, body = get(daemon, path, role)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (path, body)
        if status >= 400:
            assert set(body["error"]) >= {"id", "message"}, body

    check()
    print(f"{sum(seen.values())} generated requests in {time.monotonic() - started:.0f} s, by status: {seen}")
    assert_no_server_error(daemon)


# -- aiohttp's own refusals ---------------------------------------------------------------------------


def test_requests_aiohttp_cannot_parse_get_json_and_are_neither_echoed_nor_logged(make_bridged) -> None:
    daemon = api_daemon(make_bridged, "rita")
    digits = NUMBER_IN_REQUESTS.lstrip("+")
    for raw in [
        f"FOO /{NUMBER_IN_REQUESTS} HTTP/1.1\r\n\r\n".encode(),
        f"GET /v1/calls/{NUMBER_IN_REQUESTS}\xff HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"),
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Customer: {NUMBER_IN_REQUESTS * 1000}\r\n\r\n".encode(),
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Customer: {NUMBER_IN_REQUESTS}\x00\r\n\r\n".encode(),
        (
            "POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{NUMBER_IN_REQUESTS}\r\n"
        ).encode(),
    ]:
        status, headers, body = split(raw_http(daemon, raw))
        assert status == 400 and headers["content-type"].startswith("application/json"), (raw[:60], body)
        assert json.loads(body)["error"]["id"] == "bad_request"
        assert digits not in body.decode("latin-1")
    log = daemon.log_text()
    assert digits not in log and "<redacted>" not in log  # not even masked: the bytes are not logged
    assert log.count("refused by the HTTP parser") == 5
    assert_no_server_error(daemon)


# -- slow and greedy clients --------------------------------------------------------------------------

TRICKLERS = 500
HEADER_TIMEOUT = 4.0


def _fd_room(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed, "raise ulimit -n for this test"


async def _trickle(port: int, source: str, closed: list[float], started: float) -> None:
    """One header byte a second, forever; records when bridged closed the connection (EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    try:
        for byte in request:
            writer.write(bytes([byte]))
            try:
                if await asyncio.wait_for(reader.read(65536), 1.0) == b"":
                    break
                while await reader.read(65536):  # the 408, then EOF
                    pass
                break
            except TimeoutError:
                continue
        closed.append(time.monotonic() - started)
    except ConnectionError:
        closed.append(time.monotonic() - started)
    finally:
        writer.close()


def test_slow_clients_are_cut_off_and_do_not_keep_others_out(make_bridged) -> None:
    """500 connections trickling their headers, from 20 addresses (25 each, under the cap): a normal
    request is still answered, and bridged closes every trickling connection within the header timeout
    (a deadline with a margin, not a measure of speed)."""
    _fd_room(TRICKLERS + 200)
    daemon = api_daemon(make_bridged, "sasha", extra_http={"header_timeout": HEADER_TIMEOUT})
    closed: list[float] = []

    async def scenario() -> tuple[int, float]:
        started = time.monotonic()
        tasks = [
            asyncio.create_task(_trickle(daemon.http_port, f"127.0.0.{10 + i % 20}", closed, started))
            for i in range(TRICKLERS)
        ]
        await asyncio.sleep(1.0)  # all of them open and trickling
        status = await asyncio.to_thread(lambda: http(daemon, "GET", "/v1/me", token=TOKENS["ops"])[0])
        opened_by = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*tasks), HEADER_TIMEOUT + 30)
        return status, opened_by

    status, answered_at = asyncio.run(scenario())
    print(
        f"{TRICKLERS} trickling connections: /v1/me answered {status} at {answered_at:.1f} s;"
        f" closed by bridged after {min(closed):.1f}-{max(closed):.1f} s (header timeout {HEADER_TIMEOUT} s)"
    )
    assert status == 200  # answered while 500 connections trickled
    assert len(closed) == TRICKLERS
    # Each was opened within the first second; closed by bridged by the header timeout plus a margin.
    assert max(closed) < HEADER_TIMEOUT + 1.0 + 10.0, max(closed)
    metrics = http_text(daemon, "/metrics")
    assert sample(metrics, "bridged_http_header_timeouts_total") >= TRICKLERS
    assert daemon.alive()


def test_one_client_cannot_take_every_connection(make_bridged) -> None:
    daemon = api_daemon(
        make_bridged, "tanya", extra_http={"max_connections_per_client": 20, "header_timeout": 30}
    )
    held = [
        socket.create_connection(("127.0.0.1", daemon.http_port), source_address=("127.0.0.77", 0))
        for _ in range(20)
    ]
    try:
        # The 21st from the same address: 503, closed.
        status, headers, body = split(
            raw_http(daemon, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.77")
        )
        assert (status, json.loads(body)["error"]["id"], headers["retry-after"]) == (
            503,
            "too_many_connections",
            "5",
        )
        # Anyone else is served.
        status, _, _ = split(
            raw_http(
                daemon, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", source="127.0.0.78"
            )
        )
        assert status == 200
    finally:
        for s in held:
            s.close()
    # Once they are closed, the address may connect again.
    wait_for(
        lambda: (
            split(
                raw_http(
                    daemon,
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    source="127.0.0.77",
                )
            )[0]
            == 200
        ),
        10,
        "the address admitted again",
    )
    assert sample(http_text(daemon, "/metrics"), "bridged_http_connections_refused_total") >= 1


def http_text(daemon: Bridged, path: str) -> str:
    return (
        raw_http(daemon, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        .partition(b"\r\n\r\n")[2]
        .decode()
    )


def sample(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", metrics_text, re.M)
    assert match, name
    return float(match[1])


# -- bridged's database away ------------------------------------------------------------------------


def block_database(postgres: Any) -> None:
    """What a PostgreSQL outage looks like to bridged: its connections cut, new ones refused."""
    postgres.execute("postgres", "ALTER DATABASE bridged WITH ALLOW_CONNECTIONS false")
    postgres.execute(
        "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'bridged'"
    )


def unblock_database(postgres: Any) -> None:
    postgres.execute("postgres", "ALTER DATABASE bridged WITH ALLOW_CONNECTIONS true")


def test_database_down_gives_503_and_the_refused_attempt_is_written_once_it_is_back(
    make_bridged, asterisk
) -> None:
    daemon = api_daemon(make_bridged, "uma")
    uma = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Uma T.", uma.id)
    status, existing, _ = http(daemon, "POST", "/v1/calls", {"order_id": "999999999", "manager_id": uma.id})
    assert status == 404  # a refused attempt: its row exists to be read below
    [row_id] = [r["id"] for r in daemon.call_rows(uma.id)]
    block_database(daemon.postgres)
    try:
        body = {"order_id": order, "manager_id": uma.id}
        for headers in ({}, {"Idempotency-Key": f"uma-{order}"}):
            got, answer, answer_headers = http(daemon, "POST", "/v1/calls", body, headers=headers)
            assert (got, answer["error"]["id"]) == (503, "database_unavailable"), answer
            assert answer_headers["Retry-After"] == "5"
        for role, path in [
            ("shop", f"/v1/calls/{row_id}"),
            ("ops", "/v1/calls"),
            ("admin", "/v1/audit"),
            ("admin", "/v1/retention"),
            ("ops", f"/v1/calls/{row_id}/recording"),
        ]:
            got, answer, _ = http(daemon, "GET", path, token=TOKENS[role])
            assert (got, answer["error"]["id"]) == (503, "database_unavailable"), (path, answer)
        assert not json.loads(asterisk.ari_get("/channels")), "a call was placed without its row"
        metrics_text = http_text(daemon, "/metrics")
        assert sample(metrics_text, 'bridged_calls_refused_total{reason="database_unavailable"}') == 2
    finally:
        unblock_database(daemon.postgres)
    # The two attempts are in the database once it is back: one refused call row (its order is known) and
    # an audit row each, with the time they happened.
    refused = wait_for(
        lambda: [r for r in daemon.call_rows(uma.id) if r["outcome"] == "database_unavailable"],
        30,
        "the refused attempt's row",
    )
    assert [(r["order_id"], r["direction"], r["created_by"], r["state"]) for r in refused] == [
        (order, "api", "shop-test", "ended")
    ]
    audit = wait_for(
        lambda: [a for a in daemon.audit_rows("token:shop-test") if a["reason"] == "database_unavailable"],
        30,
        "the refused attempts' audit rows",
    )
    assert len(audit) == 2
    log = daemon.log_text()
    assert "bridged's database is unavailable" in log and "kept writes done" in log
    assert_no_server_error(daemon, tracebacks=True)
