"""The rig works on its own (no bridged): manager SIPp -> Asterisk Dial -> carrier SIPp, with audio."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

from rig import Asterisk, Sipp, manager_endpoint_conf

SMOKE_NUMBER = "15550001111"


def _rms(wav) -> float:
    out = subprocess.run(["sox", str(wav), "-n", "stat"], capture_output=True, text=True).stderr
    m = re.search(r"RMS\s+amplitude:\s+([0-9.]+)", out)
    assert m, out
    return float(m.group(1))


def _wait_file_stable(path, timeout: float = 5.0) -> None:
    """MixMonitor closes its file shortly after the channel hangs up."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else -1
        if size > 44 and size == last:
            return
        last = size
        time.sleep(0.3)


def _manager(
    asterisk: Asterisk, rig_alloc, unique_name, recording: str, *, context: str = "rig-smoke", **set_vars: str
) -> tuple[str, int]:
    name = unique_name("smoke")
    port = rig_alloc.sip_port()
    asterisk.add_endpoints(
        name,
        manager_endpoint_conf(name, port, context=context, set_vars={"RIG_RECORDING": recording, **set_vars}),
    )
    return name, port


def test_call_through_asterisk_with_audio(asterisk, rig_alloc, unique_name, trace_dir):
    recording = unique_name("smoke-rec")
    name, port = _manager(asterisk, rig_alloc, unique_name, recording)

    carrier = Sipp.start(
        "carrier_answer",
        local_ip="127.0.0.2",
        local_port=5060,
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        keys={"ring_ms": "500", "hold_ms": "15000"},
        timeout_s=20,
        name="carrier",
    )
    carrier.wait_listening()
    manager = Sipp.start(
        "manager_call",
        local_ip="127.0.0.1",
        local_port=port,
        remote=asterisk.sip_address,
        service=SMOKE_NUMBER,
        keys={"user": name, "dtmf": "", "hold_ms": "3000"},
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        timeout_s=20,
        name="manager",
    )
    try:
        assert manager.wait(timeout=25) == 0, manager.describe()
        assert carrier.wait(timeout=10) == 0, carrier.describe()
    finally:
        manager.stop()
        carrier.stop()

    carrier_trace = carrier.messages()
    assert re.search(rf"INVITE sip:{SMOKE_NUMBER}@127\.0\.0\.2", carrier_trace), carrier_trace[:2000]
    manager_trace = manager.messages()
    assert "SIP/2.0 200 OK" in manager_trace
    assert re.search(r"^BYE sip:", manager_trace, re.M), "the manager hangs up after hold_ms"

    wav = asterisk.recordings_dir / f"{recording}.wav"
    _wait_file_stable(wav)
    assert wav.exists(), f"no recording at {wav}; see {asterisk.log_path}"
    shutil.copyfile(wav, trace_dir / wav.name)
    assert wav.stat().st_size > 44
    rms = _rms(wav)
    assert rms > 0.01, f"recording is silent (RMS {rms}): RTP did not flow"


def test_busy_carrier_gives_manager_a_final_error(asterisk, rig_alloc, unique_name, trace_dir):
    name, port = _manager(asterisk, rig_alloc, unique_name, unique_name("smoke-busy"))

    carrier = Sipp.start(
        "carrier_busy",
        local_ip="127.0.0.2",
        local_port=5060,
        trace_dir=trace_dir,
        timeout_s=15,
        name="carrier",
    )
    carrier.wait_listening()
    manager = Sipp.start(
        "manager_call",
        local_ip="127.0.0.1",
        local_port=port,
        remote=asterisk.sip_address,
        service=SMOKE_NUMBER,
        keys={"user": name, "dtmf": "", "hold_ms": "1000"},
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        timeout_s=15,
        name="manager",
    )
    try:
        assert manager.wait(timeout=20) == 0, manager.describe()
        assert carrier.wait(timeout=10) == 0, carrier.describe()
    finally:
        manager.stop()
        carrier.stop()

    assert "SIP/2.0 486 Busy Here" in carrier.messages()
    trace = manager.messages()
    assert re.search(r"SIP/2.0 486 ", trace), trace[-3000:]
    assert "SIP/2.0 200 OK" not in trace
    assert re.search(r"^ACK sip:", trace, re.M)


