"""bridged.leases: what a daemon does with what its lease renewals say, against an in-memory lease table
on a clock the test turns (the SQL itself is tests/db/test_leases.py, on PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from bridged.leases import LEASE_SECONDS, RENEW_SECONDS, Leases
from bridged.store.base import DatabaseUnavailable
from bridged.store.leases import Held, Lease

from .fakes import FakeStore


@dataclass
class _Row:
    holder: str
    instance: str
    expires: float
    handback: bool = False


class FakeLeases:
    """Mirrors ``AppLeases``, with ``now`` the database's clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.rows: dict[str, _Row] = {}
        self.open: dict[str, int] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise DatabaseUnavailable("ConnectionRefusedError")

    async def acquire(self, app: str, instance: str, seconds: float) -> bool:
        self._check()
        row = self.rows.get(app)
        if row is None or row.instance == instance or row.expires < self.now:
            self.rows[app] = _Row(app, instance, self.now + seconds)
            return True
        return False

    async def ask_back(self, app: str) -> None:
        self._check()
        row = self.rows.get(app)
        if row is not None and row.holder != app:
            row.handback = True

    async def get(self, app: str) -> Lease | None:
        self._check()
        row = self.rows.get(app)
        if row is None:
            return None
        at = datetime.fromtimestamp(row.expires, UTC)
        return Lease(app, row.holder, row.instance, at, row.handback, row.expires < self.now)

    async def renew(self, instance: str, seconds: float) -> list[Held]:
        self._check()
        held = []
        for app, row in self.rows.items():
            if row.instance == instance:
                row.expires = self.now + seconds
                held.append(Held(app, row.handback))
        return held

    async def take_over(self, app: str, instance: str, seconds: float, *, reserved: float) -> list[str]:
        self._check()
        taken = []
        for other, row in self.rows.items():
            free = row.expires < self.now and (not row.handback or row.expires < self.now - reserved)
            if other != app and free and self.open.get(other, 0) > 0:
                self.rows[other] = _Row(app, instance, self.now + seconds)
                taken.append(other)
        return taken

    async def give_back(self, app: str, instance: str) -> bool:
        self._check()
        row = self.rows.get(app)
        if row is None or row.instance != instance:
            return False
        # The database's now() of a later statement is later: expired for it.
        self.rows[app] = _Row(app, "", self.now - 1e-6, handback=True)
        return True

    async def release(self, app: str, instance: str) -> None:
        self._check()
        row = self.rows.get(app)
        if row is not None and row.instance == instance:
            row.expires = self.now - 1e-6

    async def open_calls(self, app: str) -> int:
        self._check()
        return self.open.get(app, 0)


@dataclass
class FakeHost:
    """Mirrors bridged.serving.Serving as the leases see it."""

    did: list[str] = field(default_factory=list)
    adopted: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)

    def serve_own(self) -> None:
        self.did.append("serve_own")

    def stop_own(self) -> None:
        self.did.append("stop_own")

    def adopt(self, app: str) -> None:
        self.did.append(f"adopt {app}")
        self.adopted.add(app)

    async def give_back(self, app: str) -> None:
        self.did.append(f"give_back {app}")
        self.adopted.discard(app)

    def adopted_apps(self) -> set[str]:
        return set(self.adopted)

    def busy_with(self, app: str) -> bool:
        return app in self.busy


@dataclass
class Env:
    table: FakeLeases
    store: Any
    clock: list[float]

    def leases(self, app: str, host: FakeHost) -> Leases:
        return Leases(self.store, app, host, instance=f"{app}@1", clock=lambda: self.clock[0])

    def advance(self, seconds: float) -> None:
        self.clock[0] += seconds
        self.table.now += seconds

    def audits(self) -> list[tuple[str, str, Any]]:
        return [(a["actor"], a["action"], a["details"].get("ari_app")) for a in self.store.audits]


@pytest.fixture
def env() -> Env:
    store = FakeStore()
    table = FakeLeases()
    store.leases = table  # type: ignore[attr-defined]
    return Env(table, store, [1000.0])


async def _tick(leases: Leases, env: Env, seconds: float = RENEW_SECONDS) -> None:
    env.advance(seconds)
    await leases.tick()


async def test_a_daemon_serves_its_app_only_while_it_holds_its_lease(env: Env) -> None:
    host = FakeHost()
    a = env.leases("a", host)
    await a.acquire_own()
    assert a.own_held and env.table.rows["a"].instance == "a@1"
    await _tick(a, env)
    assert host.did == ["serve_own"]  # renewed: served (a websocket someone replaced is reopened)


