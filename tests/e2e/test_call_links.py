"""Signed click-to-call links on the real rig, driven in Debian's headless Chromium (Playwright): the page
a link opens places the call through bridged (the manager's SIPp phone rings with the order label, then
the carrier's SIPp customer), shows its progress and outcome in words, shows the same call when opened
again (one INVITE at the carrier), ends it with "End call", shows a call tried (the manager's phone could
not be rung) ended when opened again, and refuses expired and tampered links with a page and an audit row. No digit of the customer's number in the page, what the browser sent and received,
or the audit rows. Screenshots: ``artifacts/<test>/*.png``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bridged.links import make_link
from rig.asterisk import manager_endpoint_conf

from .harness import (
    Bridged,
    ManagerPhone,
    add_order,
    assert_not_leaked,
    carrier,
    invites,
    manager_on_endpoint,
    new_customer_number,
    new_order_id,
    phone_rings,
    wait_for,
)
from .test_ops_page import headless_chromium

SECRET = "e2e-link-secret-4f1c9a7b2d6e8f0a3b5c7d9e"
PHASE_TIMEOUT_MS = 30_000


def _daemon(make_bridged, customer_name: str) -> tuple[Bridged, ManagerPhone, str, str]:
    """bridged with links on, its manager, and an order of theirs: (daemon, manager, order, number)."""
    daemon = make_bridged(("anna",), extra={"links": {"secret": SECRET, "max_age": 600}})
    anna = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, customer_name, anna.id)
    return daemon, anna, order, number


def _link(daemon: Bridged, order: str, manager: str, ttl: int = 300, **change: str) -> str:
    url = make_link(f"http://127.0.0.1:{daemon.http_port}", SECRET, order, manager, int(time.time()) + ttl)
    for name, value in change.items():
        url = _with_value(url, name, value)
    return url


def _with_value(url: str, name: str, value: str) -> str:
    return re.sub(rf"([?&]{name}=)[^&]*", lambda m: m[1] + value, url)


class Browser:
    """One headless Chromium; every page it opens records what it sent and received."""

    def __init__(self, browser: Any, trace_dir: Path) -> None:
        self.browser = browser
        self.trace_dir = trace_dir
        self.traffic: list[str] = []
        self.problems: list[str] = []

    def open(self, url: str) -> Any:
        page = self.browser.new_page(viewport={"width": 460, "height": 340})
        page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        page.on("request", self._request)
        page.on("response", self._response)
        page.goto(url)
        return page

    def _request(self, request: Any) -> None:
        self.traffic.append(f"> {request.method} {request.url} {request.headers} {request.post_data or ''}")

    def _response(self, response: Any) -> None:
        try:
            body = response.text()
        except Exception as exc:  # a response the page navigated away from
            body = f"<unreadable: {type(exc).__name__}>"
        self.traffic.append(f"< {response.status} {response.url} {response.headers}\n{body}")

    def snapshot(self, page: Any, name: str) -> str:
        page.screenshot(path=str(self.trace_dir / f"{name}.png"))
        html = page.content()
        (self.trace_dir / f"{name}.html").write_text(html)
        return html + "\n" + page.inner_text("body")


@contextmanager
def chromium(trace_dir: Path) -> Iterator[Browser]:
    with headless_chromium() as browser:
        yield Browser(browser, trace_dir)


def wait_phase(page: Any, phase: str) -> str:
    page.wait_for_function(
        "phase => document.getElementById('status').dataset.phase === phase",
        arg=phase,
        timeout=PHASE_TIMEOUT_MS,
    )
    text: str = page.inner_text("#status")
    return text


def _audit(daemon: Bridged, action: str) -> list[dict[str, Any]]:
    out = daemon.sql(f"SELECT coalesce(json_agg(a ORDER BY id), '[]') FROM audit a WHERE action = '{action}'")
    return json.loads(out.strip())


def test_a_link_rings_the_manager_then_the_customer_and_the_page_follows_the_call(
    make_bridged, trace_dir: Path, rig_alloc
) -> None:
    daemon, anna, order, number = _daemon(make_bridged, "Ivan Petrov")
    phone = phone_rings(anna, trace_dir, ring_ms=2500, hold_ms=60000)
    customer = carrier(trace_dir, rig_alloc, hold_ms=5000, ring_ms=3000)
    url = _link(daemon, order, anna.id)

    with chromium(trace_dir) as browser:
        page = browser.open(url)
        assert page.title() == f"Order {order} · bridged"
        assert wait_phase(page, "ringing_manager") == "Ringing your phone"
        assert wait_phase(page, "ringing_customer") == "Ringing the customer"
        assert wait_phase(page, "connected") == "Connected"
        assert page.is_visible("#end")
        seen = browser.snapshot(page, "connected")

        # Opened again while connected (a second click in the admin): the same call, no second ring.
        again = browser.open(url)
        assert wait_phase(again, "connected") == "Connected"

        # The customer hangs up after 5 s: both pages show the outcome.
        assert wait_phase(page, "ended") == "Ended: call completed"
        assert wait_phase(again, "ended") == "Ended: call completed"
        assert not page.is_visible("#end")
        seen += browser.snapshot(page, "ended") + browser.snapshot(again, "again")
        problems = list(browser.problems)
        traffic = "\n".join(browser.traffic)

    assert not problems, problems
    assert customer.wait(timeout=15) == 0, customer.describe()
    assert phone.wait(timeout=15) == 0, phone.describe()
    # The manager's phone rang once, shown the order label; the carrier got one INVITE, for the number.
    [manager_invite] = invites(phone.messages())
    from_line = re.search(r"^From:.*$", manager_invite, re.M)
    assert from_line and f"Order {order}" in from_line[0], manager_invite[:400]
    [customer_invite] = invites(customer.messages())
    assert re.search(rf"^INVITE sip:{re.escape(number)}@", customer_invite, re.M)

    [row] = daemon.call_rows(anna.id)
    assert (row["outcome"], row["ended_by"], row["created_by"]) == (
        "completed",
        "customer",
        f"link:{anna.id}",
    )
    [accepted] = [a for a in _audit(daemon, "call.request") if a["call_id"] == row["id"]]
    assert (accepted["actor"], accepted["outcome"]) == (f"link:{anna.id}", "accepted")
    replays = [r for r in _audit(daemon, "link.replayed") if r["order_id"] == order]
    assert [(r["call_id"], r["order_id"]) for r in replays] == [(row["id"], order)]
    # What the page offered: no call id, no token; the POST carried the signed fields from its own URL.
    assert row["id"] not in seen and "Bearer" not in traffic
    assert '"order":"' + order in traffic.replace(" ", "")
    assert_not_leaked(
        number,
        page_html_and_text=seen,
        browser_traffic=traffic,
        audit_and_calls=daemon.dump_database(),
        manager_sip_trace=phone.messages(),
        daemon_log=daemon.log_text(),
    )


def test_end_call_on_the_page_cancels_the_ringing_customer(make_bridged, trace_dir: Path, rig_alloc) -> None:
    daemon, anna, order, number = _daemon(make_bridged, "Olga S.")
    phone = phone_rings(anna, trace_dir, ring_ms=500, hold_ms=60000)
    customer = carrier(trace_dir, rig_alloc, "carrier_noanswer", timeout_s=40)

    with chromium(trace_dir) as browser:
        page = browser.open(_link(daemon, order, anna.id))
        wait_phase(page, "ringing_customer")
        page.click("#end")
        assert wait_phase(page, "ended") == "Ended: the call was cancelled"
        seen = browser.snapshot(page, "ended")
        traffic = "\n".join(browser.traffic)

    assert customer.wait(timeout=15) == 0, customer.describe()
    assert phone.wait(timeout=15) == 0, phone.describe()
    assert re.search(r"^CANCEL sip:", customer.messages(), re.M), "the customer leg was not cancelled"
    [row] = daemon.call_rows(anna.id)
    assert (row["outcome"], row["ended_by"]) == ("cancelled", "api")
    [end] = [a for a in _audit(daemon, "call.end_requested") if a["call_id"] == row["id"]]
    assert (end["actor"], end["call_id"]) == (f"link:{anna.id}", row["id"])
    assert_not_leaked(number, page=seen, browser_traffic=traffic, audit_and_calls=daemon.dump_database())


def test_a_link_refused_for_an_order_not_yet_in_the_shops_database_places_the_call_once_it_is(
    make_bridged, trace_dir: Path, rig_alloc
) -> None:
    """The page says there is no such order (data-error unknown_order on its root element); the refusal
    rang nobody and does not spend the link: opened again once the order is in the shop's database, it
    places the call, and the manager's phone rings once."""
    daemon = make_bridged(("anna",), extra={"links": {"secret": SECRET, "max_age": 600}})
    anna = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    phone = phone_rings(anna, trace_dir, ring_ms=500, hold_ms=60000)
    customer = carrier(trace_dir, rig_alloc, "carrier_noanswer", timeout_s=40)
    url = _link(daemon, order, anna.id)

    with chromium(trace_dir) as browser:
        page = browser.open(url)
        assert wait_phase(page, "refused") == f"There is no order {order}."
        assert page.evaluate("document.documentElement.dataset.error") == "unknown_order"
        seen = browser.snapshot(page, "unknown-order")
        add_order(daemon.postgres, order, number, "Nina V.", anna.id)
        again = browser.open(url)
        wait_phase(again, "ringing_customer")
        assert again.evaluate("document.documentElement.dataset.error") is None
        again.click("#end")
        assert wait_phase(again, "ended") == "Ended: the call was cancelled"
        seen += browser.snapshot(again, "placed")
        traffic = "\n".join(browser.traffic)

    assert customer.wait(timeout=15) == 0, customer.describe()
    assert phone.wait(timeout=15) == 0, phone.describe()
    assert len(invites(phone.messages())) == 1, "the manager's phone rang more than once"
    requests = [(a["outcome"], a["reason"]) for a in _audit(daemon, "call.request") if a["order_id"] == order]
    assert requests == [("refused", "unknown_order"), ("accepted", None)], requests
    assert not [r for r in _audit(daemon, "link.replayed") if r["order_id"] == order]
    shown = {"page": seen, "browser_traffic": traffic, "manager_sip_trace": phone.messages()}
    assert_not_leaked(number, audit_and_calls=daemon.dump_database(), **shown)