def test_no_answer_is_cancelled(asterisk, rig_alloc, unique_name, trace_dir):
    name, port = _manager(asterisk, rig_alloc, unique_name, unique_name("smoke-noans"), RIG_DIAL_TIMEOUT="2")

    carrier = Sipp.start(
        "carrier_noanswer",
        local_ip="127.0.0.2",
        local_port=5060,
        trace_dir=trace_dir,
        timeout_s=15,
        name="carrier",
    )
    carrier.wait_listening()
    manager = Sipp.start(
        "manager_call",
        local_ip="127.0.0.1",
        local_port=port,
        remote=asterisk.sip_address,
        service=SMOKE_NUMBER,
        keys={"user": name, "dtmf": "", "hold_ms": "1000"},
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        timeout_s=15,
        name="manager",
    )
    try:
        assert manager.wait(timeout=20) == 0, manager.describe()
        assert carrier.wait(timeout=10) == 0, carrier.describe()
    finally:
        manager.stop()
        carrier.stop()

    carrier_trace = carrier.messages()
    assert re.search(r"^CANCEL sip:", carrier_trace, re.M), carrier_trace[-3000:]
    assert "SIP/2.0 487 Request Terminated" in carrier_trace
    trace = manager.messages()
    assert re.search(r"^SIP/2.0 [4-6][0-9][0-9] ", trace, re.M), trace[-3000:]
    assert "SIP/2.0 200 OK" not in trace


def test_dtmf_info_reaches_asterisk_and_asterisk_hangs_up(asterisk, rig_alloc, unique_name, trace_dir):
    name, port = _manager(asterisk, rig_alloc, unique_name, "unused", context="rig-dtmf")

    manager = Sipp.start(
        "manager_call",
        local_ip="127.0.0.1",
        local_port=port,
        remote=asterisk.sip_address,
        service="100",
        keys={"user": name, "dtmf": "4721", "hold_ms": "10000"},
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        timeout_s=15,
        name="manager",
    )
    try:
        assert manager.wait(timeout=20) == 0, manager.describe()
    finally:
        manager.stop()

    trace = manager.messages()
    assert len(re.findall(r"^INFO sip:", trace, re.M)) == 4, trace[-3000:]
    assert "Signal=7" in trace
    assert re.search(r"^BYE sip:", trace, re.M), "Asterisk hangs up after Read()"
    deadline = time.monotonic() + 3
    while f"RIG-DTMF {name} got 4721" not in asterisk.log_text():
        assert time.monotonic() < deadline, f"digits not seen by Asterisk; see {asterisk.log_path}"
        time.sleep(0.1)


def test_carrier_hangs_up_first(asterisk, rig_alloc, unique_name, trace_dir):
    name, port = _manager(asterisk, rig_alloc, unique_name, unique_name("smoke-farend"))

    carrier = Sipp.start(
        "carrier_answer",
        local_ip="127.0.0.2",
        local_port=5060,
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        keys={"ring_ms": "0", "hold_ms": "1000"},
        timeout_s=15,
        name="carrier",
    )
    carrier.wait_listening()
    manager = Sipp.start(
        "manager_call",
        local_ip="127.0.0.1",
        local_port=port,
        remote=asterisk.sip_address,
        service=SMOKE_NUMBER,
        keys={"user": name, "dtmf": "", "hold_ms": "10000"},
        trace_dir=trace_dir,
        rtp_port=rig_alloc.rtp_port(),
        timeout_s=15,
        name="manager",
    )
    try:
        assert carrier.wait(timeout=20) == 0, carrier.describe()
        assert manager.wait(timeout=10) == 0, manager.describe()
    finally:
        manager.stop()
        carrier.stop()

    assert [m.method for m in carrier.sent() if m.is_request][-1] == "BYE"
    assert "BYE" not in [m.method for m in manager.sent() if m.is_request]
    assert [m.method for m in manager.received() if m.is_request][-1] == "BYE"
    assert any(m.status == 200 and m.method == "BYE" for m in manager.sent())


def test_postgres_throwaway_cluster(postgres, unique_name):
    db = unique_name("rigdb")
    postgres.create_database(db)
    sql = "CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1); SELECT sum(x) FROM t"
    assert postgres.execute(db, sql).strip() == "42"
    assert postgres.dsn(db) == f"postgresql://postgres@127.0.0.1:55432/{db}"
