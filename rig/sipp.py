"""SIPp processes playing managers' phones and the carrier (scenarios in rig/scenarios/)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
SIPP = os.environ.get("BRIDGED_RIG_SIPP", "sipp")


def make_tone_wav(path: Path, *, seconds: int = 10, freq: int = 440) -> Path:
    """A u-law 8 kHz mono WAV for ``rtp_stream`` (SIPp streams its payload as PCMU)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "sox",
            "-n",
            "-r",
            "8000",
            "-c",
            "1",
            "-e",
            "u-law",
            str(path),
            "synth",
            str(seconds),
            "sine",
            str(freq),
        ],
        check=True,
        capture_output=True,
    )
    return path


_TRACE_SPLIT = re.compile(r"^-{20,} (\S+ \S+)\n(?:\w+ message (sent|received)[^\n]*)\n", re.M)


class SipMessage:
    """One SIP message from a ``-trace_msg`` file."""

    def __init__(self, timestamp: str, direction: str, text: str) -> None:
        self.timestamp = timestamp  # "YYYY-MM-DD HH:MM:SS.ffffff" (local time of the SIPp host)
        self.direction = direction  # "sent" or "received"
        self.text = text.strip("\n")

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        """Request method, or the CSeq method of a response."""
        if self.is_request:
            return self.first_line.split(" ", 1)[0]
        m = re.search(r"^CSeq:\s*\d+\s+(\S+)", self.text, re.M | re.I)
        return m.group(1) if m else ""

    @property
    def status(self) -> int | None:
        return None if self.is_request else int(self.first_line.split()[1])

    def header(self, name: str) -> list[str]:
        return [m.group(1).strip() for m in re.finditer(rf"^{re.escape(name)}:(.*)$", self.text, re.M | re.I)]

    def __repr__(self) -> str:
        return f"<SipMessage {self.direction} {self.first_line!r} at {self.timestamp}>"


def parse_trace(text: str) -> list[SipMessage]:
    """Split a SIPp ``-trace_msg`` file into messages (direction, timestamp, text)."""
    parts = _TRACE_SPLIT.split(text)
    out = []
    # parts: [preamble, ts, direction, body, ts, direction, body, ...]
    for i in range(1, len(parts) - 2, 3):
        out.append(SipMessage(parts[i], parts[i + 1], parts[i + 2]))
    return out


# Every SIPp started and not yet seen to exit: a test that fails between starting one and waiting for it
# leaves it running on its fixed port, where the next test's SIPp cannot bind (tests/e2e/conftest.py
# stops what a test left behind).
STARTED: list[Sipp] = []