async def test_a_survivor_adopts_an_expired_lease_with_calls_open_and_gives_it_back_when_they_end(
    env: Env,
) -> None:
    host_b = FakeHost()
    a, b = env.leases("a", FakeHost()), env.leases("b", host_b)
    await a.acquire_own()
    await b.acquire_own()
    env.table.open["a"] = 2
    # a dies (stops renewing). b takes nothing over during its first lease period, then a's lease.
    await _tick(b, env)
    await _tick(b, env)
    assert "adopt a" not in host_b.did  # a's lease (6 s) has not expired yet
    await _tick(b, env)
    await _tick(b, env)
    assert host_b.did[-1] == "adopt a"
    assert env.table.rows["a"].holder == "b"
    assert env.audits() == [("bridged:b", "app.takeover", "a")]
    # Its calls go on; while one is open (or still handled here) the lease stays.
    env.table.open["a"] = 1
    await _tick(b, env)
    env.table.open["a"] = 0
    host_b.busy.add("a")
    await _tick(b, env)
    assert "give_back a" not in host_b.did
    host_b.busy.clear()
    await _tick(b, env)
    assert host_b.did[-1] == "give_back a"
    row = env.table.rows["a"]
    assert (row.holder, row.instance, row.handback) == ("a", "", True)
    assert env.audits()[-1] == ("bridged:b", "app.handback", "a")


async def test_the_owner_back_asks_for_its_lease_and_the_adopter_hands_it_over(env: Env) -> None:
    host_b = FakeHost()
    a_old, b = env.leases("a", FakeHost()), env.leases("b", host_b)
    await a_old.acquire_own()
    await b.acquire_own()
    env.table.open["a"] = 1
    for _ in range(4):
        await _tick(b, env)
    assert "a" in host_b.adopted
    # a restarts (another process): it asks, b hands over at its next renewal, a takes it.
    a_new = Leases(env.store, "a", FakeHost(), instance="a@2", clock=lambda: env.clock[0])
    assert not await a_new._try_own()
    assert env.table.rows["a"].handback
    await _tick(b, env)
    assert host_b.did[-1] == "give_back a" and "a" not in host_b.adopted
    assert await a_new._try_own()


async def test_a_daemon_whose_lease_was_taken_stops_serving_and_serves_again_once_handed_back(
    env: Env,
) -> None:
    host_a, host_b = FakeHost(), FakeHost()
    a, b = env.leases("a", host_a), env.leases("b", host_b)
    await a.acquire_own()
    await b.acquire_own()
    env.table.open["a"] = 1
    # a cannot reach the database for longer than its lease; b can, and adopts a's calls.
    env.table.down = True
    await _tick(a, env, LEASE_SECONDS)
    env.table.down = False
    await b.tick()
    await _tick(b, env, LEASE_SECONDS)
    assert "a" in host_b.adopted
    # a reaches the database again: its lease is gone. It stops serving and asks for it back.
    await _tick(a, env, 0)
    assert host_a.did == ["stop_own"] and not a.own_held
    await b.tick()
    assert host_b.did[-1] == "give_back a"
    await _tick(a, env, 0)
    assert a.own_held and host_a.did == ["stop_own", "serve_own"]


async def test_after_a_database_outage_no_lease_is_taken_over_for_one_lease_period(env: Env) -> None:
    host_b = FakeHost()
    a, b = env.leases("a", FakeHost()), env.leases("b", host_b)
    await a.acquire_own()
    await b.acquire_own()
    env.table.open["a"] = 1
    await _tick(b, env, LEASE_SECONDS)  # b is settled
    env.table.down = True
    await _tick(b, env, LEASE_SECONDS)
    await _tick(b, env, LEASE_SECONDS)
    env.table.down = False
    # Everyone's lease expired during the outage (a could not renew either): b waits for a to renew.
    await _tick(b, env, 0.1)
    assert host_b.adopted == set()
    await _tick(a, env, 0.1)  # a renews its lease within that period
    await _tick(b, env, LEASE_SECONDS)
    assert host_b.adopted == set()


async def test_a_stopping_daemon_releases_what_it_holds(env: Env) -> None:
    host_b = FakeHost()
    a, b = env.leases("a", FakeHost()), env.leases("b", host_b)
    await a.acquire_own()
    await b.acquire_own()
    env.table.open["a"] = 1
    for _ in range(4):
        await _tick(b, env)
    await b.release_all()
    assert env.table.rows["b"].expires < env.table.now
    assert env.table.rows["a"].expires < env.table.now  # a third daemon may adopt a's calls at once
