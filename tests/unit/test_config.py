"""Config loading: the example loads once its placeholders are replaced; each error names its key."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridged.config import ConfigError, load_config, parse_config
from tests.unit.fakes import EXAMPLE_CONFIG, ROOT, example_data


def test_example_with_placeholders_replaced_loads() -> None:
    config = parse_config(example_data())
    assert config.ari.url == "http://127.0.0.1:8088/ari"
    assert config.ari.app == "bridged"
    assert config.ari.password == "s3cr3t-value"
    assert [m.id for m in config.managers] == ["anna", "boris"]
    assert config.manager_by_endpoint("boris").id == "boris"  # type: ignore[union-attr]
    assert config.manager_by_endpoint("nobody") is None
    assert config.policy == "own"
    assert config.trunk.dial == "PJSIP/{number}@carrier"
    assert config.trunk.ring_timeout == 30
    assert config.recording.format == "wav"
    assert config.recording.announcement is None  # "" means none
    assert config.prompts.busy == "vm-theperson&vm-isonphone"
    assert config.orders.code_pattern == "[0-9]{1,12}"
    assert "$1" in config.orders.query


def test_example_file_as_shipped_is_rejected(tmp_path: Path) -> None:
    assert "change-me" in EXAMPLE_CONFIG.read_text(encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLE_CONFIG)
    assert info.value.key == "ari.password"


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value


def _delete(data: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    del node[last]


def _team_without_team(data: dict[str, Any]) -> None:
    data["policy"] = "team"
    del data["managers"][1]["team"]


def _dup_manager_id(data: dict[str, Any]) -> None:
    data["managers"][1]["id"] = "anna"


def _dup_endpoint(data: dict[str, Any]) -> None:
    data["managers"][1]["endpoint"] = "anna"


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("ari password placeholder", lambda d: _set(d, "ari.password", "change-me"), "ari.password"),
    (
        "database dsn placeholder",
        lambda d: _set(d, "database.dsn", "postgresql://bridged:change-me@127.0.0.1:5432/bridged"),
        "database.dsn",
    ),
    (
        "orders dsn placeholder",
        lambda d: _set(d, "orders.dsn", "postgresql://shop_reader:change-me@127.0.0.1/shop"),
        "orders.dsn",
    ),
    ("dsn not postgres", lambda d: _set(d, "database.dsn", "mysql://u:p@h/db"), "database.dsn"),
    ("missing ari.url", lambda d: _delete(d, "ari.url"), "ari.url"),
    ("ari.url not http", lambda d: _set(d, "ari.url", "ftp://127.0.0.1:8088/ari"), "ari.url"),
    ("ari.url without /ari", lambda d: _set(d, "ari.url", "http://127.0.0.1:8088/"), "ari.url"),
    ("ari.url no host", lambda d: _set(d, "ari.url", "http:///ari"), "ari.url"),
    ("unknown top-level key", lambda d: _set(d, "colour", "blue"), "colour"),
    ("unknown nested key", lambda d: _set(d, "trunk.foo", 1), "trunk.foo"),
    ("unknown ari key", lambda d: _set(d, "ari.pasword", "x"), "ari.pasword"),
    ("dial without {number}", lambda d: _set(d, "trunk.dial", "PJSIP/carrier"), "trunk.dial"),
    ("dial through Local", lambda d: _set(d, "trunk.dial", "Local/{number}@x"), "trunk.dial"),
    ("dial with other placeholder", lambda d: _set(d, "trunk.dial", "PJSIP/{number}@{host}"), "trunk.dial"),
    (
        "dial with attribute access",
        lambda d: _set(d, "trunk.dial", "PJSIP/{number}{number.x}@carrier"),
        "trunk.dial",
    ),
    ("policy bogus", lambda d: _set(d, "policy", "bogus"), "policy"),
    ("team policy, manager without team", _team_without_team, "managers[1].team"),
    ("duplicate manager id", _dup_manager_id, "managers[1].id"),
    ("duplicate endpoint", _dup_endpoint, "managers[1].endpoint"),
    ("query without $1", lambda d: _set(d, "orders.query", "SELECT 1 AS phone"), "orders.query"),
    ("bad code_pattern", lambda d: _set(d, "orders.code_pattern", "[0-9"), "orders.code_pattern"),
    ("recording format bogus", lambda d: _set(d, "recording.format", "mp3x"), "recording.format"),
    ("ring_timeout a word", lambda d: _set(d, "trunk.ring_timeout", "thirty"), "trunk.ring_timeout"),
    ("ring_timeout a float", lambda d: _set(d, "trunk.ring_timeout", 30.5), "trunk.ring_timeout"),
    ("ring_timeout a bool", lambda d: _set(d, "trunk.ring_timeout", True), "trunk.ring_timeout"),
    ("ring_timeout out of range", lambda d: _set(d, "trunk.ring_timeout", 1), "trunk.ring_timeout"),
    ("managers empty", lambda d: _set(d, "managers", []), "managers"),
    ("manager not a mapping", lambda d: d["managers"].append("carol"), "managers[2]"),
    ("bad app name", lambda d: _set(d, "ari.app", "my app"), "ari.app"),
    ("logging level bogus", lambda d: _set(d, "logging.level", "LOUD"), "logging.level"),
    ("agi port text", lambda d: _set(d, "agi.port", "4573x"), "agi.port"),
    ("unknown prompt", lambda d: _set(d, "prompts.greeting", "hello"), "prompts.greeting"),
    (
        "trusted proxy not a list",
        lambda d: _set(d, "http.trusted_proxies", "10.0.0.1"),
        "http.trusted_proxies",
    ),
    (
        "trusted proxy not an address",
        lambda d: _set(d, "http.trusted_proxies", ["nginx"]),
        "http.trusted_proxies[0]",
    ),
]


@pytest.mark.parametrize(("mutate", "key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_names_the_key(mutate: Callable[[dict[str, Any]], None], key: str) -> None:
    data = copy.deepcopy(example_data())
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_trusted_proxies_load_as_networks() -> None:
    data = example_data()
    _set(data, "http.trusted_proxies", ["127.0.0.1", "10.1.0.0/16", "::1"])
    proxies = parse_config(data).http.trusted_proxies
    assert [str(p) for p in proxies] == ["127.0.0.1/32", "10.1.0.0/16", "::1/128"]
    assert parse_config(example_data()).http.trusted_proxies == ()


def test_team_policy_with_teams_loads() -> None:
    data = example_data()
    data["policy"] = "team"
    assert parse_config(data).policy == "team"


def test_not_a_mapping_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(["a"])
    assert info.value.key == "<root>"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert info.value.key == "<file>"
    bad = tmp_path / "bad.yaml"
    bad.write_text("ari: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.key == "<file>"


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridged", "check-config", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(example_data()), encoding="utf-8")
    data = example_data()
    data["trunk"]["dial"] = "Local/{number}@x"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")

    result = _check_config(bad)
    assert result.returncode == 2, result.stderr
    assert "trunk.dial" in result.stderr
    assert "Traceback" not in result.stderr

    result = _check_config(good)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


LABEL_AND_PHONE_ERRORS: list[tuple[str, Any, str]] = [
    ("labels.template", "Order {name}", "must contain {order}"),
    ("labels.template", "Order {order} {phone}", "may use only the {order} and {name} placeholders"),
    ("labels.template", "Order {order!r}", "may use only the {order} and {name} placeholders"),
    ("labels.template", "Order {order} {order}", "may use each placeholder once"),
    (
        "labels.template",
        "Order 1 {order}",
        "may hold only letters, spaces and - ' . # besides {order} and {name}",
    ),
    (
        "labels.template",
        "sip:{order}@shop",
        "may hold only letters, spaces and - ' . # besides {order} and {name}",
    ),
    (
        "labels.template",
        "Order\x1b{order}",
        "may hold only letters, spaces and - ' . # besides {order} and {name}",
    ),
    (
        "labels.template",
        "{order",
        "is not a valid template (a '{' or '}' without its pair; use only {order} and {name})",
    ),
    ("labels.template", "Order {order} " + "x" * 30, "must be at most 40 characters"),
    ("labels.template", "", "must be a non-empty string"),
    ("labels.name_style", "full", "must be one of first_last_initial"),
    ("labels.colour", "blue", "is not a known key"),
    ("orders.default_region", "XX", "must be a two-letter region code such as RU or DE"),
    ("orders.default_region", "Russia", "must be a two-letter region code such as RU or DE"),
    ("orders.dial_format", "e.164", "must be one of e164, e164_no_plus, national"),
    ("orders.dial_format", "national", "national needs orders.default_region"),
]


@pytest.mark.parametrize(("key", "value", "message"), LABEL_AND_PHONE_ERRORS)
def test_label_and_phone_settings_are_validated(key: str, value: Any, message: str) -> None:
    data = copy.deepcopy(example_data())
    data.setdefault("labels", {})
    _set(data, key, value)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert (info.value.key, info.value.message) == (key, message)


def test_label_and_phone_settings_load() -> None:
    config = parse_config(example_data())
    # The example documents the defaults.
    assert (config.labels.template, config.labels.name_style) == (
        "Order {order} {name}",
        "first_last_initial",
    )
    assert (config.orders.default_region, config.orders.dial_format) == (None, "e164")
    assert config.prompts.invalid_phone == "cannot-complete-as-dialed"
    data = example_data()
    data["labels"] = {"template": "Заказ № {order} {name}"}
    data["orders"].update(default_region="RU", dial_format="national")
    config = parse_config(data)
    assert config.labels.template == "Заказ № {order} {name}"
    assert (config.orders.default_region, config.orders.dial_format) == ("RU", "national")
