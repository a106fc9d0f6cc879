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

from bridged.config import DEFAULT_PROMPTS, ConfigError
from bridged.configfile import load_config, parse_config
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
    # A `^...$` pattern with .match() lets a trailing newline through (`$` matches before it): every
    # such check must be a full match.
    ("app name with a newline", lambda d: _set(d, "ari.app", "bridged\n"), "ari.app"),
    (
        "manager id with a newline",
        lambda d: _set(d, "managers", [{**d["managers"][0], "id": "anna\n"}]),
        "managers[0].id",
    ),
    (
        "endpoint with a newline",
        lambda d: _set(d, "managers", [{**d["managers"][0], "endpoint": "PJSIP/anna\n"}]),
        "managers[0].endpoint",
    ),
    ("logging level bogus", lambda d: _set(d, "logging.level", "LOUD"), "logging.level"),
    ("agi port text", lambda d: _set(d, "agi.port", "4573x"), "agi.port"),
    ("unknown prompt", lambda d: d.update(prompts={"greeting": "hello"}), "prompts.greeting"),
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
    (
        "labels.name_style",
        "full",
        "must be one of first_last_initial, last_first_initial, first_patronymic, first_word",
    ),
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


# -- the whole file at once: YAML reasons, duplicate keys, typos, numbers read from YAML ------------


def _example_text() -> str:
    """The shipped example, placeholders replaced: a valid file an admin then edits."""
    return (
        EXAMPLE_CONFIG.read_text(encoding="utf-8")
        .replace("change-me", "s3cr3t-value")
        .replace("0" * 64, "a" * 64)
    )


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bridged.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.lines)
    return info.value.lines


def test_the_example_text_loads(tmp_path: Path) -> None:
    path = tmp_path / "bridged.yaml"
    path.write_text(_example_text(), encoding="utf-8")
    assert load_config(path).policy == "own"


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    text = _example_text() + "policy: any\n"
    first, last = _line_of(text, "policy: own"), len(text.splitlines())
    assert _problems(tmp_path, text) == [
        f"policy: is set twice (lines {first} and {last}); YAML would keep the last: keep one"
    ]


def test_duplicates_inside_sections_and_list_items_name_their_path(tmp_path: Path) -> None:
    text = _example_text()
    text = text.replace(
        "  password: s3cr3t-value\n", "  password: s3cr3t-value\n  password: other-value\n", 1
    )
    text = text.replace("    endpoint: boris\n", "    endpoint: boris\n    endpoint: anna\n", 1)
    lines = text.splitlines()
    pw = [i for i, line in enumerate(lines, 1) if line.startswith("  password:")][:2]
    ep = [i for i, line in enumerate(lines, 1) if line.startswith("    endpoint:")][1:3]
    assert _problems(tmp_path, text) == [
        f"ari.password: is set twice (lines {pw[0]} and {pw[1]}); YAML would keep the last: keep one",
        f"managers[1].endpoint: is set twice (lines {ep[0]} and {ep[1]}); YAML would keep the last: keep one",
    ]


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = _example_text().replace(
        "trunk:\n", "x-trunk: &trunk\n  ring_timeout: 20\ntrunk:\n  <<: *trunk\n", 1
    )
    # Only the unknown anchor holder is reported: "<<" and the key it brings are not a duplicate.
    assert _problems(tmp_path, text) == ["x-trunk: is not a known key; did you mean 'trunk'?"]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        _example_text()
        .replace("  username: bridged\n", "  usrname: bridged\n", 1)
        .replace("""  caller_id: '"My Shop" <+15550100>'""", "  caller_id: 79161234567", 1)
        .replace("  ring_timeout: 30\n", "  ring_timeout: 1\n", 1)
        .replace("policy: own", "policy: everyone", 1)
        .replace("  host: 127.0.0.1\n  port: 4573\n", "  host: 0.0.0.0\n  port: 4573\n", 1)
        .replace("  level: INFO", "  levle: INFO", 1)
    )
    assert _problems(tmp_path, text) == [
        "ari.username: is required",
        "ari.usrname: is not a known key; did you mean 'username'?",
        "policy: must be one of own, team, any",
        "trunk.caller_id: must be a string; YAML read 79161234567 as a number: quote it",
        "trunk.ring_timeout: must be between 5 and 300",
        "agi.host: 0.0.0.0 is not a loopback address; FastAGI has no authentication, so whoever reaches the"
        " port can place calls as any manager: keep it on 127.0.0.1, or set agi.allow_remote: true and let"
        " only Asterisk reach the port (firewall)",
        "logging.levle: is not a known key; did you mean 'level'?",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "ari: [unclosed\n",
            "<file>: is not valid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>'"
            " (while parsing a flow sequence at line 1, column 6)",
        ),
        (
            "ari:\n\turl: http://127.0.0.1:8088/ari\n",
            "<file>: is not valid YAML: line 2, column 1: found character '\\t' that cannot start any token"
            " (while scanning for the next token)",
        ),
        (
            "policy: 'own\n",
            "<file>: is not valid YAML: line 2, column 1: found unexpected end of stream"
            " (while scanning a quoted scalar at line 1, column 9)",
        ),
    ],
    ids=["unclosed bracket", "tab", "unclosed quote"],
)
def test_yaml_errors_keep_the_parsers_reason(tmp_path: Path, text: str, message: str) -> None:
    assert _problems(tmp_path, text) == [message]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (79161234567, "must be a string; YAML read 79161234567 as a number: quote it"),
        (1.5, "must be a string; YAML read 1.5 as a number: quote it"),
        (True, "must be a string; YAML read a yes/no/true/false word as a boolean: quote it"),
        (["a"], "must be a string"),
        ("  ", "must be a non-empty string"),
    ],
)
def test_a_value_yaml_did_not_read_as_text_says_why(value: Any, message: str) -> None:
    data = example_data()
    data["trunk"]["caller_id"] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems == [("trunk.caller_id", message)]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_agi_on_loopback_needs_nothing(host: str) -> None:
    data = example_data()
    data["agi"]["host"] = host
    assert parse_config(data).agi.host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "pbx.example.org"])
