"""Session fixtures for the real-parts rig (Asterisk 22 in a chroot, PostgreSQL, SIPp).

Run inside a private network namespace so fixed ports (SIP 5060, ARI 8088, carrier 127.0.0.2:5060) are free:
    unshare -n -- sh -c 'ip link set lo up; python -m pytest tests/e2e -q'
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rig import Asterisk, Postgres, ensure_asterisk_root
from rig.asterisk import manager_endpoint_conf
from rig.sipp import STARTED

from ..netns import ensure_loopback
from .harness import STARTED_DAEMONS, Bridged, ManagerPhone, end_leftover_calls, setup_shop

REPO_ROOT = Path(__file__).resolve().parents[2]
# BRIDGED_RIG_ARTIFACTS: another folder (a test that runs the rig inside another test uses it).
ARTIFACTS = Path(os.environ.get("BRIDGED_RIG_ARTIFACTS", REPO_ROOT / "artifacts"))
E2E_DIR = Path(__file__).resolve().parent
# The second Asterisk node (fixture asterisk_b): SIP, RTP and ARI on this address, same ports as node 1.
NODE_B_IP = "127.0.0.3"
# The session's Asterisk nodes, once started (a test's leftover channels are looked for on each).
NODES: list[Asterisk] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class RigAllocator:
    """Unique names and ports for one session (Asterisk persists across tests, so never reuse them)."""

    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _sip: Iterator[int] = field(default_factory=lambda: itertools.count(5100))
    # SIPp media ports stay clear of Asterisk's RTP range (rtp.conf: 10000-19999); step 10 leaves room for
    # SIPp's echo port (+2) and its rtp_stream sockets.
    _rtp: Iterator[int] = field(default_factory=lambda: itertools.count(30000, 10))

    def unique_name(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}"

    def sip_port(self) -> int:
        return next(self._sip)

    def rtp_port(self) -> int:
        return next(self._rtp)


@pytest.fixture(scope="session")
def rig_alloc() -> RigAllocator:
    return RigAllocator()


@pytest.fixture
def unique_name(rig_alloc: RigAllocator):
    """``unique_name("mgr") -> "mgr7"``: endpoint names that never repeat within the session."""
    return rig_alloc.unique_name


@pytest.fixture(scope="session")
def asterisk_root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("the Asterisk rig needs root (chroot)")
    return ensure_asterisk_root()


def _run_node(ast: Asterisk, prefix: str) -> Iterator[Asterisk]:
    """Start a node for the session; at its end stop it and keep its log and CDRs in artifacts/_session/
    (``<prefix>-messages.log``, ``<prefix>-console.log``, ``<prefix>-cdr.csv``)."""
    ast.start()
    NODES.append(ast)
    try:
        yield ast
    finally:
        ast.stop()
        # One folder per shard when scripts/test runs several at once (BRIDGED_TEST_SHARD=i/n).
        shard = os.environ.get("BRIDGED_TEST_SHARD", "").split("/")[0]
        out = ARTIFACTS / ("_session" + (f"-shard{shard}" if shard else ""))
        out.mkdir(parents=True, exist_ok=True)
        files = (
            (ast.log_path, "messages.log"),
            (ast.console_path, "console.log"),
            (ast.base / "log" / "cdr-csv" / "Master.csv", "cdr.csv"),
        )
        for src, name in files:
            if src.exists():
                shutil.copyfile(src, out / f"{prefix}-{name}")
        if not os.environ.get("BRIDGED_RIG_KEEP"):
            ast.cleanup()


@pytest.fixture(scope="session")
def asterisk(asterisk_root: Path) -> Iterator[Asterisk]:
    ensure_loopback()
    yield from _run_node(Asterisk(asterisk_root), "asterisk")


@pytest.fixture(scope="session")
def asterisk_b(asterisk_root: Path) -> Iterator[Asterisk]:
    """A second Asterisk node on 127.0.0.3 (SIP 5060, ARI 8088, RTP 20000-21999), started only for the
    sessions that ask for it; same carrier (127.0.0.2, identified by address) and ARI user as node 1."""
    ensure_loopback(NODE_B_IP)
    yield from _run_node(Asterisk(asterisk_root, node=2, address=NODE_B_IP), "asterisk-b")


@pytest.fixture(autouse=True)
def _nothing_left_running() -> Iterator[None]:
    """After each test, what it started and left running: its SIPp processes are stopped (it failed before
    waiting for them), so that the next test's phones and carrier can bind their ports; then the calls of
    its daemons are ended (``end_leftover_calls``), so that no later daemon, sharing the database and
    Asterisk, adopts them. What was started before the test (a module's daemon, ...) stays."""
    sipps_before = {id(sipp) for sipp in STARTED}
    daemons_before = len(STARTED_DAEMONS)
    yield
    for sipp in [s for s in STARTED if id(s) not in sipps_before]:
        sipp.stop()
    end_leftover_calls(STARTED_DAEMONS[daemons_before:], NODES)


@pytest.fixture
def trace_dir(request: pytest.FixtureRequest) -> Path:
    """``artifacts/<test name>/`` (emptied first): SIPp traces, tone.wav, copies of recordings."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = ARTIFACTS / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- bridged-as-a-subprocess fixtures shared by the end-to-end tests (here, not in harness.py: the demo
# imports the harness and runs without pytest installed).


@pytest.fixture(scope="session")
def shop(postgres: Postgres) -> Postgres:
    setup_shop(postgres)
    return postgres


@pytest.fixture
def make_bridged(
    asterisk: Asterisk, shop: Postgres, trace_dir: Path, unique_name, rig_alloc
) -> Iterator[Callable[..., Bridged]]:
    started: list[Bridged] = []
    endpoint_files: list[str] = []

    def make(
        manager_ids: tuple[str, ...] = ("anna",),
        *,
        offline: tuple[str, ...] = (),
        extra_for: Callable[[list[ManagerPhone]], dict[str, Any]] | None = None,
        ready: Callable[[Bridged], object] | None = None,
        **options,
    ) -> Bridged:
        """bridged with these managers' phones on the rig; the ones in ``offline`` are not registered
        (their endpoint's AOR has no contact: ARI says "offline", an originate fails at once).
        ``extra_for(phones)``: the config's ``extra`` made once the managers' ids are known (a token
        bound to one of them). ``extra`` may also be such a function of the managers' phones, returning
        the config merged over the generated one. ``ready(daemon)``: what says it has started (default: its
        /healthz answers 200)."""
        phones = [
            ManagerPhone(
                id=f"{m}{rig_alloc.unique_name('')}",
                endpoint=unique_name("mgr"),
                sip_port=rig_alloc.sip_port(),
                rtp_port=rig_alloc.rtp_port(),
            )
            for m in manager_ids
        ]
        unregistered = {p.endpoint for m, p in zip(manager_ids, phones, strict=True) if m in offline}
        if extra_for is not None:
            options["extra"] = extra_for(phones)
        if callable(options.get("extra")):
            options["extra"] = options["extra"](phones)
        daemon = Bridged(asterisk, shop, trace_dir, phones, **options)
        conf = "\n".join(
            manager_endpoint_conf(
                p.endpoint,
                None if p.endpoint in unregistered else p.sip_port,
                set_vars={"BRIDGED_AGI": daemon.agi_url},
            )
            for p in phones
        )
        file_name = f"test_{phones[0].endpoint}"
        asterisk.add_endpoints(file_name, conf)
        endpoint_files.append(file_name)
        started.append(daemon)  # stopped at teardown even if it never becomes healthy
        daemon.start(ready=None if ready is None else lambda: ready(daemon))
        return daemon

    yield make
    for daemon in started:
        daemon.stop()
    for name in endpoint_files:
        asterisk.remove_endpoints(name)
