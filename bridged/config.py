"""The daemon's configuration: YAML loaded into frozen dataclasses, validated at start.

Every error names the key it is about (``trunk.dial``, ``managers[2].endpoint``) so that
``bridged check-config`` tells an admin exactly what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from .labels import DEFAULT_NAME_STYLE, DEFAULT_TEMPLATE, NAME_STYLES, template_problem
from .phones import DIAL_FORMATS, region_known

POLICIES = ("own", "team", "any")

# Values shipped in the example config that must never reach production unchanged.
PLACEHOLDERS = {"change-me", "changeme", "CHANGE_ME", "secret", "password"}


class ConfigError(Exception):
    """A config problem; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class AriConfig:
    url: str
    username: str
    password: str
    app: str
    request_timeout: float = 5.0
    reconnect_max_delay: float = 30.0
    # New calls are refused while an ARI request has waited this long for Asterisk's answer (0: never).
    max_request_wait: float = 1.0


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str
    min_connections: int = 1
    max_connections: int = 10


@dataclass(frozen=True)
class OrdersConfig:
    dsn: str
    query: str
    timeout: float = 2.0
    # What a manager may key in as an order code; anything else is refused before any lookup.
    code_pattern: str = r"[0-9]{1,12}"
    # The region of national numbers in the shop's data (e.g. "RU": "8 916 ..." is +7 916 ...); None:
    # every number must carry its country code.
    default_region: str | None = None
    # How the trunk dial string's {number} is written (bridged.phones.DIAL_FORMATS).
    dial_format: str = "e164"


@dataclass(frozen=True)
class LabelsConfig:
    """What a manager's phone shows as the other party (bridged.labels)."""

    template: str = DEFAULT_TEMPLATE
    name_style: str = DEFAULT_NAME_STYLE


@dataclass(frozen=True)
class Manager:
    id: str
    name: str
    endpoint: str
    team: str | None = None


@dataclass(frozen=True)
class TrunkConfig:
    dial: str
    caller_id: str
    ring_timeout: int = 30


RECORDING_SOURCES = ("ari", "folder")


@dataclass(frozen=True)
class RecordingConfig:
    enabled: bool = True
    format: str = "wav"
    announcement: str | None = None
    # Where ops review reads recordings: "ari" (GET /recordings/stored/{name}/file) or "folder" (bridged
    # runs beside Asterisk and reads <folder>/<name>.<format> itself).
    source: str = "ari"
    folder: str | None = None
    # Whether listening needs a ?reason=... (kept in the audit trail).
    require_reason: bool = False
    # Recordings older than this many days are deleted (None: kept); an admin may override it over the API.
    retention_days: int | None = None
    # Seconds between two retention passes.
    purge_interval: int = 3600


@dataclass(frozen=True)
class AgiConfig:
    host: str = "127.0.0.1"
    port: int = 4573


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8090
    # Reverse proxies whose X-Forwarded-For is believed (addresses or networks); none by default.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    # Seconds a client has for a request's line and headers, and for its body, before the connection is
    # closed (408); connections one client address may hold open at once (trusted proxies excepted).
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_client: int = 50


ROLES = ("shop", "ops", "admin")


@dataclass(frozen=True)
class ApiToken:
    name: str
    role: str
    sha256: str  # hex digest of the token; the token itself is never stored


@dataclass(frozen=True)
class ApiConfig:
    tokens: tuple[ApiToken, ...] = ()
    max_body_bytes: int = 16384
    # Seconds a manager's phone rings for an HTTP-triggered call before it counts as not answered.
    manager_ring_timeout: int = 30
    # How long an Idempotency-Key is remembered, in hours.
    idempotency_hours: int = 24


@dataclass(frozen=True)
class WebhookConfig:
    url: str | None = None
    secret: str | None = None
    timeout: float = 5.0
    max_attempts: int = 10


@dataclass(frozen=True)
class Prompts:
    """Stock Asterisk sounds the manager hears when a call cannot go ahead."""

    enter_code: str = "vm-enter-num-to-call"
    unknown_manager: str = "ss-noservice"
    invalid_code: str = "invalid"
    unknown_order: str = "pbx-invalid"
    denied: str = "im-sorry&feature-not-avail-line"
    lookup_failed: str = "sorry-youre-having-problems"
    unavailable: str = "please-try-call-later"
    overloaded: str = "all-circuits-busy-now&please-try-call-later"
    busy: str = "vm-theperson&vm-isonphone"
    no_answer: str = "vm-nobodyavail"
    customer_unavailable: str = "number-not-answering"
    congestion: str = "all-circuits-busy-now"
    invalid_phone: str = "cannot-complete-as-dialed"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True)
