"""Put the repo root on sys.path so tests can import the rig/ package (it is not installed), and split the
suite for scripts/test's pytest runs (BRIDGED_TEST_PHASE, BRIDGED_TEST_SHARD)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


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
