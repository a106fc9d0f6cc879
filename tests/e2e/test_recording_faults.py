"""Recording failures on the rig: Asterisk's recording folder on a tiny tmpfs (full during the call, full
before it) or read-only. The call goes on and completes; the row, the API, /metrics, the log and /ops/ say
what the recording holds.

The tmpfs is mounted over the session's Asterisk spool folder (``Asterisk.recordings_dir``) in the host's
mount namespace (``unshare -n`` is only a network namespace; Asterisk must see it) and always unmounted,
so the folder and its recordings are back for the tests after these.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rig import Asterisk

from . import harness
from .harness import Bridged, ManagerPhone, wait_for
from .test_ops_page import headless_chromium
from .test_review_api import TOKENS, http, token_config
from .test_service import samples

MOUNT = shutil.which("mount") or "/usr/bin/mount"
UMOUNT = shutil.which("umount") or "/usr/bin/umount"
# A few seconds of 8 kHz 16-bit WAV (16 kB/s): the rig measured the first failed write after 4.1 s.
TMPFS_SIZE = "64k"


@contextmanager
def recordings_on_tmpfs(asterisk: Asterisk, *, read_only: bool = False, fill: bool = False) -> Iterator[Path]:
    folder = asterisk.recordings_dir
    options = f"size={TMPFS_SIZE}" + (",ro" if read_only else "")
    subprocess.run([MOUNT, "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        if fill:
            with open(folder / "filler", "wb", buffering=0) as filler:
                with contextlib.suppress(OSError):  # until the disk is full
                    while True:
                        filler.write(b"\0" * 4096)
        yield folder
    finally:
        if subprocess.run([UMOUNT, str(folder)], check=False).returncode != 0:
            subprocess.run([UMOUNT, "-l", str(folder)], check=True)
    assert not folder.is_mount()


def _call(
    daemon: Bridged, manager: ManagerPhone, trace_dir: Path, rig_alloc, *, hold_ms: int
) -> tuple[dict[str, Any], str]:
    """A real answered call the manager hangs up after ``hold_ms``; its ended, judged row."""
    order, number = harness.new_order_id(), harness.new_customer_number()
    harness.add_order(daemon.postgres, order, number, "Rita Fault", manager.id)
    customer = harness.carrier(trace_dir, rig_alloc, hold_ms=60000)
    phone = harness.dial(manager, trace_dir, f"*77{order}", hold_ms=hold_ms)
    assert phone.wait(timeout=60) == 0, phone.describe()  # the manager's phone completed its call
    customer.wait(timeout=20)
    row = wait_for(
        lambda: [
            r
            for r in daemon.call_rows(manager.id)
            if r["order_id"] == order and r["state"] == "ended" and r["recording_state"]
        ],
        15,
        "an ended row with its recording judged",
    )[-1]
    return row, number


def _metrics(daemon: Bridged) -> dict[str, float]:
    resp = http(daemon, "GET", "/metrics")
    assert resp.status == 200
    return samples(resp.body.decode())


def _api_views(daemon: Bridged, manager: ManagerPhone, call_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call as ops review lists it and as GET /v1/calls/{id} shows it.

    A call dialled from a phone belongs to no shop client (a shop token gets 404 for it), so ops reads both."""
    listed = http(daemon, "GET", f"/v1/calls?manager={manager.id}", role="ops")
    assert listed.status == 200
    [review] = [c for c in listed.json()["items"] if c["id"] == call_id]
    shop = http(daemon, "GET", f"/v1/calls/{call_id}", role="ops")
    assert shop.status == 200
    return review, shop.json()


def _ops_row_text(daemon: Bridged, call_id: str, trace_dir: Path) -> str:
    """What /ops/ shows in the call's recording cell, signed in as ops in Chromium."""
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(f"http://127.0.0.1:{daemon.http_port}/ops/")
        page.keyboard.type(TOKENS["ops"][1])
        page.keyboard.press("Enter")
        cell = page.locator(f'#calls tr[data-call-id="{call_id}"] td').last
        cell.locator(".recording-mark").wait_for(timeout=10000)
        page.screenshot(path=str(trace_dir / "ops.png"), full_page=True)
        text: str = cell.inner_text()
        return text


