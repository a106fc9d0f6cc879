"""Signed click-to-call links (bridged.links) and their page (bridged.callpage) over fakes: the signature,
the README's examples (Python exec'd from the README, PHP run by Debian's php when installed), the config
keys, and the handlers: a GET places nothing, a link places at most one call, refused links are audited
without what a tampered link says."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from bridged import callpage, links
from bridged.api import calls as api_calls
from bridged.api.errors import error_middleware
from bridged.appkeys import CONFIG, STORE
from bridged.ari import AriUnavailable
from bridged.callpage import words as page_words
from bridged.calls.model import CallState
from bridged.config import ConfigError, ConfigHolder, LinksConfig
from bridged.configfile import parse_config
from bridged.limits import Keyed
from bridged.links import LinkProblem, LinkRefused, SignedLink
from bridged.outcomes import Outcome
from bridged.service import CallService
from bridged.store import Store
from bridged.store.attempts import NewAttempt

from .fakes import NUMBER_DIGITS, ROOT, DownStore, FakeAri, example_data, make_config, make_order
from .test_api_calls import call_app
from .test_service import FakeDirectory

README = ROOT / "README.md"
SECRET = "k7Qm2vX9pL4sT8wZ1nB6cR3yH5dF0gJa"
# The README's test vector.
VECTOR_ARGS = ("https://pbx.example.com", SECRET, "123", "anna", 600, 1767225000)
VECTOR = (
    "https://pbx.example.com/c?order=123&manager=anna&exp=1767225600"
    "&sig=9aa52aea96b687a38df3014b6e7b8b82b2be3712d403c392d4b3c5742412d30f"
)


def _readme_block(language: str) -> str:
    """The one ``language`` code block of the README's "A call button in your shop admin" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## A call button in your shop admin", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    assert len(blocks) == 1, f"want one {language} block in the section, found {len(blocks)}"
    return blocks[0]


# -- the README's examples and its test vector -------------------------------------------------------


def test_the_readme_python_example_makes_the_test_vector_and_bridged_accepts_it() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_readme_block("python"), "README.md", "exec"), namespace)  # noqa: S102 - the docs' own code
    url = namespace["call_link"](*VECTOR_ARGS)
    assert url == VECTOR
    assert VECTOR in README.read_text(encoding="utf-8")
    assert links.make_link("https://pbx.example.com", SECRET, "123", "anna", 1767225600) == VECTOR
    query = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    link = links.fields_of(query)
    assert links.verify(SECRET, link, now=1767225000, max_age=600) == link


