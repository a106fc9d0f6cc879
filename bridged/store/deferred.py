"""Rows about refused call attempts that bridged's database did not take: kept, and written once it is back.

While PostgreSQL is away a call attempt is refused (503 ``database_unavailable``, or a prompt on the
phone), and the attempt's own record, its refused call row and audit row, cannot be written either. It
is kept here, in memory and in order, and retried in the background (after 1, 2, 5, 10 and 30 s, then
once a minute, and at once when a later write goes through) with the time the attempt really happened,
and once more when bridged stops. What is
kept is bounded (``LIMIT`` rows): beyond it, or when bridged stops with the database still away, rows are
lost, and each loss is logged and counted (``bridged_deferred_writes_lost_total``). Nothing else is lost
silently either: every refusal is logged when it happens and counted by reason in
``bridged_calls_refused_total``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from .. import metrics
from ..outcomes import Refusal
from .base import DatabaseUnavailable

log = logging.getLogger(__name__)

LIMIT = 1000
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
LAST_TRY_SECONDS = 2.0

Write = Callable[[], Awaitable[None]]
# A write given the time it is about (when it happened, not when a retry gets it through).
Stamped = Callable[[datetime], Awaitable[None]]


class DeferredWrites:
    def __init__(self, *, limit: int = LIMIT, delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.limit = limit
        self._delays = delays
        self._pending: collections.deque[tuple[str, Write]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        # Set when a write goes through while others wait: the database is back, no need to wait for
        # the next retry.
        self._back = asyncio.Event()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def write(self, what: str, write: Write, *, try_now: bool = True) -> bool:
        """Write now, or keep the write for later if the database is away (``try_now`` False: it was
        found away a moment ago; do not wait on it twice). True if written now."""
        if try_now:
            try:
                await write()
            except DatabaseUnavailable as exc:
                log.warning("%s not written, bridged's database is unavailable (%s); retrying", what, exc)
            else:
                if self._pending:
                    self._back.set()
                return True
        self._keep(what, write)
        return False

    async def write_stamped(self, what: str, write: Stamped, *, try_now: bool = True) -> bool:
        """:meth:`write` of ``write(at)``, ``at`` the time of this call: a row kept for later still says
        when it happened."""
        at = datetime.now(UTC)
        return await self.write(what, lambda: write(at), try_now=try_now)

    async def refused(self, what: str, reason: Refusal, insert: Stamped) -> None:
        """A refused call attempt's rows (``insert(at)``), counted by reason: written now, or kept for
        later."""
        metrics.CALLS_REFUSED.inc(reason.value)
        await self.write_stamped(
            f"{what} ({reason})",
            insert,
            # The database was found away a moment ago: keep the row without waiting on it again.
            try_now=reason is not Refusal.DATABASE_UNAVAILABLE,
        )

    def _keep(self, what: str, write: Write) -> None:
        if len(self._pending) >= self.limit:
            metrics.DEFERRED_WRITES_LOST.inc()
            log.error("%s lost: %d writes already wait for bridged's database", what, len(self._pending))
            return
        self._pending.append((what, write))
        metrics.DEFERRED_WRITES.inc()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._retry(), name="deferred-writes")

    async def _flush(self) -> None:
        """The waiting writes, oldest first; raises DatabaseUnavailable at the first one refused."""
        while self._pending:
            what, write = self._pending[0]
            try:
                await write()
            except DatabaseUnavailable:
                raise
            except Exception:
                # Not an outage: a write that can never succeed must not hold up the ones behind it.
                metrics.DEFERRED_WRITES_LOST.inc()
                log.exception("%s lost: the database refused it", what)
            self._pending.popleft()

    async def _retry(self) -> None:
        for attempt, delay in enumerate(itertools.chain(self._delays, itertools.repeat(60.0)), start=1):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._back.wait(), delay)
            self._back.clear()
            try:
                await self._flush()
            except DatabaseUnavailable as exc:
                if attempt == len(self._delays):
                    log.error(
                        "%d writes still wait for bridged's database (%s); retrying once a minute",
                        len(self._pending),
                        exc,
                    )
                continue
            log.info("bridged's database is back: kept writes done (retry %d)", attempt)
            return

    async def close(self) -> None:
        """Stop retrying; one last try at what is still kept, then log what is lost."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if not self._pending:
            return
        try:
            async with asyncio.timeout(LAST_TRY_SECONDS):
                await self._flush()
        except (DatabaseUnavailable, TimeoutError) as exc:
            metrics.DEFERRED_WRITES_LOST.inc(amount=len(self._pending))
            log.error(
                "stopping with %d writes bridged's database did not take: lost (%s)",
                len(self._pending),
                type(exc).__name__,
            )
            self._pending.clear()
