"""The daemon's configuration: frozen dataclasses, what every component reads (through a
:class:`ConfigHolder`, so that a SIGHUP reload reaches them).

The config file is read and checked by bridged.configfile; every error names the key it is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from urllib.parse import unquote, urlparse

from .labels import DEFAULT_NAME_STYLE, DEFAULT_TEMPLATE

POLICIES = ("own", "team", "any")

# Values shipped in the example config that must never reach production unchanged.
PLACEHOLDERS = {"change-me", "changeme", "CHANGE_ME", "secret", "password"}


class ConfigError(Exception):
    """One or more config problems, each ``(dotted key, message)``, in the order they were found.

    ``key`` and ``message`` are the first problem's; ``str()`` gives one ``key: message`` line per problem.
    """

    def __init__(self, key: str, message: str, *more: tuple[str, str]) -> None:
        self.problems: list[tuple[str, str]] = [(key, message), *more]
        super().__init__("\n".join(f"{k}: {m}" for k, m in self.problems))
        self.key = key
        self.message = message

    @property
    def lines(self) -> list[str]:
        return [f"{key}: {message}" for key, message in self.problems]


@dataclass(frozen=True)
class AriConfig:
    """One Asterisk node's ARI (``ari:`` is one mapping, or a list of them for several nodes)."""

    url: str
    username: str
    password: str = field(repr=False)
    app: str = "bridged"
    request_timeout: float = 5.0
    reconnect_max_delay: float = 30.0
    # New calls are refused while an ARI request has waited this long for Asterisk's answer (0: never).
    max_request_wait: float = 1.0
    # The node's name in call rows and logs (``name:``; default the URL's host:port).
    name: str = ""
    # Seconds the node may stay unreachable before its calls are taken for lost and their rows ended.
    lost_after: float = 120.0

    @property
    def node(self) -> str:
        return self.name or (urlparse(self.url).netloc.rpartition("@")[2] or self.url)


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
    # Inbound calls: the orders of a caller, $1 = the caller's number in E.164; columns order_id,
    # customer_name, manager_id, the most recent order first. None: callers are not looked up.
    reverse_query: str | None = None


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


RING_GROUP_MODES = ("sequential", "simultaneous")
# The keyed hash of callers' numbers is only as strong as its key: phone numbers are few enough to be
# tried one by one against an unkeyed (or weakly keyed) hash.
INBOUND_SECRET_MIN = 32


@dataclass(frozen=True)
class InboundConfig:
    """Customers calling the shop's numbers (``[bridged-inbound]``): whom bridged rings, what it keeps."""

    # The shop's numbers (DIDs) as the carrier writes them; compared by their digits. Empty: bridged
    # takes no inbound call (one that reaches it anyway is answered with a prompt and hung up).
    numbers: tuple[str, ...] = ()
    # Seconds each manager's phone rings before the next is tried.
    ring_timeout: int = 20
    # The rest of the first manager's team (ring_team) and the fallback managers are rung one at a
    # time (sequential) or all at once, the first to answer taking the call (simultaneous).
    ring_group: str = "sequential"
    ring_team: bool = True
    # Manager ids rung when nobody before them answered, or for a caller bridged cannot tell.
    fallback: tuple[str, ...] = ()
    # A caller reaches the manager who last talked to them if that was at most this many days ago (0: never).
    sticky_days: int = 30
    # Key of the HMAC-SHA256 under which callers are remembered (never their number); required with numbers.
    secret: str | None = None
    # What a caller hears when nobody answered, before bridged hangs up (the call's outcome: missed).
    missed_prompt: str = "vm-nobodyavail"

    @property
    def enabled(self) -> bool:
        return bool(self.numbers)


@dataclass(frozen=True)
class Budget:
    """What one manager may do within ``limits.window`` seconds (None: that budget is off)."""

    # Calls accepted (the phone path, the API and links together).
    calls: int | None = 60
    # Different orders whose customers were called or tried: a harvest goes through many orders.
    distinct_orders: int | None = 40
    # Attempts refused in a row as a manager probing would make them (unknown order, denied, malformed
    # code, an order whose phone is not a number), with no accepted call in between.
    refused_in_a_row: int | None = 10


BUDGETS = ("calls", "distinct_orders", "refused_in_a_row")


@dataclass(frozen=True)
class LimitsConfig:
    """Per-manager budgets (bridged.limits), counted in the database over a sliding window."""

    window: int = 3600
    default: Budget = field(default_factory=Budget)
    # Days the attempts are kept (then deleted by the retention pass): what ``GET /v1/probing`` can
    # report, since any ``from`` it is asked. At least 7, the longest window, so the budgets never miss one.
    keep_days: int = 90
    # Overrides by manager id: each a whole Budget (the file's keys laid over ``default``).
    managers: tuple[tuple[str, Budget], ...] = ()

    def budget(self, manager_id: str) -> Budget:
        for name, budget in self.managers:
            if name == manager_id:
                return budget
        return self.default


