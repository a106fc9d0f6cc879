"""Prometheus metrics, written out by hand: the text exposition format is a few lines of code.

Why not ``prometheus_client``: one more dependency (and its process/platform collectors, multiprocess
mode, global registry) for five series. Label values here come from small closed sets (outcomes,
refusal reasons); never put an order id, a channel name or anything a caller typed into a label: a
phone number must not be able to reach ``/metrics``.

Hooks are module-level objects (``CALLS_ENDED.inc(outcome)``) so the call engine needs one line per
hook and no plumbing; :func:`render` takes gauges that are read at scrape time from the live objects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUE_RE = re.compile(r"[a-z0-9_.-]{1,64}")


def _label_value(value: str) -> str:
    # Closed sets only (see module docstring); anything else is folded so it cannot carry data.
    return value if _LABEL_VALUE_RE.fullmatch(value) else "other"


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, label: str | None = None) -> None:
        assert _NAME_RE.fullmatch(name), name
        self.name = name
        self.help = help_text
        self.label = label
        self._values: dict[str, float] = {}
        if label is None:
            self._values[""] = 0.0

    def inc(self, label_value: str = "", amount: float = 1.0) -> None:
        key = _label_value(label_value) if self.label else ""
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, label_value: str = "") -> float:
        return self._values.get(label_value, 0.0)

    def reset(self) -> None:
        self._values = {} if self.label else {"": 0.0}

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key in sorted(self._values):
            labels = f'{{{self.label}="{key}"}}' if self.label else ""
            yield f"{self.name}{labels} {_fmt(self._values[key])}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        assert _NAME_RE.fullmatch(name), name
        self.name = name
        self.help = help_text
        self.buckets = tuple(sorted(buckets))
        self.reset()

    def reset(self) -> None:
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        self._sum += value
        self._count += 1
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self._counts[index] += 1
                break

    @property
    def count(self) -> int:
        return self._count

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        cumulative = 0
        for bound, count in zip(self.buckets, self._counts, strict=True):
            cumulative += count
            yield f'{self.name}_bucket{{le="{_fmt(bound)}"}} {cumulative}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self._count}'
        yield f"{self.name}_sum {_fmt(self._sum)}"
        yield f"{self.name}_count {self._count}"


def gauge_lines(name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> list[str]:
    label_text = ""
    if labels:
        label_text = "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items())) + "}"
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name}{label_text} {_fmt(value)}"]


CALLS_STARTED = Counter("bridged_calls_started_total", "Calls whose manager leg entered the application.")
CALLS_ENDED = Counter("bridged_calls_ended_total", "Calls that ended, by outcome.", "outcome")
CALLS_BRIDGED = Counter("bridged_calls_bridged_total", "Calls in which manager and customer were bridged.")
CALLS_REFUSED = Counter(
    "bridged_calls_refused_total", "Call requests refused before dialling, by reason.", "reason"
)
CALLS_PASSED_ON = Counter(
    "bridged_calls_passed_on_total",
    "Phone calls left to the next daemon of the dialplan (this one unavailable or overloaded), by reason.",
    "reason",
)
CALLS_ADOPTED = Counter(
    "bridged_calls_adopted_total", "Calls of another daemon's application taken over through its lease."
)
LEASE_TAKEOVERS = Counter(
    "bridged_lease_takeovers_total", "Leases of other daemons' applications taken over (their calls adopted)."
)
SETUP_SECONDS = Histogram(
    "bridged_call_setup_seconds",
    "From the manager leg entering the application to the customer leg's originate returning "
    "(the customer INVITE is on its way).",
    (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
ARI_RECONNECTS = Counter(
    "bridged_ari_connects_total", "ARI websocket connections made (the first one included)."
)
LOOKUP_ERRORS = Counter("bridged_order_lookup_errors_total", "Order lookups that failed (shop database).")
API_DENIALS_FOLDED = Counter(
    "bridged_api_denials_folded_total",
    "Refused API requests over their client's audit quota, folded into its next audit row.",
)
DEFERRED_WRITES = Counter(
    "bridged_deferred_writes_total",
    "Rows about refused call attempts bridged's database did not take at once, kept to retry.",
)
DEFERRED_WRITES_LOST = Counter(
    "bridged_deferred_writes_lost_total",
    "Kept rows given up on: over the limit, refused by the database, or still waiting when bridged stopped.",
)
HTTP_HEADER_TIMEOUTS = Counter(
    "bridged_http_header_timeouts_total",
    "HTTP connections closed because a request's line and headers did not arrive within http.header_timeout.",
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "bridged_http_connections_refused_total",
    "HTTP connections refused: the client already had http.max_connections_per_client open.",
)
STRAY_CHANNELS = Counter(
    "bridged_stray_channels_total", "Channels in the application that belonged to no call and were hung up."
)
RECORDINGS_FAILED = Counter(
    "bridged_recordings_failed_total",
    "Call recordings that do not hold the whole conversation, by state (truncated, failed).",
    "state",
)
RECORDINGS_UNVERIFIED = Counter(
    "bridged_recordings_unverified_total",
    "Call recordings whose end bridged could not check (state unknown: events missed, file unreadable).",
)

CANARY_CALLS = Counter("bridged_canary_calls_total", "Calls from outside to a canary number (a leak).")
CANARY_TOUCHES = Counter(
    "bridged_canary_touches_total", "Calls managers placed to a canary order (not dialled, audited)."
)
RATE_LIMITED = Counter(
    "bridged_rate_limited_total", "Call attempts refused because a manager was past a budget.", "budget"
)
ALL: tuple[Counter | Histogram, ...] = (
    CALLS_STARTED,
    CALLS_BRIDGED,
    CALLS_ENDED,
    CALLS_REFUSED,
    CALLS_PASSED_ON,
    CALLS_ADOPTED,
    LEASE_TAKEOVERS,
    SETUP_SECONDS,
    ARI_RECONNECTS,
    LOOKUP_ERRORS,
    STRAY_CHANNELS,
    API_DENIALS_FOLDED,
    RECORDINGS_FAILED,
    RECORDINGS_UNVERIFIED,
    DEFERRED_WRITES,
    DEFERRED_WRITES_LOST,
    HTTP_HEADER_TIMEOUTS,
    HTTP_CONNECTIONS_REFUSED,
    CANARY_CALLS,
    CANARY_TOUCHES,
    RATE_LIMITED,
)


def reset() -> None:
    """For tests."""
    for metric in ALL:
        metric.reset()


def render(
    *,
    active_calls: int,
    bridged_calls: int,
    ari_connected: bool,
    draining: bool,
    ari_pending: int = 0,
    ari_oldest_wait: float = 0.0,
) -> str:
    lines: list[str] = []
    lines += gauge_lines(
        "bridged_active_calls", "Calls owned by this daemon (any state before ended).", active_calls
    )
    lines += gauge_lines(
        "bridged_bridged_calls", "Calls currently bridged (manager and customer talking).", bridged_calls
    )
    lines += gauge_lines(
        "bridged_ari_connected",
        "1 while the ARI websocket is connected (with several Asterisk nodes: to every node).",
        int(ari_connected),
    )
    lines += gauge_lines("bridged_draining", "1 after SIGTERM: new calls are refused.", int(draining))
    lines += gauge_lines(
        "bridged_ari_pending_requests",
        "ARI requests waiting for Asterisk's answer (background retries and sweeps left out).",
        ari_pending,
    )
    lines += gauge_lines(
        "bridged_ari_oldest_wait_seconds",
        "How far behind Asterisk is: how long the oldest of them has waited, two stragglers left out;"
        " from half of ari.max_request_wait on, new calls are refused.",
        ari_oldest_wait,
    )
    for metric in ALL:
        lines.extend(metric.lines())
    return "\n".join(lines) + "\n"
