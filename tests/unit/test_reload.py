"""SIGHUP reload: managers, policy and tokens are taken, the rest needs a restart, bad files are ignored."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import yaml

from bridged.config import Config, ConfigHolder
from bridged.configfile import parse_config
from bridged.reload import merge, reload_config

BASE: dict[str, Any] = {
    "ari": {"url": "http://127.0.0.1:8088/ari", "username": "u", "password": "pw-real", "app": "bridged"},
    "database": {"dsn": "postgresql://b@127.0.0.1/b"},
    "orders": {"dsn": "postgresql://s@127.0.0.1/s", "query": "SELECT 1 WHERE $1 = $1"},
    "managers": [{"id": "anna", "endpoint": "anna"}],
    "policy": "own",
    "trunk": {"dial": "PJSIP/{number}@carrier", "caller_id": "Shop <100>"},
}


def _config(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data.update(changes)
    return data


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "bridged.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_managers_policy_and_tokens_are_applied(tmp_path: Path) -> None:
    current = parse_config(_config())
    token = {"name": "shop", "role": "shop", "sha256": "a" * 64}
    path = _write(
        tmp_path,
        _config(
            managers=[{"id": "anna", "endpoint": "anna"}, {"id": "boris", "endpoint": "boris"}],
            policy="any",
            api={"tokens": [token]},
        ),
    )
    applied: list[Config] = []
    result = reload_config(path, current, applied.append)
    assert result is not None and applied == [result]
    assert [m.id for m in result.managers] == ["anna", "boris"]
    assert result.policy == "any"
    assert [t.name for t in result.api.tokens] == ["shop"]
    assert result.ari == current.ari and result.trunk == current.trunk


def test_other_changes_are_logged_and_not_applied(tmp_path: Path, caplog) -> None:
    current = parse_config(_config())
    changed = _config(managers=[{"id": "carla", "endpoint": "carla"}])
    changed["trunk"] = {"dial": "PJSIP/{number}@other", "caller_id": "Shop <100>"}
    changed["http"] = {"port": 9999}
    with caplog.at_level(logging.WARNING):
        result = reload_config(_write(tmp_path, changed), current, lambda c: None)
    assert result is not None
    assert result.trunk == current.trunk and result.http == current.http
    assert [m.id for m in result.managers] == ["carla"]
    assert "trunk" in caplog.text and "http" in caplog.text and "restart" in caplog.text


def test_invalid_file_is_ignored(tmp_path: Path, caplog) -> None:
    current = parse_config(_config())
    bad = _config(managers=[{"id": "anna", "endpoint": "anna"}, {"id": "anna", "endpoint": "x"}])
    applied: list[Config] = []
    with caplog.at_level(logging.ERROR):
        assert reload_config(_write(tmp_path, bad), current, applied.append) is None
        (tmp_path / "bridged.yaml").write_text("managers: [")
        assert reload_config(tmp_path / "bridged.yaml", current, applied.append) is None
        assert reload_config(tmp_path / "missing.yaml", current, applied.append) is None
    assert applied == []
    assert "managers[1].id" in caplog.text


def test_unchanged_file_applies_nothing(tmp_path: Path) -> None:
    current = parse_config(_config())
    applied: list[Config] = []
    assert reload_config(_write(tmp_path, _config()), current, applied.append) == current
    assert applied == []


def test_merge_reports_no_ignored_sections_for_identical_configs() -> None:
    current = parse_config(_config())
    merged, ignored = merge(current, parse_config(_config()))
    assert merged == current and ignored == []


def test_recording_retention_is_applied_and_the_rest_of_recording_is_not(tmp_path: Path, caplog) -> None:
    current = parse_config(_config(recording={"retention_days": 30}))
    applied: list[Config] = []
    longer = _write(tmp_path, _config(recording={"retention_days": 90}))
    result = reload_config(longer, current, applied.append)
    assert result is not None and applied == [result]
    assert result.recording == dataclasses.replace(current.recording, retention_days=90)
    # Retention back to "forever", and a format change that needs a restart in the same file.
    with caplog.at_level(logging.WARNING):
        result = reload_config(
            _write(tmp_path, _config(recording={"format": "gsm"})), current, applied.append
        )
    assert result is not None and result.recording.retention_days is None
    assert result.recording.format == current.recording.format == "wav"
    assert "recording (except retention_days)" in caplog.text


async def test_a_reload_reaches_every_component_through_the_one_holder(tmp_path: Path) -> None:
    from bridged.agi import AgiServer
    from bridged.api.auth import TokenRegistry, hash_token
    from bridged.calls.engine import CallEngine
    from bridged.retention import Retention
    from bridged.service import CallService
    from tests.unit.fakes import FakeAri, FakeStore

    holder = ConfigHolder(parse_config(_config()))
    engine = CallEngine(holder, FakeAri(), FakeStore(), is_connected=lambda: True)  # type: ignore[arg-type]
    engine.ari.events = engine.on_event  # type: ignore[attr-defined]
    service = CallService(holder, FakeStore(), None, engine, accepting_calls=lambda: True)  # type: ignore[arg-type]
    agi = AgiServer(holder, service)
    tokens = TokenRegistry(lambda: holder.current.api.tokens)
    retention = Retention(FakeStore(), None, lambda: holder.current.recording.retention_days)  # type: ignore[arg-type]
    assert tokens.authenticate("Bearer new-shop-token-123") is None

    path = _write(
        tmp_path,
        _config(
            managers=[{"id": "anna", "endpoint": "anna"}, {"id": "boris", "endpoint": "boris"}],
            api={"tokens": [{"name": "shop", "role": "shop", "sha256": hash_token("new-shop-token-123")}]},
            recording={"retention_days": 30},
        ),
    )
    reload_config(path, holder.current, lambda config: setattr(holder, "current", config))

    for component in (engine, service, agi):
        assert component.config.current.manager_by_endpoint("boris") is not None, component
    assert tokens.authenticate("Bearer new-shop-token-123") is not None
    assert retention.default_days() == 30
    await engine.shutdown()


def test_a_new_link_secret_and_a_manager_token_are_applied(tmp_path: Path, caplog) -> None:
    """A leaked link secret is replaced without a restart; a manager token comes with its binding."""
    old_secret, new_secret = "a" * 40, "b" * 40
    current = parse_config(_config(links={"secret": old_secret}))
    token = {"name": "anna-page", "role": "manager", "manager": "anna", "sha256": "c" * 64}
    path = _write(tmp_path, _config(links={"secret": new_secret, "max_age": 120}, api={"tokens": [token]}))
    with caplog.at_level(logging.WARNING, logger="bridged.reload"):
        result = reload_config(path, current, lambda _: None)
    assert result is not None
    assert (result.links.secret, result.links.max_age) == (new_secret, 120)
    assert [(t.role, t.manager) for t in result.api.tokens] == [("manager", "anna")]
    assert "need a restart" not in caplog.text
    assert old_secret not in caplog.text and new_secret not in caplog.text


def test_the_inbound_routing_follows_the_managers_on_reload(tmp_path: Path) -> None:
    """A fallback names managers: a reload that replaces them takes the new fallback with them."""
    inbound = {"numbers": ["+15550100"], "fallback": ["anna"], "secret": "s" * 32}
    current = parse_config(_config(inbound=inbound))
    path = _write(
        tmp_path,
        _config(
            managers=[{"id": "boris", "endpoint": "boris"}],
            inbound={**inbound, "fallback": ["boris"], "ring_group": "simultaneous"},
        ),
    )
    result = reload_config(path, current, lambda c: None)
    assert result is not None
    assert (result.inbound.fallback, result.inbound.ring_group) == (("boris",), "simultaneous")
