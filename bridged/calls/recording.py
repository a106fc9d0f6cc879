"""A call's recording, from its start at the bridge to the judgement of what it holds.

Asterisk 22 reports a full disk or a folder it cannot write to as RecordingFinished (state ``done``) at
the first failed write, while the bridge goes on (rig/NOTES.md, "Recording failures"): a recording that
finishes before bridged stopped it was cut short. The judgement itself is bridged.recording_state; this
module gathers what it is judged on (the end event, the stored file, the live recording) and keeps the
call's row told.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from .. import metrics
from ..ari import AriClient, AriError, background_requests
from ..config import ConfigHolder
from ..recording_state import END_EVENTS, RecordingState, StoredFile, judge_end_event, judge_file
from ..store.calls import CallRow
from .events import kind_of
from .model import Call
from .rows import Rows

log = logging.getLogger(__name__)

# After a call, how long its recording's last event is waited for (Asterisk sends it as the bridge goes,
# within milliseconds) before the stored file is judged instead.
RECORDING_SETTLE_SECONDS = 5.0


def recording_state_of(value: str | None) -> RecordingState | None:
    try:
        return None if value is None else RecordingState(value)
    except ValueError:
        return None


class Recordings:
    def __init__(self, config: ConfigHolder, ari: AriClient, rows: Rows) -> None:
        self.config = config
        self.ari = ari
        self.rows = rows
        # Calls by the name of their recording, until its end has been judged (which may be after the call).
        self.by_name: dict[str, Call] = {}
        # Ended calls whose worker still waits for their recording's last event.
        self.settling: dict[str, Call] = {}

    def call_of(self, event: dict[str, Any]) -> Call | None:
        """The call a recording event is about, while its end is still to be judged."""
        return self.by_name.get(str((event.get("recording") or {}).get("name")))

    def watch(self, call: Call) -> None:
        """An adopted call's recording, not judged yet: its events come to this daemon now."""
        if call.recording_name is not None and call.recording_state is None:
            self.by_name[call.recording_name] = call

    async def start(self, call: Call) -> str | None:
        """Record the call's bridge; returns why Asterisk refused, or None (recording, or it is off)."""
        recording = self.config.current.recording
        if not recording.enabled:
            return None
        assert call.bridge_id is not None
        name = f"bridged-{call.id}"
        # Its events may arrive before the answer to the request.
        self.by_name[name] = call
        try:
            await self.ari.record_bridge(
                call.bridge_id, name=name, format=recording.format, if_exists="overwrite"
            )
        except AriError as exc:
            self.by_name.pop(name, None)
            return str(exc)
        call.recording_name = name
        call.recording_started_at = datetime.now(UTC)
        return None

    def stopped(self, call: Call) -> None:
        """bridged is about to destroy the bridge, which ends the recording: a RecordingFinished from now
        on is no early end."""
        if call.recording_name is not None and call.recording_stopped_at is None:
            call.recording_stopped_at = datetime.now(UTC)

    def _recorded_seconds(self, call: Call) -> float | None:
        """How long the recording should be: from its start to bridged stopping it (or now)."""
        if call.recording_started_at is None:
            return None
        stopped = call.recording_stopped_at or datetime.now(UTC)
        return max(0.0, (stopped - call.recording_started_at).total_seconds())

    # -- its end ----------------------------------------------------------------------------------

    async def on_end(self, call: Call, event: dict[str, Any]) -> None:
        """Asterisk's last event for the call's recording: RecordingFinished or RecordingFailed."""
        recording = event.get("recording") or {}
        if call.recording_state is not None or recording.get("name") != call.recording_name:
            return
        kind = str(event.get("type"))
        duration = recording.get("duration")
        if not isinstance(duration, int) or isinstance(duration, bool):
            duration = None
        early = call.recording_stopped_at is None
        expected = self._recorded_seconds(call)
        state = judge_end_event(kind, duration, ended_early=early, expected_seconds=expected)
        if kind == "RecordingFailed":
            why = f"Asterisk reported it failed ({str(recording.get('cause') or 'no cause')[:80]})"
        elif duration is None:
            state, why = await self.judge_by_file(
                call.recording_name, RecordingState.TRUNCATED if early else RecordingState.UNKNOWN, expected
            )
            why = f"no duration in its end event; {why}"
        elif state is None:
            # 0 s of a call bridged for under a second or two: the whole call if its file holds audio.
            state, why = await self.judge_by_file(call.recording_name, RecordingState.COMPLETE, expected)
            why = f"0 s recorded of {expected or 0:.1f} s bridged; {why}"
        elif early:
            why = f"Asterisk stopped it after {duration} s while the call went on (see Asterisk's log)"
        else:
            why = f"{duration} s recorded of {expected or 0:.0f} s bridged"
        assert state is not None
        await self.set_state(call, state, why)

    async def settle(self, call: Call) -> None:
        """After the call, wait for its recording's last event, then judge it (by the file if it never
        comes). Stopped meanwhile, the state is left ``unknown`` rather than taken for complete."""
        self.settling[call.id] = call
        deadline = asyncio.get_running_loop().time() + RECORDING_SETTLE_SECONDS
        try:
            while call.recording_state is None:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await call.queue.get()
                except TimeoutError:
                    state, why = await self.judge_by_file(
                        call.recording_name, RecordingState.UNKNOWN, self._recorded_seconds(call)
                    )
                    await self.set_state(call, state, f"Asterisk sent no end event; {why}")
                    break
                if kind_of(event) in END_EVENTS:
                    await self.on_end(call, event)
        except asyncio.CancelledError:
            if call.recording_state is None:
                await self.set_state(
                    call, RecordingState.UNKNOWN, "bridged stopped before Asterisk reported its end"
                )
            raise
        except Exception:
            log.exception("call %s: judging the recording failed", call.id)
        finally:
            self.settling.pop(call.id, None)
            self.by_name.pop(call.recording_name or "", None)

    # -- when its end was not heard ---------------------------------------------------------------

    async def judge_by_file(
        self, name: str | None, otherwise: RecordingState, expected: float | None
    ) -> tuple[RecordingState, str]:
        """A recording whose end event was missed, judged by what Asterisk stored (see judge_file)."""
        name = name or ""
        try:
            with background_requests():
                info = await self.ari.get_stored_recording(name)
                size = None if info is None else await self.ari.stored_recording_size(name)
        except AriError as exc:
            return RecordingState.UNKNOWN, f"its file could not be checked ({exc})"
        stored = StoredFile(size, str((info or {}).get("format") or ""))
        found = "no file" if size is None else f"a file of {size} bytes"
        return judge_file(stored, otherwise, expected), f"Asterisk has {found}"

    async def live(self, name: str) -> bool | None:
        """Whether Asterisk is still recording under ``name``; None when it did not answer."""
        try:
            with background_requests():
                live = await self.ari.get_live_recording(name)
        except AriError:
            return None
        return live is not None and live.get("state") in ("queued", "recording", "paused")

    async def check_live(self, call: Call) -> None:
        """After a reconnect: a recording that ended while the events were not heard ended early (only a
        failure ends a bridge recording before bridged destroys the bridge)."""
        if await self.live(call.recording_name or "") is False:
            state, why = await self.judge_by_file(call.recording_name, RecordingState.TRUNCATED, None)
            await self.set_state(call, state, f"it ended while bridged was not listening; {why}")

    async def judge_unseen(self, row: CallRow, live: bool | None, bridge_found: bool) -> None:
        """The recording of a call that ended while bridged was away (its events are lost).

        Still recording when found: it ran through the whole conversation (Asterisk ends a bridge
        recording at its first failed write), so complete if its file holds audio. Ended while its
        bridge still stood: cut short. Bridge gone too (Asterisk restarted): unknown. Either way failed
        when the file holds no audio. Nothing is taken for complete without a sign of it."""
        if live and bridge_found:
            otherwise = RecordingState.COMPLETE
        elif live is False and bridge_found:
            otherwise = RecordingState.TRUNCATED
        else:
            otherwise = RecordingState.UNKNOWN
        state, why = await self.judge_by_file(row.recording_name, otherwise, None)
        live_text = {True: "still recording", False: "no longer recording", None: "not known to be recording"}
        _report(row.id, row.recording_name, state, f"{live_text[live]} when found; {why}")
        await self.rows.recording_of(row.id, state)

    async def set_state(self, call: Call, state: RecordingState, why: str) -> None:
        call.recording_state = state
        self.by_name.pop(call.recording_name or "", None)
        _report(call.id, call.recording_name, state, why)
        await self.rows.recording(call, state)


def _report(call_id: str, name: str | None, state: RecordingState, why: str) -> None:
    if state is RecordingState.COMPLETE:
        log.info("call %s: recording %s complete (%s)", call_id, name, why)
    elif state is RecordingState.UNKNOWN:
        metrics.RECORDINGS_UNVERIFIED.inc()
        log.warning("call %s: recording %s could not be checked: %s", call_id, name, why)
    else:
        metrics.RECORDINGS_FAILED.inc(state.value)
        log.error("call %s: recording %s %s: %s", call_id, name or "-", state.value, why)