def test_agi_off_loopback_needs_allow_remote(host: str) -> None:
    data = example_data()
    data["agi"]["host"] = host
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == "agi.host"
    assert info.value.message.startswith(f"{host} is not a loopback address; FastAGI has no authentication")
    data["agi"]["allow_remote"] = True
    config = parse_config(data)
    assert (config.agi.host, config.agi.allow_remote) == (host, True)


def test_a_bad_section_does_not_bury_the_rest_under_required_keys() -> None:
    data = example_data()
    data["ari"] = "http://127.0.0.1:8088/ari"
    del data["trunk"]
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems == [
        ("ari", "must be a mapping (one Asterisk node) or a list of them (several nodes)"),
        ("trunk", "is required"),
    ]


def test_cli_prints_each_problem_on_its_own_line(tmp_path: Path) -> None:
    data = example_data()
    data["ari"]["usrname"] = data["ari"].pop("username")
    data["policy"] = "all"
    path = tmp_path / "bridged.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = _check_config(path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"bridged: invalid config {path} (3 problems):",
        "  ari.username: is required",
        "  ari.usrname: is not a known key; did you mean 'username'?",
        "  policy: must be one of own, team, any",
    ]


# -- the language: prompts, label template, validation ------------------------------------------------


def _with(**top: Any) -> dict[str, Any]:
    data = example_data()
    data.update(top)
    return data


def test_the_language_defaults_to_english_and_chooses_the_defaults_of_prompts_and_labels() -> None:
    english = parse_config(example_data())
    assert english.language == "en"
    assert english.labels.template == "Order {order} {name}"
    assert english.prompts == DEFAULT_PROMPTS["en"]
    assert english.prompts.unavailable == "please-try-call-later"
    russian = parse_config(_with(language="ru"))
    assert russian.language == "ru"
    assert russian.labels.template == "Заказ {order} {name}"
    assert russian.prompts == DEFAULT_PROMPTS["ru"]
    # Debian's Russian sounds name this one differently; the rest are the English names.
    assert russian.prompts.unavailable == "pls-try-call-later"
    assert russian.prompts.overloaded == "all-circuits-busy-now&pls-try-call-later"
    assert russian.prompts.busy == english.prompts.busy == "vm-theperson&vm-isonphone"


def test_a_prompt_or_a_template_set_in_the_file_wins_over_the_languages_default() -> None:
    data = _with(language="ru", prompts={"unavailable": "custom/later"})
    data["labels"] = {"template": "Order {order} {name}", "name_style": "last_first_initial"}
    config = parse_config(data)
    assert config.prompts.unavailable == "custom/later"
    assert config.prompts.overloaded == "all-circuits-busy-now&pls-try-call-later"  # the others: ru
    assert (config.labels.template, config.labels.name_style) == (
        "Order {order} {name}",
        "last_first_initial",
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("de", "must be one of en, ru (those bridged has default prompts and labels for)"),
        ("RU", "must be one of en, ru (those bridged has default prompts and labels for)"),
        ("ru|x", "must be one of en, ru (those bridged has default prompts and labels for)"),
        (7, "must be a string; YAML read 7 as a number: quote it"),
        ("", "must be a non-empty string"),
    ],
)
def test_the_language_is_validated(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with(language=value))
    assert info.value.lines == [f"language: {message}"]


SOUND_PROBLEM = (
    "must be Asterisk sound names (letters, digits, '_', '-', '.', '/'; no extension) joined by '&'"
)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("prompts.denied", "im-sorry&feature-not-avail-line", None),
        ("prompts.denied", "custom/shop/denied", None),
        ("prompts.denied", "/var/lib/bridged/sounds/denied", None),
        ("prompts.denied", "im-sorry|x", SOUND_PROBLEM),  # the dialplan's CUT on '|'
        ("prompts.denied", "im-sorry,3", SOUND_PROBLEM),  # Playback()'s options
        ("prompts.denied", "im sorry", SOUND_PROBLEM),
        ("prompts.denied", "a&&b", SOUND_PROBLEM),
        ("prompts.denied", "../../etc/passwd", SOUND_PROBLEM),
        ("prompts.denied", "im-sorry)", SOUND_PROBLEM),
        ("prompts.denied", "звонок", SOUND_PROBLEM),
        ("recording.announcement", "custom/call-recorded", None),
        ("recording.announcement", "custom/call recorded", SOUND_PROBLEM),
        ("recording.announcement", "beep&custom/x|y", SOUND_PROBLEM),
    ],
)
def test_prompts_and_the_announcement_are_sound_names(key: str, value: str, problem: str | None) -> None:
    data = example_data()
    section, name = key.split(".")
    data[section] = {**(data.get(section) or {}), name: value}
    if problem is None:
        config = parse_config(data)
        assert getattr(getattr(config, section), name) == value
        return
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.lines == [f"{key}: {problem}"]


