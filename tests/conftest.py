"""Put the repo root on sys.path so tests can import the rig/ package (it is not installed), split the
suite for scripts/test's two pytest runs (BRIDGED_TEST_PHASE), and hold the one throwaway PostgreSQL
cluster of a session (tests/db and tests/e2e share it)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    if phase not in ("registry", "namespace"):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        needs_registry = item.get_closest_marker("registry") is not None
        (keep if needs_registry == (phase == "registry") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
