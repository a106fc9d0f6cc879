"""Webhook signatures, backoff and the sink's never-blocking publish."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from bridged.calls.model import Call, CallState
from bridged.config import WebhookConfig
from bridged.outcomes import Outcome
from bridged.store.base import DatabaseUnavailable
from bridged.store.outbox import Claimed
from bridged.webhooks import WebhookSink, backoff, claim_lease, sign, verify

from .fakes import make_config, make_label, make_order

SECRET = "a-webhook-secret-of-length"


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = b'{"x": 1}'
    header = sign(SECRET, 1700000000, body)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(SECRET, header, body, now=1700000010)


def test_verify_rejects_tampering_wrong_secret_and_stale_timestamps() -> None:
    body = b'{"state": "bridged"}'
    header = sign(SECRET, 1700000000, body)
    assert not verify(SECRET, header, body + b" ", now=1700000000)
    assert not verify("another-secret-value", header, body, now=1700000000)
    assert not verify(SECRET, header, body, now=1700000000 + 301)
    assert not verify(SECRET, "garbage", body, now=1700000000)


def test_backoff_grows_and_is_capped() -> None:
    assert all(0.5 <= backoff(1) <= 2.0 for _ in range(50))
    assert all(backoff(6) >= 32 for _ in range(50))
    assert all(backoff(30) <= 300 for _ in range(50))


class _Store:
    def __init__(self) -> None:
        self.queued: list[tuple[str, dict[str, Any]]] = []
        self.release = asyncio.Event()

    async def queue(self, call_id: str, payload: dict[str, Any]) -> None:
        await self.release.wait()  # a stuck database must not hold the publisher up
        self.queued.append((call_id, payload))

    async def claim(self, limit: int, *, lease: float) -> list[Claimed]:
        return []


async def test_publish_never_blocks_and_carries_no_number() -> None:
    config = make_config()
    store = _Store()
    sink = WebhookSink(WebhookConfig(url="http://127.0.0.1:9/hook", secret=SECRET), store, None)  # type: ignore[arg-type]
    sink.start()
    order = make_order()
    call = Call(
        id="c1",
        manager=config.managers[0],
        order_id=order.id,
        direction="api",
        order=order,
        label=make_label(),
    )
    for state in (CallState.RINGING_MANAGER, CallState.RINGING_CUSTOMER, CallState.BRIDGED):
        sink.publish(call, state)  # returns at once although the store is stuck
    call.outcome = Outcome.COMPLETED
    sink.publish(call, CallState.ENDED)
    assert store.queued == []
    store.release.set()
    for _ in range(100):
        if len(store.queued) == 4:
            break
        await asyncio.sleep(0.01)
    states = [p["data"]["state"] for _, p in store.queued]
    assert states == ["ringing_manager", "ringing_customer", "bridged", "ended"]
    assert store.queued[-1][1]["data"]["outcome"] == "completed"
    assert order.phone is not None and order.phone.dialable().lstrip("+") not in repr(store.queued)
    await sink.stop()


def test_disabled_sink_publishes_nothing() -> None:
    config = make_config()
    sink = WebhookSink(WebhookConfig(), _Store(), None)  # type: ignore[arg-type]
    order = make_order()
    sink.publish(
        Call(
            id="c", manager=config.managers[0], order_id="1", direction="api", order=order, label=make_label()
        ),
        CallState.ENDED,
    )
    assert sink._queue.empty()


def _inbound(manager_index: int | None, order_id: str | None, ref: str | None) -> Call:
    config = make_config()
    return Call(
        id="in1",
        manager=None if manager_index is None else config.managers[manager_index],
        order_id=order_id,
        direction="inbound",
        order=None,
        label=make_label(),
        caller_ref=ref,
    )


def test_a_missed_inbound_call_is_also_a_call_missed_event_with_its_order_or_the_callers_ref() -> None:
    sink = WebhookSink(WebhookConfig(url="http://127.0.0.1:9/hook", secret=SECRET), _Store(), None)  # type: ignore[arg-type]
    known, unknown = _inbound(0, "123", "KXMRTPAW"), _inbound(None, None, "ABCDEFGH")
    for call in (known, unknown):
        call.outcome = Outcome.MISSED
        sink.publish(call, CallState.ENDED)
    queued = [sink._queue.get_nowait()[1] for _ in range(sink._queue.qsize())]
    assert [p["type"] for p in queued] == ["call.state_changed", "call.missed"] * 2
    missed = [p["data"] for p in queued if p["type"] == "call.missed"]
    assert missed[0] | {"call_id": ""} == {
        "call_id": "",
        "order_id": "123",
        "caller_ref": "KXMRTPAW",
        "manager_id": "anna",
        "direction": "inbound",
        "state": "ended",
        "outcome": "missed",
    }
    assert (missed[1]["order_id"], missed[1]["manager_id"], missed[1]["caller_ref"]) == (
        None,
        None,
        "ABCDEFGH",
    )
    # Answered: no call.missed; a call bridged turned away (its row is the service's): nothing at all.
    answered = _inbound(0, "123", "KXMRTPAW")
    answered.outcome = Outcome.COMPLETED
    sink.publish(answered, CallState.ENDED)
    turned_away = _inbound(None, None, None)
    turned_away.has_row = False
    sink.publish(turned_away, CallState.ENDED)
    assert [sink._queue.get_nowait()[1]["type"] for _ in range(sink._queue.qsize())] == ["call.state_changed"]


class _Outbox:
    """The outbox as the dispatcher uses it: rows claimed once each, with what it reports of them."""

    def __init__(self, payloads: list[dict[str, Any]]) -> None:
        until = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        self.rows = [Claimed(n, json.dumps(p), 2, until) for n, p in enumerate(payloads, 1)]
        self.leases: list[float] = []
        self.taken: list[int] = []
        self.refused: list[tuple[Claimed, str, float | None]] = []

    async def claim(self, limit: int, *, lease: float) -> list[Claimed]:
        self.leases.append(lease)
        claimed, self.rows = self.rows[:limit], self.rows[limit:]
        return claimed

    async def delivered(self, outbox_id: int) -> None:
        self.taken.append(outbox_id)

    async def failed(self, claimed: Claimed, *, error: str, retry_in: float | None) -> None:
        self.refused.append((claimed, error, retry_in))


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        return None


class _Session:
    """The shop's webhook: answers each event with the status its payload asks for."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def post(self, url: str, *, data: Any = None, **kwargs: Any) -> _Response:
        assert isinstance(data, bytes)  # what the sink posts: the signed body as it was signed
        self.bodies.append(data)
        return _Response(json.loads(data)["answer"])


