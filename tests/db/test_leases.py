"""The lease SQL on PostgreSQL (bridged.store.leases): who gets a lease, by the database's clock, and that
of several daemons taking over one expired lease at once exactly one wins."""

from __future__ import annotations

import asyncio

from bridged.store import Store

LEASE = 6.0
SHORT = 0.3  # a lease that expires within the test


async def _open_call(store: Store, app: str, call_id: str) -> None:
    await store.calls.insert_audited(
        call_id=call_id,
        order_id="123",
        manager_id="anna",
        direction="phone",
        state="bridged",
        manager_channel_id=f"{call_id}-m",
        ari_app=app,
        actor="anna",
        details={},
        node="pbx1",
    )


async def test_an_owner_takes_its_lease_and_a_second_process_of_the_same_app_waits_for_it(
    store: Store,
) -> None:
    assert await store.leases.acquire("a", "a@1", LEASE)
    assert await store.leases.acquire("a", "a@1", LEASE)  # its own again (a retry)
    assert not await store.leases.acquire("a", "a@2", LEASE)  # a second daemon with the same ari.app
    lease = await store.leases.get("a")
    assert lease is not None and (lease.holder, lease.holder_instance, lease.expired) == ("a", "a@1", False)
    assert await store.leases.acquire("b", "b@1", SHORT)
    await asyncio.sleep(SHORT + 0.1)
    assert await store.leases.acquire("b", "b@2", LEASE)  # expired: the next run of b takes it


async def test_renewal_keeps_only_what_the_process_still_holds(store: Store) -> None:
    assert await store.leases.acquire("a", "a@1", SHORT)
    assert [h.ari_app for h in await store.leases.renew("a@1", LEASE)] == ["a"]
    assert await store.leases.renew("a@2", LEASE) == []
    assert not await store.leases.acquire("a", "a@2", LEASE)  # renewed: not expired any more


async def test_an_expired_lease_is_taken_over_only_while_its_app_has_calls_open(store: Store) -> None:
    assert await store.leases.acquire("a", "a@1", SHORT)
    await asyncio.sleep(SHORT + 0.1)
    assert await store.leases.take_over("b", "b@1", LEASE, reserved=LEASE) == []  # nothing to adopt
    await _open_call(store, "a", "c1")
    assert await store.leases.open_calls("a") == 1
    assert await store.leases.take_over("a", "a@2", LEASE, reserved=LEASE) == []  # never one's own app
    assert await store.leases.take_over("b", "b@1", LEASE, reserved=LEASE) == ["a"]
    lease = await store.leases.get("a")
    assert lease is not None and (lease.holder, lease.holder_instance) == ("b", "b@1")
    # The adopter holds it now: renewed with its own leases, not taken by a third daemon.
    assert await store.leases.take_over("c", "c@1", LEASE, reserved=LEASE) == []
    assert [h.ari_app for h in await store.leases.renew("b@1", LEASE)] == ["a"]


async def test_of_many_survivors_taking_over_at_once_exactly_one_wins(store: Store) -> None:
    for round_ in range(5):
        app = f"dead{round_}"
        assert await store.leases.acquire(app, f"{app}@1", SHORT / 3)
        await _open_call(store, app, f"call{round_}")
    await asyncio.sleep(SHORT / 3 + 0.1)
    survivors = [f"s{i}" for i in range(8)]
    won = await asyncio.gather(
        *(store.leases.take_over(s, f"{s}@1", LEASE, reserved=LEASE) for s in survivors)
    )
    taken = [app for apps in won for app in apps]
    assert sorted(taken) == [f"dead{i}" for i in range(5)]  # each lease once, by one survivor
    for round_ in range(5):
        lease = await store.leases.get(f"dead{round_}")
        assert lease is not None and lease.holder in survivors


async def test_the_owner_asks_for_its_lease_back_and_gets_it_before_anyone_else(store: Store) -> None:
    assert await store.leases.acquire("a", "a@1", SHORT)
    await _open_call(store, "a", "c1")
    await asyncio.sleep(SHORT + 0.1)
    assert await store.leases.take_over("b", "b@1", LEASE, reserved=LEASE) == ["a"]
    # The owner is back: it cannot take the lease from a live adopter, it asks for it.
    assert not await store.leases.acquire("a", "a@2", LEASE)
    await store.leases.ask_back("a")
    held = await store.leases.renew("b@1", LEASE)
    assert [(h.ari_app, h.handback) for h in held] == [("a", True)]
    assert await store.leases.give_back("a", "b@1")
    assert not await store.leases.give_back("a", "b@1")  # once
    # Given back: expired, and reserved for its owner; another survivor does not take it meanwhile.
    assert await store.leases.take_over("c", "c@1", LEASE, reserved=LEASE) == []
    assert await store.leases.acquire("a", "a@2", LEASE)
    lease = await store.leases.get("a")
    assert lease is not None and (lease.holder, lease.handback) == ("a", False)


async def test_a_lease_given_back_to_an_owner_that_never_comes_is_taken_once_the_reservation_is_over(
    store: Store,
) -> None:
    assert await store.leases.acquire("a", "a@1", SHORT)
    await _open_call(store, "a", "c1")
    await asyncio.sleep(SHORT + 0.1)
    assert await store.leases.take_over("b", "b@1", LEASE, reserved=SHORT) == ["a"]
    assert await store.leases.give_back("a", "b@1")
    assert await store.leases.take_over("c", "c@1", LEASE, reserved=SHORT) == []
    await asyncio.sleep(SHORT + 0.1)
    assert await store.leases.take_over("c", "c@1", LEASE, reserved=SHORT) == ["a"]


async def test_a_stopping_owner_releases_its_lease_so_its_calls_are_adopted_at_once(store: Store) -> None:
    assert await store.leases.acquire("a", "a@1", LEASE)
    await _open_call(store, "a", "c1")
    assert await store.leases.take_over("b", "b@1", LEASE, reserved=LEASE) == []
    await store.leases.release("a", "a@2")  # not its instance: nothing
    assert await store.leases.take_over("b", "b@1", LEASE, reserved=LEASE) == []
    await store.leases.release("a", "a@1")
    assert await store.leases.take_over("b", "b@1", LEASE, reserved=LEASE) == ["a"]
