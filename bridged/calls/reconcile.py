"""The engine set straight with Asterisk: after each (re)connect of the event stream, and by a sweep.

Asterisk keeps channels in Stasis while the websocket is down but drops the events of the gap, so the
truth is read back from ``GET /channels`` and the daemon's own rows: calls still up are adopted (and
checked leg by leg, as a RECONCILE event through the reaction table), calls that ended meanwhile are
finished, and channels in the application that belong to no call are hung up.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from .. import dialplan, metrics
from ..ari import AriError, background_requests
from ..config import Config, Manager
from ..outcomes import Outcome
from ..recording_state import RecordingState
from ..store.calls import CallRow
from .events import in_stasis
from .model import CUSTOMER_LEG_SUFFIX, INBOUND, Call, CallState, Ringing, ring_leg_id
from .recording import recording_state_of

if TYPE_CHECKING:
    from .engine import CallEngine

log = logging.getLogger(__name__)

# How often channels in our application that belong to no call are looked for.
STRAY_SWEEP_SECONDS = 60.0
# The states an adopted call goes on from with both its legs (and ringing_manager, with the legs that
# ring: _resumable); any other is finished.
_RESUMABLE = frozenset({CallState.RINGING_CUSTOMER, CallState.ANNOUNCING, CallState.BRIDGED})


class Reconciler:
    def __init__(self, engine: CallEngine) -> None:
        self.engine = engine

    async def reconcile(self, app: str | None = None) -> None:
        """After each websocket (re)connect of the current node: adopt calls still up, finish those that
        ended meanwhile, for this daemon's application or ``app`` (another daemon's, adopted: its calls
        only, bridged.leases)."""
        engine = self.engine
        own = engine.config.current.ari.app
        app_name = app or own
        node = engine.nodes.current()
        try:
            await engine.ari.allow_events(app_name, engine.event_types)
        except AriError as exc:  # every event still arrives; only slower
            log.warning("ARI event filter not set: %s", exc)
        channels = {c["id"]: c for c in await engine.ari.list_channels()}
        states = {cid: c.get("state", "") for cid, c in channels.items()}
        # A leg in another application's Stasis is not this call's any more: the manager's channel of a
        # call whose daemon died before Stasis() went on to the next daemon (dialplan/bridged.conf).
        alive = {cid: c for cid, c in channels.items() if not _in_other_app(c, app_name)}
        stasis = {cid for cid, c in alive.items() if in_stasis(c)}
        for call in engine.calls_on(node, app_name):
            call.queue.put_nowait(
                {"type": "Reconcile", "alive": set(alive), "states": states, "stasis": stasis}
            )
        known = set(engine.calls)
        for row in await engine.rows.store.calls.open_calls(app_name):
            if row.id not in known and engine.nodes.holds(node, row.node):
                await self._adopt(row, alive, node=node, app="" if app_name == own else app_name)
        owned = engine.owned_channels()
        await self._hang_up_strays(await self._ringing_strays(alive, owned, app_name))
        try:
            application = await engine.ari.get_application(app_name)
        except AriError:
            return
        await self._hang_up_strays([c for c in application.get("channel_ids", []) if c not in owned])

    async def _ringing_strays(self, alive: dict[str, dict[str, Any]], owned: set[str], app: str) -> list[str]:
        """Customer legs rung for ``app`` that belong to no call (its daemon died before the call's row was
        written): in no application until answered, so not among the application's channels. Their
        ids say they are customer legs (bridged.calls.model.customer_leg_id), the variable [bridged-customer]
        reads which application they are for (one request each: legs of other daemons' calls are few)."""
        found = []
        for channel_id, channel in alive.items():
            if channel_id in owned or in_stasis(channel) or not channel_id.endswith(CUSTOMER_LEG_SUFFIX):
                continue
            try:
                leg_app = await self.engine.ari.get_variable(channel_id, dialplan.LEG_APP)
            except AriError:
                continue
            if leg_app == app:
                found.append(channel_id)
        return found

    async def _adopt(self, row: CallRow, alive: dict[str, dict[str, Any]], *, node: str, app: str) -> None:
        """Take a call of this daemon's application (or of ``app``, adopted) that is open in the database on,
        if it can go on: ``alive`` are the channels it may still have (their snapshots)."""
        engine = self.engine
        config = engine.config.current
        manager = None if row.manager_id is None else config.manager_by_id(row.manager_id)
        live_legs = [c for c in (row.manager_channel_id, row.customer_channel_id) if c and c in alive]
        state = CallState(row.state)
        if (
            row.direction != INBOUND  # an inbound caller's channel is there before any manager rings
            and state in (CallState.REQUESTED, CallState.RINGING_MANAGER)
            and row.customer_channel_id in alive
        ):
            # The customer leg exists only once it has been originated; the row's state update,
            # sent along with the originate, had not landed when the daemon stopped.
            state = CallState.RINGING_CUSTOMER
        # An inbound call's phones still ringing (not in the row, but their ids name the call), and the steps
        # of its ring plan still to try.
        ring = None
        if state is CallState.RINGING_MANAGER and row.direction == INBOUND:
            ring = _ringing_of(row, _ring_legs(row, alive, config), config)
        ringing = ring.legs if ring is not None else {}
        if not _resumable(row, state, manager, live_legs, ring):
            await self._end_unseen(row, [*live_legs, *ringing])
            return
        states = {cid: c.get("state", "") for cid, c in alive.items()}
        name = ""
        if ring is not None and ring.steps and row.order_id is not None and engine.name_again is not None:
            # Phones yet to ring show the caller as the first ones did, their name included: the manager's
            # legs of other calls carry their label in the channel (BRIDGED_LABEL), these are still to make.
            name = await engine.name_again(row.id, row.order_id)
        call = Call(
            id=row.id,
            manager=manager,
            order_id=row.order_id,
            direction=row.direction,
            order=None,
            label=engine.labeller.of_caller(row.order_id, name, ref=row.caller_ref),
            caller_ref=row.caller_ref,
            state=state,
            manager_channel_id=row.manager_channel_id,
            customer_channel_id=row.customer_channel_id,
            bridge_id=row.bridge_id,
            node=node,
            app=app,
            recording_name=row.recording_name,
            answered_at=row.answered_at,
            manager_up=states.get(row.manager_channel_id or "") == "Up",
            recording_started_at=row.answered_at,
            recording_state=recording_state_of(row.recording_state),
            ring=ring,
        )
        # Still to be judged: its events come to this daemon now (the Reconcile below first checks that
        # it did not end while none was listening).
        # A customer leg already in the application: its answer is a Dial event (made there by an earlier
        # release), or it was answered (the Reconcile below bridges it). Not in one: it rings from the
        # dialplan, its StasisStart is its answer.
        call.customer_in_app = row.customer_channel_id in alive and in_stasis(alive[row.customer_channel_id])
        engine.recordings.watch(call)
        sources = [f"channel:{c}" for c in (*live_legs, *ringing)]
        if row.bridge_id:
            sources.append(f"bridge:{row.bridge_id}")
        try:
            await engine.ari.subscribe(app or engine.config.current.ari.app, sources)
        except AriError as exc:
            log.warning("call %s: resubscribe failed: %s", row.id, exc)
        engine.register(call)
        if app:
            metrics.CALLS_ADOPTED.inc()
            log.info("call %s adopted from application %s in state %s", call.id, app, call.state)
            await engine.rows.adopted(call, app, by=f"bridged:{engine.config.current.ari.app}")
        else:
            log.info("call %s adopted in state %s", call.id, call.state)
        # A leg may have gone between the listing and the subscription.
        call.queue.put_nowait({"type": "Reconcile", "alive": None, "states": None})

    async def _end_unseen(self, row: CallRow, live_legs: list[str]) -> None:
        """A call that cannot go on (or ended while bridged was away): its legs hung up, its recording
        judged from what is left, its row ended."""
        engine = self.engine
        for channel_id in live_legs:
            await engine.legs.hang_up(channel_id)
        unjudged = row.recording_name is not None and row.recording_state is None
        recording_live = await engine.recordings.live(row.recording_name or "") if unjudged else None
        bridge_found = False
        if row.bridge_id:
            try:
                bridge_found = await engine.ari.destroy_bridge(row.bridge_id)
            except AriError:
                pass
        if unjudged:
            await engine.recordings.judge_unseen(row, recording_live, bridge_found)
        if row.answered_at:
            outcome = Outcome.COMPLETED
        else:
            outcome = Outcome.MISSED if row.direction == INBOUND else Outcome.FAILED
        metrics.CALLS_ENDED.inc(outcome.value)
        await engine.rows.ended_unseen(row, outcome)
        log.info("call %s finalized after reconnect: %s", row.id, outcome)

    # -- strays -----------------------------------------------------------------------------------

    async def sweep_strays_forever(self, interval: float = STRAY_SWEEP_SECONDS) -> None:
        """Every ``interval`` seconds, :meth:`sweep_strays` (runs for the daemon's lifetime)."""
        suspects: set[str] = set()
        while True:
            await asyncio.sleep(interval)
            if not self.engine.is_connected():
                suspects = set()  # the reconcile after the reconnect sweeps
                continue
            try:
                with background_requests():
                    suspects = await self.sweep_strays(suspects)
            except AriError as exc:
                log.debug("stray sweep skipped: %s", exc)

    async def sweep_strays(self, suspects: set[str]) -> set[str]:
        """Hang up the channels in our application that belong to no call; returns the next suspects.

        Such a channel is one whose hangup was lost for good, or a customer leg Asterisk created after
        its originate had timed out on our side. A channel is hung up only when two sweeps in a row
        find it without a call, so a channel whose StasisStart is on its way is never touched.
        """
        app = await self.engine.ari.get_application(self.engine.config.current.ari.app)
        owned = self.engine.owned_channels()
        unowned = {c for c in app.get("channel_ids", []) if c not in owned}
        await self._hang_up_strays(sorted(unowned & suspects))
        return unowned - suspects

    async def end_lost(self, node: str, apps: list[str]) -> int:
        """Nothing has been heard of ``node`` for its ``lost_after``: the open rows of its calls (in these
        applications) are ended with what is known (answered: completed, else failed), their recordings
        unknown. Their channels, if the node still has them, are strays once it is back. Returns how many."""
        ended = 0
        for app in apps:
            for row in await self.engine.rows.store.calls.open_calls(app):
                if not self.engine.nodes.holds(node, row.node):
                    continue
                outcome = Outcome.COMPLETED if row.answered_at else Outcome.FAILED
                metrics.CALLS_ENDED.inc(outcome.value)
                if row.recording_name is not None and row.recording_state is None:
                    await self.engine.rows.recording_of(row.id, RecordingState.UNKNOWN)
                await self.engine.rows.ended_unseen(row, outcome, why=f"Asterisk node {node} lost")
                log.warning("call %s ended: %s (node %s lost)", row.id, outcome, node)
                ended += 1
        return ended

    async def _hang_up_strays(self, channel_ids: list[str]) -> None:
        for channel_id in channel_ids:
            log.warning("channel %s in our app belongs to no call; hanging it up", channel_id)
            metrics.STRAY_CHANNELS.inc()
            await self.engine.legs.hang_up(channel_id)


def _resumable(
    row: CallRow, state: CallState, manager: Manager | None, live_legs: list[str], ring: Ringing | None
) -> bool:
    """Whether an adopted call goes on from ``state`` with the legs it still has."""
    if state is CallState.RINGING_MANAGER and row.direction == INBOUND:
        # The caller still waits, and phones still ring for them, or the plan has managers left to ring
        # (the adopter puts through whoever answers, and goes on with the plan as its daemon would have).
        return row.customer_channel_id in live_legs and ring is not None and bool(ring.legs or ring.steps)
    if state is CallState.RINGING_MANAGER:
        # An HTTP call whose manager's phone still rings, or was answered while no daemon listened: the
        # leg waits in the application (bridged.calls.legs.MadeLegs), the customer is rung on the answer.
        return manager is not None and live_legs == [row.manager_channel_id]
    return manager is not None and state in _RESUMABLE and len(live_legs) == 2


def _ring_legs(row: CallRow, alive: dict[str, dict[str, Any]], config: Config) -> dict[str, Manager]:
    """An inbound call's legs ringing managers' phones (bridged.calls.model.ring_leg_id), each with the
    manager it rings, known by the endpoint in its channel's name (``PJSIP/<endpoint>-<sequence>``)."""
    legs: dict[str, Manager] = {}
    if row.direction != INBOUND:
        return legs
    for channel_id, channel in alive.items():
        if not re.fullmatch(rf"{re.escape(row.id)}-m\d+", channel_id):
            continue
        name = str(channel.get("name") or "")
        endpoint = name.partition("/")[2].rpartition("-")[0]
        manager = config.manager_by_endpoint(endpoint)
        if manager is not None:
            legs[channel_id] = manager
    return legs


def _ringing_of(row: CallRow, legs: dict[str, Manager], config: Config) -> Ringing:
    """An adopted inbound call's ringing: ``legs`` still ring, and the steps of its plan (the row's, as
    manager ids) after the one under way are still to try. Its legs are numbered in the plan's order
    (bridged.calls.model.ring_leg_id), so the highest one ringing tells the step under way even when the
    row's count of steps rung had not been written yet; with none ringing, that count tells it."""
    plan = _plan(row.ring_plan)
    highest = max((int(leg.rpartition("-m")[2]) for leg in legs), default=0)
    done = min(max(row.ring_rung or 0, 0), len(plan))
    numbered = 0
    for index, step in enumerate(plan):
        numbered += len(step)
        if 0 < highest <= numbered:
            done = max(done, index + 1)
            break
    else:
        if highest > numbered:  # a leg the plan does not account for: nothing of it is left to ring
            done = len(plan)
    untried = (tuple(filter(None, map(config.manager_by_id, step))) for step in plan[done:])
    numbered = max(highest, sum(len(step) for step in plan[:done]))
    return Ringing(
        collections.deque(step for step in untried if step),
        caller_key=row.caller_key,
        legs=legs,
        # Every leg the call may have had: the next one rung is numbered after them.
        rung=[ring_leg_id(row.id, n) for n in range(1, numbered + 1)],
        tried=done,
    )


def _plan(text: str | None) -> list[list[str]]:
    """A ring plan as the row keeps it (JSON: a list of steps, each a list of manager ids); [] for none."""
    try:
        plan = json.loads(text) if text else []
    except ValueError:
        return []
    if isinstance(plan, list) and all(
        isinstance(step, list) and all(isinstance(m, str) for m in step) for step in plan
    ):
        return plan
    return []


def _in_other_app(channel: dict[str, Any], app: str) -> bool:
    """Whether a channel (its snapshot) is in the Stasis of an application other than ``app``."""
    dialplan = channel.get("dialplan")
    if not isinstance(dialplan, dict) or dialplan.get("app_name") != "Stasis":
        return False
    entered = str(dialplan.get("app_data") or "").split(",", 1)[0]
    return entered not in ("", app)