def test_expired_and_tampered_links_get_a_page_and_an_audit_row_and_ring_nobody(
    make_bridged, trace_dir: Path, rig_alloc
) -> None:
    daemon, anna, order, number = _daemon(make_bridged, "Anna O.")
    other_order = new_order_id()
    add_order(daemon.postgres, other_order, new_customer_number(), "Lev T.", anna.id)
    customer = carrier(trace_dir, rig_alloc, hold_ms=5000, timeout_s=30)
    good = _link(daemon, order, anna.id)
    cases = [
        # (name, url, status, words, reason, order named in the audit row)
        (
            "expired",
            _link(daemon, order, anna.id, ttl=-10),
            410,
            "This link has expired, ask for a new one.",
            "expired",
            order,
        ),
        (
            "tampered-order",
            re.sub(r"order=\d+", f"order={other_order}", good),
            403,
            "This link is not valid",
            "bad_signature",
            None,
        ),
        (
            "tampered-sig",
            good[:-4] + ("0000" if not good.endswith("0000") else "1111"),
            403,
            "This link is not valid",
            "bad_signature",
            None,
        ),
        (
            "too-long",
            _link(daemon, order, anna.id, ttl=7200),
            403,
            "longer than bridged allows",
            "too_long",
            order,
        ),
        ("cut-short", good.split("&sig=")[0], 400, "not a whole call link", "malformed", None),
    ]
    # The page's root element names the refusal by its catalogue id (data-error), for a shop's support.
    error_ids = {
        "expired": "link_expired",
        "bad_signature": "link_invalid",
        "too_long": "link_too_long",
        "malformed": "link_malformed",
    }
    with chromium(trace_dir) as browser:
        for name, url, _status, words, reason, _named in cases:
            page = browser.open(url)
            assert page.evaluate("document.getElementById('status').dataset.phase") == "refused", name
            assert page.evaluate("document.documentElement.dataset.error") == error_ids[reason], name
            assert words in page.inner_text("#status"), (name, page.inner_text("#status"))
            assert page.locator("script").count() == 0, name  # no script: nothing can be placed
            browser.snapshot(page, name)
        statuses = [
            int(line.split()[1]) for line in browser.traffic if line.startswith("< ") and "/c?" in line
        ]
        traffic = "\n".join(browser.traffic)
    assert statuses == [case[2] for case in cases]

    refused = _audit(daemon, "link.refused")[-len(cases) :]  # the database is the session's
    assert [(r["reason"], r["order_id"]) for r in refused] == [(c[4], c[5]) for c in cases]
    assert all(r["actor"] == (f"link:{anna.id}" if r["order_id"] else "link") for r in refused)
    assert other_order not in json.dumps(refused)  # a tampered link's order is nobody's word
    assert not daemon.call_rows(anna.id) and not invites(customer.messages())
    customer.stop()
    assert_not_leaked(number, browser_traffic=traffic, audit=json.dumps(refused))


