"""Real-parts test rig for bridged: Asterisk 22 in a cached chroot, throwaway PostgreSQL, SIPp phones
and carriers.

Plain package (not installed): tests import it with the repo root on sys.path.
"""

from rig.system import ensure_sbin_on_path

# Before anything runs chroot, runuser or ip (see rig.system).
ensure_sbin_on_path()

from rig.asterisk import Asterisk, manager_endpoint_conf  # noqa: E402
from rig.postgres import Postgres  # noqa: E402
from rig.provision import ensure_asterisk_root  # noqa: E402
from rig.sipp import SCENARIOS_DIR, SipMessage, Sipp, make_tone_wav, parse_trace  # noqa: E402

__all__ = [
    "Asterisk",
    "Postgres",
    "SCENARIOS_DIR",
    "SipMessage",
    "Sipp",
    "ensure_asterisk_root",
    "make_tone_wav",
    "manager_endpoint_conf",
    "parse_trace",
]
