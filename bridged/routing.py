"""Whom an inbound call rings, in which order.

The manager who last talked to the caller (within ``inbound.sticky_days``), then the manager of the
caller's latest order, then the rest of the first one's team (``inbound.ring_team``), then the
``inbound.fallback`` managers. Each manager is rung once. The team and the fallback are rung one at a
time (``sequential``) or each all at once (``simultaneous``: the first to answer takes the call). A
manager the config no longer has is left out. Which phones can be rung at all (registered, not busy,
answering in time) is found out by ringing them (bridged.calls.steps).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .config import Config, Manager


@dataclass(frozen=True)
class Route:
    steps: tuple[tuple[Manager, ...], ...]
    # The manager the call is for: the first one rung alone (sticky or the order's); None if neither.
    first: Manager | None


def route(config: Config, *, sticky: str | None, order_manager: str | None) -> Route:
    inbound = config.inbound
    seen: set[str] = set()
    steps: list[tuple[Manager, ...]] = []

    def add(managers: Iterable[Manager | None], *, together: bool) -> None:
        fresh: list[Manager] = []
        for manager in managers:
            if manager is not None and manager.id not in seen:
                seen.add(manager.id)
                fresh.append(manager)
        if together and fresh:
            steps.append(tuple(fresh))
        else:
            steps.extend((m,) for m in fresh)

    together = inbound.ring_group == "simultaneous"
    firsts = [config.manager_by_id(m) for m in (sticky, order_manager) if m is not None]
    add(firsts, together=False)
    first = steps[0][0] if steps else None
    if inbound.ring_team and first is not None and first.team is not None:
        add((m for m in config.managers if m.team == first.team), together=together)
    add((config.manager_by_id(m) for m in inbound.fallback), together=together)
    return Route(tuple(steps), first)
