"""Which pytest run takes which test file when scripts/test runs the suite in several shards at once.

The end-to-end tests spend most of their time waiting on SIP timers, hold times and prompts, not on the
CPU, so two shards (each in its own network namespace with its own Asterisk and PostgreSQL) finish in
a little more than half the time on two cores. Files are dealt out by their measured duration, longest
first, each to the shard with the least so far; the unit tests stay in shard 0. The table only has to be
roughly right: a file missing from it counts as ``DEFAULT_SECONDS``.

Measured with ``pytest --durations=0 tests/e2e`` (setup + call + teardown per file), 2026-12-01, 2 cores;
test_language.py and test_ops_page.py (its Russian test added) from their own runs that day (43 s and 26 s,
a session's Asterisk and PostgreSQL start included).
"""

from __future__ import annotations

from pathlib import PurePath

DEFAULT_SECONDS = 30.0
UNIT_SECONDS = 130.0  # every test outside tests/e2e together, pinned to shard 0 (2026-12-02: 130 s alone)

SECONDS: dict[str, float] = {
    "test_masked_call.py": 161,  # 2026-12-03: +10 s for the whole-code test
    "test_service.py": 140,
    "test_http_calls.py": 66,
    "test_recording_faults.py": 59,
    "test_dirty_data.py": 48,
    "test_call_links.py": 39,
    "test_language.py": 40,
    "test_inbound.py": 100,  # measured 2026-12-01 (issue 13); 2026-12-03: +7 s, the hostile display name
    "test_availability.py": 290,  # 2026-12-02: 284 s for its 10 tests alone (the two adopted-ringing tests 28 s each)
    "test_canaries.py": 110,  # measured 2026-12-01 (issue 14): 12 + 18 + 58 + 18 s of calls, plus setup
    "test_rig_inbound.py": 35,
    "test_review_api.py": 32,
    "test_startup.py": 19,
    "test_demo.py": 19,
    "test_http_hostile.py": 13,
    "test_ops_page.py": 50,  # 2026-12-01: 24 s, + 22 s for the missed calls and their call back (issue 13);
    # + 5 s for the probing section (2026-12-02: 2.5 s call, 2.2 s teardown; the file 34 s alone)
    "test_rig_smoke.py": 12,
    "test_rig_isolation.py": 12,  # 2026-12-02: 11.7 s alone
    "test_minimal_path.py": 12,
    "test_ari_spec.py": 1,
}


def parse(spec: str) -> tuple[int, int]:
    """``"1/2"`` -> (1, 2): shard 1 of 2, counted from 1. Raises ValueError on anything else."""
    index, _, count = spec.partition("/")
    i, n = int(index), int(count)
    if not 1 <= i <= n:
        raise ValueError(f"shard {spec!r}: want i/n with 1 <= i <= n")
    return i, n


def assign(e2e_files: list[str], count: int) -> dict[str, int]:
    """File name -> shard (1-based), deterministic for a given set of files."""
    loads = [0.0] * count
    loads[0] += UNIT_SECONDS
    shards: dict[str, int] = {}
    for name in sorted(e2e_files, key=lambda f: (-SECONDS.get(f, DEFAULT_SECONDS), f)):
        target = min(range(count), key=lambda i: (loads[i], i))
        loads[target] += SECONDS.get(name, DEFAULT_SECONDS)
        shards[name] = target + 1
    return shards


def shard_of(path: str, e2e_dir: str, shards: dict[str, int]) -> int:
    """The shard of a test file: its e2e file's, or 1 for anything outside tests/e2e."""
    p = PurePath(path)
    if PurePath(e2e_dir) in p.parents:
        return shards[p.name]
    return 1
