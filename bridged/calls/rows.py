"""Every write to a call's row once the call is under way, and their retry while bridged's database is away.

The service writes the row when it accepts a call (and the row of a refused attempt); from then on
what happens to the call reaches its row through :class:`Rows` only. A write the database does not
take (bridged's PostgreSQL away for a moment) is kept and retried in the background, in order with the
call's later writes, while the call goes on: a bridged call is not cut off because its bookkeeping
failed. Every write is idempotent, so a retry after an answer lost on the way is harmless, and none
revives a row that has ended (the store's guard).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ..outcomes import CallEnd, Outcome
from ..recording_state import RecordingState
from ..store import Store
from ..store.calls import CallRow
from ..tasks import Tasks
from .model import Call, RowWrite

log = logging.getLogger(__name__)

# Writing a call's row when bridged's database did not take it: these waits, then once a minute.
ROW_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
# How long a stopping daemon gives those writes a last chance.
LAST_ROW_WRITES_SECONDS = 2.0


class Rows:
    def __init__(self, store: Store, retries: Tasks, sticky_days: Callable[[], int]) -> None:
        self.store = store
        # inbound.sticky_days of the config in force (reloaded on SIGHUP).
        self.sticky_days = sticky_days
        self._retries = retries
        # Calls whose row has writes the database did not take yet (kept after the call is forgotten).
        self._unwritten: dict[str, Call] = {}

    # -- what a live call writes ------------------------------------------------------------------

    async def state(self, call: Call) -> None:
        state = call.state.value
        await self._write(call, f"state {state}", lambda: self.store.calls.set_state(call.id, state))

    async def node(self, call: Call) -> None:
        node = call.node
        await self._write(call, f"node {node}", lambda: self.store.calls.set_node(call.id, node))

    async def answered(self, call: Call) -> None:
        """An inbound call was answered: the row names who took it, and on which leg."""
        assert call.manager is not None and call.manager_channel_id is not None
        manager_id, channel_id = call.manager.id, call.manager_channel_id
        await self._write(
            call,
            "answered",
            lambda: self.store.calls.set_manager(
                call.id, manager_id=manager_id, manager_channel_id=channel_id
            ),
        )

    async def ring_rung(self, call: Call) -> None:
        """An inbound call rang the next step of its plan: the row counts it, so that a daemon adopting
        the call goes on with the step after (bridged.calls.reconcile)."""
        assert call.ring is not None
        tried = call.ring.tried
        await self._write(call, f"ring step {tried}", lambda: self.store.calls.set_ring_rung(call.id, tried))

    async def talked(self, call: Call) -> None:
        """An inbound caller talks to a manager: the next call of theirs within inbound.sticky_days rings
        that manager first (kept under the caller's keyed hash, never their number)."""
        days = self.sticky_days()
        key = call.ring.caller_key if call.ring is not None else None
        if key is None or call.manager is None or days <= 0:
            return
        manager_id, order_id, at = call.manager.id, call.order_id, datetime.now(UTC)
        await self._write(
            call,
            "sticky manager",
            lambda: self.store.sticky.remember(
                key, manager_id=manager_id, order_id=order_id, at=at, forget_before=at - timedelta(days=days)
            ),
        )

    async def bridged(self, call: Call) -> None:
        assert call.answered_at is not None and call.bridge_id is not None
        answered_at, bridge_id, recording_name = call.answered_at, call.bridge_id, call.recording_name
        await self._write(
            call,
            "bridged",
            lambda: self.store.calls.mark_bridged(
                call.id, answered_at=answered_at, bridge_id=bridge_id, recording_name=recording_name
            ),
        )

    async def ended(self, call: Call, outcome: CallEnd) -> None:
        """The row's end and its ``call.end`` audit row."""
        # The host's clock, as for answered_at: a retried write keeps when the call really ended.
        ended_at = datetime.now(UTC)
        hangup_cause, ended_by = call.hangup_cause, call.ended_by
        await self._write(
            call,
            "end",
            lambda: self.store.calls.finish_audited(
                call.id,
                outcome=outcome.value,
                hangup_cause=hangup_cause,
                ended_by=ended_by,
                # Who the call was with; a missed inbound call from a caller nobody knew: the caller.
                actor=call.manager.id if call.manager is not None else "customer",
                order_id=call.order_id,
                ended_at=ended_at,
            ),
        )

    async def recording(self, call: Call, state: RecordingState) -> None:
        value = state.value
        await self._write(
            call, f"recording {value}", lambda: self.store.calls.set_recording_state(call.id, value)
        )

    async def transfer_refused(self, call: Call, side: str) -> None:
        actor = call.manager.id if side == "manager" and call.manager is not None else "customer"
        await self._audit(
            call, "transfer audit", actor, "call.transfer", "refused", reason=f"{side} sent REFER"
        )

    # -- rows without a live call -----------------------------------------------------------------

    async def abandoned_before_stasis(self, call_id: str, written: Awaitable[bool] | None = None) -> None:
        """The manager hung up between the FastAGI answer and Stasis: the row is closed (once written;
        a row the database did not take was replaced by the refusal's)."""
        if written is not None and not await written:
            return
        await self.store.calls.finish(
            call_id, outcome=Outcome.MANAGER_ABANDONED.value, hangup_cause=None, ended_by="manager"
        )

    async def ended_unseen(
        self, row: CallRow, outcome: Outcome, *, why: str = "ended while bridged was disconnected"
    ) -> None:
        """A call that ended while bridged was away (found at a reconnect), or whose Asterisk node was
        lost: the row's end, audited with ``why``."""
        await self.store.calls.finish(row.id, outcome=outcome.value, hangup_cause=None, ended_by="unknown")
        await self.store.audit.add(
            actor="bridged",
            action="call.end",
            outcome=outcome.value,
            call_id=row.id,
            order_id=row.order_id,
            reason=why,
        )

    async def adopted(self, call: Call, app: str, *, by: str) -> None:
        """Daemon ``by`` took over the call of another daemon (``app``, whose lease it holds): audited, so
        that the trail names who handled its end."""
        await self._audit(
            call,
            "adoption audit",
            by,
            "call.adopt",
            "adopted",
            details={"from_app": app, "state": call.state.value},
        )

    async def recording_of(self, call_id: str, state: RecordingState) -> None:
        await self.store.calls.set_recording_state(call_id, state.value)

    # -- the retry machinery ----------------------------------------------------------------------

    async def _audit(
        self,
        call: Call,
        what: str,
        actor: str,
        action: str,
        outcome: str,
        *,
        reason: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        """An audit row about the call, in line with its row's writes (retried after them)."""
        await self._write(
            call,
            what,
            lambda: self.store.audit.add(
                actor=actor,
                action=action,
                outcome=outcome,
                call_id=call.id,
                order_id=call.order_id,
                reason=reason,
                details=details,
            ),
        )

    async def _write(self, call: Call, what: str, write: RowWrite) -> None:
        """Write to the call's row without ever letting the database decide the call's fate."""
        if not call.has_row:  # an inbound call turned away: the service wrote its attempt's row
            return
        if call.unwritten:  # earlier writes are still waiting: this one goes after them
            call.unwritten.append((what, write))
            return
        try:
            await write()
        except Exception as exc:
            log.warning("call %s: %s not written (%s); retrying", call.id, what, type(exc).__name__)
            call.unwritten.append((what, write))
            self._unwritten[call.id] = call
            self._retries.spawn(self._retry(call), name=f"row-{call.id}")

    async def _flush(self, call: Call) -> None:
        """The call's waiting writes, oldest first; raises at the first the database refuses."""
        while call.unwritten:
            _, write = call.unwritten[0]
            await write()
            call.unwritten.popleft()
        self._unwritten.pop(call.id, None)

    async def _retry(self, call: Call) -> None:
        delays = itertools.chain(ROW_RETRY_DELAYS, itertools.repeat(60.0))
        for attempt, delay in enumerate(delays, start=1):
            await asyncio.sleep(delay)
            try:
                await self._flush(call)
            except Exception as exc:
                if attempt == len(ROW_RETRY_DELAYS):
                    log.error(
                        "call %s: %s still not written (%s); retrying once a minute",
                        call.id,
                        call.unwritten[0][0],
                        type(exc).__name__,
                    )
                continue
            log.info("call %s: row written on retry %d", call.id, attempt)
            return

    async def last_writes(self) -> None:
        """On the way out, one last try at the rows the database has not taken yet; what is still
        refused is left to the next start, whose reconcile ends those rows from what Asterisk has."""
        if not self._unwritten:
            return
        try:
            async with asyncio.timeout(LAST_ROW_WRITES_SECONDS):
                for call in list(self._unwritten.values()):
                    await self._flush(call)
            log.info("rows brought up to date before stopping")
        except Exception as exc:
            left = sum(len(call.unwritten) for call in self._unwritten.values())
            log.error("stopping with %d writes to call rows not done (%s)", left, type(exc).__name__)
