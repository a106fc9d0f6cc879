"""The ARI requests' timeouts, one event-loop timer for all of them.

``asyncio.timeout`` per request arms and cancels a timer on the event loop each time (about 8 µs of CPU on
the 2-core bench box with uvloop, where the whole request costs the client about 20): a call makes seven
requests and nearly all are answered within a millisecond. Here each request only notes its deadline; one
timer, armed for the earliest deadline, cancels the tasks whose requests are past theirs, and the request
tells its own timeout from any other cancellation exactly as ``asyncio.timeout`` does (the task's
``cancelling()`` count). A request may run up to :data:`SLACK` past its timeout.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

__all__ = ["SLACK", "Deadlines"]

# How long past its deadline a request may go on: timers fire on the loop's coarse clock (uvloop: whole
# milliseconds), so one that fires a little early also ends what is due in this window rather than re-arm
# for a fraction of a millisecond.
SLACK = 0.005


class Deadlines:
    """Requests in flight and when each must be answered by. Use from the event loop's thread only."""

    def __init__(self) -> None:
        # token -> (deadline on the loop's clock, the request's task, the task's cancelling() at the start)
        self._due: dict[int, tuple[float, asyncio.Task[Any], int]] = {}
        # token -> the task's cancelling() at the start, for the requests this cancelled
        self._expired: dict[int, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, token: int, timeout: float) -> None:
        """The current task's request ``token`` must be answered within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("an ARI request must run in a task")
        when = loop.time() + timeout
        self._due[token] = (when, task, task.cancelling())
        if when < self._timer_at or loop is not self._loop:
            self._arm(loop, when)

    def end(self, token: int) -> bool:
        """The request is over (answered, failed or cancelled): True when it ran out of time, that is this
        cancelled its task and nothing else asked for the task's cancellation meanwhile; then the
        ``CancelledError`` it raised is the timeout's, to be turned into a timeout error."""
        if self._due.pop(token, None) is not None or token not in self._expired:
            return False
        cancelling = self._expired.pop(token)
        task = asyncio.current_task()
        assert task is not None
        return task.uncancel() <= cancelling

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._timer_at = loop, when
        self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        assert self._loop is not None
        now = self._loop.time() + SLACK
        late = [token for token, (when, _, _) in self._due.items() if when <= now]
        for token in late:
            _, task, cancelling = self._due.pop(token)
            self._expired[token] = cancelling
            task.cancel()
        if self._due:
            self._arm(self._loop, min(when for when, _, _ in self._due.values()))
