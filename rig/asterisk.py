"""Asterisk 22 nodes for a test session, run inside the cached chroot with a config set written from scratch.

Everything of one instance lives under ``ROOT/srv/rig-<pid>/`` (node 1) or ``ROOT/srv/rig-<pid>-<n>/``
(node n: etc, spool, run, log, db, lib, cache) so several sessions and several nodes share the chroot.
Ports are fixed and each node has a loopback address of its own (node 1: SIP 127.0.0.1:5060, HTTP/ARI
127.0.0.1:8088; a second node e.g. 127.0.0.3 with the same ports): the e2e tests run in their own network
namespace (``unshare -n``), where all of 127.0.0.0/8 is local.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DIALPLAN_SRC = REPO_ROOT / "dialplan" / "bridged.conf"

CARRIER_IP = "127.0.0.2"
CARRIER_PORT = 5060
# Where the carrier's calls land (the sample config/asterisk/extensions.conf has the same context): the
# shop's numbers go on to bridged-inbound (dialplan/bridged.conf), the rig's own test extensions to
# rig-inbound.
CARRIER_CONTEXT = "from-carrier"
# The shop's numbers (DIDs) on the rig: the carrier calls one of them (carrier_inbound.xml, -s <DID>).
# The first is the shop's caller id on outbound calls too (tests/e2e/harness.py SHOP_CALLER_ID).
SHOP_DIDS = ("+15550100", "+15550101")
# Numbers the shop owns and plants as canaries (tests/e2e/test_canaries.py): routed like SHOP_DIDS, and
# valid numbers, as a canary order's phone must be (an invalid one is never dialled anyway).
CANARY_DIDS = ("+12025550123", "+12025550124")

# Asterisk binds RTP on 0.0.0.0 whatever the SIP address: each node takes its own slice of ports so two
# nodes never race for one, and a trace tells them apart. SIPp media stays at 30000 and up.
NODE1_RTP_PORTS = (10000, 19999)
OTHER_NODES_RTP_BASE = 20000
OTHER_NODES_RTP_SLICE = 2000


def node_rtp_ports(node: int) -> tuple[int, int]:
    """Node 1 keeps 10000-19999; node n >= 2 gets 2000 ports from 20000 (node 2: 20000-21999)."""
    if node < 1 or node > 6:
        raise ValueError(f"node {node}: the rig has RTP ports for nodes 1 to 6")
    if node == 1:
        return NODE1_RTP_PORTS
    start = OTHER_NODES_RTP_BASE + (node - 2) * OTHER_NODES_RTP_SLICE
    return start, start + OTHER_NODES_RTP_SLICE - 1


# Modules not needed by bridged or the rig and noisy/slow at load time. Everything else autoloads.
NOLOAD = [
    # dialplan languages/switches we don't use
    "pbx_lua.so",
    "pbx_ael.so",
    "res_ael_share.so",
    "pbx_dundi.so",
    "pbx_realtime.so",
    # channel drivers other than PJSIP
    "chan_iax2.so",
    "chan_unistim.so",
    "chan_motif.so",
    "chan_console.so",
    "chan_websocket.so",
    "chan_audiosocket.so",
    "res_audiosocket.so",
    # CDR/CEL back ends (cdr_csv kept: a leak test can read Master.csv)
    "cdr_adaptive_odbc.so",
    "cdr_custom.so",
    "cdr_manager.so",
    "cdr_odbc.so",
    "cdr_pgsql.so",
    "cdr_radius.so",
    "cdr_sqlite3_custom.so",
    "cdr_tds.so",
    "cel_custom.so",
    "cel_manager.so",
    "cel_odbc.so",
    "cel_pgsql.so",
    "cel_radius.so",
    "cel_sqlite3_custom.so",
    "cel_tds.so",
    "res_cdrel_custom.so",
    # capture/monitoring/integrations
    "res_hep.so",
    "res_hep_pjsip.so",
    "res_hep_rtcp.so",
    "res_snmp.so",
    "res_prometheus.so",
    "res_statsd.so",
    "res_xmpp.so",
    "res_smdi.so",
    "res_calendar.so",
    "res_calendar_caldav.so",
    "res_calendar_ews.so",
    "res_calendar_exchange.so",
    "res_calendar_icalendar.so",
    "res_phoneprov.so",
    "res_pjsip_phoneprov_provider.so",
    "res_stir_shaken.so",
    "res_pjsip_stir_shaken.so",
    "res_aeap.so",
    "res_speech_aeap.so",
    "res_stasis_test.so",
    "res_resolver_unbound.so",
    "res_corosync.so",
    # realtime/odbc/ldap config back ends
    "res_config_curl.so",
    "res_config_ldap.so",
    "res_config_odbc.so",
    "res_config_pgsql.so",
    "res_config_sqlite3.so",
    "res_odbc.so",
    "res_odbc_transaction.so",
    "func_odbc.so",
    # apps that want config/hardware we don't have
    "app_voicemail.so",
    "app_voicemail_odbc.so",
    "app_minivm.so",
    "app_festival.so",
    "app_jack.so",
    "app_sms.so",
    "app_alarmreceiver.so",
    "app_adsiprog.so",
    "app_getcpeid.so",
    "res_adsi.so",
    "res_pjsip_send_to_voicemail.so",
    "app_audiosocket.so",
    "app_amd.so",
    "app_followme.so",
    "app_queue.so",
    "app_agent_pool.so",
    "app_confbridge.so",
    "app_page.so",
    "res_parking.so",
    "res_stun_monitor.so",
    "res_pjsip_publish_asterisk.so",
    "res_pjsip_notify.so",
    "res_pjsip_config_wizard.so",
]


def manager_endpoint_conf(
    name: str,
    sip_port: int | None,
    *,
    set_vars: dict[str, str] | None = None,
    context: str = "bridged-managers",
    host: str = "127.0.0.1",
    qualify_frequency: int = 0,
    registered: bool = False,
) -> str:
    """A deliberately hostile manager phone: it accepts every identity update Asterisk can send it.

    ``send_pai``/``send_rpid``/``send_connected_line``/``trust_id_outbound`` make any connected-line update
    that carries the customer's number visible in the manager SIPp trace; ``send_diversion`` (Asterisk's
    default) and ``send_history_info`` do the same for the redirecting party (an inbound call's Diversion or
    History-Info, which an originate with ``originator`` copies: docs/asterisk.md, "Inbound calls"). No
    auth; identified by From user.

    ``sip_port=None`` is a phone that is not registered: an AOR without a contact (ARI reports the
    endpoint ``offline``; see offline_manager_endpoint_conf). ``qualify_frequency`` > 0 makes Asterisk
    send OPTIONS to the contact every that many seconds: a contact on a port nobody answers turns
    ``Unreachable`` and the endpoint ``offline`` (a SIPp UAS scenario does not answer OPTIONS, so keep it 0
    for live phones).

    ``registered``: no static contact; the phone must REGISTER (``rig/scenarios/manager_register.xml``) on
    the node that is to reach it, as a real phone does (one contact, a new one replaces the old). A node
    the phone is not registered on then has the endpoint without a contact (``sip_port`` is unused).
    """
    lines = [
        f"[{name}]",
        "type=endpoint",
        "transport=transport-udp",
        f"context={context}",
        "disallow=all",
        "allow=ulaw",
        "direct_media=no",
        "dtmf_mode=info",
        "send_pai=yes",
        "send_rpid=yes",
        "send_connected_line=yes",
        "trust_id_outbound=yes",
        "send_diversion=yes",
        "send_history_info=yes",
        "identify_by=username",
        "rtp_symmetric=no",
        f"aors={name}",
    ]
    for key, value in (set_vars or {}).items():
        lines.append(f"set_var={key}={value}")
    lines += ["", f"[{name}]", "type=aor"]
    if registered:
        lines += ["max_contacts=1", "remove_existing=yes"]
    elif sip_port is None:
        lines.append("max_contacts=1")  # room for a REGISTER, none yet
    else:
        lines.append(f"contact=sip:{name}@{host}:{sip_port}")
    if qualify_frequency:
        lines += [f"qualify_frequency={qualify_frequency}", "qualify_timeout=0.5"]
    lines.append("")
    return "\n".join(lines)


def offline_manager_endpoint_conf(name: str, **kwargs: Any) -> str:
    """A manager whose phone is not registered (an AOR without a contact).

    ``GET /endpoints/PJSIP/<name>`` says ``"state": "offline"`` and an originate to it fails at once (see
    docs/asterisk.md, "Inbound calls")."""
    return manager_endpoint_conf(name, None, **kwargs)


def carrier_endpoint_conf(
    carrier_ip: str = CARRIER_IP,
    carrier_port: int = CARRIER_PORT,
    *,
    context: str = CARRIER_CONTEXT,
    **options: str,
) -> str:
    """The carrier trunk, hostile on purpose: it trusts the carrier's P-Asserted-Identity/Remote-Party-ID
    and connected-line updates (see docs/asterisk.md, "Making the tests honest"). ``options`` override or
    add endpoint options (``trust_id_inbound="no"``)."""
    endpoint = {
        "type": "endpoint",
        "transport": "transport-udp",
        "context": context,
        "disallow": "all",
        "allow": "ulaw",
        "direct_media": "no",
        "trust_id_inbound": "yes",
        "trust_connected_line": "yes",
        "send_pai": "yes",
        "send_rpid": "yes",
        "rtp_symmetric": "no",
        "aors": "carrier",
        **options,
    }
    lines = ["[carrier]", *(f"{key} = {value}" for key, value in endpoint.items())]
    lines += ["", "[carrier]", "type = aor", f"contact = sip:{carrier_ip}:{carrier_port}"]
    lines += ["", "[carrier]", "type = identify", "endpoint = carrier", f"match = {carrier_ip}", ""]
    return "\n".join(lines)


class AsteriskError(RuntimeError):
    pass


class Asterisk:
    """Runs ``/usr/sbin/asterisk -f -n`` in ``root`` with configuration under ``root/srv/rig-<pid>[-<node>]``.

    ``node`` (1, 2, ...) and ``address`` make further nodes in the same network namespace: SIP, HTTP/ARI
    bind on ``address`` (RTP on 0.0.0.0 with a port range per node, see ``node_rtp_ports``), and the
    instance folder, system name and entity id differ. The carrier is identified by its address on each.
    """

    def __init__(
        self,
        root: Path,
        *,
        ari_user: str = "bridged",
        ari_password: str = "rig-secret",
        http_port: int = 8088,
        sip_port: int = 5060,
        carrier_ip: str = CARRIER_IP,
        carrier_port: int = CARRIER_PORT,
        carrier_context: str = CARRIER_CONTEXT,
        dialplan_src: Path = DIALPLAN_SRC,
        instance: str | None = None,
        node: int = 1,
        address: str = "127.0.0.1",
    ) -> None:
        self.root = Path(root)
        self.node = node
        self.address = address
        self.rtp_ports = node_rtp_ports(node)
        self.instance = instance or (f"rig-{os.getpid()}" if node == 1 else f"rig-{os.getpid()}-{node}")
        self.inner = Path("/srv") / self.instance  # path as seen inside the chroot
        self.base = self.root / self.inner.relative_to("/")  # path as seen from the host
        self.etc = self.base / "etc"
        self._ari_user = ari_user
        self._ari_password = ari_password
        self.http_port = http_port
        self.sip_port = sip_port
        self.carrier_ip = carrier_ip
        self.carrier_port = carrier_port
        self.carrier_context = carrier_context
        self.dialplan_src = Path(dialplan_src)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self._endpoints: dict[str, list[str]] = {}

    # ---- properties -------------------------------------------------------------------------------------
    @property
    def ari_url(self) -> str:
        return f"http://{self.address}:{self.http_port}/ari"

    @property
    def ari_user(self) -> str:
        return self._ari_user

    @property
    def ari_password(self) -> str:
        return self._ari_password

    @property
    def recordings_dir(self) -> Path:
        """Host path of ``<astspooldir>/recording`` (where ARI and the smoke MixMonitor put recordings)."""
        return self.base / "spool" / "recording"

    @property
    def recordings_dir_inner(self) -> str:
        """The same folder as Asterisk sees it (inside the chroot)."""
        return str(self.inner / "spool" / "recording")

    @property
    def log_path(self) -> Path:
        return self.base / "log" / "messages"

    @property
    def console_path(self) -> Path:
        return self.base / "log" / "console.out"

    @property
    def sip_address(self) -> str:
        return f"{self.address}:{self.sip_port}"

    # ---- configuration ----------------------------------------------------------------------------------
    def _write(self, name: str, text: str) -> None:
        path = self.etc / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())

    def write_config(self) -> None:
        if self.base.exists():
            shutil.rmtree(self.base)
        for sub in (
            "etc/pjsip.d",
            "spool/recording",
            "spool/monitor",
            "spool/tmp",
            "spool/outgoing",
            "run",
            "log",
            "db",
            "cache",
            "moh",
            "lib/keys",
            "log/cdr-csv",
        ):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        inner = self.inner
        self._write(
            "asterisk.conf",
            f"""
            [directories]
            astcachedir => {inner}/cache
            astetcdir => {inner}/etc
            astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules
            astvarlibdir => /var/lib/asterisk
            astdbdir => {inner}/db
            astkeydir => {inner}/lib
            astdatadir => /usr/share/asterisk
            astagidir => /usr/share/asterisk/agi-bin
            astspooldir => {inner}/spool
            astrundir => {inner}/run
            astlogdir => {inner}/log
            astsbindir => /usr/sbin

            [options]
            verbose = 3
            debug = 0
            nofork = yes
            quiet = no
            timestamp = yes
            systemname = {"rig" if self.node == 1 else f"rig-{self.node}"}
            entityid = 02:00:00:00:00:{self.node:02x}
            defaultlanguage = en
            hideconnect = yes
            """,
        )
        noload = "\n".join(f"noload => {m}" for m in NOLOAD)
        self._write("modules.conf", f"[modules]\nautoload = yes\n{noload}\n")
        self._write(
            "http.conf",
            f"""
            [general]
            enabled = yes
            bindaddr = {self.address}
            bindport = {self.http_port}
            """,
        )
        self._write(
            "ari.conf",
            f"""
            [general]
            enabled = yes
            pretty = no
            allowed_origins = http://{self.address}:{self.http_port}

            [{self._ari_user}]
            type = user
            read_only = no
            password = {self._ari_password}
            password_format = plain
            """,
        )
        self._write(
            "logger.conf",
            """
            [general]
            dateformat = %F %T.%3q

            [logfiles]
            messages => notice,warning,error,verbose
            console => notice,warning,error
            """,
        )
        self._write("manager.conf", "[general]\nenabled = no\n")
        self._write("cdr.conf", "[general]\nenable = yes\n\n[csv]\nusegmtime = yes\nloguniqueid = yes\n")
        rtp_start, rtp_end = self.rtp_ports
        self._write("rtp.conf", f"[general]\nrtpstart = {rtp_start}\nrtpend = {rtp_end}\n")
        self._write("musiconhold.conf", f"[default]\nmode = files\ndirectory = {inner}/moh\n")
        _make_moh(self.base / "moh" / "rig-tone.wav")
        self._write("features.conf", "[general]\n")
        for empty in (
            "websocket_client.conf",
            "res_http_media_cache.conf",
            "cli_aliases.conf",
            "pjsip_wizard.conf",
            "geolocation.conf",
            "pjproject.conf",
            "cel.conf",
            "acl.conf",
            "udptl.conf",
            "ccss.conf",
        ):
            self._write(empty, "; intentionally empty (keeps the log free of 'missing config' errors)\n")
        stock = self.root / "etc" / "asterisk" / "indications.conf"  # ringback/busy tones for Dial's r option
        if stock.exists():
            shutil.copyfile(stock, self.etc / "indications.conf")
        self._write(
            "pjsip.conf",
            f"""
            [global]
            type = global
            user_agent = bridged-rig
            endpoint_identifier_order = ip,username,anonymous

            [transport-udp]
            type = transport
            protocol = udp
            bind = {self.address}:{self.sip_port}

            ; The carrier trunk (pjsip-carrier.conf, rewritten by configure_carrier()).
            #include pjsip-carrier.conf

            #include pjsip.d/*.conf
            """,
        )
        self._write_carrier()
        # pjsip's #include with a glob that matches nothing is fine, but keep a file there anyway.
        (self.etc / "pjsip.d" / "00-empty.conf").write_text("; per-test endpoints are written next to this\n")
        (self.etc / "extensions.d").mkdir(exist_ok=True)
        (self.etc / "extensions.d" / "00-empty.conf").write_text("; per-test contexts go next to this\n")
        # One line per DID, indented like the text around it (dedent below).
        dids = "\n            ".join(
            f"exten => {d},1,Goto(bridged-inbound,${{EXTEN}},1)" for d in SHOP_DIDS + CANARY_DIDS
        )
        self._write(
            "extensions.conf",
            f"""
            [general]
            static = yes
            writeprotect = yes
            clearglobalvars = no

            [globals]
            RIG_RECORDINGS = {self.recordings_dir_inner}

            #include bridged.conf

            ; Rig self-test (tests/e2e/test_rig_smoke.py): plain Dial to the carrier, recorded with MixMonitor
            ; into <recordings>/${{RIG_RECORDING}}.wav. Endpoint set_var: RIG_RECORDING, RIG_DIAL_TIMEOUT.
            [rig-smoke]
            exten => _X.,1,NoOp(rig smoke call)
             same => n,Set(REC=${{IF($["${{RIG_RECORDING}}" = ""]?smoke:${{RIG_RECORDING}})}})
             same => n,MixMonitor({self.recordings_dir_inner}/${{REC}}.wav)
             same => n,Set(TMO=${{IF($["${{RIG_DIAL_TIMEOUT}}" = ""]?20:${{RIG_DIAL_TIMEOUT}})}})
             same => n,Dial(PJSIP/${{EXTEN}}@carrier,${{TMO}})
             same => n,Hangup()

            ; DTMF self-test: answer, read 4 digits, log them, hang up (Asterisk sends the BYE).
            [rig-dtmf]
            exten => _X.,1,Answer()
             same => n,Read(DIGITS,,4,,,5)
             same => n,Verbose(1,RIG-DTMF ${{CHANNEL(endpoint)}} got ${{DIGITS}})
             same => n,Hangup()

            ; The carrier's calls (the carrier endpoint's context), as in the sample extensions.conf: the
            ; shop's numbers (SHOP_DIDS) go to bridged-inbound (dialplan/bridged.conf), the rig's own test
            ; extensions (rig-*, never a number) to rig-inbound, anything else is refused (404).
            [from-carrier]
            include => rig-inbound
            {dids}
            exten => _X.,1,Hangup(1)
            exten => _+X.,1,Hangup(1)

            ; Inbound self-tests (tests/e2e/test_rig_inbound.py): carrier_inbound.xml calls -s rig-<what>.
            ; Every call first logs what Asterisk made of the carrier's identity headers, in verbose lines
            ; "RIG-INBOUND <uniqueid> <field>=<value>" (the rig's own log: it may hold test numbers).
            [rig-inbound]
            exten => _rig-.,1,Verbose(1,RIG-INBOUND ${{UNIQUEID}} exten=${{EXTEN}})
             same => n,Verbose(1,RIG-INBOUND ${{UNIQUEID}} caller=${{CALLERID(all)}})
             same => n,Verbose(1,RIG-INBOUND ${{UNIQUEID}} pres=${{CALLERID(pres)}})
             same => n,Verbose(1,RIG-INBOUND ${{UNIQUEID}} connected=${{CONNECTEDLINE(all)}})
             same => n,Verbose(1,RIG-INBOUND ${{UNIQUEID}} redirecting-from=${{REDIRECTING(from-num)}})
             same => n,Verbose(1,RIG-INBOUND ${{UNIQUEID}} redirecting-orig=${{REDIRECTING(orig-num)}})
             same => n,Verbose(1,RIG-INBOUND ${{UNIQUEID}} redirecting-to=${{REDIRECTING(to-num)}})
             same => n,Verbose(1,RIG-INBOUND ${{UNIQUEID}} redirecting-reason=${{REDIRECTING(reason)}})
             same => n,Verbose(1,RIG-INBOUND ${{UNIQUEID}} redirecting-count=${{REDIRECTING(count)}})
             same => n,Goto(rig-inbound-do,${{EXTEN}},1)

            [rig-inbound-do]
            ; answer and send the caller's audio back until the carrier hangs up
            exten => rig-answer,1,Answer()
             same => n,Echo()
            ; answer, a short prompt, then Asterisk hangs up (sends the BYE)
            exten => rig-answer-hangup,1,Answer()
             same => n,Playback(beep)
             same => n,Hangup()
            ; 180 and nothing more (the carrier gives up: CANCEL)
            exten => rig-ring,1,Ringing()
             same => n,Wait(120)
            ; 183 with early media (a tone) until the carrier gives up
            exten => rig-progress,1,Progress()
             same => n,Playtones(ring)
             same => n,Wait(120)
            ; a final failure answer with this SIP code, e.g. rig-reject-486
            exten => _rig-reject-XXX,1,PJSIPHangup(${{EXTEN:11}})
            ; a plain Dial() of a (manager) endpoint: rig-dial-<endpoint>, ring time RIG_DIAL_TIMEOUT (20 s)
            exten => _rig-dial-.,1,Set(TMO=${{IF($["${{RIG_DIAL_TIMEOUT}}" = ""]?20:${{RIG_DIAL_TIMEOUT}})}})
             same => n,Dial(PJSIP/${{FILTER(a-z0-9,${{EXTEN:9}})}},${{TMO}})
             same => n,Verbose(1,RIG-INBOUND-DIAL ${{UNIQUEID}} ${{DIALSTATUS}} ${{HANGUPCAUSE}})
             same => n,Hangup()

            ; Per-test contexts (add_dialplan()).
            #include extensions.d/*.conf
            """,
        )
        self._copy_dialplan()

    def _write_carrier(self, **options: str) -> None:
        options = {"context": self.carrier_context, **options}
        conf = carrier_endpoint_conf(self.carrier_ip, self.carrier_port, **options)
        (self.etc / "pjsip-carrier.conf").write_text(conf)

    def _copy_dialplan(self) -> None:
        dst = self.etc / "bridged.conf"
        if self.dialplan_src.exists():
            shutil.copyfile(self.dialplan_src, dst)
        else:
            dst.write_text(f"; {self.dialplan_src} does not exist yet\n")

    # ---- lifecycle --------------------------------------------------------------------------------------
    def _conf_arg(self) -> list[str]:
        return ["-C", str(self.inner / "etc" / "asterisk.conf")]

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            raise AsteriskError("already started")
        t0 = time.monotonic()
        self.write_config()
        console = open(self.console_path, "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            ["chroot", str(self.root), "/usr/sbin/asterisk", *self._conf_arg(), "-f", "-n"],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        console.close()
        try:
            self._wait_ari(deadline=t0 + timeout)
            self._wait_fully_booted(deadline=t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def _wait_ari(self, deadline: float) -> None:
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AsteriskError(f"asterisk exited with {self.proc.returncode}; see {self.console_path}")
            try:
                self.ari_get("/asterisk/info", timeout=1.0)
                return
            except (OSError, urllib.error.URLError) as exc:
                last = exc
            time.sleep(0.1)
        raise AsteriskError(f"ARI did not answer at {self.ari_url} in time ({last}); see {self.log_path}")

    def _wait_fully_booted(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            out = self.cli("core waitfullybooted", check=False)
            if "fully booted" in out.lower():
                return
            time.sleep(0.1)
        raise AsteriskError("asterisk did not reach FullyBooted")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            subprocess.run(
                ["chroot", str(self.root), "/usr/sbin/asterisk", *self._conf_arg(), "-rx", "core stop now"],
                capture_output=True,
                timeout=5,
            )
        except subprocess.TimeoutExpired:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> Asterisk:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- control ----------------------------------------------------------------------------------------
    def cli(self, cmd: str, *, check: bool = True, timeout: float = 10.0) -> str:
        res = subprocess.run(
            ["chroot", str(self.root), "/usr/sbin/asterisk", *self._conf_arg(), "-rx", cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AsteriskError(f"asterisk -rx {cmd!r} failed ({res.returncode}): {res.stdout}{res.stderr}")
        # The remote console prints this itself (no NIC inside the test's network namespace).
        return "".join(
            line
            for line in res.stdout.splitlines(keepends=True)
            if not line.startswith("No ethernet interface found for seeding global EID")
        )

    def ari_get(self, path: str, timeout: float = 5.0) -> bytes:
        """Plain synchronous GET on ARI (for the rig itself and for test assertions)."""
        with urllib.request.urlopen(self._ari_request("GET", path), timeout=timeout) as resp:
            return resp.read()

    def ari(
        self, method: str, path: str, params: dict[str, str] | None = None, *, timeout: float = 5.0
    ) -> tuple[int, Any]:
        """One synchronous ARI request with query ``params``: ``(status, JSON body or None)``; an HTTP
        error is returned, not raised (a test asserts on it)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(self._ari_request(method, path + query), timeout=timeout) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        return status, json.loads(body) if body else None

    def _ari_request(self, method: str, path: str) -> urllib.request.Request:
        req = urllib.request.Request(self.ari_url + path, method=method)
        token = base64.b64encode(f"{self._ari_user}:{self._ari_password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        return req

    def add_endpoints(self, name: str, conf_text: str, *, timeout: float = 10.0) -> list[str]:
        """Write ``pjsip.d/<name>.conf``, reload res_pjsip and wait until every endpoint in it is known.

        Returns the endpoint names found in ``conf_text`` (sections with ``type=endpoint``).
        """
        (self.etc / "pjsip.d" / f"{name}.conf").write_text(conf_text)
        endpoints = _endpoint_names(conf_text)
        self._endpoints[name] = endpoints
        self.cli("module reload res_pjsip.so")
        deadline = time.monotonic() + timeout
        for ep in endpoints:
            while True:
                out = self.cli(f"pjsip show endpoint {ep}", check=False)
                if "Unable to find object" not in out and f"Endpoint:  {ep}" in out:
                    break
                if time.monotonic() > deadline:
                    raise AsteriskError(f"endpoint {ep} not loaded after reload:\n{out}\nsee {self.log_path}")
                time.sleep(0.1)
        return endpoints

    def remove_endpoints(self, name: str) -> None:
        path = self.etc / "pjsip.d" / f"{name}.conf"
        if path.exists():
            path.unlink()
            self._endpoints.pop(name, None)
            self.cli("module reload res_pjsip.so")

    def configure_carrier(self, **options: str) -> None:
        """Rewrite the carrier trunk with ``options`` over the rig's (hostile) ones and reload res_pjsip;
        no options puts the rig's own back. ``context`` is the carrier endpoint's context.

        The instance is shared by a test session: a test that changes the carrier restores it
        (``try: ... finally: asterisk.configure_carrier()``)."""
        self._write_carrier(**options)
        self.cli("module reload res_pjsip.so")
        expected = {key: value for key, value in options.items() if key in ("context", "trust_id_inbound")}
        deadline = time.monotonic() + 10
        while True:
            out = self.cli("pjsip show endpoint carrier", check=False)
            if all(_show_value(out, key) == _pjsip_bool(value) for key, value in expected.items()):
                return
            if time.monotonic() > deadline:
                raise AsteriskError(f"carrier options {expected} not applied after reload:\n{out}")
            time.sleep(0.1)

    def add_dialplan(self, name: str, text: str) -> None:
        """Write ``extensions.d/<name>.conf`` (contexts of one test) and reload the dialplan."""
        (self.etc / "extensions.d" / f"{name}.conf").write_text(textwrap.dedent(text).lstrip())
        self.cli("dialplan reload")

    def remove_dialplan(self, name: str) -> None:
        path = self.etc / "extensions.d" / f"{name}.conf"
        if path.exists():
            path.unlink()
            self.cli("dialplan reload")

    def endpoint_state(self, technology_name: str) -> str:
        """ARI's ``state`` of an endpoint (``PJSIP/anna``): ``online``, ``offline`` or ``unknown``."""
        return str(json.loads(self.ari_get(f"/endpoints/{technology_name}"))["state"])

    def reload_dialplan(self) -> None:
        """Copy dialplan/bridged.conf again and run ``dialplan reload``."""
        self._copy_dialplan()
        self.cli("dialplan reload")

    def cleanup(self) -> None:
        """Remove the instance folder (config, spool, logs) from the chroot. Call after stop()."""
        if self.running:
            raise AsteriskError("stop() first")
        shutil.rmtree(self.base, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _endpoint_names(conf_text: str) -> list[str]:
    names: list[str] = []
    section: str | None = None
    for raw in conf_text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if line.startswith("[") and "]" in line:
            section = line[1 : line.index("]")]
        elif section and line.replace(" ", "") == "type=endpoint" and section not in names:
            names.append(section)
    return names


def _show_value(text: str, name: str) -> str | None:
    """One option's value in ``pjsip show endpoint`` output."""
    match = re.search(rf"^\s*{re.escape(name)}\s*:\s*(\S*)", text, re.M)
    return match[1] if match else None


def _pjsip_bool(value: str) -> str:
    """How ``pjsip show endpoint`` prints an option value (booleans as true/false)."""
    return {"yes": "true", "no": "false"}.get(value, value)


def _make_moh(path: Path) -> None:
    """A quiet 16-bit 8 kHz tone for the default music-on-hold class (format_wav)."""
    if shutil.which("sox"):
        subprocess.run(
            [
                "sox",
                "-n",
                "-r",
                "8000",
                "-c",
                "1",
                "-b",
                "16",
                "-e",
                "signed-integer",
                str(path),
                "synth",
                "5",
                "sine",
                "350",
                "vol",
                "0.2",
            ],
            check=False,
            capture_output=True,
        )
