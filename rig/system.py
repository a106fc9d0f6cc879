"""The rig's view of the host: root's tools found whatever PATH the caller started with."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def ensure_sbin_on_path(environ: MutableMapping[str, str] = os.environ) -> None:
    """Append the sbin folders missing from ``environ["PATH"]``.

    ``chroot``, ``runuser`` and ``ip`` live in /usr/sbin, which a root shell started with a minimal PATH
    (``env -i PATH=/usr/bin:/bin``, cron, some CI runners) lacks. The rig calls them by name, and so do the
    processes it starts (``sh -c 'ip link set lo up ...'``), so PATH itself is extended, last, leaving
    the caller's own order alone.
    """
    parts = [p for p in environ.get("PATH", os.defpath).split(os.pathsep) if p]
    missing = [d for d in SBIN_DIRS if d not in parts]
    if missing:
        environ["PATH"] = os.pathsep.join([*parts, *missing])
