"""Put the repo root on sys.path so tests can import the rig/ package (it is not installed), split the
suite for scripts/test's pytest runs (BRIDGED_TEST_PHASE, BRIDGED_TEST_SHARD), and hold the one throwaway
PostgreSQL cluster of a session (tests/db and tests/e2e share it)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No time limit on a generated example: Hypothesis' default deadline (200 ms) is a timed assertion, and
# on a busy 2-core machine an example that takes 1 ms alone took 537 ms once (test_params, a
# FlakyFailure). What the examples prove does not depend on how fast they run.
settings.register_profile("bridged", deadline=None)
settings.load_profile("bridged")

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from rig import Postgres  # noqa: E402

from .netns import POSTGRES_PORT, ensure_loopback  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    ensure_loopback()
    pg = Postgres(port=POSTGRES_PORT)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """scripts/test runs the tests marked ``registry`` (they need the package registry: pip) in the
    machine's own network namespace, and every other test in a private one (the rig's fixed ports);
    BRIDGED_TEST_PHASE=registry|namespace says which run this is. Unset: every test."""
    phase = os.environ.get("BRIDGED_TEST_PHASE")
    if phase in ("registry", "namespace"):
        _keep(
            config,
            items,
            lambda item: (item.get_closest_marker("registry") is not None) == (phase == "registry"),
        )
    spec = os.environ.get("BRIDGED_TEST_SHARD")
    if spec:
        # BRIDGED_TEST_SHARD=i/n: this run takes shard i of n (tests/shards.py deals the e2e files out).
        from tests import shards

        index, count = shards.parse(spec)
        e2e_dir = str(Path(ROOT) / "tests" / "e2e")
        files = sorted({Path(str(item.fspath)).name for item in items if e2e_dir in str(item.fspath)})
        table = shards.assign(files, count)
        _keep(config, items, lambda item: shards.shard_of(str(item.fspath), e2e_dir, table) == index)


def _keep(config: pytest.Config, items: list[pytest.Item], wanted: Callable[[pytest.Item], bool]) -> None:
    keep = [item for item in items if wanted(item)]
    drop = [item for item in items if not wanted(item)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
