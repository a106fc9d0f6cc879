"""sd_notify(3) over ``$NOTIFY_SOCKET`` with the stdlib: readiness, status, watchdog, stopping.

No libsystemd binding: the protocol is one datagram of ``KEY=value`` lines to a unix socket (an
``@`` prefix means the abstract namespace). Outside systemd (no ``$NOTIFY_SOCKET``) every call is a
no-op, so the daemon runs the same from a terminal, the tests and the unit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

# How often a start step of unknown length (Notifier.while_starting) extends the start timeout.
START_EXTEND_EVERY = 20.0


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_interval = _watchdog_interval(env)
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``...; False if not sent."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message, self.address)
            return True
        except OSError as exc:
            # systemd went away or the socket is not ours to use: the daemon keeps running regardless.
            log.warning("sd_notify failed: %s", type(exc).__name__)
            return False

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def reloading(self, status: str) -> bool:
        # systemd 253+ wants the monotonic time with RELOADING=1; older ones ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def extend_start(self, seconds: float, status: str) -> bool:
        # systemd 236+: the start may take ``seconds`` more from now (TimeoutStartSec counts again from
        # here); an older systemd ignores it and keeps TimeoutStartSec.
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}", f"STATUS={status}")

    async def while_starting(
        self, work: Awaitable[T], status: str, *, every: float = START_EXTEND_EVERY
    ) -> T:
        """Await ``work``, a step of the start whose length is not ours to bound (the migrations: an
        index built CONCURRENTLY on a large table, or waiting for a peer's), telling systemd now and every
        ``every`` seconds to wait ``3 * every`` more. TimeoutStartSec then bounds a wedged daemon, whose
        loop sends nothing, not a long migration that would be killed and started over at each restart."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                self.extend_start(3 * every, status)
                done, _ = await asyncio.wait({task}, timeout=every)
                if done:
                    return task.result()
        finally:
            task.cancel()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None if no watchdog is set."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. a wrapper that exec'ed us would have changed it)
    return int(usec) / 1_000_000 / 2