def test_the_readme_php_example_makes_the_test_vector(tmp_path: Path) -> None:
    php = shutil.which("php")
    if php is None:
        pytest.skip("php is not installed (Debian's php-cli; scripts/bootstrap test installs it)")
    call = ", ".join(repr(a) if isinstance(a, str) else str(a) for a in VECTOR_ARGS)
    script = tmp_path / "link.php"
    script.write_text(_readme_block("php") + f'\necho bridged_call_link({call}), "\\n";\n', encoding="utf-8")
    result = subprocess.run([php, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == VECTOR + "\n"


def test_the_readme_html_snippet_opens_a_small_window_with_the_link() -> None:
    snippet = _readme_block("html")
    assert "window.open(this.href" in snippet and "popup" in snippet
    assert "bridged_call_link(" in snippet and "htmlspecialchars(" in snippet


# -- the signature ----------------------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
NOW = 1_800_000_000


def _link(order: str, manager: str, exp: int, secret: str = SECRET) -> SignedLink:
    return SignedLink(order, manager, str(exp), links.signature(secret, order, manager, exp))


@settings(max_examples=300, deadline=None)
@given(
    order=ids,
    manager=ids,
    ttl=st.integers(1, 600),
    field=st.sampled_from(["order", "manager", "exp", "sig"]),
    data=st.data(),
)
def test_any_change_of_a_field_or_the_signature_is_refused(
    order: str, manager: str, ttl: int, field: str, data: st.DataObject
) -> None:
    good = _link(order, manager, NOW + ttl)
    assert links.verify(SECRET, good, now=NOW, max_age=600) == good
    if field == "exp":
        other = data.draw(st.integers(NOW + 1, NOW + 600).filter(lambda e: str(e) != good.exp))
        changed = replace(good, exp=str(other))
    elif field == "sig":
        changed = replace(good, sig=data.draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True)))
        if changed.sig == good.sig:
            return
    else:
        value = data.draw(ids.filter(lambda v: v != getattr(good, field)))
        changed = replace(good, **{field: value})
    with pytest.raises(LinkRefused) as refused:
        links.verify(SECRET, changed, now=NOW, max_age=600)
    assert refused.value.problem is LinkProblem.BAD_SIGNATURE
    assert refused.value.link is None  # a tampered link's fields are nobody's word
    # Another secret refuses it too.
    with pytest.raises(LinkRefused):
        links.verify(SECRET[::-1], good, now=NOW, max_age=600)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["order", "manager", "exp", "sig", "x", "Order", ""]),
        st.one_of(st.text(max_size=80), st.lists(st.text(max_size=70), max_size=3), st.integers(), st.none()),
        max_size=6,
    )
)
def test_any_query_or_body_is_a_link_or_malformed(values: dict[str, Any]) -> None:
    try:
        link = links.fields_of(values)
    except LinkRefused as refused:
        assert refused.problem is LinkProblem.MALFORMED and refused.link is None
        return
    assert set(values) == set(links.FIELDS)
    assert re.fullmatch(r"[0-9a-f]{64}", link.sig) and link.exp.isascii() and link.exp.isdigit()


def test_the_signature_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []
    real = links.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(links.hmac, "compare_digest", spy)
    good = _link("123", "anna", NOW + 60)
    links.verify(SECRET, good, now=NOW, max_age=600)
    bad = replace(good, sig="0" * 64)
    with pytest.raises(LinkRefused):
        links.verify(SECRET, bad, now=NOW, max_age=600)
    assert compared == [(good.sig, good.sig), (good.sig, "0" * 64)]


def test_expiry_and_lifetime() -> None:
    def problem(exp: int) -> LinkProblem | None:
        try:
            links.verify(SECRET, _link("123", "anna", exp), now=NOW, max_age=600)
        except LinkRefused as refused:
            assert refused.link is not None  # the signature was valid: its order may be named
            return refused.problem
        return None

    assert problem(NOW) is LinkProblem.EXPIRED
    assert problem(NOW - 3600) is LinkProblem.EXPIRED
    assert problem(NOW + 1) is None
    assert problem(NOW + 600 + links.CLOCK_SLACK) is None
    assert problem(NOW + 601 + links.CLOCK_SLACK) is LinkProblem.TOO_LONG
    assert problem(NOW + 86400 * 365) is LinkProblem.TOO_LONG


def test_an_uppercase_signature_is_the_same_link() -> None:
    good = _link("123", "anna", NOW + 60)
    upper = links.fields_of({"order": "123", "manager": "anna", "exp": good.exp, "sig": good.sig.upper()})
    assert upper == good and upper.key == good.key


# -- config -----------------------------------------------------------------------------------------


def _config(links_section: Any = None, tokens: list[dict[str, Any]] | None = None) -> Any:
    data = copy.deepcopy(example_data())
    if links_section is not None:
        data["links"] = links_section
    if tokens is not None:
        data["api"]["tokens"] = tokens
    return parse_config(data)


