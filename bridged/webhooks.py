"""Call state changes pushed to the shop's webhook, signed, retried, never in a call's way.

A call worker only hands the change to :meth:`WebhookSink.publish` (sync, no I/O). A writer task
persists it in the outbox table; a dispatcher task claims due rows (each row to one of the daemons sharing
the table), delivers them with HMAC-SHA256 signatures and retries failures with exponential backoff,
across restarts.

Signature: header ``X-Bridged-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
A receiver recomputes it over the raw body and rejects stale timestamps.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp

from .calls.model import Call, CallState
from .config import WebhookConfig
from .outcomes import Outcome
from .store.base import DatabaseUnavailable
from .store.outbox import Claimed, WebhookOutbox

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Bridged-Signature"
EVENT_HEADER = "X-Bridged-Event"
_BATCH = 20
_PARALLEL = 4
_MAX_BACKOFF = 300.0
# Beyond the longest a batch can take to deliver: time for writing the outcomes (the database slow).
_CLAIM_MARGIN = 60.0


def claim_lease(timeout: float) -> float:
    """Seconds a claimed batch is this dispatcher's alone: its last row may wait for the rows before it,
    ``_PARALLEL`` at a time, each up to ``timeout``. Past it, a row not yet delivered or failed is due
    again for any dispatcher (this one died, or its database went away)."""
    return math.ceil(_BATCH / _PARALLEL) * timeout + _CLAIM_MARGIN


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """Receiver-side check (used by the tests, and a reference for shop developers)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def _event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "type": kind, "created_at": datetime.now(UTC).isoformat(), "data": data}


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: exponential, with jitter."""
    return min(_MAX_BACKOFF, 2.0 ** min(attempts, 12)) * random.uniform(0.5, 1.0)


class WebhookSink:
    def __init__(self, config: WebhookConfig, outbox: WebhookOutbox, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.outbox = outbox
        self.session = session
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def enabled(self) -> bool:
        return self.config.url is not None

    def publish(self, call: Call, state: CallState) -> None:
        """State listener of the call engine: never blocks, never raises into the call.

        Every state change is a ``call.state_changed``; an inbound call that ended missed is also a
        ``call.missed`` (with its order, or the caller's reference: the shop calls the customer back)."""
        # A call turned away has no row of its own to tell of; a canary call is told by canary.called alone
        # (service), for the shop's security contact, not as a call of its own.
        if not self.enabled or not call.has_row or call.canary:
            return
        data = {
            "call_id": call.id,
            "order_id": call.order_id,
            "caller_ref": call.caller_ref,
            "manager_id": call.manager.id if call.manager is not None else None,
            "direction": call.direction,
            "state": state.value,
            "outcome": call.outcome.value if call.outcome and state is CallState.ENDED else None,
        }
        self._queue.put_nowait((call.id, _event("call.state_changed", data)))
        if state is CallState.ENDED and call.outcome is Outcome.MISSED:
            self._queue.put_nowait((call.id, _event("call.missed", data)))

    def publish_event(self, kind: str, about: str, data: dict[str, Any]) -> None:
        """An event that is not a call's state change (``canary.called``, ``abuse.suspected``): queued as
        those are, ``about`` naming what it is about in the outbox. Never blocks, never raises."""
        if self.enabled:
            self._queue.put_nowait((about, _event(kind, data)))

    def start(self) -> None:
        if self.enabled:
            self._tasks = [
                asyncio.create_task(self._writer(), name="webhook-writer"),
                asyncio.create_task(self._dispatcher(), name="webhook-dispatcher"),
            ]

    async def stop(self) -> None:
        # Let the writer persist what is queued (bounded), then stop; undelivered rows stay in the outbox.
        if self._tasks:
            try:
                async with asyncio.timeout(2):
                    await self._queue.join()
            except TimeoutError:
                log.warning("%d webhook events not persisted at shutdown", self._queue.qsize())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def _writer(self) -> None:
        while True:
            call_id, payload = await self._queue.get()
            try:
                await self.outbox.queue(call_id, payload)
                self._wake.set()
            except Exception:
                log.exception("webhook event for call %s could not be queued", call_id)
            finally:
                self._queue.task_done()

    async def _dispatcher(self) -> None:
        limit = asyncio.Semaphore(_PARALLEL)
        while True:
            try:
                due = await self.outbox.claim(_BATCH, lease=claim_lease(self.config.timeout))
            except Exception:
                log.exception("webhook outbox unreadable")
                due = []
            if due:
                await asyncio.gather(*(self._deliver(limit, claimed) for claimed in due))
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def _deliver(self, limit: asyncio.Semaphore, claimed: Claimed) -> None:
        assert self.config.url is not None and self.config.secret is not None
        body = claimed.payload.encode("utf-8")
        event_type = json.loads(claimed.payload).get("type", "")
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.config.secret, int(time.time()), body),
            EVENT_HEADER: event_type,
        }
        async with limit:
            try:
                async with self.session.post(
                    self.config.url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                    allow_redirects=False,
                ) as response:
                    ok = 200 <= response.status < 300
                    error = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                ok, error = False, type(exc).__name__
        # Raised out of the gather, a failed write ended the dispatcher: no webhook went out until a restart.
        # The row stays claimed and is delivered again once the claim runs out.
        try:
            await self._settle(claimed, ok, error)
        except DatabaseUnavailable as exc:
            log.warning("webhook delivery %d: its outcome not written (%s); due again later", claimed.id, exc)
        except Exception:
            log.exception("webhook delivery %d: its outcome not written; due again later", claimed.id)

    async def _settle(self, claimed: Claimed, ok: bool, error: str) -> None:
        """The attempt's outcome in the outbox: delivered, or failed and due again later (or given up)."""
        if ok:
            await self.outbox.delivered(claimed.id)
            return
        attempts = claimed.attempts + 1
        retry_in = None if attempts >= self.config.max_attempts else backoff(attempts)
        await self.outbox.failed(claimed, error=error, retry_in=retry_in)
        log.warning(
            "webhook delivery %d failed (%s), attempt %d%s",
            claimed.id,
            error,
            attempts,
            "; giving up" if retry_in is None else f"; next in {retry_in:.1f}s",
        )