class Sipp:
    """One foreground SIPp process; ``wait()`` returns its exit code (0 = every call succeeded)."""

    def __init__(self, name: str, argv: list[str], trace_dir: Path, proc: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.argv = argv
        self.trace_dir = trace_dir
        self.proc = proc
        self.message_file = trace_dir / f"{name}_messages.log"
        self.error_file = trace_dir / f"{name}_errors.log"
        self.output_file = trace_dir / f"{name}_output.log"
        self.returncode: int | None = None

    @classmethod
    def start(
        cls,
        scenario: Path | str,
        *,
        local_ip: str,
        local_port: int,
        remote: str | None = None,
        service: str | None = None,
        keys: dict[str, str] | None = None,
        trace_dir: Path,
        rtp_port: int | None = None,
        calls: int = 1,
        timeout_s: int = 30,
        name: str | None = None,
        extra_args: list[str] | None = None,
    ) -> Sipp:
        """Start ``sipp`` on ``local_ip:local_port``.

        ``scenario`` is a path or a bare name of rig/scenarios (``"manager_call"``). ``remote`` is
        ``host:port`` for a UAC; ``service`` is the Request-URI user (``-s``). ``keys`` become ``-key k v``
        (use them as ``[k]`` in the scenario). ``rtp_port`` is the SIPp media port (``-mi local_ip -mp``);
        keep it outside Asterisk's RTP range 10000-19999. ``timeout_s`` is a global ``-timeout`` that makes
        SIPp fail rather than hang.
        """
        scenario = Path(scenario)
        if not scenario.suffix:
            scenario = SCENARIOS_DIR / f"{scenario}.xml"
        name = name or f"{scenario.stem}_{local_ip}_{local_port}"
        trace_dir = Path(trace_dir)
        trace_dir.mkdir(parents=True, exist_ok=True)
        if not (trace_dir / "tone.wav").exists():
            make_tone_wav(trace_dir / "tone.wav")
        argv = [SIPP]
        if remote:
            argv.append(remote)
        argv += [
            "-sf",
            str(scenario),
            "-i",
            local_ip,
            "-p",
            str(local_port),
            "-t",
            "u1",
            "-m",
            str(calls),
            "-l",
            str(max(calls, 1)),
            "-nostdin",
            "-timeout",
            f"{timeout_s}s",
            "-timeout_error",
            "-trace_msg",
            "-message_file",
            str(trace_dir / f"{name}_messages.log"),
            "-trace_err",
            "-error_file",
            str(trace_dir / f"{name}_errors.log"),
            "-trace_screen",
            "-screen_file",
            str(trace_dir / f"{name}_screen.log"),
            "-trace_logs",
            "-log_file",
            str(trace_dir / f"{name}_logs.log"),
            "-max_recv_loops",
            "1000",
            # The hold loops tick every 250 ms through <nop>s; a BYE landing in that instant would
            # otherwise abort the call as "unexpected". Without abortunexp SIPp leaves it unanswered,
            # the peer retransmits (T1) and the retransmission is matched in the hold loop.
            "-default_behaviors",
            "all,-abortunexp",
        ]
        if service:
            argv += ["-s", service]
        if rtp_port is not None:
            argv += ["-mi", local_ip, "-mp", str(rtp_port)]
        for key, value in (keys or {}).items():
            argv += ["-key", key, str(value)]
        argv += extra_args or []
        out = open(trace_dir / f"{name}_output.log", "wb")  # noqa: SIM115
        # cwd=trace_dir: rtp_stream file names in the scenarios are relative to it.
        proc = subprocess.Popen(
            argv,
            cwd=trace_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        sipp = cls(name, argv, trace_dir, proc)
        STARTED[:] = [s for s in STARTED if s.proc.poll() is None]
        STARTED.append(sipp)
        return sipp

    def wait(self, timeout: float | None = None) -> int:
        """Wait for SIPp to exit and return its exit code (0 = all calls succeeded, 1 = some failed...)."""
        self.returncode = self.proc.wait(timeout=timeout)
        return self.returncode

    def wait_listening(self, settle: float = 0.3) -> None:
        """Give a UAS a moment to bind its socket; fail fast if SIPp died (bad scenario, port in use)."""
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipp exited early:\n{self.describe()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGUSR1 asks SIPp to stop gracefully; then TERM/KILL.
            for sig, grace in ((signal.SIGUSR1, 2.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                try:
                    self.proc.send_signal(sig)
                    self.returncode = self.proc.wait(timeout=grace)
                    return
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    return

    def messages(self) -> str:
        """The ``-trace_msg`` text: every SIP message sent and received, with timestamps."""
        try:
            return self.message_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def parsed(self) -> list[SipMessage]:
        """The trace as ``SipMessage`` objects, in order."""
        return parse_trace(self.messages())

    def received(self) -> list[SipMessage]:
        return [m for m in self.parsed() if m.direction == "received"]

    def sent(self) -> list[SipMessage]:
        return [m for m in self.parsed() if m.direction == "sent"]

    def errors(self) -> str:
        try:
            return self.error_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        try:
            return self.output_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        """Everything useful for an assertion message."""
        return (
            f"sipp {self.name} rc={self.proc.poll()}\nargv: {' '.join(self.argv)}\n"
            f"--- output\n{self.output()[-3000:]}\n--- errors\n{self.errors()[-3000:]}"
        )

    def __enter__(self) -> Sipp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The final answers manager_ring.xml can give (SIPp reads a response code at load time: one message each).
RING_FINALS = (200, 404, 480, 486, 503, 603)
# A ring_ms longer than any test: the phone that never answers (it rings until CANCEL).
NEVER_MS = 3_600_000
INBOUND_IDENTITIES = ("pai", "rpid", "history", "anonymous")


def call_in(
    caller: str,
    did: str,
    *,
    trace_dir: Path,
    rtp_port: int,
    identity: str = "pai",
    hold_ms: int = 30000,
    cancel_ms: int = 0,
    update_ms: int = 0,
    update_method: str = "UPDATE",
    asterisk: str = "127.0.0.1:5060",
    local_ip: str = "127.0.0.2",
    local_port: int = 5060,
    timeout_s: int = 60,
    calls: int = 1,
    name: str | None = None,
    caller_name: str | None = None,
) -> Sipp:
    """The carrier calls the shop's number ``did`` as the customer ``caller`` (carrier_inbound.xml).

    ``caller_name``: the display name of its identity headers (default: the number itself); a lone
    surrogate such as ``"\\udcff"`` is sent as that raw byte (the argument is encoded with surrogateescape).

    ``identity``: where the INVITE carries the number (pai, rpid, history, anonymous: see the scenario).
    ``cancel_ms`` > 0: the caller hangs up if nobody answered by then. ``update_ms`` > 0: the carrier
    re-asserts the number mid-call in an ``update_method`` (UPDATE or INVITE). Exit code 0 also for a
    final error answer (busy, ...): assert on the trace.
    """
    if identity not in INBOUND_IDENTITIES:
        raise ValueError(f"identity must be one of {INBOUND_IDENTITIES}")
    if update_method not in ("UPDATE", "INVITE"):
        raise ValueError("update_method must be UPDATE or INVITE")
    return Sipp.start(
        "carrier_inbound",
        local_ip=local_ip,
        local_port=local_port,
        remote=asterisk,
        service=did,
        keys={
            "caller": caller,
            "caller_name": caller if caller_name is None else caller_name,
            "identity": identity,
            "hold_ms": str(hold_ms),
            "cancel_ms": str(cancel_ms),
            "update_ms": str(update_ms),
            "update_method": update_method,
        },
        trace_dir=trace_dir,
        rtp_port=rtp_port,
        timeout_s=timeout_s,
        calls=calls,
        name=name or "carrier_inbound",
    )


def ring_phone(
    endpoint: str,
    sip_port: int,
    *,
    trace_dir: Path,
    rtp_port: int,
    final: int = 200,
    ring_ms: int = 500,
    hold_ms: int = 30000,
    local_ip: str = "127.0.0.1",
    timeout_s: int = 60,
    calls: int = 1,
    name: str | None = None,
) -> Sipp:
    """A manager's phone waiting to be rung (manager_ring.xml) on its endpoint's contact port.

    It rings ``ring_ms``, then answers (``final=200``, holding ``hold_ms``) or refuses with ``final``
    (486 busy, 603 decline, ...); ``ring_ms=NEVER_MS`` rings until Asterisk sends CANCEL. Waits until
    SIPp listens.
    """
    if final not in RING_FINALS:
        raise ValueError(f"final must be one of {RING_FINALS}")
    sipp = Sipp.start(
        "manager_ring",
        local_ip=local_ip,
        local_port=sip_port,
        keys={
            "ring_ms": str(ring_ms),
            "final": str(final),
            "hold_ms": str(hold_ms),
        },
        trace_dir=trace_dir,
        rtp_port=rtp_port,
        timeout_s=timeout_s,
        calls=calls,
        name=name or f"manager_{endpoint}",
    )
    sipp.wait_listening()
    return sipp