@dataclass(frozen=True)
class CanariesConfig:
    """How bridged answers a call to a canary number (canaries themselves are registered over the API)."""

    # The caller hears ringing this long, then the greeting, then is recorded (as a voicemail would).
    ring_seconds: int = 8
    greeting: str = "vm-intro&beep"
    max_record_seconds: int = 60


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
    # FastAGI has no authentication: a host other than loopback must be asked for explicitly.
    allow_remote: bool = False


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


# manager: a token bound to one manager (``ApiToken.manager``): it places, reads and ends that manager's
# calls only (bridged.api.auth).
ROLES = ("shop", "ops", "admin", "manager")


@dataclass(frozen=True)
class ApiToken:
    name: str
    role: str
    sha256: str  # hex digest of the token; the token itself is never stored
    # The manager id a "manager" token is bound to (None for every other role).
    manager: str | None = None


@dataclass(frozen=True)
class ApiConfig:
    tokens: tuple[ApiToken, ...] = ()
    max_body_bytes: int = 16384
    # Seconds a manager's phone rings for an HTTP-triggered call before it counts as not answered.
    manager_ring_timeout: int = 30
    # How long an Idempotency-Key is remembered, in hours.
    idempotency_hours: int = 24


@dataclass(frozen=True)
class LinksConfig:
    """Signed click-to-call links (``GET /c?order=..&manager=..&exp=..&sig=..``, bridged.links)."""

    # The shop's HMAC-SHA256 key for links; None: links are off (``/c`` answers 404).
    secret: str | None = None
    # Seconds a link may live: one whose exp is further ahead than this is refused (default 10 minutes).
    max_age: int = 600


@dataclass(frozen=True)
class WebhookConfig:
    url: str | None = None
    secret: str | None = None
    timeout: float = 5.0
    max_attempts: int = 10


# The languages bridged has defaults for (prompts, the label template, the /ops/ page): what the config's
# ``language`` may be. Asterisk plays a prompt from sounds/<language>/ (CHANNEL(language) on every leg).
LANGUAGES = ("en", "ru")
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class Prompts:
    """Stock Asterisk sounds the manager hears when a call cannot go ahead (English defaults; see
    DEFAULT_PROMPTS for each language's)."""

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
    # A manager past one of their budgets (limits): no call until the window frees a slot.
    rate_limited: str = "simul-call-limit-reached"


# Each language's defaults: names that Debian's stock sounds of that language hold (asterisk-core-sounds-
# <language>-gsm; tests/e2e/test_language.py checks every one against the rig). The Russian set has the
# English names but one: "please try your call again later" is pls-try-call-later there.
DEFAULT_PROMPTS: dict[str, Prompts] = {
    "en": Prompts(),
    "ru": Prompts(
        unavailable="pls-try-call-later",
        overloaded="all-circuits-busy-now&pls-try-call-later",
    ),
}


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
    links: LinksConfig = field(default_factory=LinksConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    prompts: Prompts = field(default_factory=Prompts)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    canaries: CanariesConfig = field(default_factory=CanariesConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # The language of every prompt bridged plays or has the dialplan play, to managers and customers
    # (CHANNEL(language) on each leg), and of the defaults of ``prompts`` and ``labels.template``.
    language: str = DEFAULT_LANGUAGE
    # Every Asterisk node when ``ari:`` lists several (``ari`` is the first); empty for one node.
    ari_nodes: tuple[AriConfig, ...] = ()

    @property
    def nodes(self) -> tuple[AriConfig, ...]:
        """The Asterisk nodes this daemon serves, the first one first (the one ``ari`` describes)."""
        return self.ari_nodes or (self.ari,)

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


class ConfigHolder:
    """The config in force. Components keep the holder and read ``current`` when they need a value, so a
    SIGHUP reload (bridged.reload) reaches every one of them with one assignment."""

    def __init__(self, config: Config) -> None:
        self.current = config


def describe_dsn(dsn: str) -> str:
    """``user@host:port/database`` of a DSN, for messages: never the password. A DSN naming several hosts
    (``postgresql://u:p@a:5432,b:5432/db``: a primary and its standby, asyncpg tries them in order) gives
    ``user@a:5432,b:5432/db``."""
    try:
        parsed = urlparse(dsn)
    except ValueError:
        return "(unparsable DSN)"
    userinfo, _, hosts = parsed.netloc.rpartition("@")
    user = unquote(userinfo.partition(":")[0])
    described = []
    for host in hosts.split(","):
        try:
            one = urlparse(f"//{host}")
            port = one.port
        except ValueError:
            return "(unparsable DSN)"
        described.append(f"{one.hostname or '(local socket)'}:{port or 5432}")
    database = parsed.path.lstrip("/") or "(default database)"
    return f"{user + '@' if user else ''}{','.join(described)}/{database}"
