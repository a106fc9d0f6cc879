"""Find or build the cached Asterisk chroot (see scripts/provision-asterisk)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "provision-asterisk"
MARKER = ".bridged-rig-ready"


def cache_dir() -> Path:
    return Path(os.environ.get("BRIDGED_RIG_CACHE", "/var/cache/bridged-rig"))


def ensure_asterisk_root(cache: Path | None = None) -> Path:
    """Return the chroot holding Asterisk 22, building it first if needed (several minutes the first time).

    The script is run every time: it alone knows the packages the rig needs, returns at once when the
    marker lists them all, and adds those a cache made before is missing. That needs the network, which a
    test's private network namespace lacks (scripts/test provisions before it enters one): there, a
    finished root that could not get a package added is used as it is, with a warning, and only the tests
    that need the package fail (naming it).
    """
    cache = cache or cache_dir()
    root = cache / "root"
    done = subprocess.run([str(SCRIPT), str(cache)], check=False)
    if done.returncode != 0:
        if not (root / MARKER).exists():
            raise subprocess.CalledProcessError(done.returncode, [str(SCRIPT), str(cache)])
        print(
            f"rig: {SCRIPT.name} could not bring {root} up to date (exit {done.returncode}; no network"
            " here?); using it as it is: run scripts/provision-asterisk outside the tests' namespace.",
            file=sys.stderr,
        )
        return root
    if not (root / MARKER).exists():
        raise RuntimeError(f"{SCRIPT} finished but {root / MARKER} is missing")
    return root