def test_links_are_off_by_default_and_load_with_a_secret() -> None:
    assert _config().links == LinksConfig(secret=None, max_age=600)
    config = _config({"secret": SECRET, "max_age": 120})
    assert (config.links.secret, config.links.max_age) == (SECRET, 120)


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ({"secret": "change-me"}, "links.secret", "placeholder"),
        ({"secret": "short-secret"}, "links.secret", "32 to 256"),
        ({"secret": "a" * 31}, "links.secret", "32 to 256"),
        ({"secret": "with space " + "a" * 40}, "links.secret", "32 to 256"),
        ({"secret": "é" * 40}, "links.secret", "ASCII"),
        ({"secret": 12345678901234567890123456789012345}, "links.secret", "string"),
        ({"secret": SECRET, "max_age": 0}, "links.max_age", "between"),
        ({"secret": SECRET, "max_age": 86401}, "links.max_age", "between"),
        ({"secret": SECRET, "maxage": 60}, "links.maxage", "did you mean 'max_age'"),
    ],
)
def test_bad_link_settings_name_their_key(section: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _config(section)
    assert raised.value.key == key and message in raised.value.message, raised.value.lines


def _token(**fields: Any) -> dict[str, Any]:
    return {"name": "t", "role": "manager", "sha256": "b" * 64, **fields}


def test_a_manager_token_loads_with_its_manager() -> None:
    config = _config(tokens=[_token(manager="anna")])
    assert (config.api.tokens[0].role, config.api.tokens[0].manager) == ("manager", "anna")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (_token(), "is required for role manager"),
        (_token(manager="nobody"), "is not the id of a manager"),
        (_token(role="shop", manager="anna"), "binds only a token of role manager"),
        (_token(role="owner"), "must be one of shop, ops, admin, manager"),
    ],
)
def test_manager_token_settings_name_their_key(token: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _config(tokens=[token])
    assert any(line.startswith("api.tokens[0].") and message in line for line in raised.value.lines), (
        raised.value.lines
    )


def test_check_config_names_the_link_and_token_keys(tmp_path: Path) -> None:
    data = copy.deepcopy(example_data())
    data["links"] = {"secret": "too-short"}
    data["api"]["tokens"].append(_token(manager="nobody"))
    path = tmp_path / "bridged.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "bridged", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "links.secret: must be 32 to 256 printable ASCII characters" in result.stderr
    assert "api.tokens[1].manager: 'nobody' is not the id of a manager" in result.stderr
    assert "too-short" not in result.stderr  # a secret, even a bad one, is not printed


# -- the page's words --------------------------------------------------------------------------------


def test_every_outcome_and_state_has_words_and_none_has_a_digit() -> None:
    assert set(page_words.OUTCOME_WORDS) == set(Outcome)
    assert set(page_words.PHASES) == {s.value for s in CallState}
    words = [*page_words.OUTCOME_WORDS.values(), *(w for _, w in page_words.PHASES.values())]
    assert not any(ch.isdigit() for w in words for ch in w)
    assert (
        page_words.progress("ended", "customer_no_answer", "123")["text"]
        == "Ended: the customer did not answer"
    )
    assert page_words.progress("bridged", None, "123")["text"] == "Connected"


# -- the handlers over fakes -------------------------------------------------------------------------


@dataclass
class Served:
    client: TestClient
    ari: FakeAri
    store: DownStore
    service: CallService
    directory: FakeDirectory

    def link(
        self, order: str = "123", manager: str = "anna", ttl: int = 300, **change: str
    ) -> dict[str, str]:
        exp = int(time.time()) + ttl
        fields = {
            "order": order,
            "manager": manager,
            "exp": str(exp),
            "sig": links.signature(SECRET, order, manager, exp),
        }
        return {**fields, **change}

    def manager_rings(self) -> int:
        return len([o for o in self.ari.named("create_channel") if o["endpoint"].startswith("PJSIP/anna")])


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    config = make_config(links=LinksConfig(secret=SECRET, max_age=600))
    built = call_app(config, {"123": make_order("123", manager_id="anna")})
    api_calls.setup(built.app)
    callpage.setup(built.app)
    client = TestClient(TestServer(built.app))
    await client.start_server()
    try:
        yield Served(client, built.ari, built.store, built.service, built.directory)
    finally:
        await client.close()
        await built.engine.shutdown()


def _root_error(page: str) -> str | None:
    """The ``data-error`` of a page's root element, as a machine reads it (None: the page has none)."""
    root = re.search(r"<html\b([^>]*)>", page)
    assert root is not None, page[:200]
    found = re.search(r'\sdata-error="([^"]*)"', root[1])
    return None if found is None else found[1]


def _query(fields: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in fields.items())


async def test_opening_a_good_link_shows_the_page_and_places_nothing(served: Served) -> None:
    resp = await served.client.get(f"/c?{_query(served.link())}")
    text = await resp.text()
    assert resp.status == 200, text
    assert "Calling the customer of order 123" in text and '<script src="/c/static/call.js"' in text
    assert _root_error(text) is None
    headers = resp.headers
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert (headers["Cache-Control"], headers["Referrer-Policy"], headers["X-Frame-Options"]) == (
        "no-store",
        "no-referrer",
        "DENY",
    )
    resp = await served.client.head(f"/c?{_query(served.link())}")
    assert resp.status == 200
    assert served.ari.calls == [] and served.store.rows == {} and served.store.audits == []
    assert served.directory.lookups == []
    for name in ("call.js", "call.css"):
        resp = await served.client.get(f"/c/static/{name}")
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    # Every stylesheet the page links is served, the palette it shares with /ops/ among them.
    sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)">', text)
    assert sheets == ["/c/static/base.css", "/c/static/call.css"]
    for sheet in sheets:
        resp = await served.client.get(sheet)
        assert resp.status == 200 and resp.content_type == "text/css", sheet
    assert (await served.client.get("/c/static/__init__.py")).status == 404


