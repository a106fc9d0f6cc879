"""The scripts' contracts that need no root: exit codes documented, versions locked, the demo's needs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from tests.unit.fakes import ROOT

SCRIPTS = sorted(p for p in (ROOT / "scripts").iterdir() if p.is_file() and p.stat().st_mode & 0o111)
COMMANDS = [*SCRIPTS, ROOT / ".ci" / "run"]


def _header(path) -> str:
    lines = path.read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("set -"))
    return "\n".join(lines[:end])


@pytest.mark.parametrize("script", COMMANDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_script_documents_its_exit_status_here_and_in_the_readme(script) -> None:
    header = _header(script)
    assert re.search(r"^# Exit status: .*\b0 ", header, re.M), f"{script.name}: no 'Exit status: 0 ...' line"
    readme = (ROOT / "README.md").read_text()
    name = script.relative_to(ROOT)
    row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}")), None)
    assert row is not None, f"README has no row for {name} in its table of scripts"
    for code in re.findall(r"\b([0-9]) [a-z]", header.split("Exit status:", 1)[1]):
        assert f"{code} " in row, f"README row for {name} lacks exit code {code}"


def test_no_script_installs_into_the_system_python() -> None:
    for script in [*COMMANDS, ROOT / "scripts" / "lib.sh"]:
        assert "--break-system-packages" not in script.read_text(), script


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_the_lock_pins_every_dependency_and_test_tool() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = _names(
        project["project"]["dependencies"]
        + project["project"]["optional-dependencies"]["test"]
        + project["build-system"]["requires"]
    )
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), line
            pins[name.lower().replace("_", "-")] = version
    assert wanted <= pins.keys(), f"not pinned: {sorted(wanted - pins.keys())} (run scripts/lock)"
    assert "bridged" not in pins


def test_the_demo_runs_without_the_test_extras() -> None:
    """scripts/demo installs the runtime dependencies only: the demo must not import a test tool."""
    blocked = ["pytest", "_pytest", "hypothesis", "schemathesis", "playwright"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import demo.__main__, demo.core, demo.samples, rig\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_checkouts_virtualenv_is_not_committed() -> None:
    # Without the trailing slash: a .venv symlink (a worktree sharing a venv) is ignored as well, which
    # "/.venv/" did not do (one was committed that way).
    assert "/.venv" in (ROOT / ".gitignore").read_text().splitlines()
