"""SIGHUP: take managers, policy, API tokens, the link settings, the recording retention, the inbound
routing, the per-manager limits and how canary calls are answered from the config file again, without
dropping a call.

Only what an admin changes while calls are up is reloaded. Everything else (ARI, databases, ports,
trunk, the rest of recording, prompts, logging) needs a restart; a change there is logged and not
applied, so a half-applied config never exists. A file that does not validate is logged and ignored:
the daemon keeps the config it runs with. A retention set over the API still wins over the file's.

Calls in progress keep the :class:`~bridged.config.Manager` they started with; a removed manager's
call goes on to its end.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from .config import Config, ConfigError
from .configfile import load_config

log = logging.getLogger(__name__)

RELOADABLE = (
    "managers",
    "policy",
    "api.tokens",
    "links",
    "recording.retention_days",
    "inbound",
    "limits",
    "canaries",
)


def merge(current: Config, new: Config) -> tuple[Config, list[str]]:
    """``current`` with the reloadable parts of ``new``; and the names of ignored changed sections."""
    ignored = [
        f.name
        for f in dataclasses.fields(Config)
        if f.name not in ("managers", "policy", "api", "links", "recording", "inbound", "limits", "canaries")
        and getattr(current, f.name) != getattr(new, f.name)
    ]
    if dataclasses.replace(current.api, tokens=new.api.tokens) != new.api:
        ignored.append("api (except tokens)")
    if dataclasses.replace(current.recording, retention_days=new.recording.retention_days) != new.recording:
        ignored.append("recording (except retention_days)")
    merged = dataclasses.replace(
        current,
        managers=new.managers,
        policy=new.policy,
        # A leaked link secret is replaced without a restart (links signed with the old one stop working).
        links=new.links,
        # Inbound routing names managers: it follows them (a caller already ringing keeps their plan).
        inbound=new.inbound,
        # Budgets are read at each attempt: a change holds from the next one (calls up are not touched).
        limits=new.limits,
        canaries=new.canaries,
        api=dataclasses.replace(current.api, tokens=new.api.tokens),
        recording=dataclasses.replace(current.recording, retention_days=new.recording.retention_days),
    )
    return merged, ignored


def reload_config(path: str | Path, current: Config, apply: Callable[[Config], None]) -> Config | None:
    """Load ``path``; on success hand the merged config to ``apply`` and return it, else None."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload: %s is invalid, keeping the running config: %s", path, "; ".join(exc.lines))
        return None
    merged, ignored = merge(current, new)
    if ignored:
        log.warning("reload: changes to %s need a restart and were not applied", ", ".join(ignored))
    if merged == current:
        log.info("reload: nothing to change")
        return current
    apply(merged)
    log.info(
        "reload: applied (%d managers, policy %s, %d API tokens, recording retention %s)",
        len(merged.managers),
        merged.policy,
        len(merged.api.tokens),
        "forever" if merged.recording.retention_days is None else f"{merged.recording.retention_days} days",
    )
    return merged