async def test_the_dispatcher_claims_for_as_long_as_a_batch_may_take_and_reports_each_claim() -> None:
    outbox = _Outbox([{"answer": 204}, {"answer": 500}, {"answer": 200}])
    session = _Session()
    config = WebhookConfig(url="http://127.0.0.1:9/hook", secret=SECRET, timeout=5.0, max_attempts=3)
    sink = WebhookSink(config, outbox, session)  # type: ignore[arg-type]
    sink.start()
    for _ in range(100):
        if len(outbox.taken) + len(outbox.refused) == 3:
            break
        await asyncio.sleep(0.01)
    await sink.stop()
    # 20 rows a batch, 4 at a time, each up to 5 s: the last may end 25 s after the claim.
    assert outbox.leases[0] == claim_lease(5.0) > 25.0
    assert sorted(outbox.taken) == [1, 3] and len(session.bodies) == 3
    [(claimed, error, retry_in)] = outbox.refused
    assert (claimed.id, error, retry_in) == (2, "HTTP 500", None)  # its third attempt of three: given up


class _OutboxAway(_Outbox):
    """Its first writes find the database away."""

    def __init__(self, payloads: list[dict[str, Any]], away: int) -> None:
        super().__init__(payloads)
        self.away = away

    async def delivered(self, outbox_id: int) -> None:
        if self.away:
            self.away -= 1
            raise DatabaseUnavailable("ConnectionRefusedError")
        await super().delivered(outbox_id)


async def test_a_delivery_whose_outcome_cannot_be_written_leaves_the_dispatcher_going() -> None:
    """The row stays claimed until its lease runs out, then is delivered again (the store's tests)."""
    outbox = _OutboxAway([{"answer": 204}] * 25, away=2)  # 2 batches, 2 writes fail
    sink = WebhookSink(WebhookConfig(url="http://127.0.0.1:9/hook", secret=SECRET), outbox, _Session())  # type: ignore[arg-type]
    sink.start()
    for _ in range(100):
        if len(outbox.taken) == 23:
            break
        await asyncio.sleep(0.01)
    await sink.stop()
    assert len(set(outbox.taken)) == 23  # the two not written stay claimed (due again after the lease)
