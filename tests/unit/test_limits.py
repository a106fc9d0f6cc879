"""The cap on audit rows of refused requests (bridged.api.limits)."""

from __future__ import annotations

from bridged.api import limits
from bridged.api.limits import DeniedAuditLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_writes_its_quota_then_the_rest_is_folded_into_its_next_row() -> None:
    clock = Clock()
    limiter = DeniedAuditLimiter(per_minute=3, clock=clock)
    assert [limiter.admit("10.0.0.9") for _ in range(5)] == [
        (True, 0),
        (True, 0),
        (True, 0),
        (False, 0),
        (False, 0),
    ]
    # Another client has its own quota.
    assert limiter.admit("10.0.0.7") == (True, 0)
    clock.now += 59.9
    assert limiter.admit("10.0.0.9") == (False, 0)
    clock.now += 0.1
    # A new minute: the row is written and carries the three rows folded into it.
    assert limiter.admit("10.0.0.9") == (True, 3)
    assert limiter.admit("10.0.0.9") == (True, 0)


def test_the_client_table_stays_bounded(monkeypatch) -> None:
    monkeypatch.setattr(limits, "MAX_CLIENTS", 100)
    clock = Clock()
    limiter = DeniedAuditLimiter(per_minute=1, clock=clock)
    for i in range(100):
        limiter.admit(f"10.0.{i}.1")
    limiter.admit("10.0.0.1")  # this one has a suppressed row pending
    clock.now += 61
    for i in range(300):
        limiter.admit(f"10.1.{i}.1")
    assert len(limiter._clients) <= 100
