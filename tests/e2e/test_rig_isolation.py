"""What a failed test leaves on the rig does not reach the next test (tests/e2e/conftest.py
``_nothing_left_running``): its customer legs are hung up with nothing reaching the next carrier SIPp.

The carrier's address (127.0.0.2:5060) serves every test. A leg whose carrier SIPp is gone, hung up later,
has its BYE (CANCEL while it rings) retransmitted for 32 s; a carrier SIPp started meanwhile takes the
unknown Call-ID for a new call, one of its ``-m`` calls, and leaves one of its real INVITEs unanswered.
"""

from __future__ import annotations

import json
from pathlib import Path

from rig import Asterisk

from .harness import carrier, hang_up_channels, wait_for


def _originate(asterisk: Asterisk, number: str, state: str) -> dict:
    """A customer leg to the carrier, in ``Wait()`` once answered; once it reaches ``state``."""
    before = {c["id"] for c in json.loads(asterisk.ari_get("/channels"))}
    asterisk.cli(f"channel originate PJSIP/{number}@carrier application Wait 100")
    return wait_for(
        lambda: next(
            (
                c
                for c in json.loads(asterisk.ari_get("/channels"))
                if c["id"] not in before and c["state"] == state
            ),
            None,
        ),
        10,
        f"a customer leg {state}",
    )


def test_leftover_customer_legs_are_hung_up_without_a_request_reaching_the_next_carrier(
    asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    # A failed test's legs: one answered, one ringing; their carrier SIPps are stopped (conftest).
    answering = carrier(trace_dir / "old", rig_alloc, hold_ms=120000)
    up = _originate(asterisk, "4930555001", "Up")
    answering.stop()
    ringing = carrier(trace_dir / "old", rig_alloc, "carrier_noanswer")
    rings = _originate(asterisk, "4930555002", "Ringing")
    ringing.stop()

    hang_up_channels([asterisk], {up["id"], rings["id"]}, trace_dir / "leftovers")

    # The next test's carrier, for one call: it answers that call, and hears nothing of the old dialogs
    # while it runs (longer than Asterisk's longest retransmission interval, T2 = 4 s).
    new = carrier(trace_dir / "new", rig_alloc, hold_ms=5000)
    call = _originate(asterisk, "4930555003", "Up")
    assert new.wait(timeout=30) == 0, new.describe()
    received = {m.header("Call-ID")[0] for m in new.received()}
    assert received == {call["protocol_id"]}, received
