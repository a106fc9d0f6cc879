"""``python -m demo.samples``: load config/asterisk/*.conf into a real Asterisk 22 and report on them.

The rig's Asterisk is started with the samples in place of its own http.conf, ari.conf, pjsip.conf and
extensions.conf (plus dialplan/bridged.conf, which the sample includes). Prints a JSON report: the PJSIP
endpoints Asterisk knows, whether ARI answers with the sample's credentials, and whether the managers'
dialplan is there. Runs in its own network namespace (the samples bind the standard ports 5060 and 8088).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "config" / "asterisk"
NETNS_MARK = "BRIDGED_SAMPLES_NETNS"
# What a manager's phone could put into its Request-URI to reach the trunk through dial-string syntax.
HOSTILE = "anna&PJSIP/15550001111@carrier"


def check_samples() -> dict[str, object]:
    """Start Asterisk with the samples (the caller must be in a private network namespace)."""
    from rig import Asterisk, ensure_asterisk_root

    class SampleAsterisk(Asterisk):
        def write_config(self) -> None:
            super().write_config()
            for name in ("http.conf", "ari.conf", "pjsip.conf", "extensions.conf"):
                shutil.copyfile(SAMPLES / name, self.etc / name)
            # Not part of the sample: two local calls into its [managers] context, one with a hostile
            # extension (dial-string syntax reaching the trunk), one with a colleague's name.
            with open(self.etc / "extensions.conf", "a") as conf:
                conf.write(f"\n[samples-probe]\nexten => hostile,1,Goto(managers,{HOSTILE},1)\n")
                conf.write("exten => colleague,1,Goto(managers,boris,1)\n")

    ast = SampleAsterisk(ensure_asterisk_root(), ari_password="change-me", instance=f"samples-{os.getpid()}")
    try:
        ast.start()
        endpoints = ast.cli("pjsip show endpoints")
        names = sorted(set(re.findall(r"^\s*Endpoint:\s+([\w-]+)", endpoints, re.M)))
        managers = ast.cli("dialplan show bridged-managers", check=False)
        carrier = ast.cli("dialplan show from-carrier", check=False)
        info = json.loads(ast.ari_get("/asterisk/info"))
        anna = ast.cli("pjsip show endpoint anna")
        # Before the probes: dialling the colleague (not registered) logs errors of its own.
        errors = [line for line in ast.log_text().splitlines() if "ERROR" in line]
        return {
            "endpoints": names,
            "ari": bool(info.get("system")),
            "bridged_managers_dialplan": "'_*77.'" in managers or "_*77." in managers,
            "anna": {
                opt: _option(anna, opt)
                for opt in (
                    "context",
                    "send_connected_line",
                    "send_pai",
                    "send_rpid",
                    "send_diversion",
                    "send_history_info",
                    "allow_transfer",
                )
            },
            "carrier_trust_id_inbound": _option(ast.cli("pjsip show endpoint carrier"), "trust_id_inbound"),
            # The carrier's extensions that go on to bridged-inbound (the shop's numbers).
            "carrier_to_bridged": re.findall(r"'([^']+)' =>\s+1\. Goto\(bridged-inbound,", carrier),
            "managers_dial": {name: _probe(ast, name) for name in ("hostile", "colleague")},
            "errors": errors,
        }
    finally:
        ast.stop()
        ast.cleanup()


def _probe(ast: Any, name: str) -> list[str]:
    """The dialplan applications the sample's [managers] context ran for probe ``name``, e.g.
    ``["GotoIf", "Dial", "Hangup"]`` (from Asterisk's verbose log)."""
    mark = len(ast.log_text())
    ast.cli(f"channel originate Local/{name}@samples-probe application Wait 1")
    ran: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ran = re.findall(r"Executing \[[^\]]*@managers:\d+\] (\w+)\(", ast.log_text()[mark:])
        if ran and ran[-1] == "Hangup":
            break
        time.sleep(0.1)
    return ran


def _option(text: str, name: str) -> str | None:
    match = re.search(rf"^\s*{re.escape(name)}\s*:\s*(\S*)", text, re.M)
    return match[1] if match else None


def main() -> int:
    sys.path.insert(0, str(REPO_ROOT))
    from rig.system import ensure_sbin_on_path

    ensure_sbin_on_path()  # the re-exec below runs `ip`, from /usr/sbin
    if os.geteuid() != 0:
        print("demo.samples: run as root", file=sys.stderr)
        return 2
    if os.environ.get(NETNS_MARK) != "1":
        env = dict(os.environ, **{NETNS_MARK: "1"})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return subprocess.run(
            [
                "unshare",
                "-n",
                "--",
                "sh",
                "-c",
                'ip link set lo up && exec "$0" -m demo.samples',
                sys.executable,
            ],
            env=env,
            cwd=REPO_ROOT,
        ).returncode
    print(json.dumps(check_samples(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
