"""Webhook signatures, backoff and the sink's never-blocking publish."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from bridged.calls.model import Call, CallState
from bridged.config import WebhookConfig
from bridged.outcomes import Outcome
from bridged.webhooks import WebhookSink, backoff, sign, verify

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
        self.queued: list[tuple[str, dict]] = []
        self.release = asyncio.Event()

    async def queue(self, call_id: str, payload: dict) -> None:
        await self.release.wait()  # a stuck database must not hold the publisher up
        self.queued.append((call_id, payload))

    async def due(self, limit: int) -> list:
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
