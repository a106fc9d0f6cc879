"""The config of inbound calls and of the guards around managers (bridged.configfile's loaders for
``inbound``, ``limits`` and ``canaries``, with their cross-checks against ``managers``)."""

from __future__ import annotations

import re

from .config import (
    BUDGETS,
    INBOUND_SECRET_MIN,
    PLACEHOLDERS,
    RING_GROUP_MODES,
    Budget,
    CanariesConfig,
    InboundConfig,
    LimitsConfig,
    Manager,
)
from .configsection import Section, as_text_problem, sound
from .ids import ID_RE

_DID_RE = re.compile(r"\+?[0-9][0-9 ().-]{1,30}")


def load_inbound(s: Section) -> InboundConfig:
    numbers: list[str] = []
    for index, item in enumerate(s.items("numbers", what="a list of the shop's numbers")):
        if not isinstance(item, str):
            s.error(f"numbers[{index}]", as_text_problem(item))
        elif not _DID_RE.fullmatch(item):
            s.error(f"numbers[{index}]", "must be a phone number: an optional '+' and digits")
        else:
            numbers.append(item)
    fallback: list[str] = []
    for index, item in enumerate(s.items("fallback", what="a list of manager ids")):
        if not isinstance(item, str):
            s.error(f"fallback[{index}]", as_text_problem(item))
        else:
            fallback.append(item)
    ring_group = s.text("ring_group", "sequential")
    if ring_group not in RING_GROUP_MODES:
        s.error("ring_group", f"must be one of {', '.join(RING_GROUP_MODES)}")
    secret = s.opt_str("secret")
    if secret is not None and (secret in PLACEHOLDERS or len(secret) < INBOUND_SECRET_MIN):
        s.error("secret", f"must be a real random secret of at least {INBOUND_SECRET_MIN} characters")
    if numbers and secret is None:
        s.error("secret", "is required when inbound.numbers is set (it keys the hash callers are kept under)")
    if numbers and not fallback:
        s.error("fallback", "is required when inbound.numbers is set (callers bridged cannot tell ring them)")
    cfg = InboundConfig(
        numbers=tuple(numbers),
        ring_timeout=s.integer("ring_timeout", 20, minimum=5, maximum=300),
        ring_group=ring_group,
        ring_team=s.boolean("ring_team", True),
        fallback=tuple(fallback),
        sticky_days=s.integer("sticky_days", 30, minimum=0, maximum=3650),
        secret=secret,
        missed_prompt=s.text("missed_prompt", InboundConfig.missed_prompt),
    )
    s.finish()
    return cfg


def budget(s: Section, default: Budget) -> Budget:
    """A budget's keys over ``default``: each a count (0: nothing allowed) or null in the file for off."""
    values: dict[str, int | None] = {}
    for name in BUDGETS:
        if name in s.data and s.data[name] is None:
            s.used.add(name)
            values[name] = None
            continue
        fallback = getattr(default, name)
        got = s.integer(name, -1 if fallback is None else fallback, minimum=0, maximum=1_000_000)
        values[name] = None if got == -1 else got
    return Budget(**values)


def load_limits(s: Section) -> LimitsConfig:
    window = s.integer("window", LimitsConfig.window, minimum=1, maximum=7 * 86400)
    default = budget(s, Budget())
    overrides: list[tuple[str, Budget]] = []
    managers = s.section("managers", required=False)
    for name in list(managers.data):
        item = managers.child(managers.data[name], managers.key(str(name)))
        managers.used.add(name)
        if not isinstance(name, str) or not ID_RE.fullmatch(name):
            managers.error(str(name), "must be a manager id")
            continue
        overrides.append((name, budget(item, default)))
        item.finish()
    # At least the longest window (7 days): the retention pass never deletes an attempt a budget counts.
    keep_days = s.integer("keep_days", LimitsConfig.keep_days, minimum=7, maximum=36500)
    s.finish()
    return LimitsConfig(window=window, default=default, managers=tuple(overrides), keep_days=keep_days)


def load_canaries(s: Section) -> CanariesConfig:
    greeting = s.text("greeting", CanariesConfig.greeting)
    sound(s, "greeting", greeting)
    cfg = CanariesConfig(
        ring_seconds=s.integer("ring_seconds", CanariesConfig.ring_seconds, minimum=0, maximum=60),
        greeting=greeting,
        max_record_seconds=s.integer(
            "max_record_seconds", CanariesConfig.max_record_seconds, minimum=1, maximum=600
        ),
    )
    s.finish()
    return cfg


def check_limit_managers(root: Section, limits: LimitsConfig, managers: tuple[Manager, ...]) -> None:
    known = {m.id for m in managers}
    for manager_id, _ in limits.managers:
        if manager_id not in known:
            root.error(f"limits.managers.{manager_id}", f"{manager_id!r} is not a manager id")


def check_inbound_managers(root: Section, inbound: InboundConfig, managers: tuple[Manager, ...]) -> None:
    known = {m.id for m in managers}
    for index, manager_id in enumerate(inbound.fallback):
        if manager_id not in known:
            root.error(f"inbound.fallback[{index}]", f"{manager_id!r} is not a manager id")
