"""Where a call's setup time goes, as seen on the loopback interface: every packet between the SIPp
phones, Asterisk (SIP, ARI), bridged (FastAGI) and PostgreSQL, with the kernel's receive timestamp.

    BENCH_WIRE=1 python -m bench.run --only latency      # writes artifacts/bench/wire-<tag>.txt
    python -m bench.wire artifacts/bench/wire-bridged.txt # the per-stage breakdown of those calls

One clock for everyone (the kernel's, at the packet), so the stages add up: the manager's INVITE reaching
Asterisk, Asterisk connecting to bridged's FastAGI port, the AGI environment arriving, bridged asking the
shop's database and getting its row, bridged's originate reaching Asterisk, the carrier's INVITE, and the
FastAGI answer. No tcpdump on the box: a raw AF_PACKET socket on ``lo`` (root, in the bench's network
namespace). Only the first line of each payload is kept (bench data: the bench's own fake numbers).
For diagnosis only: the capture thread wakes once per packet, a little CPU taken from the 2 cores.
"""

from __future__ import annotations

import argparse
import bisect
import socket
import statistics
import struct
import threading
from pathlib import Path

_ETH_P_ALL = 0x0003
_SO_TIMESTAMPNS = 35
_PACKET_OUTGOING = 4


class Capture:
    """Packets on ``lo`` written as ``<epoch seconds> <proto> <src:port> <dst:port> <flags> <len> <line>``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        self.path.write_text("".join(self._lines))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, address = self._sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            if address[2] == _PACKET_OUTGOING:  # loopback shows each packet twice: keep the received copy
                continue
            stamp = 0.0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    seconds, nanos = struct.unpack("qq", value[:16])
                    stamp = seconds + nanos / 1e9
            line = _describe(data[14:])  # the loopback's all-zero Ethernet header
            if line:
                self._lines.append(f"{stamp:.6f} {line}\n")


def _describe(ip: bytes) -> str | None:
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    header = (ip[0] & 0x0F) * 4
    proto = ip[9]
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    body = ip[header:]
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack("!HH", body[:4])
        payload, flags, name = body[8:], "-", "udp"
    elif proto == 6 and len(body) >= 20:
        sport, dport = struct.unpack("!HH", body[:4])
        offset = (body[12] >> 4) * 4
        bits = body[13]
        flags = "".join(c for c, b in (("S", 2), ("F", 1), ("R", 4), ("P", 8), ("A", 16)) if bits & b) or "-"
        payload, name = body[offset:], "tcp"
    else:
        return None
    if payload[:1] == b"\x81" and len(payload) > 4 and not payload[1] & 0x80:
        # A websocket text frame from Asterisk (unmasked): its JSON, without the header (whose length
        # bytes may hold a newline).
        payload = payload[{126: 4, 127: 10}.get(payload[1], 2) :]
    text = payload.split(b"\n", 1)[0][:60].decode("latin-1")
    first = "".join(c if c.isprintable() and c != " " else "_" for c in text) or "-"
    return f"{name} {src}:{sport} {dst}:{dport} {flags} {len(payload)} {first}"


# -- the breakdown --------------------------------------------------------------------------------------

_SIP, _AGI, _ARI, _PG = 5060, 4590, 8088, 55433
# A daemon's marks belong to a call whose manager INVITE came at most this long before (seconds).
_CALL_WINDOW = 0.2


def calls(path: Path, marks: Path | None = None, agi_port: int = _AGI) -> list[dict[str, float]]:
    """Each call's markers (a manager INVITE to ``*77``, ``*78`` or ``*79`` to the carrier's INVITE and the
    FastAGI answer on ``agi_port``): the packets' times, and the daemon's own marks (``bench.marks``,
    ``bench.floor``) that fall in the call's window."""
    out: list[dict[str, float]] = []
    call: dict[str, float] | None = None
    for raw in path.read_text().splitlines():
        fields = raw.split(" ", 6)
        if len(fields) != 7:
            continue
        stamp_text, proto, src, dst, flags, size_text, first = fields
        stamp, size = float(stamp_text), int(size_text)
        sport, dport = int(src.rsplit(":", 1)[1]), int(dst.rsplit(":", 1)[1])
        if proto == "udp" and dport == _SIP and first.startswith("INVITE_sip:*7") and src != dst:
            if call is None or "carrier_invite" in call:
                call = {"manager_invite": stamp}
                out.append(call)
            continue
        if call is None or "carrier_invite" in call and "agi_answer" in call:
            continue
        mark = None
        if proto == "udp" and dst.startswith("127.0.0.2:") and first.startswith("INVITE_"):
            mark = "carrier_invite"
        elif proto == "udp" and sport == _SIP and first.startswith("SIP/2.0_100"):
            mark = "trying_to_manager"
        elif proto == "tcp" and dport == agi_port and flags == "S":
            mark = "agi_syn"
        elif proto == "tcp" and dport == agi_port and size and first.startswith("agi_"):
            mark = "agi_env"
        elif proto == "tcp" and dport == _PG and size and "agi_env" in call:
            mark = "pg_query"
        elif proto == "tcp" and sport == _PG and size and "pg_query" in call:
            mark = "pg_answer"
        elif proto == "tcp" and dport == _ARI and size and first.startswith("POST_/ari/channels"):
            mark = "ari_originate"
        elif proto == "tcp" and sport == _ARI and first.startswith("HTTP/1.1") and "ari_originate" in call:
            mark = "ari_answer"
        elif proto == "tcp" and sport == agi_port and size and first.startswith("SET_VARIABLE_"):
            mark = "agi_answer"
        elif proto == "tcp" and sport == _ARI and size and '"StasisStart"' in first:
            mark = "stasis_start_event"  # the event websocket's frame (ari.conf pretty = no: one line)
        if mark and mark not in call:
            call[mark] = stamp
        if proto == "tcp" and dport == agi_port and size and "agi_answer" not in call:
            # Asterisk writes the environment a line at a time; the last part comes once bridged read.
            call["agi_env_last"] = stamp
    out = [c for c in out if "carrier_invite" in c]
    if marks is not None:
        _add_marks(out, marks)
    return out


