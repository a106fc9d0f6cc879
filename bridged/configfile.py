"""The config file: YAML read strictly and loaded into bridged.config's dataclasses, checked at start.

Every error names the key it is about (``trunk.dial``, ``managers[2].endpoint``) and every error of a
file is reported at once, so that ``bridged check-config`` tells an admin exactly what to fix in one
go. A key written twice in a mapping is an error (YAML would silently keep the last one: a
``policy: any`` below a ``policy: own`` would widen access without a word).

Adding a key: read it with the helpers of bridged.configsection's ``Section`` (``s.text``,
``s.integer``, ...) in its section's loader; report a bad value with ``s.error(name, message)``
(loading goes on, so the next problems are reported too) or ``raise ConfigError(s.key(name),
message)`` (the rest of that section is skipped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import yaml

from . import yamlstrict
from .config import (
    DEFAULT_LANGUAGE,
    DEFAULT_PROMPTS,
    LANGUAGES,
    PLACEHOLDERS,
    POLICIES,
    RECORDING_SOURCES,
    ROLES,
    AgiConfig,
    ApiConfig,
    ApiToken,
    AriConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    HttpConfig,
    LabelsConfig,
    LinksConfig,
    LoggingConfig,
    Manager,
    OrdersConfig,
    Prompts,
    RecordingConfig,
    TrunkConfig,
    WebhookConfig,
)
from .configguards import (
    check_inbound_managers,
    check_limit_managers,
    load_canaries,
    load_inbound,
    load_limits,
)
from .configsection import Problems, Section, sound
from .ids import ID_RE
from .labels import DEFAULT_NAME_STYLE, NAME_STYLES, default_template, template_problem
from .phones import DIAL_FORMATS, region_known

_ENDPOINT_RE = re.compile(r"[A-Za-z0-9_.@-]+")
_APP_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _dsn(section: Section, name: str) -> str:
    dsn = section.text(name, required=True)
    if not dsn:
        return dsn
    parsed = urlparse(dsn)
    if parsed.scheme not in ("postgres", "postgresql"):
        section.error(name, "must be a postgresql:// URL")
    elif parsed.password and parsed.password in PLACEHOLDERS:
        section.error(name, "still holds the example placeholder password")
    return dsn


def _load_ari(s: Section) -> AriConfig:
    url = s.text("url", required=True)
    parsed = urlparse(url)
    if url and (
        parsed.scheme not in ("http", "https")
        or not parsed.netloc
        or not parsed.path.rstrip("/").endswith("/ari")
    ):
        s.error("url", "must be an http(s) URL ending in /ari, e.g. http://127.0.0.1:8088/ari")
    app = s.text("app", "bridged")
    if not _APP_RE.fullmatch(app):
        s.error("app", "may hold only letters, digits, '-' and '_'")
    name = s.text("name", "")
    if name and not ID_RE.fullmatch(name):
        s.error("name", "may hold only letters, digits, '.', '-' and '_' (64 at most)")
    cfg = AriConfig(
        url=url.rstrip("/"),
        username=s.text("username", required=True),
        password=s.secret("password"),
        app=app,
        request_timeout=s.number("request_timeout", 5.0, minimum=0.1, maximum=60),
        reconnect_max_delay=s.number("reconnect_max_delay", 30.0, minimum=0.5, maximum=600),
        max_request_wait=s.number("max_request_wait", 1.0, minimum=0, maximum=60),
        name=name,
        lost_after=s.number("lost_after", 120.0, minimum=1, maximum=86400),
    )
    s.finish()
    return cfg


def _load_ari_nodes(root: Section) -> tuple[AriConfig, ...]:
    """``ari:`` as one mapping (one Asterisk node) or a list of them (several nodes, each named)."""
    raw = root.data.get("ari")
    if not isinstance(raw, list):
        if raw is not None and not isinstance(raw, Mapping):
            root.error("ari", "must be a mapping (one Asterisk node) or a list of them (several nodes)")
            return ()
        return (root.load("ari", _load_ari),)
    root.used.add("ari")
    if not raw:
        root.error("ari", "must name at least one Asterisk node")
        return ()
    nodes: list[AriConfig] = []
    for index, item in enumerate(raw):
        s = root.child(item, f"ari[{index}]")
        try:
            node = _load_ari(s)
        except ConfigError as exc:
            root.problems.extend(exc)
            continue
        if s.broken:
            continue
        if len(raw) > 1 and not node.name:
            s.error("name", "is required when ari lists several nodes (it names the node in call rows)")
        if nodes and node.app != nodes[0].app:
            # One daemon is one Stasis application: the dialplan of every node enters it by that name.
            s.error("app", f"must be the same on every node ({nodes[0].app!r} on the first)")
        if any(other.node == node.node for other in nodes):
            s.error("name" if node.name else "url", f"names the node {node.node!r} twice")
        nodes.append(node)
    return tuple(nodes)


def _load_database(s: Section) -> DatabaseConfig:
    cfg = DatabaseConfig(
        dsn=_dsn(s, "dsn"),
        min_connections=s.integer("min_connections", 1, minimum=0, maximum=100),
        max_connections=s.integer("max_connections", 10, minimum=1, maximum=100),
    )
    s.finish()
    return cfg


def _load_orders(s: Section) -> OrdersConfig:
    query = s.text("query", required=True)
    if query and "$1" not in query:
        s.error("query", "must use $1 for the order id")
    pattern = s.text("code_pattern", OrdersConfig.code_pattern)
    try:
        re.compile(pattern)
    except re.error as exc:
        s.error("code_pattern", f"is not a valid regular expression: {exc}")
    region = s.opt_str("default_region")
    if region is not None and not region_known(region):
        s.error("default_region", "must be a two-letter region code such as RU or DE")
    dial_format = s.text("dial_format", "e164")
    if dial_format not in DIAL_FORMATS:
        s.error("dial_format", f"must be one of {', '.join(DIAL_FORMATS)}")
    elif dial_format == "national" and region is None:
        s.error("dial_format", "national needs orders.default_region")
    reverse_query = s.opt_str("reverse_query")
    if reverse_query is not None and "$1" not in reverse_query:
        s.error("reverse_query", "must use $1 for the caller's number (E.164)")
    cfg = OrdersConfig(
        dsn=_dsn(s, "dsn"),
        query=query,
        timeout=s.number("timeout", 2.0, minimum=0.05, maximum=30),
        code_pattern=pattern,
        default_region=region,
        dial_format=dial_format,
        reverse_query=reverse_query,
    )
    s.finish()
    return cfg


def _load_managers(root: Section) -> tuple[Manager, ...]:
    raw = root.items("managers", required=True, what="a non-empty list")
    if not raw and "managers" in root.data:
        root.error("managers", "must be a non-empty list")
    managers: list[Manager] = []
    ids: set[str] = set()
    endpoints: set[str] = set()
    for index, item in enumerate(raw):
        s = root.child(item, f"managers[{index}]")
        manager_id = s.text("id", required=True)
        if manager_id and not ID_RE.fullmatch(manager_id):
            s.error("id", "may hold only letters, digits, '.', '-' and '_' (64 at most)")
        endpoint = s.text("endpoint", required=True)
        if endpoint and not _ENDPOINT_RE.fullmatch(endpoint):
            s.error("endpoint", "must be a PJSIP endpoint name")
        if manager_id in ids:
            s.error("id", f"duplicates manager id {manager_id!r}")
        if endpoint in endpoints:
            s.error("endpoint", f"endpoint {endpoint!r} belongs to another manager")
        ids.add(manager_id)
        endpoints.add(endpoint)
        managers.append(
            Manager(id=manager_id, name=s.text("name", manager_id), endpoint=endpoint, team=s.opt_str("team"))
        )
        s.finish()
    return tuple(managers)


def _dial_problem(dial: str) -> str | None:
    others = dial.replace("{number}", "")
    if "{number}" not in dial:
        return "must contain {number}, e.g. PJSIP/{number}@carrier"
    if "{" in others or "}" in others:
        return "may use only the {number} placeholder"
    if not dial.startswith("PJSIP/"):
        # Local/ channels put the number into channel names, BRIDGEPEER and CDRs (docs/asterisk.md).
        return "must dial a PJSIP trunk directly (PJSIP/...)"
    return None


def _load_trunk(s: Section) -> TrunkConfig:
    dial = s.text("dial", required=True)
    problem = _dial_problem(dial)
    if dial and problem:
        s.error("dial", problem)
    cfg = TrunkConfig(
        dial=dial,
        caller_id=s.text("caller_id", required=True),
        ring_timeout=s.integer("ring_timeout", 30, minimum=5, maximum=300),
    )
    s.finish()
    return cfg


def _load_labels(s: Section, language: str) -> LabelsConfig:
    template = s.text("template", default_template(language))
    problem = template_problem(template)
    if problem is not None:
        s.error("template", problem)
    style = s.text("name_style", DEFAULT_NAME_STYLE)
    if style not in NAME_STYLES:
        s.error("name_style", f"must be one of {', '.join(NAME_STYLES)}")
    cfg = LabelsConfig(template=template, name_style=style)
    s.finish()
    return cfg


# A prompt as the config writes it: Asterisk sound names (a path below the sounds folder, or an absolute
# one, without extension) joined by '&'. Nothing else: the dialplan's Playback() and CUT on '|' take it
# as it is, so ',', '|', quotes and spaces would become syntax there.
def _load_recording(s: Section) -> RecordingConfig:
    fmt = s.text("format", "wav")
    if fmt not in ("wav", "gsm", "ulaw", "alaw", "sln", "wav49"):
        s.error("format", "must be one of wav, gsm, ulaw, alaw, sln, wav49")
    source = s.text("source", "ari")
    if source not in RECORDING_SOURCES:
        s.error("source", f"must be one of {', '.join(RECORDING_SOURCES)}")
    folder = s.opt_str("folder")
    if source == "folder" and folder is None:
        s.error("folder", "is required when recording.source is 'folder'")
    if folder is not None and not Path(folder).is_absolute():
        s.error("folder", "must be an absolute path (Asterisk's <astspooldir>/recording)")
    announcement = s.opt_str("announcement")
    sound(s, "announcement", announcement)
    retention = s._get("retention_days", False)
    retention_days = None if retention is None else s.integer("retention_days", 0, minimum=1, maximum=36500)
    cfg = RecordingConfig(
        enabled=s.boolean("enabled", True),
        format=fmt,
        announcement=announcement,
        source=source,
        folder=folder,
        require_reason=s.boolean("require_reason", False),
        retention_days=retention_days,
        purge_interval=s.integer("purge_interval", 3600, minimum=1, maximum=7 * 86400),
    )
    s.finish()
    return cfg


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _load_agi(s: Section) -> AgiConfig:
    cfg = AgiConfig(
        host=s.text("host", "127.0.0.1"),
        port=s.integer("port", 4573, minimum=1, maximum=65535),
        allow_remote=s.boolean("allow_remote", False),
    )
    if not cfg.allow_remote and not _is_loopback(cfg.host):
        s.error(
            "host",
            f"{cfg.host} is not a loopback address; FastAGI has no authentication, so whoever reaches "
            "the port can place calls as any manager: keep it on 127.0.0.1, or set agi.allow_remote: true "
            "and let only Asterisk reach the port (firewall)",
        )
    s.finish()
    return cfg


def _load_http(s: Section) -> HttpConfig:
    proxies = []
    for i, item in enumerate(s.items("trusted_proxies", what="a list of addresses or networks")):
        try:
            proxies.append(ip_network(str(item), strict=False))
        except ValueError:
            s.error(f"trusted_proxies[{i}]", "is not an IP address or network")
    cfg = HttpConfig(
        host=s.text("host", "127.0.0.1"),
        port=s.integer("port", 8090, minimum=1, maximum=65535),
        trusted_proxies=tuple(proxies),
        header_timeout=s.number("header_timeout", 10.0, minimum=0.1, maximum=300),
        body_timeout=s.number("body_timeout", 30.0, minimum=0.1, maximum=3600),
        max_connections_per_client=s.integer("max_connections_per_client", 50, minimum=1, maximum=100_000),
    )
    s.finish()
    return cfg


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _load_api(s: Section) -> ApiConfig:
    tokens: list[ApiToken] = []
    names: set[str] = set()
    for index, item in enumerate(s.items("tokens")):
        t = s.child(item, f"{s.key('tokens')}[{index}]")
        name = t.text("name", required=True)
        role = t.text("role", required=True)
        if role and role not in ROLES:
            t.error("role", f"must be one of {', '.join(ROLES)}")
        digest = t.text("sha256", required=True).lower()
        if digest and not _SHA256_RE.fullmatch(digest):
            t.error("sha256", "must be the hex SHA-256 of the token (bridged hash-token)")
        elif digest == "0" * 64:
            t.error("sha256", "still holds the example placeholder; run bridged hash-token")
        if name in names:
            t.error("name", f"duplicates token name {name!r}")
        names.add(name)
        manager = t.opt_str("manager")
        if role == "manager" and manager is None:
            t.error("manager", "is required for role manager: the id of the manager the token acts as")
        elif role != "manager" and manager is not None:
            t.error("manager", "binds only a token of role manager; remove it or set role: manager")
            manager = None
        tokens.append(ApiToken(name=name, role=role, sha256=digest, manager=manager))
        t.finish()
    cfg = ApiConfig(
        tokens=tuple(tokens),
        max_body_bytes=s.integer("max_body_bytes", 16384, minimum=256, maximum=1048576),
        manager_ring_timeout=s.integer("manager_ring_timeout", 30, minimum=5, maximum=300),
        idempotency_hours=s.integer("idempotency_hours", 24, minimum=1, maximum=24 * 30),
    )
    s.finish()
    return cfg


# A link secret is typed into a shop's code as well as here: printable ASCII only, so that PHP, Python and
# a template engine all feed the same bytes to HMAC whatever their file encoding.
_LINK_SECRET_RE = re.compile(r"[\x21-\x7e]{32,256}")


def _load_links(s: Section) -> LinksConfig:
    secret = s.opt_str("secret")
    if secret is not None and secret in PLACEHOLDERS:
        s.error("secret", "still holds the example placeholder; set a real value (e.g. openssl rand -hex 32)")
    elif secret is not None and not _LINK_SECRET_RE.fullmatch(secret):
        s.error(
            "secret",
            "must be 32 to 256 printable ASCII characters without spaces (e.g. openssl rand -hex 32)",
        )
    cfg = LinksConfig(secret=secret, max_age=s.integer("max_age", 600, minimum=10, maximum=86400))
    s.finish()
    return cfg


def _check_token_managers(root: Section, api: ApiConfig, managers: tuple[Manager, ...]) -> None:
    """A manager token must name a configured manager (one removed later would bind it to nobody)."""
    known = {m.id for m in managers}
    for index, token in enumerate(api.tokens):
        if token.manager is not None and token.manager not in known:
            root.error(f"api.tokens[{index}].manager", f"{token.manager!r} is not the id of a manager")


def _load_webhook(s: Section) -> WebhookConfig:
    url = s.opt_str("url")
    if url is not None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            s.error("url", "must be an http(s) URL")
    secret = s.opt_str("secret")
    if url is not None and secret is None:
        s.error("secret", "is required when webhook.url is set")
    if secret is not None and (secret in PLACEHOLDERS or len(secret) < 16):
        s.error("secret", "must be a real secret of at least 16 characters")
    cfg = WebhookConfig(
        url=url,
        secret=secret,
        timeout=s.number("timeout", 5.0, minimum=0.1, maximum=60),
        max_attempts=s.integer("max_attempts", 10, minimum=1, maximum=100),
    )
    s.finish()
    return cfg


def _load_prompts(s: Section, language: str) -> Prompts:
    defaults = DEFAULT_PROMPTS.get(language, Prompts())
    values = {name: s.text(name, getattr(defaults, name)) for name in Prompts.__dataclass_fields__}
    for name, value in values.items():
        sound(s, name, value)
    s.finish()
    return Prompts(**values)


def _load_language(root: Section) -> str:
    language = root.text("language", DEFAULT_LANGUAGE)
    if language not in LANGUAGES:
        root.error(
            "language",
            f"must be one of {', '.join(LANGUAGES)} (those bridged has default prompts and labels for)",
        )
        return DEFAULT_LANGUAGE
    return language


# A shop's number as a carrier writes it: an optional '+' and digits, maybe with separators.
def _load_logging(s: Section) -> LoggingConfig:
    level = s.text("level", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        s.error("level", "must be DEBUG, INFO, WARNING or ERROR")
    cfg = LoggingConfig(level=level, json=s.boolean("json", False))
    s.finish()
    return cfg


def _load_policy(root: Section, managers: tuple[Manager, ...]) -> str:
    policy = root.text("policy", required=True)
    if policy and policy not in POLICIES:
        root.error("policy", f"must be one of {', '.join(POLICIES)}")
    if policy == "team":
        for index, manager in enumerate(managers):
            if manager.team is None:
                root.error(f"managers[{index}].team", "is required when policy is 'team'")
    return policy


def parse_config(data: Any) -> Config:
    """Validate ``data`` (the parsed YAML); a ConfigError lists every problem found."""
    problems = Problems()
    root = Section(data, "", problems)
    try:
        nodes = _load_ari_nodes(root)
        ari = nodes[0] if nodes else cast(AriConfig, None)
        database = root.load("database", _load_database)
        orders = root.load("orders", _load_orders)
        managers = _load_managers(root)
        language = _load_language(root)
        config = Config(
            ari=ari,
            database=database,
            orders=orders,
            managers=managers,
            policy=_load_policy(root, managers),
            trunk=root.load("trunk", _load_trunk),
            labels=root.load("labels", lambda s: _load_labels(s, language), required=False),
            recording=root.load("recording", _load_recording, required=False),
            agi=root.load("agi", _load_agi, required=False),
            http=root.load("http", _load_http, required=False),
            api=root.load("api", _load_api, required=False),
            links=root.load("links", _load_links, required=False),
            webhook=root.load("webhook", _load_webhook, required=False),
            prompts=root.load("prompts", lambda s: _load_prompts(s, language), required=False),
            inbound=root.load("inbound", load_inbound, required=False),
            limits=root.load("limits", load_limits, required=False),
            canaries=root.load("canaries", load_canaries, required=False),
            logging=root.load("logging", _load_logging, required=False),
            language=language,
            ari_nodes=nodes if len(nodes) > 1 else (),
        )
        if config.api is not None:
            _check_token_managers(root, config.api, managers)
        if config.inbound is not None and managers is not None:
            check_inbound_managers(root, config.inbound, managers)
        if config.limits is not None and managers is not None:
            check_limit_managers(root, config.limits, managers)
        root.finish()
    except ConfigError as exc:  # a check that raised instead of recording: keep what was found before
        problems.extend(exc)
        raise problems.error() from None
    problems.check()
    return config


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = yamlstrict.load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"is not valid YAML: {yamlstrict.problem(exc)}") from None
    return parse_config(data)
