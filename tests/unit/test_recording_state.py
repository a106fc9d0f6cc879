"""Recording failures: the judgement on its own, and the call engine marking rows from Asterisk's recording
events (shaped as Asterisk 22 sends them, measured on the rig) against the fake ARI.

A full disk or a folder Asterisk cannot write to ends a bridge recording with RecordingFinished (state
done, the whole seconds written), never RecordingFailed; the call goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridged import metrics
from bridged.ari import AriUnavailable
from bridged.calls import recording as recording_module
from bridged.calls.engine import EVENT_TYPES
from bridged.calls.model import CallState
from bridged.config import RecordingConfig
from bridged.recording_state import (
    SLACK_SECONDS,
    RecordingState,
    StoredFile,
    audio_seconds,
    judge_end_event,
    judge_file,
)
from tests.unit.fakes import (
    NUMBER_TAIL,
    hangup_request,
    make_config,
    recording_event,
    settle,
    wait_until,
)
from tests.unit.test_calls import Env, _bridged_row, _make_env, assert_no_number_leak

COMPLETE, TRUNCATED, FAILED, UNKNOWN = (
    RecordingState.COMPLETE,
    RecordingState.TRUNCATED,
    RecordingState.FAILED,
    RecordingState.UNKNOWN,
)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    metrics.reset()
    e = await _make_env(make_config())
    yield e
    await e.engine.shutdown()
    assert_no_number_leak(e.ari, e.store)


def finished(call_id: str, duration: int | None) -> dict[str, Any]:
    return recording_event("RecordingFinished", f"bridged-{call_id}", f"{call_id}-bridge", duration=duration)


def wav_bytes(seconds: float) -> int:
    return 44 + int(seconds * 16000)


# -- the judgement -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "duration", "early", "expected", "state"),
    [
        ("RecordingFinished", 8, False, 8.02, COMPLETE),  # the rig: 8.02 s bridged, duration 8
        ("RecordingFinished", 4, True, 4.08, TRUNCATED),  # the rig: 64 KiB tmpfs full after 4 s
        ("RecordingFinished", 0, True, 0.01, FAILED),  # the rig: read-only folder, at once
        ("RecordingFinished", 0, False, 2.04, FAILED),  # the rig: a full disk before the call
        ("RecordingFinished", 4, False, 8.1, TRUNCATED),  # its early end was not seen as such
        ("RecordingFinished", 7, False, 8.9, COMPLETE),  # rounding down and a late start
        ("RecordingFailed", None, True, 1.0, FAILED),
        ("RecordingFailed", 30, False, 30.0, FAILED),
        ("RecordingFinished", None, False, 8.0, None),  # no duration: the file tells
        ("RecordingFinished", 0, False, 0.06, None),  # hung up 60 ms after the bridge: the file tells
        ("RecordingFinished", 0, False, 1.99, None),
        ("RecordingFinished", 0, True, 0.06, FAILED),  # it stopped by itself: nothing was written
    ],
)
def test_end_event_judgement(
    kind: str, duration: int | None, early: bool, expected: float, state: RecordingState | None
) -> None:
    assert judge_end_event(kind, duration, ended_early=early, expected_seconds=expected) is state


@given(
    duration=st.integers(min_value=0, max_value=10**6),
    expected=st.floats(min_value=0, max_value=10**6, allow_nan=False),
    early=st.booleans(),
)
def test_end_event_judgement_properties(duration: int, expected: float, early: bool) -> None:
    state = judge_end_event("RecordingFinished", duration, ended_early=early, expected_seconds=expected)
    if state is COMPLETE:  # never complete without the whole call in it
        assert not early and duration > 0 and duration + SLACK_SECONDS >= expected
    if not early and duration > 0 and duration >= expected:  # as long as the call: complete
        assert state is COMPLETE
    if duration == 0:  # nothing recorded: failed, unless the file may hold all of a short call
        assert state is (None if not early and expected < SLACK_SECONDS else FAILED)
    failed = judge_end_event("RecordingFailed", duration, ended_early=early, expected_seconds=expected)
    assert failed is FAILED


def test_audio_seconds_of_the_formats_recorded() -> None:
    assert audio_seconds("wav", wav_bytes(8)) == 8.0
    assert audio_seconds("wav", 65536) == pytest.approx(4.0933, abs=1e-3)  # the rig's full 64 KiB tmpfs
    assert audio_seconds("wav", 44) == 0.0
    assert audio_seconds("wav", 10) == 0.0
    assert audio_seconds("ulaw", 8000) == 1.0
    assert audio_seconds("gsm", 1650 * 3) == 3.0
    assert audio_seconds("g722", 16000) is None


@pytest.mark.parametrize(
    ("stored", "otherwise", "expected", "state"),
    [
        (StoredFile(None), COMPLETE, None, FAILED),  # no file at all
        (StoredFile(0, "wav"), COMPLETE, None, FAILED),  # the rig: a full disk before the call
        (StoredFile(44, "wav"), TRUNCATED, None, FAILED),  # a header and no audio
        (StoredFile(0, "g722"), UNKNOWN, None, FAILED),
        (StoredFile(5000, "g722"), UNKNOWN, 60.0, UNKNOWN),  # audio of a length not known here
        (StoredFile(wav_bytes(4), "wav"), TRUNCATED, None, TRUNCATED),
        (StoredFile(wav_bytes(30), "wav"), COMPLETE, None, COMPLETE),
        (StoredFile(wav_bytes(60), "wav"), UNKNOWN, 61.5, COMPLETE),
        (StoredFile(wav_bytes(10), "wav"), UNKNOWN, 60.0, TRUNCATED),
    ],
)
def test_file_judgement(
    stored: StoredFile, otherwise: RecordingState, expected: float | None, state: RecordingState
) -> None:
    assert judge_file(stored, otherwise, expected) is state


# -- the engine: events while and after the call -----------------------------------------------------


def test_the_event_filter_lets_the_recording_events_through() -> None:
    assert {"RecordingStarted", "RecordingFinished", "RecordingFailed"} <= EVENT_TYPES


async def test_a_recording_that_runs_to_the_end_of_the_call_is_complete(env: Env) -> None:
    await env.bridged("call-a", "m-a")
    env.engine.on_event(recording_event("RecordingStarted", "bridged-call-a", "call-a-bridge"))
    env.engine.on_event(hangup_request("m-a"))
    row = await env.ended("call-a")
    assert row["recording_state"] is None  # not judged until Asterisk reports the end
    # Asterisk reports the end as the bridge goes (the rig: RecordingFinished right after the destroy).
    env.engine.on_event(finished("call-a", 5))
    await wait_until(lambda: env.row("call-a")["recording_state"] == "complete")
    assert row["outcome"] == "completed"
    assert metrics.RECORDINGS_FAILED.value("truncated") == metrics.RECORDINGS_FAILED.value("failed") == 0
    assert env.engine.recordings.by_name == {} and env.engine.recordings.settling == {}


@pytest.mark.parametrize(
    ("stored", "state"), [(wav_bytes(0.06), "complete"), (44, "failed"), (None, "failed")]
)
async def test_a_call_hung_up_at_the_bridge_is_judged_by_its_file(
    env: Env, caplog: pytest.LogCaptureFixture, stored: int | None, state: str
) -> None:
    """0 s recorded (whole seconds, rounded down) of a call hung up a moment after the bridge: complete if
    its file holds audio, failed (an ERROR line) if it holds none."""
    await env.bridged("call-a", "m-a")
    if stored is not None:
        env.ari.stored_recordings["bridged-call-a"] = ("wav", int(stored))
    with caplog.at_level("INFO", logger="bridged.calls"):
        env.engine.on_event(recording_event("RecordingStarted", "bridged-call-a", "call-a-bridge"))
        env.engine.on_event(hangup_request("m-a"))
        await env.ended("call-a")
        env.engine.on_event(finished("call-a", 0))
        await wait_until(lambda: env.row("call-a")["recording_state"] is not None)
    assert env.row("call-a")["recording_state"] == state
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert (errors == []) is (state == "complete"), errors
    assert metrics.RECORDINGS_FAILED.value("failed") == (state == "failed")


async def test_disk_full_mid_call_marks_the_recording_truncated_and_the_call_goes_on(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    customer = await env.bridged("call-a", "m-a")
    env.ari.calls.clear()
    with caplog.at_level("INFO", logger="bridged.calls"):
        # The rig, 64 KiB tmpfs: RecordingFinished (done, 4 s) at the first failed write, mid-call.
        env.engine.on_event(finished("call-a", 4))
        await wait_until(lambda: env.row("call-a")["recording_state"] == "truncated")
    # Nothing was done to the call: both legs still bridged, no hangup, no teardown.
    assert env.ari.calls == []
    assert env.engine.calls["call-a"].state is CallState.BRIDGED
    assert env.row("call-a")["state"] == "bridged"
    assert metrics.RECORDINGS_FAILED.value("truncated") == 1
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "call call-a: recording bridged-call-a truncated" in error.getMessage()
    assert NUMBER_TAIL not in caplog.text

    # The call ends as any other: completed, and the recording stays truncated (the late events of
    # the teardown change nothing).
    env.engine.on_event(hangup_request(customer))
    row = await env.ended("call-a")
    assert (row["outcome"], row["ended_by"], row["recording_state"]) == ("completed", "customer", "truncated")
    assert "m-a" in env.ari.hung_up()
    assert metrics.RECORDINGS_FAILED.value("truncated") == 1


async def test_a_folder_asterisk_cannot_write_to_marks_the_recording_failed(env: Env) -> None:
    await env.bridged("call-a", "m-a")
    # The rig, read-only folder: RecordingStarted and RecordingFinished (done, 0 s) at once.
    env.engine.on_event(recording_event("RecordingStarted", "bridged-call-a", "call-a-bridge"))
    env.engine.on_event(finished("call-a", 0))
    await wait_until(lambda: env.row("call-a")["recording_state"] == "failed")
    assert env.engine.calls["call-a"].state is CallState.BRIDGED
    assert metrics.RECORDINGS_FAILED.value("failed") == 1
    # The shop sees no recording; the row keeps its name (retention still deletes whatever file is left).
    row = await env.store.calls.get("call-a")
    assert row is not None and row.recording_name == "bridged-call-a" and not row.recording_usable


async def test_a_recording_failed_event_marks_the_recording_failed(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await env.bridged("call-a", "m-a")
    with caplog.at_level("ERROR", logger="bridged.calls"):
        env.engine.on_event(
            recording_event(
                "RecordingFailed", "bridged-call-a", "call-a-bridge", cause="Failed to answer channel"
            )
        )
        await wait_until(lambda: env.row("call-a")["recording_state"] == "failed")
    assert "Failed to answer channel" in caplog.text


async def test_a_recording_shorter_than_the_bridge_is_truncated(env: Env) -> None:
    await env.bridged("call-a", "m-a")
    call = env.engine.calls["call-a"]
    assert call.recording_started_at is not None
    call.recording_started_at -= timedelta(seconds=60)  # bridged for a minute
    env.engine.on_event(hangup_request("m-a"))
    await env.ended("call-a")
    # Its early end came after the hangup (so it was not seen as early): the duration tells.
    env.engine.on_event(finished("call-a", 10))
    await wait_until(lambda: env.row("call-a")["recording_state"] == "truncated")
    assert metrics.RECORDINGS_FAILED.value("truncated") == 1


async def test_events_of_other_recordings_change_nothing(env: Env) -> None:
    await env.bridged("call-a", "m-a")
    env.engine.on_event(recording_event("RecordingFinished", "someone-else", "other-bridge", duration=0))
    env.engine.on_event(recording_event("RecordingFinished", "bridged-call-b", "call-a-bridge", duration=0))
    await settle()
    assert env.row("call-a")["recording_state"] is None
    assert env.engine.calls["call-a"].state is CallState.BRIDGED


async def test_a_recording_asterisk_would_not_start_is_failed(env: Env) -> None:
    env.ari.errors["record_bridge"] = AriUnavailable(
        "record_bridge", 500, "ARI record_bridge failed: HTTP 500"
    )
    await env.bridged("call-a", "m-a")
    await wait_until(lambda: env.row("call-a")["recording_state"] == "failed")
    assert env.row("call-a")["recording_name"] is None
    assert env.engine.calls["call-a"].state is CallState.BRIDGED
    assert env.engine.recordings.by_name == {}


async def test_recording_off_leaves_the_state_empty() -> None:
    e = await _make_env(make_config(recording=RecordingConfig(enabled=False)))
    try:
        await e.bridged("call-a", "m-a")
        e.engine.on_event(hangup_request("m-a"))
        row = await e.ended("call-a")
        await settle()
        assert row["recording_state"] is None
        assert e.engine.recordings.settling == {}
    finally:
        await e.engine.shutdown()
    assert e.row("call-a")["recording_state"] is None


@pytest.mark.parametrize(
    ("stored", "error", "state"),
    [
        (("wav", wav_bytes(60)), None, "complete"),
        (("wav", wav_bytes(10)), None, "truncated"),
        (("wav", 0), None, "failed"),
        (None, None, "failed"),
        (("g722", 5000), None, "unknown"),
        (("wav", wav_bytes(60)), AriUnavailable("get_stored_recording", 0, "unreachable"), "unknown"),
    ],
    ids=["whole", "short", "empty", "no-file", "format-unknown", "asterisk-away"],
)
async def test_a_missed_end_event_is_made_up_for_by_the_file(
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    stored: tuple[str, int] | None,
    error: Exception | None,
    state: str,
) -> None:
    monkeypatch.setattr(recording_module, "RECORDING_SETTLE_SECONDS", 0.05)
    await env.bridged("call-a", "m-a")
    call = env.engine.calls["call-a"]
    assert call.recording_started_at is not None
    call.recording_started_at -= timedelta(seconds=60)
    if stored is not None:
        env.ari.stored_recordings["bridged-call-a"] = stored
    if error is not None:
        env.ari.errors["get_stored_recording"] = error
    env.engine.on_event(hangup_request("m-a"))
    await env.ended("call-a")
    await wait_until(lambda: env.row("call-a")["recording_state"] == state, what=state)
    assert env.engine.recordings.settling == {}


async def test_stopping_before_the_end_event_leaves_the_recording_unknown(env: Env) -> None:
    await env.bridged("call-a", "m-a")
    env.engine.on_event(hangup_request("m-a"))
    await env.ended("call-a")
    assert "call-a" in env.engine.recordings.settling
    await env.engine.shutdown()
    assert env.row("call-a")["recording_state"] == "unknown"
    assert metrics.RECORDINGS_UNVERIFIED.value() == 1


# -- reconnects and restarts: events missed ----------------------------------------------------------


async def test_a_recording_that_ended_during_a_reconnect_is_truncated(env: Env) -> None:
    customer = await env.bridged("call-a", "m-a")
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("m-a", customer)}
    env.ari.app_channel_ids = ["m-a", customer]
    env.ari.stored_recordings["bridged-call-a"] = ("wav", wav_bytes(3))
    # No live recording any more: its RecordingFinished went out while the websocket was down.
    await env.engine.reconciler.reconcile()
    await wait_until(lambda: env.row("call-a")["recording_state"] == "truncated")
    assert env.engine.calls["call-a"].state is CallState.BRIDGED


async def test_a_recording_still_live_after_a_reconnect_is_left_to_its_events(env: Env) -> None:
    customer = await env.bridged("call-a", "m-a")
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("m-a", customer)}
    env.ari.app_channel_ids = ["m-a", customer]
    env.ari.live_recordings["bridged-call-a"] = {"name": "bridged-call-a", "state": "recording"}
    await env.engine.reconciler.reconcile()
    await wait_until(
        lambda: any(kw["name"] == "bridged-call-a" for kw in env.ari.named("get_live_recording"))
    )
    await settle()
    assert env.row("call-a")["recording_state"] is None
    env.engine.on_event(finished("call-a", 2))
    await wait_until(lambda: env.row("call-a")["recording_state"] == "truncated")


@pytest.mark.parametrize("live", [True, False])
async def test_an_adopted_call_keeps_its_recording_judged(env: Env, live: bool) -> None:
    _bridged_row(env, "call-r")
    env.ari.channels = {c: {"id": c, "state": "Up"} for c in ("call-r-m", "call-r-customer")}
    env.ari.stored_recordings["bridged-call-r"] = ("wav", wav_bytes(5))
    if live:
        env.ari.live_recordings["bridged-call-r"] = {"name": "bridged-call-r", "state": "recording"}
    await env.engine.reconciler.reconcile()
    assert env.engine.calls["call-r"].state is CallState.BRIDGED
    if live:
        # Still recording: the new daemon hears its end (here: a disk that fills up later).
        await wait_until(lambda: len(env.ari.named("get_live_recording")) == 1)
        await settle()
        assert env.row("call-r")["recording_state"] is None
        env.engine.on_event(finished("call-r", 5))
    await wait_until(lambda: env.row("call-r")["recording_state"] == "truncated")
    assert env.engine.calls["call-r"].state is CallState.BRIDGED


@pytest.mark.parametrize(
    ("live", "bridge_gone", "stored", "state"),
    [
        (True, False, ("wav", wav_bytes(30)), "complete"),  # ran until found: the whole conversation
        (True, False, ("wav", 44), "failed"),
        (False, False, ("wav", wav_bytes(3)), "truncated"),  # stopped while its bridge still stood
        (False, False, None, "failed"),
        (False, True, ("wav", wav_bytes(30)), "unknown"),  # Asterisk lost the bridge: no telling
        (False, True, None, "failed"),
    ],
)
async def test_a_call_that_ended_while_bridged_was_away_gets_its_recording_judged(
    env: Env, live: bool, bridge_gone: bool, stored: tuple[str, int] | None, state: str
) -> None:
    _bridged_row(env, "call-r")
    if live:
        env.ari.live_recordings["bridged-call-r"] = {"name": "bridged-call-r", "state": "recording"}
    if bridge_gone:
        env.ari.gone_bridges.add("call-r-bridge")
    if stored is not None:
        env.ari.stored_recordings["bridged-call-r"] = stored
    await env.engine.reconciler.reconcile()
    row = env.row("call-r")
    assert (row["state"], row["outcome"], row["recording_state"]) == ("ended", "completed", state)
    # Looked at while the bridge stood, judged by the file once the bridge was gone.
    methods = env.ari.methods()
    assert methods.index("get_live_recording") < methods.index("destroy_bridge")
    assert methods.index("destroy_bridge") < methods.index("get_stored_recording")


async def test_a_recording_judged_before_a_restart_is_not_judged_again(env: Env) -> None:
    row = _bridged_row(env, "call-r")
    row["recording_state"] = "truncated"
    await env.engine.reconciler.reconcile()  # both legs gone: the call is ended
    assert env.row("call-r")["recording_state"] == "truncated"
    assert not {"get_live_recording", "get_stored_recording"} & set(env.ari.methods())
