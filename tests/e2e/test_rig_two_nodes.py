"""Two Asterisk nodes in one network namespace (no bridged): node 1 on 127.0.0.1, node 2 (``asterisk_b``) on
127.0.0.3, one carrier at 127.0.0.2 that both reach, managers' phones on either node."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from rig import Asterisk, SipMessage, Sipp, manager_endpoint_conf

from .harness import ManagerPhone, carrier, dial, sox_rms, wait_for
from .test_http_calls import manager_phone

SMOKE_NUMBER = "15550002222"


def _sdp_media(message: SipMessage) -> tuple[str, int]:
    """The connection address and audio port of a message's SDP."""
    address = re.search(r"^c=IN IP4 (\S+)", message.text, re.M)
    port = re.search(r"^m=audio (\d+) ", message.text, re.M)
    assert address and port, message.text
    return address[1], int(port[1])


def _recording_with_audio(node: Asterisk, name: str) -> Path:
    """MixMonitor closes its file shortly after the channel hangs up."""
    wav = node.recordings_dir / f"{name}.wav"

    def stable_size() -> int:
        before = wav.stat().st_size if wav.exists() else -1
        time.sleep(0.3)
        after = wav.stat().st_size if wav.exists() else -2
        return after if after == before and after > 44 else 0

    wait_for(stable_size, 10, f"the recording {wav}")
    return wav


def test_a_call_through_each_node(asterisk, asterisk_b, rig_alloc, unique_name, trace_dir) -> None:
    nodes = {"a": asterisk, "b": asterisk_b}
    info = {key: json.loads(node.ari_get("/asterisk/info")) for key, node in nodes.items()}
    assert info["a"]["config"]["name"] == "rig" and info["b"]["config"]["name"] == "rig-2"
    assert info["a"]["system"]["entity_id"] != info["b"]["system"]["entity_id"]
    assert asterisk.base != asterisk_b.base and asterisk_b.base.name.endswith("-2")

    carrier_sipp = carrier(trace_dir, rig_alloc, hold_ms=15000, timeout_s=30, calls=2)
    managers: dict[str, Sipp] = {}
    recordings: dict[str, str] = {}
    for key, node in nodes.items():
        name = unique_name(f"two{key}")
        port = rig_alloc.sip_port()
        recordings[key] = unique_name(f"two{key}-rec")
        node.add_endpoints(
            name,
            manager_endpoint_conf(
                name, port, context="rig-smoke", set_vars={"RIG_RECORDING": recordings[key]}
            ),
        )
        phone = ManagerPhone(id=name, endpoint=name, sip_port=port, rtp_port=rig_alloc.rtp_port())
        managers[key] = dial(
            phone, trace_dir, SMOKE_NUMBER, hold_ms=3000, timeout_s=30, remote=node.sip_address
        )
    try:
        for manager in managers.values():
            assert manager.wait(timeout=35) == 0, manager.describe()
        assert carrier_sipp.wait(timeout=15) == 0, carrier_sipp.describe()
    finally:
        for sipp in (*managers.values(), carrier_sipp):
            sipp.stop()

    # Each node dialled the carrier from its own address, and the carrier was identified on each.
    invites = [m for m in carrier_sipp.received() if m.is_request and m.method == "INVITE"]
    senders = sorted(m.header("Via")[0].split()[1].split(";")[0] for m in invites)
    assert senders == ["127.0.0.1:5060", "127.0.0.3:5060"], senders
    for key, node in nodes.items():
        answer = next(m for m in managers[key].received() if m.status == 200 and m.method == "INVITE")
        address, port = _sdp_media(answer)
        low, high = node.rtp_ports
        assert address == node.address and low <= port <= high, (key, address, port)
        wav = _recording_with_audio(node, recordings[key])
        shutil.copyfile(wav, trace_dir / f"{key}-{wav.name}")
        assert sox_rms(wav) > 0.01, f"node {key}: the recording is silent (RTP did not flow)"


def _ari(node: Asterisk, method: str, path: str, **params: str) -> tuple[int, dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    req = urllib.request.Request(f"{node.ari_url}{path}?{query}", method=method)
    token = b64encode(f"{node.ari_user}:{node.ari_password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_phone_registered_on_node_b_is_reached_through_node_b_only(
    asterisk, asterisk_b, rig_alloc, unique_name, trace_dir
):
    name = unique_name("roam")
    port = rig_alloc.sip_port()
    for node in (asterisk, asterisk_b):
        node.add_endpoints(name, manager_endpoint_conf(name, port, registered=True))

    register = Sipp.start(
        "manager_register",
        local_ip="127.0.0.1",
        local_port=port,
        remote=asterisk_b.sip_address,
        keys={"user": name, "expires": "300"},
        trace_dir=trace_dir,
        timeout_s=10,
        name="register",
    )
    assert register.wait(timeout=15) == 0, register.describe()

    def states() -> tuple[str, ...]:
        return tuple(
            _ari(node, "GET", f"/endpoints/PJSIP/{name}")[1]["state"] for node in (asterisk, asterisk_b)
        )

    assert wait_for(lambda: states() == ("offline", "online"), 5, "the registration on node B only")
    # Node A has the endpoint but no contact: no channel at all, an error at once.
    status, body = _ari(asterisk, "POST", "/channels", endpoint=f"PJSIP/{name}", app="rig-none")
    assert (status, body.get("error")) == (500, "Allocation failed"), (status, body)

    phone = manager_phone(
        ManagerPhone(id=name, endpoint=name, sip_port=port, rtp_port=rig_alloc.rtp_port()),
        trace_dir,
        ring_ms=0,
        hold_ms=2000,
        timeout_s=15,
    )
    try:
        asterisk_b.cli(f"channel originate PJSIP/{name} application Wait 1")
        assert phone.wait(timeout=20) == 0, phone.describe()
    finally:
        phone.stop()
    invite = next(m for m in phone.received() if m.is_request and m.method == "INVITE")
    assert invite.header("Via")[0].split()[1].startswith("127.0.0.3:5060"), invite.text