@pytest.mark.parametrize(
    ("change", "status", "words", "reason", "named", "error_id"),
    [
        (
            {"exp": "expired"},
            410,
            "This link has expired, ask for a new one.",
            "expired",
            True,
            "link_expired",
        ),
        ({"exp": "too_long"}, 403, "longer than bridged allows", "too_long", True, "link_too_long"),
        ({"order": "124"}, 403, "This link is not valid", "bad_signature", False, "link_invalid"),
        ({"manager": "boris"}, 403, "This link is not valid", "bad_signature", False, "link_invalid"),
        ({"sig": "f" * 64}, 403, "This link is not valid", "bad_signature", False, "link_invalid"),
        ({"sig": "not-hex"}, 400, "not a whole call link", "malformed", False, "link_malformed"),
        ({"order": "+79161234567"}, 400, "not a whole call link", "malformed", False, "link_malformed"),
        ({"extra": "1"}, 400, "not a whole call link", "malformed", False, "link_malformed"),
    ],
)
async def test_refused_links_get_a_page_and_an_audit_row(
    served: Served, change: dict[str, str], status: int, words: str, reason: str, named: bool, error_id: str
) -> None:
    ttl = {"expired": -5, "too_long": 3600}.get(change.get("exp", ""), 300)
    fields = served.link(ttl=ttl)
    fields.update({k: v for k, v in change.items() if k != "exp"})
    resp = await served.client.get(f"/c?{_query(fields)}")
    text = await resp.text()
    assert resp.status == status, text
    assert words in text and "<script" not in text  # no script: nothing to place
    assert _root_error(text) == error_id  # the catalogue's id, for a shop's support
    assert resp.headers["Cache-Control"] == "no-store"
    [row] = served.store.audits
    assert (row["action"], row["outcome"], row["reason"]) == ("link.refused", "refused", reason)
    assert row["details"]["path"] == "/c" and row["details"]["client"] == "127.0.0.1"
    if named:
        assert (row["actor"], row["order_id"], row["details"]["manager_id"]) == ("link:anna", "123", "anna")
    else:
        assert (row["actor"], row["order_id"]) == ("link", None)
        assert "manager_id" not in row["details"]
    kept = repr(row)
    assert fields["sig"] not in kept and "7916" not in kept
    assert served.ari.calls == []


