"""Find or build the cached Asterisk chroot (see scripts/provision-asterisk)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "provision-asterisk"
MARKER = ".bridged-rig-ready"


def cache_dir() -> Path:
    return Path(os.environ.get("BRIDGED_RIG_CACHE", "/var/cache/bridged-rig"))


def ensure_asterisk_root(cache: Path | None = None) -> Path:
    """Return the chroot holding Asterisk 22, building it first if needed (several minutes the first time).

    The script is run every time: it alone knows the packages the rig needs, returns at once when the
    marker lists them all, and adds those a cache made before is missing (that needs the network: run it
    outside a test's private network namespace, as scripts/test does)."""
    cache = cache or cache_dir()
    root = cache / "root"
    subprocess.run([str(SCRIPT), str(cache)], check=True)
    if not (root / MARKER).exists():
        raise RuntimeError(f"{SCRIPT} finished but {root / MARKER} is missing")
    return root