class Config:
    ari: AriConfig
    database: DatabaseConfig
    orders: OrdersConfig
    managers: tuple[Manager, ...]
    policy: str
    trunk: TrunkConfig
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    agi: AgiConfig = field(default_factory=AgiConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    prompts: Prompts = field(default_factory=Prompts)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def manager_by_endpoint(self, endpoint: str) -> Manager | None:
        for manager in self.managers:
            if manager.endpoint == endpoint:
                return manager
        return None

    def manager_by_id(self, manager_id: str) -> Manager | None:
        for manager in self.managers:
            if manager.id == manager_id:
                return manager
        return None


class _Section:
    """Typed access to one mapping of the YAML, remembering its dotted path for errors."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path or "<root>", "must be a mapping")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, required: bool) -> Any:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            return None
        return self.data[name]

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(name, required and default is None)
        if value is None:
            return default  # type: ignore[return-value]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.key(name), "must be a non-empty string")
        return value

    def opt_str(self, name: str) -> str | None:
        value = self._get(name, False)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigError(self.key(name), "must be a string")
        return value

    def secret(self, name: str) -> str:
        value = self.text(name, required=True)
        if value in PLACEHOLDERS:
            raise ConfigError(self.key(name), "still holds the example placeholder; set a real value")
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), "must be a number")
        if not minimum <= value <= maximum:
            raise ConfigError(self.key(name), f"must be between {minimum} and {maximum}")
        return float(value)

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), "must be an integer")
        if not minimum <= value <= maximum:
            raise ConfigError(self.key(name), f"must be between {minimum} and {maximum}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), "must be true or false")
        return value

    def section(self, name: str, *, required: bool = True) -> _Section:
        value = self._get(name, required)
        return _Section({} if value is None else value, self.key(name))

    def finish(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "is not a known key")


_ENDPOINT_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_APP_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _dsn(section: _Section, name: str) -> str:
    dsn = section.text(name, required=True)
    parsed = urlparse(dsn)
    if parsed.scheme not in ("postgres", "postgresql"):
        raise ConfigError(section.key(name), "must be a postgresql:// URL")
    if parsed.password and parsed.password in PLACEHOLDERS:
        raise ConfigError(section.key(name), "still holds the example placeholder password")
    return dsn


def _load_ari(s: _Section) -> AriConfig:
    url = s.text("url", required=True)
    parsed = urlparse(url)
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.netloc
        or not parsed.path.rstrip("/").endswith("/ari")
    ):
        raise ConfigError(
            s.key("url"), "must be an http(s) URL ending in /ari, e.g. http://127.0.0.1:8088/ari"
        )
    app = s.text("app", "bridged")
    if not _APP_RE.match(app):
        raise ConfigError(s.key("app"), "may hold only letters, digits, '-' and '_'")
    cfg = AriConfig(
        url=url.rstrip("/"),
        username=s.text("username", required=True),
        password=s.secret("password"),
        app=app,
        request_timeout=s.number("request_timeout", 5.0, minimum=0.1, maximum=60),
        reconnect_max_delay=s.number("reconnect_max_delay", 30.0, minimum=0.5, maximum=600),
        max_request_wait=s.number("max_request_wait", 1.0, minimum=0, maximum=60),
    )
    s.finish()
    return cfg


def _load_orders(s: _Section) -> OrdersConfig:
    query = s.text("query", required=True)
    if "$1" not in query:
        raise ConfigError(s.key("query"), "must use $1 for the order id")
    pattern = s.text("code_pattern", OrdersConfig.code_pattern)
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(s.key("code_pattern"), f"is not a valid regular expression: {exc}") from None
    region = s.opt_str("default_region")
    if region is not None and not region_known(region):
        raise ConfigError(s.key("default_region"), "must be a two-letter region code such as RU or DE")
    dial_format = s.text("dial_format", "e164")
    if dial_format not in DIAL_FORMATS:
        raise ConfigError(s.key("dial_format"), f"must be one of {', '.join(DIAL_FORMATS)}")
    if dial_format == "national" and region is None:
        raise ConfigError(s.key("dial_format"), "national needs orders.default_region")
    cfg = OrdersConfig(
        dsn=_dsn(s, "dsn"),
        query=query,
        timeout=s.number("timeout", 2.0, minimum=0.05, maximum=30),
        code_pattern=pattern,
        default_region=region,
        dial_format=dial_format,
    )
    s.finish()
    return cfg


def _load_managers(root: _Section) -> tuple[Manager, ...]:
    root.used.add("managers")
    raw = root.data.get("managers")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("managers", "must be a non-empty list")
    managers: list[Manager] = []
    ids: set[str] = set()
    endpoints: set[str] = set()
    for index, item in enumerate(raw):
        s = _Section(item, f"managers[{index}]")
        manager_id = s.text("id", required=True)
        if not _ID_RE.match(manager_id):
            raise ConfigError(s.key("id"), "may hold only letters, digits, '.', '-' and '_' (64 at most)")
        endpoint = s.text("endpoint", required=True)
        if not _ENDPOINT_RE.match(endpoint):
            raise ConfigError(s.key("endpoint"), "must be a PJSIP endpoint name")
        if manager_id in ids:
            raise ConfigError(s.key("id"), f"duplicates manager id {manager_id!r}")
        if endpoint in endpoints:
            raise ConfigError(s.key("endpoint"), f"endpoint {endpoint!r} belongs to another manager")
        ids.add(manager_id)
        endpoints.add(endpoint)
        managers.append(
            Manager(id=manager_id, name=s.text("name", manager_id), endpoint=endpoint, team=s.opt_str("team"))
        )
        s.finish()
    return tuple(managers)


def _load_trunk(s: _Section) -> TrunkConfig:
    dial = s.text("dial", required=True)
    if "{number}" not in dial:
        raise ConfigError(s.key("dial"), "must contain {number}, e.g. PJSIP/{number}@carrier")
    if re.sub(r"\{number\}", "", dial).count("{") or "}" in re.sub(r"\{number\}", "", dial):
        raise ConfigError(s.key("dial"), "may use only the {number} placeholder")
    if not dial.startswith("PJSIP/"):
        # Local/ channels put the number into channel names, BRIDGEPEER and CDRs (ASTERISK.md).
        raise ConfigError(s.key("dial"), "must dial a PJSIP trunk directly (PJSIP/...)")
    cfg = TrunkConfig(
        dial=dial,
        caller_id=s.text("caller_id", required=True),
        ring_timeout=s.integer("ring_timeout", 30, minimum=5, maximum=300),
    )
    s.finish()
    return cfg


def _load_labels(s: _Section) -> LabelsConfig:
    template = s.text("template", DEFAULT_TEMPLATE)
    problem = template_problem(template)
    if problem is not None:
        raise ConfigError(s.key("template"), problem)
    style = s.text("name_style", DEFAULT_NAME_STYLE)
    if style not in NAME_STYLES:
        raise ConfigError(s.key("name_style"), f"must be one of {', '.join(NAME_STYLES)}")
    cfg = LabelsConfig(template=template, name_style=style)
    s.finish()
    return cfg


def _load_recording(s: _Section) -> RecordingConfig:
    fmt = s.text("format", "wav")
    if fmt not in ("wav", "gsm", "ulaw", "alaw", "sln", "wav49"):
        raise ConfigError(s.key("format"), "must be one of wav, gsm, ulaw, alaw, sln, wav49")
    source = s.text("source", "ari")
    if source not in RECORDING_SOURCES:
        raise ConfigError(s.key("source"), f"must be one of {', '.join(RECORDING_SOURCES)}")
    folder = s.opt_str("folder")
    if source == "folder" and folder is None:
        raise ConfigError(s.key("folder"), "is required when recording.source is 'folder'")
    if folder is not None and not Path(folder).is_absolute():
        raise ConfigError(s.key("folder"), "must be an absolute path (Asterisk's <astspooldir>/recording)")
    retention = s._get("retention_days", False)
    retention_days = None if retention is None else s.integer("retention_days", 0, minimum=1, maximum=36500)
    cfg = RecordingConfig(
        enabled=s.boolean("enabled", True),
        format=fmt,
        announcement=s.opt_str("announcement"),
        source=source,
        folder=folder,
        require_reason=s.boolean("require_reason", False),
        retention_days=retention_days,
        purge_interval=s.integer("purge_interval", 3600, minimum=1, maximum=7 * 86400),
    )
    s.finish()
    return cfg


def _load_agi(s: _Section) -> AgiConfig:
    cfg = AgiConfig(host=s.text("host", "127.0.0.1"), port=s.integer("port", 4573, minimum=1, maximum=65535))
    s.finish()
    return cfg


def _load_http(s: _Section) -> HttpConfig:
    s.used.add("trusted_proxies")
    raw = s.data.get("trusted_proxies") or []
    if not isinstance(raw, list):
        raise ConfigError(s.key("trusted_proxies"), "must be a list of addresses or networks")
    proxies = []
    for i, item in enumerate(raw):
        try:
            proxies.append(ip_network(str(item), strict=False))
        except ValueError:
            raise ConfigError(f"{s.key('trusted_proxies')}[{i}]", "is not an IP address or network") from None
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


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _load_api(s: _Section) -> ApiConfig:
    s.used.add("tokens")
    raw = s.data.get("tokens") or []
    if not isinstance(raw, list):
        raise ConfigError(s.key("tokens"), "must be a list")
    tokens: list[ApiToken] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        t = _Section(item, f"{s.key('tokens')}[{index}]")
        name = t.text("name", required=True)
        role = t.text("role", required=True)
        if role not in ROLES:
            raise ConfigError(t.key("role"), f"must be one of {', '.join(ROLES)}")
        digest = t.text("sha256", required=True).lower()
        if not _SHA256_RE.match(digest):
            raise ConfigError(t.key("sha256"), "must be the hex SHA-256 of the token (bridged hash-token)")
        if digest == "0" * 64:
            raise ConfigError(t.key("sha256"), "still holds the example placeholder; run bridged hash-token")
        if name in names:
            raise ConfigError(t.key("name"), f"duplicates token name {name!r}")
        names.add(name)
        tokens.append(ApiToken(name=name, role=role, sha256=digest))
        t.finish()
    cfg = ApiConfig(
        tokens=tuple(tokens),
        max_body_bytes=s.integer("max_body_bytes", 16384, minimum=256, maximum=1048576),
        manager_ring_timeout=s.integer("manager_ring_timeout", 30, minimum=5, maximum=300),
        idempotency_hours=s.integer("idempotency_hours", 24, minimum=1, maximum=24 * 30),
    )
    s.finish()
    return cfg


def _load_webhook(s: _Section) -> WebhookConfig:
    url = s.opt_str("url")
    if url is not None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(s.key("url"), "must be an http(s) URL")
    secret = s.opt_str("secret")
    if url is not None and secret is None:
        raise ConfigError(s.key("secret"), "is required when webhook.url is set")
    if secret is not None and (secret in PLACEHOLDERS or len(secret) < 16):
        raise ConfigError(s.key("secret"), "must be a real secret of at least 16 characters")
    cfg = WebhookConfig(
        url=url,
        secret=secret,
        timeout=s.number("timeout", 5.0, minimum=0.1, maximum=60),
        max_attempts=s.integer("max_attempts", 10, minimum=1, maximum=100),
    )
    s.finish()
    return cfg


def _load_prompts(s: _Section) -> Prompts:
    defaults = Prompts()
    values = {name: s.text(name, getattr(defaults, name)) for name in Prompts.__dataclass_fields__}
    s.finish()
    return Prompts(**values)


def _load_logging(s: _Section) -> LoggingConfig:
    level = s.text("level", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(s.key("level"), "must be DEBUG, INFO, WARNING or ERROR")
    cfg = LoggingConfig(level=level, json=s.boolean("json", False))
    s.finish()
    return cfg


def parse_config(data: Any) -> Config:
    root = _Section(data, "")
    ari = _load_ari(root.section("ari"))
    db = root.section("database")
    database = DatabaseConfig(
        dsn=_dsn(db, "dsn"),
        min_connections=db.integer("min_connections", 1, minimum=0, maximum=100),
        max_connections=db.integer("max_connections", 10, minimum=1, maximum=100),
    )
    db.finish()
    orders = _load_orders(root.section("orders"))
    managers = _load_managers(root)
    policy = root.text("policy", required=True)
    if policy not in POLICIES:
        raise ConfigError("policy", f"must be one of {', '.join(POLICIES)}")
    if policy == "team":
        for index, manager in enumerate(managers):
            if manager.team is None:
                raise ConfigError(f"managers[{index}].team", "is required when policy is 'team'")
    config = Config(
        ari=ari,
        database=database,
        orders=orders,
        managers=managers,
        policy=policy,
        trunk=_load_trunk(root.section("trunk")),
        labels=_load_labels(root.section("labels", required=False)),
        recording=_load_recording(root.section("recording", required=False)),
        agi=_load_agi(root.section("agi", required=False)),
        http=_load_http(root.section("http", required=False)),
        api=_load_api(root.section("api", required=False)),
        webhook=_load_webhook(root.section("webhook", required=False)),
        prompts=_load_prompts(root.section("prompts", required=False)),
        logging=_load_logging(root.section("logging", required=False)),
    )
    root.finish()
    return config


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("<file>", f"is not valid YAML{where}") from None
    return parse_config(data)
