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
    assert order.phone.dialable().lstrip("+") not in repr(store.queued)
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
