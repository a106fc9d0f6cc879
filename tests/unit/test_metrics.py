"""The hand-written Prometheus exposition: format, histogram buckets, labels that cannot carry data."""

from __future__ import annotations

import re

import pytest

from bridged import metrics
from bridged.metrics import Counter, Histogram


@pytest.fixture(autouse=True)
def _clean() -> None:
    metrics.reset()


def _samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value.replace("+Inf", "inf"))
    return out


def test_render_is_valid_exposition_with_help_and_type_for_every_family() -> None:
    metrics.CALLS_STARTED.inc()
    metrics.CALLS_ENDED.inc("completed")
    metrics.CALLS_ENDED.inc("completed")
    metrics.CALLS_ENDED.inc("customer_busy")
    metrics.SETUP_SECONDS.observe(0.003)
    metrics.ARI_RECONNECTS.inc()
    text = metrics.render(
        active_calls=3,
        bridged_calls=2,
        ari_connected=True,
        draining=False,
        ari_pending=7,
        ari_oldest_wait=0.25,
    )
    assert text.endswith("\n")
    sample_re = re.compile(
        r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+Inf-]+$'
    )
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram")
            assert name not in families, f"{name} declared twice"
            families.add(name)
        elif not line.startswith("# HELP "):
            assert sample_re.match(line), line
    samples = _samples(text)
    assert samples["bridged_active_calls"] == 3
    assert samples["bridged_bridged_calls"] == 2
    assert samples["bridged_ari_connected"] == 1
    assert samples["bridged_draining"] == 0
    assert samples["bridged_ari_pending_requests"] == 7
    assert samples["bridged_ari_oldest_wait_seconds"] == 0.25
    assert samples['bridged_calls_ended_total{outcome="completed"}'] == 2
    assert samples['bridged_calls_ended_total{outcome="customer_busy"}'] == 1
    assert samples["bridged_calls_started_total"] == 1
    assert samples["bridged_ari_connects_total"] == 1
    assert samples["bridged_order_lookup_errors_total"] == 0
    assert samples["bridged_call_setup_seconds_count"] == 1


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram("t_seconds", "test", (0.01, 0.1, 1))
    for value in (0.005, 0.01, 0.05, 0.5, 5):
        h.observe(value)
    samples = _samples("\n".join(h.lines()))
    assert samples['t_seconds_bucket{le="0.01"}'] == 2  # le is inclusive
    assert samples['t_seconds_bucket{le="0.1"}'] == 3
    assert samples['t_seconds_bucket{le="1"}'] == 4
    assert samples['t_seconds_bucket{le="+Inf"}'] == 5
    assert samples["t_seconds_count"] == 5
    assert samples["t_seconds_sum"] == pytest.approx(5.565)


def test_label_values_outside_a_closed_vocabulary_are_folded() -> None:
    c = Counter("t_total", "test", "outcome")
    c.inc("completed")
    c.inc("+49 30 1234567")  # would be a leak if it were ever passed by mistake
    c.inc('x"} 1\nevil 2')
    c.inc("completed\n")  # a trailing newline would end the sample's line early
    text = "\n".join(c.lines())
    assert "1234567" not in text and "evil" not in text
    assert _samples(text)['t_total{outcome="other"}'] == 3


def test_unlabelled_counter_starts_at_zero_and_resets() -> None:
    c = Counter("t_total", "test")
    assert _samples("\n".join(c.lines()))["t_total"] == 0
    c.inc()
    c.reset()
    assert c.value() == 0
