"""The rig and the demo work from a root shell whose PATH lacks /usr/sbin (``env -i PATH=/usr/bin:/bin``),
where chroot, runuser and ip live: a nested pytest runs two rig smoke tests (Asterisk in its chroot,
SIPp phone and carrier, PostgreSQL as the postgres user) with nothing but that PATH, in a network
namespace of its own so its fixed ports never meet this session's rig."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .harness import REPO_ROOT

MINIMAL_PATH = "/usr/bin:/bin"


def _run_with_minimal_path(
    argv: list[str], trace_dir: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": MINIMAL_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    for name in ("BRIDGED_RIG_CACHE", "BRIDGED_RIG_PG_BIN"):
        if name in os.environ:
            env[name] = os.environ[name]
    env["BRIDGED_RIG_ARTIFACTS"] = str(trace_dir / "artifacts")
    run = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    (trace_dir / "output.txt").write_text(run.stdout + run.stderr)
    return run


def test_the_rig_runs_without_sbin_on_path(trace_dir: Path, asterisk_root: Path) -> None:
    smoke = "tests/e2e/test_rig_smoke.py"
    run = _run_with_minimal_path(
        [
            "/usr/bin/unshare",
            "-n",
            "--",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{smoke}::test_call_through_asterisk_with_audio",
            f"{smoke}::test_postgres_throwaway_cluster",
        ],
        trace_dir,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout


def test_the_sample_check_runs_without_sbin_on_path(trace_dir: Path, asterisk_root: Path) -> None:
    """``python -m demo.samples`` re-executes itself with ``ip link set lo up`` in a new namespace."""
    run = _run_with_minimal_path([sys.executable, "-m", "demo.samples"], trace_dir, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"ari": true' in run.stdout
