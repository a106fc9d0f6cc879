"""Real-parts test rig for bridged: Asterisk 22 in a cached chroot, throwaway PostgreSQL, SIPp phones
and carriers.

Plain package (not installed): tests import it with the repo root on sys.path.
"""

from rig.asterisk import Asterisk, manager_endpoint_conf
from rig.postgres import Postgres
from rig.provision import ensure_asterisk_root
from rig.sipp import SCENARIOS_DIR, SipMessage, Sipp, make_tone_wav, parse_trace

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
