"""One demo call on an Asterisk and a PostgreSQL that are already running.

The settings are the hostile ones of the end-to-end tests ("Making the tests honest" in docs/asterisk.md): the
manager's endpoint accepts every identity header (``send_pai``, ``send_rpid``), the carrier trunk trusts the
carrier's identity, and the carrier answers with the customer's number in P-Asserted-Identity. If bridged let
the number through, the manager's SIP trace would show it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig import Asterisk, Postgres, Sipp
from rig.asterisk import CARRIER_IP, CARRIER_PORT, manager_endpoint_conf
from tests.e2e.harness import Bridged, ManagerPhone, number_leaks, sox_rms, wait_for

SHOP_DB = "demo_shop"
BRIDGED_DB = "demo_bridged"
API_TOKEN = "demo-shop-token-0123456789"
IDENTITY_HEADERS = ("From", "P-Asserted-Identity", "Remote-Party-ID")


@dataclass
class DemoCall:
    """What the demo call is made of; the defaults are the quickstart's."""

    order_id: str = "123"
    customer_number: str = "+49 30 5550 1234"
    customer_name: str = "Ivan Petrov"
    manager_id: str = "anna"
    manager_endpoint: str = "anna"
    manager_sip_port: int = 5100
    manager_rtp_port: int = 30000
    carrier_rtp_port: int = 30100
    hold_ms: int = 4000  # how long the call stays bridged before the manager hangs up
    http: bool = False  # place the call with POST /v1/calls instead of the phone dialling *77<order>


@dataclass
class DemoResult:
    call: DemoCall
    row: dict[str, Any]
    recording: Path | None
    recording_bytes: int
    recording_rms: float | None
    identity_lines: list[str]
    carrier_got_number: bool  # the carrier's own messages did carry the number (the setup is really hostile)
    customer_saw: str = ""  # From of the customer leg's INVITE
    leaks: dict[str, list[str]] = field(default_factory=dict)
    http_status: dict[str, Any] | None = None

    @property
    def leaked(self) -> bool:
        return any(self.leaks.values())

    def report(self) -> str:
        row = self.row
        duration = row.get("duration")
        lines = [
            "",
            f"== call row in bridged's database ({BRIDGED_DB}.calls)",
            f"   id:         {row.get('id')}",
            f"   order:      {row.get('order_id')}",
            f"   manager:    {row.get('manager_id')}",
            f"   direction:  {row.get('direction', '')}",
            f"   outcome:    {row.get('outcome')} (ended by {row.get('ended_by')})",
            f"   duration:   {f'{duration:.1f} s' if duration is not None else '-'}",
            f"   recording:  {row.get('recording_name')}",
        ]
        if self.http_status is not None:
            lines.append(
                f"   GET /v1/calls/{row.get('id')}: state={self.http_status.get('state')} "
                f"outcome={self.http_status.get('outcome')}"
            )
        lines += ["", "== recording"]
        if self.recording is not None:
            rms = f"{self.recording_rms:.3f}" if self.recording_rms is not None else "?"
            lines.append(f"   {self.recording}: {self.recording_bytes} bytes, RMS amplitude {rms} (sox)")
        else:
            lines.append("   none")
        lines += ["", "== what the manager's phone was told about the other side (SIP headers received)"]
        lines += [f"   {line}" for line in self.identity_lines] or ["   (no identity headers)"]
        lines += [
            "",
            "== what the customer's phone was shown (From of the INVITE the carrier received)",
            f"   {self.customer_saw or '?'}",
        ]
        lines += [
            "",
            f"== the customer's number ({_masked(self.call.customer_number)}, any format) in:",
            f"   carrier's messages (it answered with the number in P-Asserted-Identity): "
            f"{'found' if self.carrier_got_number else 'NOT found'}",
        ]
        for where, found in self.leaks.items():
            lines.append(f"   {where}: {'FOUND ' + repr(found[:2]) if found else 'not found'}")
        lines += ["", f"number reached the manager: {'YES' if self.leaked else 'NO'}"]
        return "\n".join(lines)


def _masked(number: str) -> str:
    digits = re.sub(r"\D", "", number)
    return f"...{digits[-4:]}" if len(digits) > 4 else "..."


class DemoBridged(Bridged):
    """The e2e harness's bridged subprocess, on the demo's own databases (the session's stay untouched)."""

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["database"]["dsn"] = self.postgres.dsn(BRIDGED_DB)
        cfg["orders"]["dsn"] = self.orders_dsn or self.postgres.dsn(SHOP_DB)
        cfg["managers"] = [
            {"id": m.id, "name": "Anna K.", "endpoint": m.endpoint, "team": "north"} for m in self.managers
        ]
        cfg["trunk"]["caller_id"] = '"My Shop" <+15550100>'
        cfg["logging"]["level"] = "INFO"
        cfg["api"] = {
            "tokens": [
                {
                    "name": "demo-shop",
                    "role": "shop",
                    "sha256": hashlib.sha256(API_TOKEN.encode()).hexdigest(),
                }
            ],
        }
        return cfg

    def sql(self, query: str) -> str:
        return self.postgres.execute(BRIDGED_DB, query)


def prepare_shop(postgres: Postgres, call: DemoCall) -> None:
    """The shop's database with one order, and an empty database for bridged (schema made at its start)."""
    for name in (SHOP_DB, BRIDGED_DB):
        postgres.drop_database(name)
        postgres.create_database(name)
    postgres.execute(
        SHOP_DB,
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_phone text, customer_name text, manager text);"
        f"INSERT INTO orders VALUES ({int(call.order_id)}, '{call.customer_number}', "
        f"'{call.customer_name}', '{call.manager_id}')",
    )


