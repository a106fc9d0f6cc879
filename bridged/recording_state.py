"""Whether a call's recording holds the whole conversation: the judgement, apart from the call engine.

Measured on Asterisk 22 (rig/NOTES.md, "Recording failures"): a bridge recording whose file cannot be
written is not reported as ``RecordingFailed``. Asterisk ends it at the first failed write (disk full) or
at once (folder not writable) and sends ``RecordingFinished`` with ``state: done`` and the seconds written
so far, while the call goes on. ``RecordingFailed`` comes only when the recording could not start at all.
So a recording is judged by when it finished (before bridged stopped it, it was cut short) and by its
``duration`` against the time the bridge was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RecordingState(StrEnum):
    COMPLETE = "complete"  # the whole conversation
    TRUNCATED = "truncated"  # the file stops early (disk full, a failed write)
    FAILED = "failed"  # nothing usable: could not start, nothing written, no file
    UNKNOWN = "unknown"  # its end was not seen and the file cannot tell (see README, "Recordings")


# The API's ``recording_state`` / ``recording.state`` (OpenAPI).
STATE_SCHEMA: dict[str, Any] = {
    "type": ["string", "null"],
    "enum": [*(s.value for s in RecordingState), None],
    "description": "Whether the call's recording holds the whole conversation: complete; truncated (it "
    "stops early: disk full, a failed write); failed (nothing usable in it); unknown (its end could not be "
    "checked, e.g. bridged was stopped meanwhile). null: not recorded, or not judged yet (call going on).",
}

# The recording's duration is whole seconds, rounded down, and starts a moment after bridged asked for
# it: up to this much shorter than the time between the request and the end is still the whole call.
SLACK_SECONDS = 2.0

END_EVENTS = frozenset({"RecordingFinished", "RecordingFailed"})
EVENTS = END_EVENTS | {"RecordingStarted"}

# Bytes per second of audio and header bytes of the formats bridged records (config recording.format).
_AUDIO_RATE = {"wav": 16000, "sln": 16000, "ulaw": 8000, "alaw": 8000, "gsm": 1650, "wav49": 1625}
_HEADER = {"wav": 44, "wav49": 60}


def audio_seconds(fmt: str, size: int) -> float | None:
    """Seconds of 8 kHz audio in a recording file of ``size`` bytes; None for a format not known here."""
    rate = _AUDIO_RATE.get(fmt)
    if rate is None:
        return None
    return max(0, size - _HEADER.get(fmt, 0)) / rate


def judge_end_event(
    event_type: str, duration: int | None, *, ended_early: bool, expected_seconds: float | None
) -> RecordingState | None:
    """The state told by a recording's last event; None when only the file can tell (no duration, or 0 s
    of a call bridged for less than :data:`SLACK_SECONDS`).

    ``ended_early``: the recording finished before bridged stopped it (the call was still bridged).
    ``expected_seconds``: from the recording request to bridged stopping it.
    """
    if event_type == "RecordingFailed":
        return RecordingState.FAILED
    if duration is None:
        return None
    if duration <= 0:
        # Whole seconds, rounded down: a call bridged for less than the slack may have under a second of
        # audio, all of it; whether anything was written only its file tells.
        if not ended_early and expected_seconds is not None and expected_seconds < SLACK_SECONDS:
            return None
        return RecordingState.FAILED
    if ended_early:
        return RecordingState.TRUNCATED
    if expected_seconds is not None and duration + SLACK_SECONDS < expected_seconds:
        return RecordingState.TRUNCATED
    return RecordingState.COMPLETE


@dataclass(frozen=True)
class StoredFile:
    """What Asterisk has stored under a recording's name (``GET /recordings/stored/{name}[/file]``)."""

    size: int | None  # None: no such stored recording
    fmt: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.size is None else audio_seconds(self.fmt, self.size)

    @property
    def empty(self) -> bool:
        if self.size is None or self.size == 0:
            return True
        seconds = self.seconds
        return seconds is not None and seconds <= 0


def judge_file(
    stored: StoredFile, otherwise: RecordingState, expected_seconds: float | None = None
) -> RecordingState:
    """A recording whose end event was missed, by its file: failed when there is no audio in it, else
    ``otherwise``; given ``expected_seconds`` and a format whose length the size tells, complete or
    truncated by that length (else still ``otherwise``)."""
    if stored.empty:
        return RecordingState.FAILED
    seconds = stored.seconds
    if expected_seconds is None or seconds is None:
        return otherwise
    if seconds + SLACK_SECONDS < expected_seconds:
        return RecordingState.TRUNCATED
    return RecordingState.COMPLETE