async def test_a_link_places_one_call_and_opening_it_again_shows_that_call(served: Served) -> None:
    fields = served.link()
    resp = await served.client.post("/c/place", json=fields, headers={"Sec-Fetch-Site": "same-origin"})
    first = await resp.json()
    assert resp.status == 202, first
    assert first["progress"]["text"] == "Ringing your phone" and first["progress"]["live"]
    assert re.fullmatch(r"[0-9a-f]{64}", first["capability"])
    [row] = served.store.rows.values()
    assert (row["created_by"], row["direction"], row["manager_id"]) == ("link:anna", "api", "anna")
    assert [(a["actor"], a["action"], a["outcome"]) for a in served.store.audits] == [
        ("link:anna", "call.request", "accepted")
    ]
    [kept] = served.store.link_rows.values()
    assert kept["call_id"] == row["id"] and kept["status"] == 202
    assert fields["sig"] not in repr(served.store.link_rows) and first["capability"] not in repr(
        served.store.link_rows
    )
    rings = served.manager_rings()
    assert rings == 1

    resp = await served.client.post("/c/place", json=fields)
    again = await resp.json()
    assert resp.status == 200, again
    assert again["capability"] == first["capability"] and again["progress"]["order_id"] == "123"
    assert served.manager_rings() == rings and len(served.store.rows) == 1
    assert served.store.audits[-1]["action"] == "link.replayed"
    assert served.store.audits[-1]["call_id"] == row["id"]
    # Following and ending it with the capability.
    cap = {"Authorization": f"Capability {first['capability']}"}
    resp = await served.client.get("/c/call", headers=cap)
    assert resp.status == 200 and (await resp.json())["progress"]["phase"] == "ringing_manager"
    resp = await served.client.delete("/c/call", headers=cap)
    ended = await resp.json()
    assert resp.status == 202, ended
    assert (
        ended["progress"]["state"] == "ended" and ended["progress"]["text"] == "Ended: the call was cancelled"
    )
    assert served.store.rows[row["id"]]["ended_by"] == "api"
    assert any(a["action"] == "call.end_requested" and a["actor"] == "link:anna" for a in served.store.audits)
    # No call id, channel or number in anything the page got.
    for answer in (first, again, ended):
        assert row["id"] not in repr(answer) and NUMBER_DIGITS[-7:] not in repr(answer)


async def test_two_openings_at_once_ring_once(served: Served) -> None:
    fields = served.link()
    answers = await asyncio.gather(*(served.client.post("/c/place", json=fields) for _ in range(2)))
    statuses = sorted(r.status for r in answers)
    assert statuses in ([200, 202], [202, 409]), statuses
    for resp in answers:
        if resp.status == 409:
            assert (await resp.json())["error"]["id"] == "link_in_use"
    assert served.manager_rings() == 1 and len(served.store.rows) == 1


async def test_a_refusal_is_shown_in_the_shops_words_and_does_not_spend_the_link(served: Served) -> None:
    """order_not_allowed rang nobody: the link is free, opening it again asks again, and once the order
    is boris's it places his call."""
    fields = served.link(manager="boris")  # policy own: boris may not call anna's order
    resp = await served.client.post("/c/place", json=fields)
    body = await resp.json()
    assert (resp.status, body["error"]["id"]) == (403, "order_not_allowed")
    assert body["error"]["message"] == "You may not call the customer of order 123."
    assert served.store.link_rows == {}
    lookups = len(served.directory.lookups)
    resp = await served.client.post("/c/place", json=fields)
    assert (resp.status, (await resp.json())["error"]["id"]) == (403, "order_not_allowed")
    assert len(served.directory.lookups) == lookups + 1  # asked again, not answered from the link's row
    served.directory.orders["123"] = make_order("123", manager_id="boris")
    resp = await served.client.post("/c/place", json=fields)
    assert resp.status == 202, await resp.json()
    assert [a["reason"] for a in served.store.audits if a["action"] == "call.request"] == [
        "denied",
        "denied",
        None,
    ]
    assert not [a for a in served.store.audits if a["action"] == "link.replayed"]