def _sipp(
    scenario: str,
    *,
    ip: str,
    port: int,
    rtp: int,
    trace_dir: Path,
    name: str,
    keys: dict[str, str],
    remote: str | None = None,
    service: str | None = None,
) -> Sipp:
    sipp = Sipp.start(
        scenario,
        local_ip=ip,
        local_port=port,
        remote=remote,
        service=service,
        keys=keys,
        trace_dir=trace_dir,
        rtp_port=rtp,
        timeout_s=60,
        name=name,
    )
    if remote is None:
        sipp.wait_listening()
    return sipp


def _http(port: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {API_TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _identity_lines(phone: Sipp) -> list[str]:
    """Identity headers of every message the phone received (the From of a response is the phone's own)."""
    out: list[str] = []
    for msg in phone.received():
        what = msg.method if msg.is_request else msg.first_line.split(" ", 1)[1]
        headers = IDENTITY_HEADERS if msg.is_request else IDENTITY_HEADERS[1:]
        for header in headers:
            for value in msg.header(header):
                line = f"{what:<12} {header}: {value}"
                if line not in out:
                    out.append(line)
    return out


def _customer_saw(carrier: Sipp) -> str:
    """The From of the customer leg's INVITE: the shop's caller id."""
    for msg in carrier.received():
        if msg.is_request and msg.method == "INVITE":
            return (msg.header("From") or [""])[0].split(";tag=")[0]
    return ""


def run_demo(
    asterisk: Asterisk, postgres: Postgres, workdir: Path, call: DemoCall | None = None
) -> DemoResult:
    """Place one masked call through ``asterisk`` and report what every party saw.

    ``workdir`` receives the SIPp traces, bridged's config and log, and a copy of the recording.
    """
    call = call or DemoCall()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    prepare_shop(postgres, call)

    manager = ManagerPhone(
        id=call.manager_id,
        endpoint=call.manager_endpoint,
        sip_port=call.manager_sip_port,
        rtp_port=call.manager_rtp_port,
    )
    daemon = DemoBridged(asterisk, postgres, workdir, [manager], policy="own")
    endpoints_file = f"demo_{call.manager_endpoint}"
    asterisk.add_endpoints(
        endpoints_file,
        manager_endpoint_conf(manager.endpoint, manager.sip_port, set_vars={"BRIDGED_AGI": daemon.agi_url}),
    )
    sipps: list[Sipp] = []
    try:
        daemon.start()
        carrier = _sipp(
            "carrier_answer",
            ip=CARRIER_IP,
            port=CARRIER_PORT,
            rtp=call.carrier_rtp_port,
            trace_dir=workdir,
            name="carrier",
            keys={"hold_ms": "30000", "ring_ms": "300"},
        )
        sipps.append(carrier)
        http_status = None
        if call.http:
            # The manager's phone answers bridged's call (a UAS on its contact), then hangs up after hold_ms.
            phone = _sipp(
                "carrier_answer",
                ip="127.0.0.1",
                port=manager.sip_port,
                rtp=manager.rtp_port,
                trace_dir=workdir,
                name="manager",
                keys={"hold_ms": str(call.hold_ms), "ring_ms": "500"},
            )
            sipps.append(phone)
            status, body = _http(
                daemon.http_port, "POST", "/v1/calls", {"order_id": call.order_id, "manager_id": manager.id}
            )
            if status != 202:
                raise RuntimeError(f"POST /v1/calls answered {status}: {body}")
            call_id = body["id"]
        else:
            phone = _sipp(
                "manager_call",
                ip="127.0.0.1",
                port=manager.sip_port,
                rtp=manager.rtp_port,
                trace_dir=workdir,
                name="manager",
                remote=asterisk.sip_address,
                service=f"*77{call.order_id}",
                keys={"user": manager.endpoint, "hold_ms": str(call.hold_ms), "dtmf": ""},
            )
            sipps.append(phone)
            call_id = None
        if phone.wait(timeout=60) != 0:
            raise RuntimeError(f"the manager's phone failed:\n{phone.describe()}")
        carrier.wait(timeout=20)

        def ended() -> dict[str, Any] | None:
            rows = [r for r in daemon.call_rows(manager.id) if r["state"] == "ended"]
            return rows[-1] if rows else None

        row = wait_for(ended, 10, "the call row to be ended")
        if call_id is not None:
            http_status = _http(daemon.http_port, "GET", f"/v1/calls/{call_id}")[1]

        recording, size, rms = None, 0, None
        if row.get("recording_name"):
            src = asterisk.recordings_dir / f"{row['recording_name']}.wav"
            if wait_for(src.exists, 10, "the recording file"):
                recording = workdir / "recording.wav"
                shutil.copyfile(src, recording)
                size = recording.stat().st_size
                rms = sox_rms(recording) if size > 44 else 0.0

        received = "\n".join(m.text for m in phone.received())
        leaks = {
            "SIP messages received by the manager's phone": number_leaks(received, call.customer_number),
            "bridged's log": number_leaks(daemon.log_text(), call.customer_number),
            "bridged's database (calls, audit)": number_leaks(daemon.dump_database(), call.customer_number),
        }
        if http_status is not None:
            leaks["HTTP API answer"] = number_leaks(json.dumps(http_status), call.customer_number)
        return DemoResult(
            call=call,
            row=row,
            recording=recording,
            recording_bytes=size,
            recording_rms=rms,
            identity_lines=_identity_lines(phone),
            customer_saw=_customer_saw(carrier),
            carrier_got_number=bool(number_leaks(carrier.messages(), call.customer_number)),
            leaks=leaks,
            http_status=http_status,
        )
    finally:
        for sipp in sipps:
            sipp.stop()
        daemon.stop()
        asterisk.remove_endpoints(endpoints_file)