def _add_marks(found: list[dict[str, float]], log_file: Path) -> None:
    starts = [c["manager_invite"] for c in found]
    for line in log_file.read_text(errors="replace").splitlines():
        _, sep, rest = line.partition("MARKS ")
        if not sep:
            continue
        pairs = [item.split("=", 1) for item in rest.split()]
        first = float(pairs[0][1])
        # The call whose manager INVITE came last before the first mark.
        index = bisect.bisect_right(starts, first) - 1
        if index < 0 or first - starts[index] > _CALL_WINDOW:
            continue  # before the first call, or a mark of calls in another capture (the same log)
        call = found[index]
        for name, stamp in pairs:
            call.setdefault(f"@{name}", float(stamp))


def report(path: Path, marks: Path | None = None, agi_port: int = _AGI) -> list[str]:
    """Per marker, in the order of their median time: the median and p99 since the manager's INVITE, and
    the median of the step from the marker before it."""
    found = calls(path, marks, agi_port)
    offsets: dict[str, list[float]] = {}
    for call in found:
        t0 = call["manager_invite"]
        for name, stamp in call.items():
            offsets.setdefault(name, []).append((stamp - t0) * 1000)
    order = sorted(offsets, key=lambda name: statistics.median(offsets[name]))
    lines = [f"{path.name}: {len(found)} calls; ms since the manager's INVITE, step: from the line above"]
    previous = None
    for name in order:
        values = sorted(offsets[name])
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        step = ""
        if previous is not None:
            deltas = [(c[name] - c[previous]) * 1000 for c in found if name in c and previous in c]
            step = f"  step p50={statistics.median(deltas):6.3f}" if deltas else ""
        median = statistics.median(values)
        lines.append(f"  {name:<26} n={len(values):<4} p50={median:7.3f} p99={p99:7.3f}{step}")
        previous = name
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.wire")
    parser.add_argument("capture", type=Path)
    parser.add_argument("--marks", type=Path, help="the bench.marks daemon's log (bridged.log)")
    parser.add_argument("--agi-port", type=int, default=_AGI, help=f"the FastAGI port (default {_AGI})")
    args = parser.parse_args()
    print("\n".join(report(args.capture, args.marks, args.agi_port)))
