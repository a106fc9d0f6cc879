"""The documented production install, done for real into a temporary root: ``scripts/install --root DIR``
makes the virtualenv (runtime dependencies only, at the locked versions), the unit, the sysusers file
and a config skeleton; ``systemd-analyze verify`` accepts the unit as installed (its Exec binaries
exist: the venv's own ``bin/bridged``); the unit's ``ExecStartPre`` and ``ExecReload`` command lines,
taken from the installed file, refuse the skeleton as shipped and pass once it is filled in; a second
install upgrades in place and leaves the admin's config alone.

``--root`` installs the layout under DIR with the unit naming those paths (README, "Installing on the
PBX"); with the default root / the same script writes /opt/bridged and /etc. The commands run as root
here, not as the unit's User=bridged inside its sandbox: systemd is not PID 1 on a test machine.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from .harness import REPO_ROOT

pytestmark = (
    pytest.mark.registry
)  # pip installs from the package registry (scripts/test runs it outside unshare -n)

INSTALL = REPO_ROOT / "scripts" / "install"
LOCK = REPO_ROOT / "requirements" / "constraints.txt"


def _install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def _unit_lines(unit: Path, key: str) -> list[str]:
    prefix = f"{key}="
    return [line[len(prefix) :] for line in unit.read_text().splitlines() if line.startswith(prefix)]


def _as_systemd_runs_it(command_line: str) -> list[str]:
    # "-" only tells systemd to ignore the exit status; the command is what follows.
    return shlex.split(command_line.removeprefix("-"))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path("/usr/bin/python3").exists():
        pytest.fail("scripts/install makes the virtualenv from /usr/bin/python3 (Debian's python3)")
    if [name for _, name in socket.if_nameindex()] == ["lo"]:
        pytest.fail("pip needs the package registry: run this test outside `unshare -n` (scripts/test does)")
    root = tmp_path_factory.mktemp("install") / "root"
    result = _install(root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"installed in {root}/opt/bridged" in result.stdout
    assert f"{root}/opt/bridged/bin/bridged check-config --config {root}/etc/bridged/bridged.yaml" in (
        result.stdout
    )
    return root


def test_the_layout(installed: Path) -> None:
    venv = installed / "opt/bridged"
    assert (venv / "bin/bridged").is_file() and (venv / "pyvenv.cfg").is_file()
    assert (installed / "etc/systemd/system/bridged.service").is_file()
    assert (installed / "etc/sysusers.d/bridged.conf").read_text() == (
        REPO_ROOT / "systemd/bridged.sysusers"
    ).read_text()
    skeleton = installed / "etc/bridged/bridged.yaml"
    assert skeleton.read_text() == (REPO_ROOT / "config/bridged.example.yaml").read_text()
    assert skeleton.stat().st_mode & 0o777 == 0o640
    assert (installed / "etc/bridged").stat().st_mode & 0o777 == 0o750
    assert (venv / "share/bridged/dialplan/bridged.conf").is_file()
    assert (venv / "share/bridged/asterisk/extensions.conf").is_file()
    assert (venv / "share/doc/bridged/README.md").is_file() and (
        venv / "share/doc/bridged/asterisk.md"
    ).is_file()


def test_the_virtualenv_holds_the_locked_runtime_and_no_test_tools(installed: Path) -> None:
    python = str(installed / "opt/bridged/bin/python")
    listed = _run([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"])
    versions = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed.stdout)}
    locked = dict(
        line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#")
    )
    locked = {name.lower().replace("_", "-"): version for name, version in locked.items()}
    for runtime in ("aiohttp", "asyncpg", "orjson", "phonenumbers", "pyyaml", "uvloop"):
        assert versions.get(runtime) == locked[runtime], runtime
    for tool in ("pytest", "hypothesis", "ruff", "mypy", "schemathesis", "playwright"):
        assert tool not in versions, f"{tool} installed in the production virtualenv"
    assert _run([python, "-c", "import bridged.app"]).returncode == 0


def test_systemd_analyze_verify_accepts_the_installed_unit(installed: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze missing (scripts/bootstrap installs systemd)"
    unit = installed / "etc/systemd/system/bridged.service"
    # verify loads the unit from its path, checks every directive and that each Exec* binary exists and
    # is executable; it needs no running systemd.
    result = _run([analyze, "verify", "--man=no", str(unit)])
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert not [line for line in output.splitlines() if "bridged.service" in line], output
    venv_bridged = f"{installed}/opt/bridged/bin/bridged"
    assert _unit_lines(unit, "ExecStart") == [
        f"{venv_bridged} run --config {installed}/etc/bridged/bridged.yaml"
    ]


def test_exec_start_pre_and_reload_check_the_config_the_unit_names(installed: Path) -> None:
    unit = installed / "etc/systemd/system/bridged.service"
    (pre,) = _unit_lines(unit, "ExecStartPre")
    reload_check, kill = _unit_lines(unit, "ExecReload")
    assert kill == "/bin/kill -HUP $MAINPID"
    config = installed / "etc/bridged/bridged.yaml"
    for line in (pre, reload_check):
        argv = _as_systemd_runs_it(line)
        assert argv[:2] == [f"{installed}/opt/bridged/bin/bridged", "check-config"]
        assert argv[-1] == str(config)
        # The skeleton as shipped: placeholders are refused, each with its key.
        shipped = _run(argv)
        assert shipped.returncode == 2, shipped.stdout + shipped.stderr
        assert "ari.password: still holds the example placeholder" in shipped.stderr
        assert "database.dsn: still holds the example placeholder password" in shipped.stderr

    # What an admin does next: fill in the placeholders.
    original = config.read_text()
    config.write_text(original.replace("change-me", "s3cr3t-Value-9").replace("0" * 64, "b" * 64))
    try:
        for line in (pre, reload_check):
            filled = _run(_as_systemd_runs_it(line))
            assert filled.returncode == 0, filled.stderr
            # --offline: a start or a reload does not wait on the shop's database.
            assert filled.stdout.strip() == (
                f"{config}: OK (2 managers, policy own; the shop's queries not checked: --offline)"
            )
    finally:
        config.write_text(original)


def test_a_second_install_upgrades_and_keeps_the_config(installed: Path) -> None:
    config = installed / "etc/bridged/bridged.yaml"
    config.write_text("# the admin's own config\n")
    unit_before = (installed / "etc/systemd/system/bridged.service").read_text()
    result = _install(installed)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"config: {config} exists, left as it is" in result.stderr
    assert config.read_text() == "# the admin's own config\n"
    assert (installed / "etc/systemd/system/bridged.service").read_text() == unit_before


def test_wrong_invocations_exit_2(tmp_path: Path) -> None:
    for argv in (["--bogus"], ["--root"], ["--root", "relative/dir"]):
        result = subprocess.run([str(INSTALL), *argv], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (argv, result.stderr)