# -- inbound calls ---------------------------------------------------------------------------------------

INBOUND_SECRET = "k" * 40


def _inbound(**values: Any) -> dict[str, Any]:
    data = copy.deepcopy(example_data())
    data["inbound"].update(numbers=["+15550100"], fallback=["anna"], secret=INBOUND_SECRET)
    data["inbound"].update(values)
    return data


def test_the_example_takes_no_inbound_call_and_documents_the_defaults() -> None:
    config = parse_config(example_data())
    assert not config.inbound.enabled
    assert (config.inbound.ring_timeout, config.inbound.ring_group, config.inbound.ring_team) == (
        20,
        "sequential",
        True,
    )
    assert (config.inbound.sticky_days, config.inbound.missed_prompt) == (30, "vm-nobodyavail")
    assert config.orders.reverse_query is not None and "$1" in config.orders.reverse_query


def test_an_inbound_section_loads() -> None:
    config = parse_config(
        _inbound(numbers=["+15550100", "8 (495) 123-45-67"], ring_group="simultaneous", sticky_days=0)
    )
    assert config.inbound.enabled
    assert config.inbound.numbers == ("+15550100", "8 (495) 123-45-67")
    assert config.inbound.fallback == ("anna",)
    assert config.inbound.secret == INBOUND_SECRET
    assert (config.inbound.ring_group, config.inbound.sticky_days) == ("simultaneous", 0)


INBOUND_ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({"secret": None}, "inbound.secret", "is required when inbound.numbers is set"),
    ({"secret": "change-me"}, "inbound.secret", "must be a real random secret of at least 32 characters"),
    ({"secret": "x" * 31}, "inbound.secret", "must be a real random secret of at least 32 characters"),
    ({"fallback": []}, "inbound.fallback", "is required when inbound.numbers is set"),
    ({"fallback": ["carol"]}, "inbound.fallback[0]", "'carol' is not a manager id"),
    ({"fallback": [7]}, "inbound.fallback[0]", "must be a string; YAML read 7 as a number: quote it"),
    ({"numbers": [15550100]}, "inbound.numbers[0]", "must be a string; YAML read 15550100 as a number"),
    ({"numbers": ["sip:shop@host"]}, "inbound.numbers[0]", "must be a phone number"),
    ({"numbers": "+15550100"}, "inbound.numbers", "must be a list of the shop's numbers"),
    ({"ring_group": "round_robin"}, "inbound.ring_group", "must be one of sequential, simultaneous"),
    ({"ring_timeout": 1}, "inbound.ring_timeout", "must be between 5 and 300"),
    ({"sticky_days": -1}, "inbound.sticky_days", "must be between 0 and 3650"),
    ({"ring_team": "yes"}, "inbound.ring_team", "must be true or false"),
    ({"stiky_days": 3}, "inbound.stiky_days", "is not a known key; did you mean 'sticky_days'?"),
]


@pytest.mark.parametrize(("values", "key", "message"), INBOUND_ERRORS)
def test_inbound_settings_are_validated(values: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_inbound(**values))
    assert dict(info.value.problems)[key].startswith(message), info.value.problems


def test_a_reverse_query_must_take_the_callers_number() -> None:
    data = copy.deepcopy(example_data())
    data["orders"]["reverse_query"] = "SELECT 1 AS order_id"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert (info.value.key, info.value.message) == (
        "orders.reverse_query",
        "must use $1 for the caller's number (E.164)",
    )
    data["orders"]["reverse_query"] = ""
    assert parse_config(data).orders.reverse_query is None


def test_check_config_says_when_the_shops_database_could_not_be_asked(tmp_path: Path) -> None:
    """Offline, the file is still checked and valid (exit 0), and the output says what was not checked."""
    data = example_data()
    data["orders"]["dsn"] = "postgresql://shop_reader:pw@127.0.0.1:9/shop"  # nobody listens on port 9
    path = tmp_path / "bridged.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = _check_config(path)
    assert result.returncode == 0, result.stderr
    assert "the shop's database shop_reader@127.0.0.1:9/shop did not answer" in result.stdout
    assert "orders.query and orders.reverse_query were not checked" in result.stdout
    assert "pw" not in result.stdout.replace(str(path), "")
    offline = subprocess.run(
        [sys.executable, "-m", "bridged", "check-config", "--offline", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert offline.returncode == 0, offline.stderr
    assert "not checked: --offline" in offline.stdout