def test_a_link_replayed_after_it_expired_gets_the_expired_page(
    make_bridged, trace_dir: Path, rig_alloc
) -> None:
    """A link used within its life, opened again after it: the expired page and an audit row naming the call
    it placed; the carrier still got one INVITE."""
    daemon, anna, order, number = _daemon(make_bridged, "Petr I.")
    phone = phone_rings(anna, trace_dir, ring_ms=500, hold_ms=1500)
    customer = carrier(trace_dir, rig_alloc, "carrier_noanswer", timeout_s=40)
    url = _link(daemon, order, anna.id, ttl=6)
    with chromium(trace_dir) as browser:
        page = browser.open(url)
        assert wait_phase(page, "ended").startswith("Ended: ")  # the manager hangs up while it rings
        exp = re.search(r"exp=(\d+)", url)
        assert exp, url
        wait_for(lambda: time.time() > int(exp[1]) + 1, 15, "the link to expire")
        page = browser.open(url)
        assert page.inner_text("#status") == "This link has expired, ask for a new one."
        browser.snapshot(page, "replayed")
    assert phone.wait(timeout=15) == 0 and customer.wait(timeout=15) == 0
    assert len(invites(customer.messages())) == 1
    [row] = daemon.call_rows(anna.id)
    [refused] = [r for r in _audit(daemon, "link.refused") if r["order_id"] == order]
    assert (refused["reason"], refused["call_id"], refused["actor"]) == (
        "expired",
        row["id"],
        f"link:{anna.id}",
    )


