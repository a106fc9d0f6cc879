"""A cap on the audit rows that refused requests (401/403) write.

Every refused request is audited, so a client hammering the API with bad tokens would otherwise grow the
audit table without bound. Each client address may write ``per_minute`` such rows a minute; what goes
beyond is counted, and the client's next row that is written says how many were folded into it
(``details.suppressed_before``). Nothing is dropped from the record, only aggregated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_SECONDS = 60.0
# Clients kept at most; beyond, the ones seen longest ago are forgotten, those with nothing pending first.
MAX_CLIENTS = 10_000


@dataclass
class _Client:
    window_start: float
    written: int = 0
    suppressed: int = 0


class DeniedAuditLimiter:
    def __init__(self, per_minute: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._clients: dict[str, _Client] = {}

    def admit(self, client: str) -> tuple[bool, int]:
        """(write this row?, how many rows of this client were suppressed since its last written one)."""
        now = self._clock()
        state = self._clients.get(client)
        if state is None:
            self._forget_idle(now)
            state = self._clients[client] = _Client(window_start=now)
        elif now - state.window_start >= WINDOW_SECONDS:
            state.window_start, state.written = now, 0
        if state.written < self.per_minute:
            state.written += 1
            suppressed, state.suppressed = state.suppressed, 0
            return True, suppressed
        state.suppressed += 1
        return False, 0

    def _forget_idle(self, now: float) -> None:
        """Keep the table under MAX_CLIENTS: forget the clients seen longest ago, those with no
        suppressed rows pending first (an address flood cannot grow the table, whatever it costs)."""
        if len(self._clients) < MAX_CLIENTS:
            return
        excess = len(self._clients) - MAX_CLIENTS + max(1, MAX_CLIENTS // 10)  # a tenth at once: rare sorts
        oldest = sorted(
            self._clients, key=lambda c: (self._clients[c].suppressed > 0, self._clients[c].window_start)
        )
        for client in oldest[:excess]:
            del self._clients[client]