async def test_a_manager_not_registered_link_places_the_call_once_the_phone_registers(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page told the manager to switch the phone on and open the link again: that opening places the
    call, the link being unspent."""

    async def offline(tech: str, resource: str) -> dict[str, Any]:
        return {"technology": tech, "resource": resource, "state": "offline", "channel_ids": []}

    with monkeypatch.context() as patched:
        patched.setattr(served.ari, "get_endpoint", offline)
        fields = served.link()
        resp = await served.client.post("/c/place", json=fields)
        body = await resp.json()
        assert (resp.status, body["error"]["id"]) == (409, "manager_not_registered"), body
        assert "open this link again" in body["error"]["message"]
        assert served.store.link_rows == {}
    # The phone registered.
    resp = await served.client.post("/c/place", json=fields)
    assert resp.status == 202, await resp.json()
    resp = await served.client.post("/c/place", json=fields)
    assert resp.status == 200, await resp.json()  # that call, from now on
    assert served.manager_rings() == 1


async def test_a_call_tried_spends_the_link_and_opening_it_again_shows_that_call(served: Served) -> None:
    """409 manager_unavailable: the call went ahead and the phone could not be rung. The link keeps that
    call, as it keeps a placed one (and as an Idempotency-Key's replay names it): opening the link again
    shows it ended, with a capability GET and DELETE /c/call follow it by, and does not ask Asterisk to
    ring the phone again."""
    served.ari.errors["create_channel"] = AriUnavailable("create_channel", 0, "timed out")
    fields = served.link()
    resp = await served.client.post("/c/place", json=fields)
    body = await resp.json()
    assert (resp.status, body["error"]["id"]) == (409, "manager_unavailable"), body
    assert body["error"]["message"] == "Your phone could not be called."
    [row] = served.store.rows.values()
    assert (row["state"], row["outcome"]) == ("ended", "manager_unavailable")
    [kept] = served.store.link_rows.values()
    assert (kept["call_id"], kept["status"]) == (row["id"], 409)
    tried = len(served.ari.named("create_channel"))
    del served.ari.errors["create_channel"]

    resp = await served.client.post("/c/place", json=fields)
    again = await resp.json()
    assert resp.status == 200, again
    ended = {
        "order_id": "123",
        "state": "ended",
        "outcome": "manager_unavailable",
        "phase": "ended",
        "text": "Ended: your phone could not be called",
        "live": False,
    }
    assert again == {"progress": ended, "capability": links.capability(SECRET, links.fields_of(fields))}
    replayed = served.store.audits[-1]
    assert (replayed["action"], replayed["call_id"]) == ("link.replayed", row["id"])
    cap = {"Authorization": f"Capability {again['capability']}"}
    resp = await served.client.get("/c/call", headers=cap)
    assert (resp.status, await resp.json()) == (200, {"progress": ended})
    resp = await served.client.delete("/c/call", headers=cap)
    assert (resp.status, await resp.json()) == (200, {"progress": ended})  # it had ended already
    assert len(served.ari.named("create_channel")) == tried and len(served.store.rows) == 1
    for answer in (body, again):
        assert row["id"] not in repr(answer)


async def test_a_transient_refusal_frees_the_link_for_another_try(served: Served) -> None:
    fields = served.link()
    served.service.accepting_calls = lambda: False
    resp = await served.client.post("/c/place", json=fields)
    body = await resp.json()
    assert (resp.status, body["error"]["id"]) == (503, "telephony_unavailable"), body
    assert "try again" in body["error"]["message"]
    served.service.accepting_calls = lambda: True
    resp = await served.client.post("/c/place", json=fields)
    assert resp.status == 202, await resp.json()
    assert served.manager_rings() == 1


async def test_a_rate_limited_link_says_when_to_try_again_and_is_not_spent(served: Served) -> None:
    """A manager past a budget: 429 with Retry-After as POST /v1/calls answers it, and the link is free
    again (a transient refusal, like a 503): opened once the window has a slot, it places the call."""
    for _ in range(60):  # the default budget's calls
        await served.store.attempts.record(
            NewAttempt("anna", "accepted", "9", Keyed(1, "d"), datetime.now(UTC))
        )
    fields = served.link()
    resp = await served.client.post("/c/place", json=fields)
    body = await resp.json()
    assert (resp.status, body["error"]["id"]) == (429, "rate_limited"), body
    assert int(resp.headers["Retry-After"]) > 0
    assert served.store.link_rows == {}
    served.store.attempts.rows.clear()
    resp = await served.client.post("/c/place", json=fields)
    assert resp.status == 202, await resp.json()
    assert served.manager_rings() == 1


async def test_a_503_refusal_says_when_to_try_again(served: Served) -> None:
    served.service.accepting_calls = lambda: False
    resp = await served.client.post("/c/place", json=served.link())
    assert (resp.status, (await resp.json())["error"]["id"]) == (503, "telephony_unavailable")
    assert resp.headers["Retry-After"] == "5"


async def test_placing_while_bridgeds_database_is_away_rings_nobody(served: Served) -> None:
    served.store.down = True
    resp = await served.client.post("/c/place", json=served.link())
    body = await resp.json()
    assert (resp.status, body["error"]["id"]) == (503, "database_unavailable"), body
    assert resp.headers["Retry-After"] == "5"
    assert served.ari.named("create_channel") == []


@pytest.mark.parametrize(
    ("kwargs", "status", "error_id"),
    [
        ({"json": {"order": "123"}}, 400, "link_malformed"),
        ({"json": [1]}, 400, "link_malformed"),
        ({"data": b"order=123", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, None),
        ({"json": "LINK", "headers": {"Sec-Fetch-Site": "cross-site"}}, 403, "cross_site_request"),
    ],
)
async def test_bad_placing_requests(
    served: Served, kwargs: dict[str, Any], status: int, error_id: str | None
) -> None:
    if kwargs.get("json") == "LINK":
        kwargs["json"] = served.link()
    resp = await served.client.post("/c/place", **kwargs)
    body = await resp.json()
    assert resp.status == status, body
    assert error_id is None or body["error"]["id"] == error_id
    assert resp.headers["Cache-Control"] == "no-store"
    assert served.ari.named("create_channel") == []


async def test_an_unknown_capability_follows_nothing(served: Served) -> None:
    headers = {"Authorization": "Capability " + "0" * 64}
    for method in ("GET", "DELETE"):
        resp = await served.client.request(method, "/c/call", headers=headers)
        assert (resp.status, (await resp.json())["error"]["id"]) == (404, "link_unknown")
    assert {a["reason"] for a in served.store.audits} == {"unknown_capability"}


@pytest.mark.parametrize(
    "header", [None, "Bearer x", "Capability " + "A" * 64, "Capability", "Capability  " + "0" * 64]
)
async def test_a_request_without_a_capability_is_401(served: Served, header: str | None) -> None:
    # No credentials at all: 401 and a challenge, as the API answers a request without a token
    # (schemathesis: "Got 404 when missing required 'Authorization' header, expected 401").
    headers = {} if header is None else {"Authorization": header}
    for method in ("GET", "DELETE"):
        resp = await served.client.request(method, "/c/call", headers=headers)
        assert (resp.status, (await resp.json())["error"]["id"]) == (401, "capability_required")
        assert resp.headers["WWW-Authenticate"] == "Capability"
        assert resp.headers["Cache-Control"] == "no-store"
    assert {a["reason"] for a in served.store.audits} == {"no_capability"}


async def test_every_answer_under_c_carries_its_headers(served: Served) -> None:
    """Not only the handlers' own: the router's 404 and 405 and the error middleware's 503 too
    (schemathesis: GET /c/static/AAA answered 404 without Cache-Control and Referrer-Policy)."""
    served.store.down = True
    answers = [
        await served.client.get("/c/static/AAA"),
        await served.client.get("/c/static/..%2F__init__.py"),
        await served.client.put("/c/place"),
        await served.client.post("/c"),
        await served.client.get("/c/call", headers={"Authorization": "Capability " + "0" * 64}),
    ]
    assert [r.status for r in answers] == [404, 404, 405, 405, 503]
    for resp in answers:
        assert (resp.headers.get("Cache-Control"), resp.headers.get("Referrer-Policy")) == (
            "no-store",
            "no-referrer",
        ), resp.url
        assert resp.headers.get("X-Content-Type-Options") == "nosniff"
        assert "error" in await resp.json()
    # Outside /c, nothing of it.
    resp = await served.client.get("/cx")
    assert resp.status == 404 and "Referrer-Policy" not in resp.headers


async def test_links_off_is_404(served: Served) -> None:
    app = served.client.app
    config = app[CONFIG].current
    app[CONFIG].current = replace(config, links=LinksConfig())
    resp = await served.client.get(f"/c?{_query(served.link())}")
    text = await resp.text()
    assert resp.status == 404 and "not enabled" in text and _root_error(text) == "links_disabled"
    resp = await served.client.post("/c/place", json=served.link())
    assert (resp.status, (await resp.json())["error"]["id"]) == (404, "links_disabled")
    assert served.store.audits == []


def test_the_link_key_and_capability_are_derived_not_stored_secrets() -> None:
    link = _link("123", "anna", NOW + 60)
    assert link.key == hashlib.sha256(link.sig.encode()).hexdigest()
    cap = links.capability(SECRET, link)
    assert cap != link.sig and links.capability(SECRET, link) == cap
    assert links.capability(SECRET[::-1], link) != cap


_QUERY_PARTS = st.lists(
    st.tuples(
        st.sampled_from(["order", "manager", "exp", "sig", "x", "Sig", "order[]", ""]),
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=70),
    ),
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(parts=_QUERY_PARTS, tamper=st.booleans())
def test_any_query_string_gets_a_refusal_page_and_an_audit_row_that_holds_none_of_it(
    parts: list[tuple[str, str]], tamper: bool
) -> None:
    """Generated query strings (percent-encoded as a browser would, or a signed link with one generated
    value in place of its own): a 4xx page, never a 500, and an audit row without any of the values."""

    async def check() -> None:
        config = make_config(links=LinksConfig(secret=SECRET))
        store = DownStore()
        app = web.Application(middlewares=[error_middleware])
        app[CONFIG] = ConfigHolder(config)
        app[STORE] = cast(Store, store)  # a fake standing in for the real Store
        callpage.setup(app)
        fields = dict(parts)
        if tamper and parts:
            exp = int(time.time()) + 60
            good = {"order": "123", "manager": "anna", "exp": str(exp)}
            good["sig"] = links.signature(SECRET, "123", "anna", exp)
            name, value = parts[0]
            fields = {**good, name: value}
            if fields == good:
                return  # a value that happens to be the link's own: a good link
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/c", params=list(fields.items()))
            text = await resp.text()
        assert resp.status in (400, 403, 410), (resp.status, text[:300])
        expected = {400: {"link_malformed"}, 403: {"link_invalid", "link_too_long"}, 410: {"link_expired"}}
        assert _root_error(text) in expected[resp.status], text[:300]
        assert "<script" not in text and resp.headers["Cache-Control"] == "no-store"
        # Nothing of the request is kept but what bridged itself says about it (and, only for a valid
        # signature, the signed order and manager).
        [row] = store.audits
        signed = row["actor"] == "link:anna"
        assert (row["action"], row["outcome"], row["call_id"]) == ("link.refused", "refused", None)
        assert row["actor"] in ("link", "link:anna") and row["order_id"] == ("123" if signed else None)
        assert row["reason"] in {p.value for p in LinkProblem}
        assert set(row["details"]) == {"method", "path", "client"} | (
            {"manager_id", "exp"} if signed else set()
        )
        assert (row["details"]["path"], row["details"].get("manager_id", "anna")) == ("/c", "anna")

    asyncio.run(check())