def test_a_link_whose_call_was_tried_shows_that_call_when_opened_again(
    make_bridged, asterisk, trace_dir: Path, unique_name
) -> None:
    """A manager's phone Asterisk knows as reachable (a contact: not offline, so not refused as
    manager_not_registered) but cannot ring: its endpoint's from_domain makes no valid SIP URI, so
    Asterisk cannot create the manager's channel (500 Allocation failed) and POST /c/place answers 409
    manager_unavailable (the call went ahead: its row has ended). The page says so; opened again, the link
    shows that call ended (no refusal), and Asterisk is not asked to ring again (one call row, one
    call.request)."""
    daemon, _, _, _ = _daemon(make_bridged, "Olga K.")
    endpoint = unique_name("unringable")
    conf = manager_endpoint_conf(endpoint, 5999).replace(
        "type=endpoint", "type=endpoint\nfrom_domain=no such domain", 1
    )
    with manager_on_endpoint(daemon, asterisk, "unringable", endpoint, conf):
        order, number = new_order_id(), new_customer_number()
        add_order(daemon.postgres, order, number, "Olga K.", "unringable")
        url = _link(daemon, order, "unringable")
        with chromium(trace_dir) as browser:
            page = browser.open(url)
            assert wait_phase(page, "refused") == "Your phone could not be called."
            assert page.evaluate("document.documentElement.dataset.error") == "manager_unavailable"
            seen = browser.snapshot(page, "tried")
            again = browser.open(url)
            assert wait_phase(again, "ended") == "Ended: your phone could not be called"
            assert again.evaluate("document.documentElement.dataset.error") is None
            assert again.is_hidden("#end")
            seen += browser.snapshot(again, "opened-again")
            traffic = "\n".join(browser.traffic)
        [row] = daemon.call_rows("unringable")
        assert (row["state"], row["outcome"]) == ("ended", "manager_unavailable"), row
        requests = [a["outcome"] for a in _audit(daemon, "call.request") if a["order_id"] == order]
        assert requests == ["accepted"], requests
        [replayed] = [r for r in _audit(daemon, "link.replayed") if r["order_id"] == order]
        assert replayed["call_id"] == row["id"]
        assert row["id"] not in traffic
        assert_not_leaked(number, audit_and_calls=daemon.dump_database(), page=seen, browser_traffic=traffic)
