"""The quickstart demo and the sample Asterisk config, checked on real parts.

The demo's call runs once on the session rig (its core function, the phone path) and once as users run it
(``python -m demo --http`` as a subprocess: its own network namespace, PostgreSQL and Asterisk). The sample
config in config/asterisk/ is loaded into a real Asterisk to show it parses and does what it says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from demo import DemoCall, run_demo
from rig import Asterisk, Postgres

from .harness import REPO_ROOT, new_customer_number, new_order_id


def test_demo_call_on_the_session_rig(
    asterisk: Asterisk, postgres: Postgres, trace_dir: Path, unique_name, rig_alloc
) -> None:
    call = DemoCall(
        order_id=new_order_id(),
        customer_number=new_customer_number(),
        manager_id="anna",
        manager_endpoint=unique_name("demo"),
        manager_sip_port=rig_alloc.sip_port(),
        manager_rtp_port=rig_alloc.rtp_port(),
        carrier_rtp_port=rig_alloc.rtp_port(),
        hold_ms=3000,
    )
    result = run_demo(asterisk, postgres, trace_dir, call)
    report = result.report()
    (trace_dir / "report.txt").write_text(report)

    assert result.row["outcome"] == "completed", report
    assert result.row["order_id"] == call.order_id and result.row["direction"] == "phone"
    # The setup really was hostile: the carrier's messages carried the number...
    assert result.carrier_got_number, report
    # ...and it reached neither the manager's phone, nor bridged's log, nor its database.
    assert not result.leaked, report
    assert report.rstrip().endswith("number reached the manager: NO")
    assert any(f"Order {call.order_id} Ivan P." in line for line in result.identity_lines), report
    assert "+15550100" in result.customer_saw, report
    assert result.recording is not None and result.recording_bytes > 44 * 10, report
    assert result.recording_rms is not None and result.recording_rms > 0.01, report


def test_demo_command_over_http(trace_dir: Path, asterisk_root: Path) -> None:
    """What a reader of the README runs (minus bootstrap/provisioning, done by the test command)."""
    run = subprocess.run(
        [sys.executable, "-m", "demo", "--http", "--artifacts", str(trace_dir / "demo")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    (trace_dir / "demo-output.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "number reached the manager: NO" in run.stdout
    assert "outcome:    completed" in run.stdout
    assert "direction:  api" in run.stdout
    assert "state=ended outcome=completed" in run.stdout


def test_sample_asterisk_config_loads(trace_dir: Path, asterisk_root: Path) -> None:
    """config/asterisk/ parses in Asterisk 22: the endpoints exist with the safe options, ARI answers, and
    the managers' sample context cannot be talked into dialling the trunk."""
    run = subprocess.run(
        [sys.executable, "-m", "demo.samples"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    (trace_dir / "samples.json").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["endpoints"] == ["anna", "boris", "carrier"], report
    assert report["ari"] and report["bridged_managers_dialplan"], report
    assert report["anna"] == {
        "context": "bridged-managers",
        "send_connected_line": "no",
        "send_pai": "false",
        "send_rpid": "false",
        "send_diversion": "false",
        "send_history_info": "false",
        "allow_transfer": "false",
    }, report
    assert report["carrier_trust_id_inbound"] == "false", report
    assert report["carrier_to_bridged"] == ["+15550100"], report
    # The managers' context dials a colleague, and refuses an extension carrying dial-string syntax
    # (demo.samples.HOSTILE) before any Dial().
    assert report["managers_dial"] == {
        "hostile": ["GotoIf", "Hangup"],
        "colleague": ["GotoIf", "Dial", "Hangup"],
    }
    assert not report["errors"], report["errors"]
