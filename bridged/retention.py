"""Retention: recordings of calls older than the retention are deleted on a schedule, and the rows no reader
needs any more (:meth:`Retention.purge_rows`).

The call row stays (metadata is what disputes are settled on) and gets ``recording_purged_at``; every
purge writes a ``recording.purge`` audit row in the same transaction. The retention in force is the one an
admin set over the API (kept in the ``settings`` table, so it survives restarts), else the config's
``recording.retention_days``; None keeps recordings forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from .appkeys import ARI, CONFIG, STORE
from .config import LimitsConfig
from .recordings import AriRecordings, FolderRecordings, RecordingSource, SourceUnavailable
from .store import Store

log = logging.getLogger(__name__)

RETENTION_KEY = "recording.retention_days"
ACTOR = "retention"
_BATCH = 100
# Rows deleted a statement by the rows' purge: each a short transaction, no long lock.
ROWS_BATCH = 10_000
# Days a webhook delivery is kept once done (delivered, or given up): bridged reads it no more; an
# operator looking into a shop's complaint ("we never got call X") still finds it for a month.
OUTBOX_KEEP_DAYS = 30


@dataclass(frozen=True)
class RetentionPolicy:
    days: int | None
    source: str  # "config" or "api"
    updated_at: datetime | None = None
    updated_by: str | None = None


class Retention:
    def __init__(
        self,
        store: Store,
        source: RecordingSource,
        default_days: Callable[[], int | None],
        attempts_days: Callable[[], int] = lambda: LimitsConfig.keep_days,
    ) -> None:
        self.store = store
        self.source = source
        # The config's retention (the config in force's, after reloads): what an API setting overrides.
        self.default_days = default_days
        # limits.keep_days in force: how long managers' attempts are kept.
        self.attempts_days = attempts_days
        # One pass at a time: the schedule and an admin's "purge now" may meet.
        self._lock = asyncio.Lock()

    async def policy(self) -> RetentionPolicy:
        setting = await self.store.settings.get(RETENTION_KEY)
        if setting is None:
            return RetentionPolicy(self.default_days(), "config")
        return RetentionPolicy(setting.value, "api", setting.updated_at, setting.updated_by)

    async def set_days(self, days: int | None, *, actor: str) -> RetentionPolicy:
        setting = await self.store.settings.put(
            RETENTION_KEY, days, actor=actor, audit_action="retention.change"
        )
        log.info("retention set to %s days by %s", "forever" if days is None else days, actor)
        return RetentionPolicy(days, "api", setting.updated_at, setting.updated_by)

    async def reset(self, *, actor: str) -> RetentionPolicy:
        await self.store.settings.delete(RETENTION_KEY, actor=actor, audit_action="retention.change")
        log.info("retention reset to the config default by %s", actor)
        return RetentionPolicy(self.default_days(), "config")

    async def purge(self, now: datetime | None = None) -> int:
        """Delete every recording past the retention; the number purged."""
        async with self._lock:
            policy = await self.policy()
            if policy.days is None:
                return 0
            cutoff = (now or datetime.now(UTC)) - timedelta(days=policy.days)
            purged = 0
            while True:
                due = await self.store.calls.recordings_due(cutoff, _BATCH)
                for call_id, name in due:
                    try:
                        found = await self.source.delete(name)
                    except SourceUnavailable as exc:
                        # Try again next pass; the row still says the recording is there, which is true.
                        log.warning("retention: recording of call %s not deleted: %s", call_id, exc)
                        return purged
                    marked = await self.store.calls.mark_recording_purged(
                        call_id,
                        actor=ACTOR,
                        details={
                            "source": self.source.name,
                            "file_found": found,
                            "retention_days": policy.days,
                        },
                    )
                    if marked is not None:
                        purged += 1
                        log.info("retention: recording of call %s purged (file found: %s)", call_id, found)
                if len(due) < _BATCH:
                    return purged

    async def purge_rows(self, now: datetime | None = None) -> tuple[int, int]:
        """Delete the rows no reader needs any more, in batches: managers' attempts older than
        ``limits.keep_days`` (with the alerts as old), webhook deliveries done ``OUTBOX_KEEP_DAYS`` ago.
        The numbers of attempts and deliveries deleted. Calls, their audit trail, call links and
        idempotency keys are not touched here: the first two are the record, the others are deleted as
        they are written (once past their use)."""
        now = now or datetime.now(UTC)
        attempts = await self.store.attempts.purge(now - timedelta(days=self.attempts_days()), ROWS_BATCH)
        deliveries = await self.store.outbox.purge(now - timedelta(days=OUTBOX_KEEP_DAYS), ROWS_BATCH)
        if attempts or deliveries:
            log.info("retention: %d attempts and %d webhook deliveries deleted", attempts, deliveries)
        return attempts, deliveries

    async def run(self, interval: float) -> None:
        while True:
            # Each on its own: recordings that cannot be deleted now leave the rows' purge to go on.
            for step in (self.purge, self.purge_rows):
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("retention pass failed; next one in %ss", interval)
            await asyncio.sleep(interval)


RECORDINGS: web.AppKey[RecordingSource] = web.AppKey("recordings")
RETENTION = web.AppKey("retention", Retention)


async def context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the recording source for the review API and the scheduled retention pass."""
    config = app[CONFIG].current.recording
    source: RecordingSource
    if config.source == "folder" and config.folder is not None:
        source = FolderRecordings(config.folder, config.format)
    else:
        source = AriRecordings(app[ARI])
    holder = app[CONFIG]
    retention = Retention(
        app[STORE],
        source,
        lambda: holder.current.recording.retention_days,
        lambda: holder.current.limits.keep_days,
    )
    app[RECORDINGS] = source
    app[RETENTION] = retention
    task = asyncio.create_task(retention.run(config.purge_interval), name="retention")
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
