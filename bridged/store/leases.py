"""The ``app_leases`` table: which bridged daemon serves the calls of each Stasis application.

Every time is the database's (``now()``), never a daemon's clock: two hosts whose clocks disagree still
agree on who holds a lease. Each statement is one round trip and decides on its own: a conditional
``UPDATE ... RETURNING`` (or ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``) takes a row's lock, and a
concurrent one re-checks its condition against what the first wrote, so of two daemons taking over the
same lease exactly one gets a row back. bridged.leases drives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .base import Aggregate, unavailable_as_one_type


@dataclass(frozen=True)
class Lease:
    ari_app: str
    holder: str  # the application of the daemon holding it (ari_app itself: its owner)
    holder_instance: str
    expires_at: datetime
    handback: bool
    expired: bool


@dataclass(frozen=True)
class Held:
    """A lease a renewal kept: its application, and whether its owner asked for it back."""

    ari_app: str
    handback: bool


@unavailable_as_one_type
class AppLeases(Aggregate):
    async def acquire(self, app: str, instance: str, seconds: float) -> bool:
        """Take the lease of ``app`` for its owner's ``instance``: when nobody holds it, when it expired
        (its holder is dead, or gave it back), or when ``instance`` holds it already."""
        got = await self.pool.fetchval(
            "INSERT INTO app_leases AS l (ari_app, holder, holder_instance, expires_at)"
            " VALUES ($1, $1, $2, now() + make_interval(secs => $3))"
            " ON CONFLICT (ari_app) DO UPDATE SET holder = $1, holder_instance = $2,"
            " expires_at = excluded.expires_at, handback = false"
            " WHERE l.holder_instance = $2 OR l.expires_at < now()"
            " RETURNING ari_app",
            app,
            instance,
            seconds,
        )
        return got is not None

    async def ask_back(self, app: str) -> None:
        """The owner of ``app`` is back while another daemon holds its lease: ask for it (the holder sees
        it at its next renewal)."""
        await self.pool.execute(
            "UPDATE app_leases SET handback = true WHERE ari_app = $1 AND holder <> $1 AND NOT handback", app
        )

    async def get(self, app: str) -> Lease | None:
        row = await self.pool.fetchrow(
            "SELECT ari_app, holder, holder_instance, expires_at, handback, expires_at < now() AS expired"
            " FROM app_leases WHERE ari_app = $1",
            app,
        )
        return None if row is None else Lease(**dict(row))

    async def renew(self, instance: str, seconds: float) -> list[Held]:
        """Extend every lease ``instance`` holds; the ones it still holds (a lease another daemon took
        after it expired is not among them)."""
        rows = await self.pool.fetch(
            "UPDATE app_leases SET expires_at = now() + make_interval(secs => $2)"
            " WHERE holder_instance = $1 RETURNING ari_app, handback",
            instance,
            seconds,
        )
        return [Held(r["ari_app"], r["handback"]) for r in rows]

    async def take_over(self, app: str, instance: str, seconds: float, *, reserved: float) -> list[str]:
        """Take every expired lease of another application that still has calls open, for daemon ``app``
        (process ``instance``); the applications taken. A lease given back to its owner stays reserved
        for it ``reserved`` seconds (the owner is on its way back)."""
        rows = await self.pool.fetch(
            "UPDATE app_leases AS l SET holder = $1, holder_instance = $2,"
            " expires_at = now() + make_interval(secs => $3), handback = false"
            " WHERE l.ari_app <> $1 AND l.expires_at < now()"
            " AND (NOT l.handback OR l.expires_at < now() - make_interval(secs => $4))"
            " AND EXISTS (SELECT 1 FROM calls c WHERE c.ari_app = l.ari_app AND c.state <> 'ended')"
            " RETURNING l.ari_app",
            app,
            instance,
            seconds,
            reserved,
        )
        return [r["ari_app"] for r in rows]

    async def give_back(self, app: str, instance: str) -> bool:
        """``instance`` is done with the lease of ``app`` (not its own): back to its owner, expired and
        reserved for it (no other survivor takes it over meanwhile)."""
        done = await self.pool.fetchval(
            "UPDATE app_leases SET holder = ari_app, holder_instance = '', expires_at = now(),"
            " handback = true WHERE ari_app = $1 AND holder_instance = $2 RETURNING ari_app",
            app,
            instance,
        )
        return done is not None

    async def release(self, app: str, instance: str) -> None:
        """The owner stops: its lease expires now, so that another daemon may adopt the calls it leaves
        up, or its next start serve them, without waiting."""
        await self.pool.execute(
            "UPDATE app_leases SET expires_at = now() WHERE ari_app = $1 AND holder_instance = $2",
            app,
            instance,
        )

    async def open_calls(self, app: str) -> int:
        """How many calls of ``app`` have not ended."""
        count = await self.pool.fetchval(
            "SELECT count(*) FROM calls WHERE ari_app = $1 AND state <> 'ended'", app
        )
        return int(count or 0)
