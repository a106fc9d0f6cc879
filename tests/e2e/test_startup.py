"""``bridged run`` failing to start on real parts: each cause exits with its own code (the unit restarts
only what a retry can fix) and the log names the target, never a password. And "bridged ready" is
logged only once ARI is connected.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridged.app import Exit
from rig import Asterisk, Postgres

from .harness import REPO_ROOT, Bridged, ManagerPhone, _merge, wait_for


def _daemon(asterisk: Asterisk, shop: Postgres, workdir: Path, **extra: Any) -> Bridged:
    phone = ManagerPhone(id="anna", endpoint="startup-anna", sip_port=0, rtp_port=0)
    return Bridged(asterisk, shop, workdir, [phone], extra=extra)


def _run(daemon: Bridged, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    daemon.config_path.write_text(yaml.safe_dump(_merge(daemon.config(), daemon.extra)))
    result = subprocess.run(
        [sys.executable, "-m", "bridged", "run", "--config", str(daemon.config_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    daemon.log_path.write_text(result.stdout + result.stderr)
    return result


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://postgres:pw-Never-Logged@127.0.0.1:55432/no_such_db",
            'database postgres@127.0.0.1:55432/no_such_db refused bridged: InvalidCatalogNameError: database "no_such_db" does not exist',
        ),
        (
            "postgresql://nobody:pw-Never-Logged@127.0.0.1:55432/postgres",
            'database nobody@127.0.0.1:55432/postgres refused bridged: InvalidAuthorizationSpecificationError: role "nobody" does not exist',
        ),
    ],
    ids=["no such database", "no such role"],
)
def test_a_database_that_says_no_exits_5(
    asterisk: Asterisk, shop: Postgres, trace_dir: Path, dsn: str, expected: str
) -> None:
    result = _run(_daemon(asterisk, shop, trace_dir, database={"dsn": dsn}))
    assert result.returncode == Exit.DATABASE_REFUSED == 5, result.stderr
    assert f"cannot start: {expected}" in result.stderr
    assert "pw-Never-Logged" not in result.stderr and "Traceback" not in result.stderr


def test_a_schema_newer_than_bridged_exits_4(asterisk: Asterisk, shop: Postgres, trace_dir: Path) -> None:
    shop.drop_database("newer_schema")
    shop.create_database("newer_schema")
    shop.execute(
        "newer_schema",
        "CREATE TABLE bridged_schema (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now()); INSERT INTO bridged_schema VALUES (999, 'future')",
    )
    result = _run(_daemon(asterisk, shop, trace_dir, database={"dsn": shop.dsn("newer_schema")}))
    assert result.returncode == Exit.SCHEMA_TOO_NEW == 4, result.stderr
    assert (
        "cannot start: database postgres@127.0.0.1:55432/newer_schema: database schema is at version 999"
        in (result.stderr)
    )
    assert "upgrade bridged" in result.stderr


@pytest.mark.parametrize("listener", ["http", "agi"])
def test_a_taken_listen_address_exits_6(
    asterisk: Asterisk, shop: Postgres, trace_dir: Path, listener: str
) -> None:
    daemon = _daemon(asterisk, shop, trace_dir)
    port = daemon.http_port if listener == "http" else daemon.agi_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = _run(daemon)
    assert result.returncode == Exit.LISTEN == 6, result.stderr
    what = "HTTP" if listener == "http" else "FastAGI"
    assert (
        f"cannot start: cannot listen for {what} on 127.0.0.1:{port}: Address already in use" in result.stderr
    )


def _health(daemon: Bridged) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/healthz", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_ready_is_logged_only_once_ari_is_connected(
    asterisk: Asterisk, shop: Postgres, trace_dir: Path, make_bridged
) -> None:
    with socket.socket() as closed:  # bound, never listening: ARI connections are refused
        closed.bind(("127.0.0.1", 0))
        ari_url = f"http://127.0.0.1:{closed.getsockname()[1]}/ari"
        daemon = _daemon(asterisk, shop, trace_dir / "unreachable", ari={"url": ari_url})
        daemon.workdir.mkdir()
        daemon.config_path.write_text(yaml.safe_dump(_merge(daemon.config(), daemon.extra)))
        with open(daemon.log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridged", "run", "--config", str(daemon.config_path)],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_for(lambda: "still connecting" in daemon.log_text(), 30, "the still-connecting line")
            assert _health(daemon) == 503
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == Exit.OK
    text = daemon.log_text()
    assert f"bridged started, still connecting to ARI at {ari_url}; calls are refused until then" in text
    assert f"ARI websocket connection to {ari_url} failed" in text
    assert "bridged ready" not in text

    connected = make_bridged()
    ready = wait_for(lambda: "bridged ready" in connected.log_text() and connected.log_text(), 10, "ready")
    assert f"bridged ready (app {connected.app}, ARI {asterisk.ari_url})" in ready
