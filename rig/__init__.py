"""Real-parts test rig for bridged: Asterisk 22 in a cached chroot, throwaway PostgreSQL, SIPp phones
and carriers.

Plain package (not installed): tests import it with the repo root on sys.path.
"""

from rig.system import ensure_sbin_on_path

# Before anything runs chroot, runuser or ip (see rig.system).
ensure_sbin_on_path()

from rig.asterisk import (  # noqa: E402
    CANARY_DIDS,
    SHOP_DIDS,
    Asterisk,
    carrier_endpoint_conf,
    manager_endpoint_conf,
    offline_manager_endpoint_conf,
)
from rig.postgres import Postgres  # noqa: E402
from rig.provision import ensure_asterisk_root  # noqa: E402
from rig.sipp import (  # noqa: E402
    NEVER_MS,
    SCENARIOS_DIR,
    SipMessage,
    Sipp,
    call_in,
    make_tone_wav,
    parse_trace,
    ring_phone,
)

__all__ = [
    "NEVER_MS",
    "CANARY_DIDS",
    "SHOP_DIDS",
    "Asterisk",
    "Postgres",
    "SCENARIOS_DIR",
    "SipMessage",
    "Sipp",
    "call_in",
    "carrier_endpoint_conf",
    "ensure_asterisk_root",
    "make_tone_wav",
    "manager_endpoint_conf",
    "offline_manager_endpoint_conf",
    "parse_trace",
    "ring_phone",
]
