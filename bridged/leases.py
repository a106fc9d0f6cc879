"""Which daemon serves the calls of each Stasis application: a lease in PostgreSQL (bridged.store.leases),
no consensus of bridged's own.

- Every daemon holds the lease of its own application (``ari.app``) and renews it every
  ``RENEW_SECONDS`` for ``LEASE_SECONDS``, by the database's clock. It serves its application (opens its
  websockets) only while it holds it; a second daemon configured with the same ``ari.app`` waits.
- A lease that expired while its application still has calls open (their rows) is taken over by one
  survivor: a conditional UPDATE that one daemon wins. The survivor opens a websocket under the dead
  daemon's application on every node (Asterisk then sends it every event of those calls, StasisEnd
  included, docs/asterisk.md "A daemon killed while its calls are bridged") and the usual reconcile adopts
  them: they go on, and their rows end when a side hangs up. It takes no new call under that name.
- The adopter gives the lease back once those calls have ended, or as soon as the owner is back and asks
  (``handback``): it closes its websockets for that application and the owner serves its calls again
  (its reconcile picks them up).
- A daemon that could not reach the database stops taking leases over for one lease period once it can
  again: the others could not renew theirs either, and are given the time to.
- The database away does not stop calls: a daemon keeps serving its own calls while it cannot renew; if
  another daemon (which can reach the database) takes its lease over meanwhile, this one gets
  ``ApplicationReplaced`` (bridged.serving), stops serving, and asks for the lease back once it can.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Protocol

from . import metrics
from .store import Store
from .store.base import DatabaseUnavailable
from .store.leases import Held

log = logging.getLogger(__name__)

LEASE_SECONDS = 6.0
RENEW_SECONDS = 2.0
# A lease given back to its owner stays its owner's this long: no other survivor takes it meanwhile.
RESERVED_SECONDS = 3 * LEASE_SECONDS
# How often a daemon waiting for its own lease tries again, and logs that it waits.
ACQUIRE_RETRY_SECONDS = 0.5
ACQUIRE_LOG_SECONDS = 5.0


class LeaseHost(Protocol):
    """What the leases do to the daemon (bridged.serving.Serving)."""

    def serve_own(self) -> None: ...

    def stop_own(self) -> None: ...

    def adopt(self, app: str) -> None: ...

    async def give_back(self, app: str) -> None: ...

    def adopted_apps(self) -> set[str]: ...

    def busy_with(self, app: str) -> bool: ...


def instance_name(app: str) -> str:
    """This process, as ``app_leases.holder_instance`` names it."""
    return f"{app}@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Leases:
    def __init__(
        self,
        store: Store,
        app: str,
        host: LeaseHost,
        *,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.app = app
        self.host = host
        self.instance = instance or instance_name(app)
        self._clock = clock
        self.own_held = False
        self._database_ok = True
        # No lease is taken over before this (monotonic): a daemon that just started, or just got its
        # database back, first lets the others renew theirs.
        self._takeovers_from = clock() + LEASE_SECONDS

    @property
    def actor(self) -> str:
        return f"bridged:{self.app}"

    # -- this daemon's own lease --------------------------------------------------------------------

    async def acquire_own(self) -> None:
        """Until this daemon holds the lease of its own application. An adopter holding it is asked for
        it back; a lease held by another process of the same application is waited out."""
        last_log = -ACQUIRE_LOG_SECONDS
        while not await self._try_own():
            if self._clock() - last_log >= ACQUIRE_LOG_SECONDS:
                last_log = self._clock()
                await self._log_holder()
            await asyncio.sleep(ACQUIRE_RETRY_SECONDS)
        log.info("holding the lease of application %s", self.app)

    async def _try_own(self) -> bool:
        try:
            if await self.store.leases.acquire(self.app, self.instance, LEASE_SECONDS):
                self.own_held = True
                return True
            await self.store.leases.ask_back(self.app)
        except DatabaseUnavailable as exc:
            log.warning("the lease of application %s waits for bridged's database (%s)", self.app, exc)
        return False

    async def _log_holder(self) -> None:
        try:
            lease = await self.store.leases.get(self.app)
        except DatabaseUnavailable:
            return
        if lease is None:
            return
        if lease.holder != self.app:
            log.warning(
                "application %s's calls are served by %s (it adopted them): asked for them back",
                self.app,
                lease.holder,
            )
        else:
            log.warning(
                "application %s is held by another bridged process (%s) until its lease expires: a second"
                " daemon with the same ari.app, or this one's previous run",
                self.app,
                lease.holder_instance,
            )

    # -- the loop -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Every ``RENEW_SECONDS``: :meth:`tick` (for the daemon's lifetime)."""
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            await self.tick()

    async def tick(self) -> None:
        """Renew what this daemon holds, act on what the renewal says, take over expired leases."""
        try:
            held = {h.ari_app: h for h in await self.store.leases.renew(self.instance, LEASE_SECONDS)}
            self._database_back()
            await self._own(held)
            await self._adopted(held)
            if self._clock() >= self._takeovers_from:
                await self._take_over()
        except DatabaseUnavailable as exc:
            if self._database_ok:
                log.warning("leases not renewed: bridged's database is unavailable (%s); calls go on", exc)
            self._database_ok = False

    def _database_back(self) -> None:
        if not self._database_ok:
            self._database_ok = True
            self._takeovers_from = self._clock() + LEASE_SECONDS
            log.info("leases renewed again; no lease is taken over for %.0f s", LEASE_SECONDS)

    async def _own(self, held: dict[str, Held]) -> None:
        if self.app in held:
            self.host.serve_own()  # reopens a websocket replaced by someone who does not hold the lease
            return
        if self.own_held:
            log.error(
                "the lease of application %s was taken over (it could not be renewed in time): its calls are"
                " served by another daemon until it gives them back",
                self.app,
            )
            self.own_held = False
            self.host.stop_own()
        if await self._try_own():
            log.info("the lease of application %s is back: serving its calls again", self.app)
            self.host.serve_own()

    async def _adopted(self, held: dict[str, Held]) -> None:
        for app in sorted(self.host.adopted_apps()):
            lease = held.get(app)
            if lease is None:
                log.warning("the lease of application %s is no longer held here: its calls are let go", app)
                await self.host.give_back(app)
            elif lease.handback:
                log.info("application %s's daemon is back: its calls are handed back", app)
                await self._give_back(app, "owner back")
            elif not self.host.busy_with(app) and await self.store.leases.open_calls(app) == 0:
                log.info("every adopted call of application %s has ended: its lease goes back", app)
                await self._give_back(app, "calls ended")

    async def _give_back(self, app: str, why: str) -> None:
        await self.host.give_back(app)
        if await self.store.leases.give_back(app, self.instance):
            await self._audit("app.handback", "returned", app, why)

    async def _take_over(self) -> None:
        taken = await self.store.leases.take_over(
            self.app, self.instance, LEASE_SECONDS, reserved=RESERVED_SECONDS
        )
        for app in taken:
            metrics.LEASE_TAKEOVERS.inc()
            log.warning(
                "took over the lease of application %s (its daemon stopped renewing it): adopting its calls",
                app,
            )
            await self._audit("app.takeover", "taken", app, "lease expired with calls open")
            self.host.adopt(app)

    async def _audit(self, action: str, outcome: str, app: str, why: str) -> None:
        try:
            await self.store.audit.add(
                actor=self.actor, action=action, outcome=outcome, reason=why, details={"ari_app": app}
            )
        except DatabaseUnavailable as exc:
            log.warning("audit row %s for %s not written (%s)", action, app, exc)

    # -- the end ------------------------------------------------------------------------------------

    async def release_all(self) -> None:
        """On the way out: every lease held here expires now, so that another daemon may adopt the calls
        left up (or this daemon's next start serve them) without waiting."""
        for app in [self.app, *sorted(self.host.adopted_apps())]:
            try:
                await self.store.leases.release(app, self.instance)
            except DatabaseUnavailable as exc:
                log.warning(
                    "the lease of %s not released (%s): it expires in %.0f s", app, exc, LEASE_SECONDS
                )
