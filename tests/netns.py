"""The test run's private network namespace (``unshare -n``): its loopback, for the rig's fixed ports.

The rig's PostgreSQL (tests/db and tests/e2e), Asterisk and SIPp bind fixed ports on 127.0.0.1 and
127.0.0.2; inside a private namespace of their own, runs never collide.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

CARRIER_IP = "127.0.0.2"
POSTGRES_PORT = 55432


def _can_bind(ip: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False


def ensure_loopback(*extra: str) -> None:
    """Bring lo up (a fresh `unshare -n` namespace has it down) and make sure 127.0.0.2 (and ``extra``
    addresses, e.g. a second Asterisk node's) are usable.

    Always asked for: binding 127.0.0.1 works even while lo is down (only sending fails), so a bind
    test cannot tell. Setting an up interface up is a no-op."""
    if os.geteuid() == 0:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    addresses = ("127.0.0.1", CARRIER_IP, *extra)
    for address in addresses[1:]:
        if not _can_bind(address):
            subprocess.run(["ip", "addr", "add", f"{address}/8", "dev", "lo"], check=False)
    if not all(_can_bind(address) for address in addresses):
        pytest.skip(f"loopback {', '.join(addresses)} not usable (run inside `unshare -n` as root)")
