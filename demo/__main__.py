"""``python -m demo [--http] [--keep]``: one masked call on real parts, then the verdict.

Run as root from the repository root (``scripts/demo`` installs and provisions first). The demo re-executes
itself inside a private network namespace (``unshare -n``) so the fixed ports of the rig (SIP 5060, ARI 8088,
PostgreSQL 55432, carrier 127.0.0.2:5060) never meet anything on the host, then starts a throwaway PostgreSQL,
Asterisk 22 from the cached chroot, bridged, and two SIPp processes, and stops them all at the end.

Exit status: 0 when the customer's number reached neither the manager's phone nor bridged's log or database,
1 when it did, 2 when the demo could not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NETNS_MARK = "BRIDGED_DEMO_NETNS"


def _in_private_netns() -> bool:
    return os.environ.get(NETNS_MARK) == "1"


def _reexec_in_netns(argv: list[str]) -> int:
    env = dict(os.environ, **{NETNS_MARK: "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [
        "unshare",
        "-n",
        "--",
        "sh",
        "-c",
        'ip link set lo up && exec "$0" -m demo "$@"',
        sys.executable,
        *argv,
    ]
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--http",
        action="store_true",
        help="place the call with POST /v1/calls (the manager's phone rings first)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep Asterisk's instance folder in the chroot after the demo"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=REPO_ROOT / "artifacts" / "demo",
        help="where SIP traces, bridged's log and the recording go (default artifacts/demo)",
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    from rig.system import ensure_sbin_on_path

    ensure_sbin_on_path()  # the re-exec below runs `ip`, from /usr/sbin
    if os.geteuid() != 0:
        print(
            "demo: run as root (Asterisk runs in a chroot, the demo in its own network namespace)",
            file=sys.stderr,
        )
        return 2
    if not _in_private_netns():
        return _reexec_in_netns(argv)

    from demo.core import DemoCall, run_demo
    from rig import Asterisk, Postgres, ensure_asterisk_root

    t0 = time.monotonic()
    shutil.rmtree(args.artifacts, ignore_errors=True)
    args.artifacts.mkdir(parents=True)
    root = ensure_asterisk_root()
    pg = Postgres(port=55432)
    ast = Asterisk(root, instance=f"demo-{os.getpid()}")
    try:
        print("demo: starting PostgreSQL (throwaway cluster) ...", flush=True)
        pg.start()
        print("demo: starting Asterisk 22 (chroot) with dialplan/bridged.conf ...", flush=True)
        ast.start()
        version = ast.cli("core show version").strip()
        print(f"demo: {version.splitlines()[0] if version else 'Asterisk'}", flush=True)
        call = DemoCall(http=args.http)
        how = "POST /v1/calls" if args.http else f"the manager's phone dials *77{call.order_id}"
        print(
            f"demo: order {call.order_id} of {call.customer_name} (manager {call.manager_id}); {how}; "
            f"the carrier answers with the customer's number in P-Asserted-Identity ...",
            flush=True,
        )
        result = run_demo(ast, pg, args.artifacts, call)
    except Exception as exc:  # noqa: BLE001 - the demo reports and exits 2
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        for path in (ast.log_path,):
            if path.exists():
                shutil.copyfile(path, args.artifacts / "asterisk-messages.log")
        print(f"demo: traces and logs in {args.artifacts}", file=sys.stderr)
        return 2
    finally:
        if ast.log_path.exists():
            shutil.copyfile(ast.log_path, args.artifacts / "asterisk-messages.log")
        ast.stop()
        if not args.keep:
            ast.cleanup()
        pg.stop()

    print(result.report())
    print(
        f"\n(SIP traces, bridged.yaml, bridged.log, recording.wav in {args.artifacts}; "
        f"{time.monotonic() - t0:.1f} s)"
    )
    if result.leaked:
        return 1
    if result.row.get("outcome") != "completed":
        outcome = result.row.get("outcome")
        print(
            f"demo: the call did not complete (outcome {outcome}): the verdict proves little", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