def test_a_disk_that_fills_up_mid_call_truncates_the_recording_and_the_call_goes_on(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = make_bridged(("rita",), extra=token_config())
    rita = daemon.managers[0]
    with recordings_on_tmpfs(asterisk) as folder:
        row, number = _call(daemon, rita, trace_dir, rig_alloc, hold_ms=9000)
        recording = folder / f"{row['recording_name']}.wav"
        size = recording.stat().st_size
        shutil.copyfile(recording, trace_dir / "recording.wav")
    # The call completed as any other, and lasted well beyond what the full disk let Asterisk write.
    assert (row["outcome"], row["ended_by"]) == ("completed", "manager"), row
    written = (size - 44) / 16000
    assert size <= 64 * 1024 and written < 6, size
    assert row["duration"] > written + 2, (row["duration"], written)
    assert row["recording_state"] == "truncated", row

    review, shop = _api_views(daemon, rita, row["id"])
    assert review == shop  # one representation of a call
    assert (shop["has_recording"], shop["recording_state"], shop["recording_purged_at"]) == (
        True,
        "truncated",
        None,
    )
    values = _metrics(daemon)
    assert values['bridged_recordings_failed_total{state="truncated"}'] == 1
    assert 'bridged_recordings_failed_total{state="failed"}' not in values
    # Told by Asterisk's RecordingFinished during the call (it passed the app's event filter), not made
    # up for from the file afterwards.
    log = daemon.log_text()
    error = rf"ERROR bridged\.calls\.recording: call {row['id']}: recording \S+ truncated: Asterisk stopped it after"
    assert re.search(rf"{error} \d s while the call went on", log), log[-2000:]
    assert "recording truncated" in _ops_row_text(daemon, row["id"], trace_dir)
    harness.assert_not_leaked(number, daemon_log=log)


@pytest.mark.parametrize("fault", ["read-only", "full-before"])
def test_a_folder_nothing_can_be_written_to_fails_the_recording_and_the_call_goes_on(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc, fault: str
) -> None:
    daemon = make_bridged(("fred",), extra=token_config())
    fred = daemon.managers[0]
    with recordings_on_tmpfs(asterisk, read_only=fault == "read-only", fill=fault == "full-before"):
        row, _ = _call(daemon, fred, trace_dir, rig_alloc, hold_ms=4000)
    assert (row["outcome"], row["ended_by"]) == ("completed", "manager"), row
    assert row["duration"] > 3, row
    assert row["recording_state"] == "failed", row

    review, shop = _api_views(daemon, fred, row["id"])
    assert review == shop
    assert (shop["has_recording"], shop["recording_state"], shop["recording_purged_at"]) == (
        False,
        "failed",
        None,
    )
    resp = http(daemon, "GET", f"/v1/calls/{row['id']}/recording", role="ops")
    assert (resp.status, resp.json()["error"]["id"]) == (404, "recording_not_found")
    assert _metrics(daemon)['bridged_recordings_failed_total{state="failed"}'] == 1
    assert re.search(
        rf"ERROR bridged\.calls\.recording: call {row['id']}: recording \S+ failed", daemon.log_text()
    )
    if fault == "read-only":
        assert "recording failed" in _ops_row_text(daemon, row["id"], trace_dir)


def _recording_live(asterisk: Asterisk, name: str) -> bool:
    try:
        asterisk.ari_get(f"/recordings/live/{name}")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise
    return True


def test_a_recording_cut_short_while_bridged_was_down_is_found_truncated_after_the_restart(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """Its RecordingFinished went to no one: the restarted daemon finds it no longer live."""
    daemon = make_bridged(("kira",), extra=token_config())
    kira = daemon.managers[0]
    order, number = harness.new_order_id(), harness.new_customer_number()
    harness.add_order(daemon.postgres, order, number, "Kira Restart", kira.id)
    with recordings_on_tmpfs(asterisk):
        customer = harness.carrier(trace_dir, rig_alloc, hold_ms=120000, timeout_s=150)
        phone = harness.dial(kira, trace_dir, f"*77{order}", hold_ms=20000, timeout_s=150)
        [row] = wait_for(
            lambda: [r for r in daemon.call_rows(kira.id) if r["state"] == "bridged"], 30, "bridged row"
        )
        daemon.stop(signal.SIGKILL)
        wait_for(
            lambda: not _recording_live(asterisk, row["recording_name"]),
            30,
            "Asterisk to end the recording at the full disk",
        )
        daemon.start()
        # Adopted while still bridged (found no longer recording), or ended by the manager before
        # (found stopped while its bridge stood): truncated either way, and never taken for complete.
        judged = wait_for(
            lambda: [r for r in daemon.call_rows(kira.id) if r["recording_state"]], 30, "recording judged"
        )
        assert judged[0]["recording_state"] == "truncated", judged
        assert phone.wait(timeout=60) == 0, phone.describe()
        assert customer.wait(timeout=20) == 0, customer.describe()
    [ended] = wait_for(
        lambda: [r for r in daemon.call_rows(kira.id) if r["state"] == "ended"], 10, "ended row"
    )
    assert (ended["outcome"], ended["recording_state"]) == ("completed", "truncated"), ended
    # Judged by the restarted daemon's reconcile, not by the file check after the call.
    log = daemon.log_text()
    error = rf"ERROR bridged\.calls\.recording: call {row['id']}: recording \S+ truncated"
    reason = "(it ended while bridged was not listening|no longer recording when found)"
    assert re.search(f"{error}: {reason}", log), log[-2000:]
    assert _metrics(daemon)['bridged_recordings_failed_total{state="truncated"}'] == 1
    harness.assert_not_leaked(number, daemon_log=log)


def test_recordings_are_whole_again_once_the_folder_is_back(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    daemon = make_bridged(("nina",), extra=token_config())
    nina = daemon.managers[0]
    row, _ = _call(daemon, nina, trace_dir, rig_alloc, hold_ms=4000)
    assert row["recording_state"] == "complete", row
    assert (asterisk.recordings_dir / f"{row['recording_name']}.wav").stat().st_size > 16000 * 3
    review, shop = _api_views(daemon, nina, row["id"])
    assert review == shop
    assert (shop["has_recording"], shop["recording_state"], shop["recording_purged_at"]) == (
        True,
        "complete",
        None,
    )
    assert not any(k.startswith("bridged_recordings_failed_total{") for k in _metrics(daemon))
