"""The schema migrations shipped with the package: numbered 0001.. without gaps or duplicates."""

from __future__ import annotations

from bridged import db


def test_migrations_are_numbered_without_gaps_or_duplicates() -> None:
    found = db.migrations()  # raises on a gap or a duplicate number
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert len({m.name for m in found}) == len(found)
