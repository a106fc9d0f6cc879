"""Exit codes of ``bridged run``: one meaning each, the ones that need an admin kept from restarting.

Each start-up failure is mapped from what really raises it (asyncpg's and the OS's exceptions); the CLI
is run as a subprocess for the failures that need no database (bad config, nothing listening on the
database's port), and the rest are proven on the rig (tests/e2e/test_startup.py).
"""

from __future__ import annotations

import errno
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from bridged import __main__ as cli
from bridged import db
from bridged.app import NEEDS_ADMIN, Exit, StartupError, database_startup_error
from tests.unit.fakes import ROOT, example_data

DSN = "postgresql://bridged:pw-Secret-9@db.shop.lan:6543/bridged_prod"
TARGET = "bridged@db.shop.lan:6543/bridged_prod"


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            Exit.DATABASE_UNREACHABLE,
            f"database {TARGET} not reachable: Connection refused",
        ),
        (TimeoutError(), Exit.DATABASE_UNREACHABLE, f"database {TARGET} not reachable: TimeoutError"),
        (
            asyncpg.CannotConnectNowError("the database system is starting up"),
            Exit.DATABASE_UNREACHABLE,
            f"database {TARGET} not reachable: CannotConnectNowError",
        ),
        (
            asyncpg.TooManyConnectionsError("sorry, too many clients already"),
            Exit.DATABASE_UNREACHABLE,
            f"database {TARGET} not reachable: TooManyConnectionsError",
        ),
        (
            asyncpg.InvalidPasswordError('password authentication failed for user "bridged"'),
            Exit.DATABASE_REFUSED,
            f"database {TARGET} refused bridged: InvalidPasswordError: password authentication failed"
            ' for user "bridged"',
        ),
        (
            asyncpg.InvalidCatalogNameError('database "bridged_prod" does not exist'),
            Exit.DATABASE_REFUSED,
            f'database {TARGET} refused bridged: InvalidCatalogNameError: database "bridged_prod" does not exist',
        ),
        (
            asyncpg.InsufficientPrivilegeError("permission denied for schema public"),
            Exit.DATABASE_REFUSED,
            f"database {TARGET} refused bridged: InsufficientPrivilegeError: permission denied for schema public",
        ),
        (
            db.SchemaTooNew("database schema is at version 9, this bridged knows only 5"),
            Exit.SCHEMA_TOO_NEW,
            f"database {TARGET}: database schema is at version 9, this bridged knows only 5; upgrade bridged",
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_database_failures_map_to_one_code_each(exc: BaseException, code: Exit, message: str) -> None:
    error = database_startup_error(exc, DSN)
    assert error is not None
    assert (error.exit_code, str(error)) == (code, message)
    assert "pw-Secret-9" not in str(error)


def test_an_unknown_failure_is_not_dressed_up_as_a_start_up_error() -> None:
    assert database_startup_error(ValueError("bug"), DSN) is None


def test_codes_are_distinct_and_the_ones_needing_an_admin_are_chosen() -> None:
    assert len({int(code) for code in Exit}) == len(Exit)
    assert NEEDS_ADMIN == {Exit.CONFIG, Exit.SCHEMA_TOO_NEW, Exit.DATABASE_REFUSED}


def _unit_setting(name: str) -> str:
    text = (ROOT / "systemd" / "bridged.service").read_text()
    return re.findall(rf"^{name}=(.*)$", text, re.M)[-1]


def test_the_unit_does_not_restart_what_needs_an_admin() -> None:
    assert sorted(int(c) for c in _unit_setting("RestartPreventExitStatus").split()) == sorted(NEEDS_ADMIN)
    assert _unit_setting("Restart") == "on-failure"  # 1, 3 and 6 (and signals, the watchdog) restart


def test_the_readme_and_the_unit_comment_list_every_code() -> None:
    readme = (ROOT / "README.md").read_text()
    unit = (ROOT / "systemd" / "bridged.service").read_text()
    for code in Exit:
        assert re.search(rf"^\| `?{int(code)}`? \|", readme, re.M), f"README lacks exit code {int(code)}"
    for code in NEEDS_ADMIN:
        assert re.search(rf"^#.*\b{int(code)} \(", unit, re.M), f"the unit's comment lacks {int(code)}"


# -- the CLI as systemd runs it ---------------------------------------------------------------------


def _run(tmp_path: Path, data: Any) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bridged.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return subprocess.run(
        [sys.executable, "-m", "bridged", "run", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    result = _run(tmp_path, "policy: own\npolicy: any\n")
    assert result.returncode == Exit.CONFIG == 2, result.stderr
    assert "policy: is set twice (lines 1 and 2)" in result.stderr


def test_run_with_nothing_on_the_database_port_exits_3(tmp_path: Path) -> None:
    # A bound, never-listening socket: connecting is refused, and nobody else can take the port.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        data = example_data()
        data["database"]["dsn"] = f"postgresql://bridged:pw-Secret-9@127.0.0.1:{port}/bridged"
        result = _run(tmp_path, data)
    assert result.returncode == Exit.DATABASE_UNREACHABLE == 3, result.stderr
    assert f"cannot start: database bridged@127.0.0.1:{port}/bridged not reachable" in result.stderr
    assert "pw-Secret-9" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (StartupError("x", Exit.SCHEMA_TOO_NEW), 4),
        (StartupError("x", Exit.LISTEN), 6),
        (OSError(errno.EADDRINUSE, "Address already in use"), 6),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), 6),
    ],
)
def test_main_returns_the_code_of_what_stopped_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException, code: int
) -> None:
    path = tmp_path / "bridged.yaml"
    path.write_text(yaml.safe_dump(example_data()))

    def run_app(*args: Any, **kwargs: Any) -> None:
        raise raised

    monkeypatch.setattr(cli, "run_app", run_app)
    monkeypatch.setattr(cli, "setup_logging", lambda *a, **k: None)
    assert cli.main(["run", "--config", str(path)]) == code


def test_main_lets_an_unexpected_os_error_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bridged.yaml"
    path.write_text(yaml.safe_dump(example_data()))

    def run_app(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(cli, "run_app", run_app)
    monkeypatch.setattr(cli, "setup_logging", lambda *a, **k: None)
    with pytest.raises(OSError):  # Python exits 1 with the traceback: Exit.CRASH, restarted
        cli.main(["run", "--config", str(path)])
