"""The /ops/ page in Debian's headless Chromium driven by Playwright: sign in with the keyboard, filter,
play a recording made by a real call, see the listen in the audit list. A screenshot is kept as
``artifacts/<test>/ops.png``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .harness import (  # noqa: F401 - fixtures
    add_order,
    assert_not_leaked,
    carrier,
    dial,
    new_customer_number,
    new_order_id,
    number_leaks,
    wait_for,
)
from .test_http_calls import http, manager_phone
from .test_review_api import TOKENS, token_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # The page plays audio after a button press anyway; this keeps a headless run from depending on it.
    "--autoplay-policy=no-user-gesture-required",
]


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright (the test is skipped where either is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap installs it)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _real_call(daemon, manager, trace_dir: Path, rig_alloc, numbers: list[str]) -> dict[str, Any]:
    order, number = new_order_id(), new_customer_number()
    numbers.append(number)
    add_order(daemon.postgres, order, number, "Page Customer", manager.id)
    calls_dir = trace_dir / manager.id
    calls_dir.mkdir()
    customer = carrier(calls_dir, rig_alloc, hold_ms=30000)
    phone = dial(manager, calls_dir, f"*77{order}", hold_ms=3000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)
    return wait_for(
        lambda: [r for r in daemon.call_rows(manager.id) if r["state"] == "ended" and r["recording_name"]],
        15,
        "ended row with a recording",
    )[-1]


def test_ops_page_sign_in_filter_play_and_audit(make_bridged, asterisk, trace_dir: Path, rig_alloc) -> None:
    pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap installs it)")
    daemon = make_bridged(("pia", "pat"), extra=token_config())
    pia, pat = daemon.managers
    numbers: list[str] = []
    row = _real_call(daemon, pia, trace_dir, rig_alloc, numbers)
    _real_call(daemon, pat, trace_dir, rig_alloc, numbers)
    recording = asterisk.recordings_dir / f"{row['recording_name']}.wav"
    wait_for(recording.exists, 10, "recording file")
    base = f"http://127.0.0.1:{daemon.http_port}"
    admin_name, admin_token = TOKENS["admin"]

    traffic: list[str] = []
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("requestfailed", lambda r: console_errors.append(f"failed: {r.url}"))
        page.on(
            "response",
            lambda r: console_errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
        )

        def keep(response: Any) -> None:
            traffic.append(response.url)
            kind = response.headers.get("content-type", "")
            if not kind.startswith("audio/"):
                traffic.append(response.text())

        page.on("response", keep)
        page.goto(f"{base}/ops/")

        # Sign in with the keyboard only: the token field has focus on load.
        assert page.evaluate("document.activeElement.id") == "token"
        page.keyboard.type(admin_token)
        page.keyboard.press("Enter")
        page.wait_for_selector("#review:not([hidden])")
        assert page.inner_text("#who-text") == f"Signed in as {admin_name} (admin)"
        # The first filter gets the focus once the lists are loaded (ops.js start()), which the review
        # section being shown does not wait for: asserted at once, it failed a loaded CI run. A function,
        # not a bare expression: Playwright polls an expression with eval, which the page's CSP refuses
        # (script-src 'self'), so that form failed whenever the focus was not there at the first look.
        page.wait_for_function("() => document.activeElement && document.activeElement.id === 'f-manager'")
        assert page.evaluate("document.activeElement.id") == "f-manager"
        assert page.evaluate("sessionStorage.getItem('bridged.token')") == admin_token

        # Filter by manager: only pia's call is left.
        page.keyboard.type(pia.id)
        page.keyboard.press("Enter")
        page.wait_for_function(
            "ids => { const rows = [...document.querySelectorAll('#calls tbody tr')];"
            " return rows.length === 1 && rows[0].dataset.callId === ids; }",
            arg=row["id"],
        )
        page.get_by_label("Reason for listening").fill("customer dispute")

        # Play with the keyboard: focus the row's button, press Enter.
        play = page.locator(f'#calls tr[data-call-id="{row["id"]}"] button.play')
        play.focus()
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => { const a = document.getElementById('player');"
            " return a.readyState >= 2 && a.currentTime > 0 && !a.paused; }",
            timeout=20000,
        )
        duration = page.evaluate("document.getElementById('player').duration")
        assert duration > 1, duration

        # The listen shows up in the audit list (refreshed after play).
        page.wait_for_function(
            "id => [...document.querySelectorAll('#audit-table tbody tr')].some(tr =>"
            " tr.dataset.action === 'recording.listen' && tr.textContent.includes(id))",
            arg=row["id"],
        )
        listen_row = page.locator("#audit-table tbody tr[data-action='recording.listen']").first
        assert "customer dispute" in listen_row.inner_text()
        assert admin_name in listen_row.inner_text()

        out = trace_dir / "ops.png"
        page.screenshot(path=str(out), full_page=True)
        assert out.stat().st_size > 10_000
        html = page.content()
        assert not console_errors, console_errors

    # Exactly one audited listen for the one press of Play.
    audit = json.loads(
        daemon.sql(
            "SELECT coalesce(json_agg(a), '[]') FROM audit a"
            f" WHERE action = 'recording.listen' AND call_id = '{row['id']}'"
        ).strip()
    )
    assert [(a["actor"], a["reason"]) for a in audit] == [(admin_name, "customer dispute")]
    # No customer number in the page or anywhere in what the browser received.
    (trace_dir / "ops.html").write_text(html)
    for number in numbers:
        assert_not_leaked(number, page_html=html, network="\n".join(traffic))


def _russian_calls_shown(n: int) -> str:
    """Russian plural forms (CLDR): 1, 21 звонок; 2-4, 22-24 звонка; 5-20, 25 звонков."""
    if n % 10 == 1 and n % 100 != 11:
        return f"Показан {n} звонок."
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return f"Показаны {n} звонка."
    return f"Показано {n} звонков."


RUSSIAN_DATE = re.compile(r"^\d{1,2} [а-я]+\.? \d{4} г\., \d{1,2}:\d{2}:\d{2}$")
ENGLISH_DATE = re.compile(r"^[A-Z][a-z]{2} \d{1,2}, \d{4}, \d{1,2}:\d{2}:\d{2}\s?[AP]M$")


def test_ops_page_in_russian_by_accept_language_and_in_english_by_the_switch(
    make_bridged, trace_dir: Path, rig_alloc
) -> None:
    """A browser asking for Russian gets the page in Russian (headings, outcomes, the date of a real call
    in the Russian format, an API error id as a Russian message); the switch turns it English, and the
    choice outlives a reload although the browser still asks for Russian."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap installs it)")
    daemon = make_bridged(("rita",), extra=token_config())
    rita = daemon.managers[0]
    row = _real_call(daemon, rita, trace_dir, rig_alloc, [])
    base = f"http://127.0.0.1:{daemon.http_port}"
    _, ops_token = TOKENS["ops"]
    row_selector = f'#calls tr[data-call-id="{row["id"]}"]'

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                locale="ru-RU", extra_http_headers={"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{base}/ops/")
            assert page.evaluate("document.documentElement.lang") == "ru"
            assert page.inner_text("#signin-title") == "Войти"
            assert page.title() == "bridged · обзор звонков"
            page.fill("#token", ops_token)
            page.keyboard.press("Enter")
            page.wait_for_selector(row_selector)
            assert page.inner_text("#calls-title") == "Звонки"
            assert page.inner_text("#who-text").startswith("Вы вошли как ")
            shown = page.locator("#calls tbody tr").count()  # the session's database has earlier calls too
            assert page.inner_text("#calls-status") == _russian_calls_shown(shown)
            cells = page.locator(f"{row_selector} td").all_inner_texts()
            assert RUSSIAN_DATE.match(cells[0]), cells
            assert cells[3] == "состоялся", cells  # the outcome "completed"
            assert re.search("[а-я]", cells[4]), cells  # the talk time, in Russian units
            assert page.locator(f"{row_selector} button.play").inner_text() == "Слушать"
            assert page.locator("#f-outcome option[value='customer_busy']").inner_text() == "клиент занят"
            page.screenshot(path=str(trace_dir / "ops-ru.png"), full_page=True)

            # An API error id (invalid_parameter: an order filter longer than 64 characters) in Russian.
            page.fill("#f-order", "9" * 65)
            page.keyboard.press("Enter")
            page.wait_for_function(
                "() => document.getElementById('calls-status').textContent"
                " === 'Не удалось загрузить звонки: неверный параметр запроса'"
            )
            page.fill("#f-order", "")
            page.keyboard.press("Enter")
            page.wait_for_selector(row_selector)

            # The switch: English at once, the rows and the status redone; remembered across a reload.
            page.select_option("#lang", "en")
            assert page.inner_text("#calls-title") == "Calls"
            assert page.inner_text("#calls-status") == f"{shown} call{'' if shown == 1 else 's'} shown."
            assert ENGLISH_DATE.match(page.locator(f"{row_selector} td").first.inner_text())
            assert page.evaluate("localStorage.getItem('bridged.lang')") == "en"
            page.reload()
            page.wait_for_selector(row_selector)  # the token is still in the tab's sessionStorage
            assert page.evaluate("document.documentElement.lang") == "en"
            assert page.inner_text("#calls-title") == "Calls"
            assert page.inner_text("#signin-title") == "Sign in"
            page.screenshot(path=str(trace_dir / "ops-en.png"), full_page=True)
            assert not [e for e in errors if "422" not in e], errors
        finally:
            browser.close()


def _missed_row(daemon, call_id: str, order_id: str | None, manager_id: str | None, ref: str) -> None:
    """A missed inbound call's row as bridged writes it (tests/e2e/test_inbound.py makes real ones)."""
    order = "NULL" if order_id is None else f"'{order_id}'"
    manager = "NULL" if manager_id is None else f"'{manager_id}'"
    daemon.sql(
        "INSERT INTO calls (id, order_id, manager_id, direction, state, outcome, ended_by, requested_at,"
        f" ended_at, caller_ref, ari_app) VALUES ('{call_id}', {order}, {manager}, 'inbound', 'ended', 'missed',"
        f" 'customer', now(), now(), '{ref}', '{daemon.app}')"
    )


def test_ops_lists_missed_calls_and_calls_a_customer_back(
    make_bridged, asterisk, trace_dir: Path, rig_alloc
) -> None:
    """An ops token sees the missed calls; "Call back" places an ordinary masked call for the missed call's
    order and manager (the manager's phone first, then the customer); a caller without an order has no
    call back."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap installs it)")
    daemon = make_bridged(("mia",), extra=token_config())
    mia = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Lena Orlova", mia.id)
    known, unknown = f"missedk{order}", f"missedu{order}"
    _missed_row(daemon, unknown, None, None, "ABCDEFGH")
    _missed_row(daemon, known, order, mia.id, "KXMRTPAW")
    ops_name, ops_token = TOKENS["ops"]
    phone = manager_phone(mia, trace_dir, hold_ms=2500)
    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)

    traffic: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: traffic.append(r.text()) if "/v1/" in r.url else None)
            page.goto(f"http://127.0.0.1:{daemon.http_port}/ops/")
            page.keyboard.type(ops_token)
            page.keyboard.press("Enter")
            page.wait_for_selector(f'#missed-table tr[data-call-id="{known}"]')
            no_order = page.locator(f'#missed-table tr[data-call-id="{unknown}"]')
            assert "customer ABCDEFGH" in no_order.inner_text()
            assert "no order: cannot call back" in no_order.inner_text()
            assert no_order.locator("button").count() == 0
            # Call back with the keyboard.
            button = page.locator(f'#missed-table tr[data-call-id="{known}"] button.callback')
            button.focus()
            page.keyboard.press("Enter")
            page.wait_for_function(
                "id => document.querySelector(`#missed-table tr[data-call-id='${id}'] td[data-callback-id]`)",
                arg=known,
            )
            placed = page.evaluate(
                "id => document.querySelector(`#missed-table tr[data-call-id='${id}'] td[data-callback-id]`)"
                ".dataset.callbackId",
                known,
            )
            html = page.content()
            page.screenshot(path=str(trace_dir / "ops-missed.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()

    assert phone.wait(timeout=40) == 0, phone.describe()
    customer.wait(timeout=20)
    row = wait_for(
        lambda: [r for r in daemon.call_rows(mia.id) if r["id"] == placed and r["state"] == "ended"],
        15,
        "the call back ended",
    )[0]
    assert (row["order_id"], row["direction"], row["created_by"], row["outcome"]) == (
        order,
        "api",
        ops_name,
        "completed",
    )
    [request] = [a for a in daemon.audit_rows(f"token:{ops_name}") if a["call_id"] == placed]
    assert request["details"]["callback_of"] == known
    assert f"Order {order} Lena O." in phone.messages()
    assert_not_leaked(number, page_html=html, network="\n".join(traffic), manager_sip_trace=phone.messages())


def _probe(daemon, manager_id: str, code: str) -> tuple[int, str]:
    """A manager's call attempt for ``code`` over HTTP (the shop's backend asking): status and error id."""
    status, body, _ = http(
        daemon, "POST", "/v1/calls", {"order_id": code, "manager_id": manager_id}, token=TOKENS["shop"][1]
    )
    return status, body["error"]["id"]


def _probing_groups(page: Any) -> dict[str, dict[str, Any]]:
    """The probing table as shown: per manager its summary cells, its details, whether it stands out."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#probing-table tbody')].map(b => [
            b.dataset.managerId, {
              summary: [...b.querySelector('tr.summary').children].map(c => c.innerText),
              details: [...b.querySelectorAll('tr.detail')].map(r => [r.dataset.outcome, r.dataset.shape,
                Number(r.dataset.length), Number(r.dataset.count), [...r.children].map(c => c.innerText)]),
              overBudget: b.classList.contains('over-budget'),
            }]))"""
    )


def test_ops_sees_probing_by_shape_and_length_never_the_digits(make_bridged, trace_dir: Path) -> None:
    """A manager types a customer's number in place of a code (formatted, then digits only), then unknown
    codes until the budget refuses them: ops see the pattern on /ops/ (counts, outcomes, lengths, shapes;
    that manager marked past a budget), filter by manager and period with the keyboard, in English and in
    Russian; the number is nowhere in the page or in what the browser sent and received."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap installs it)")
    daemon = make_bridged(("pavel", "vera"), extra=token_config())
    pavel, vera = daemon.managers
    number = new_customer_number()  # +4930 and 8 digits
    formatted = f"{number[:3]} {number[3:5]} {number[5:9]}-{number[9:]}"
    digits = number[1:]
    assert number_leaks(formatted, number) and number_leaks(digits, number)  # the check below sees them
    refused = [_probe(daemon, pavel.id, formatted), _probe(daemon, pavel.id, digits)]
    refused += [_probe(daemon, pavel.id, str(8000 + i)) for i in range(8)]
    refused.append(_probe(daemon, pavel.id, "8100"))  # the 11th: past refused_in_a_row (10)
    assert refused == [(422, "invalid_order_id")] + [(404, "unknown_order")] * 9 + [(429, "rate_limited")], (
        refused
    )
    assert _probe(daemon, vera.id, "5555") == (404, "unknown_order")
    # vera's attempt three days ago: outside the default period (24 h), inside the last 7 days.
    daemon.sql(f"UPDATE manager_attempts SET at = at - interval '3 days' WHERE manager_id = '{vera.id}'")
    # The session's database holds the attempts of the tests before this one: a year back, past every
    # period the page offers, so that the page shows this test's managers only.
    daemon.sql(
        "UPDATE manager_attempts SET at = at - interval '400 days'"
        f" WHERE manager_id NOT IN ('{pavel.id}', '{vera.id}')"
    )
    _, ops_token = TOKENS["ops"]
    pavel_expected = [
        # (outcome, shape, length, count), newest first
        ["rate_limited", "well_formed", 4, 1],
        ["unknown_order", "well_formed", 4, 8],
        ["unknown_order", "well_formed", len(digits), 1],
        ["invalid_code", "phone_like", len(formatted), 1],
    ]

    traffic: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900}, locale="en-US")
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
            page.on("request", lambda r: traffic.append(f"{r.method} {r.url} {r.post_data or ''}"))
            page.on("response", lambda r: traffic.append(r.text()) if "/v1/" in r.url else None)
            page.goto(f"http://127.0.0.1:{daemon.http_port}/ops/")
            page.keyboard.type(ops_token)
            page.keyboard.press("Enter")
            page.wait_for_selector(f'#probing-table tbody[data-manager-id="{pavel.id}"]')
            assert page.inner_text("#probing-title") == "Probing"

            # The default period, the last 24 hours: pavel only, his pattern, marked past a budget.
            groups = _probing_groups(page)
            assert list(groups) == [pavel.id], groups
            shown = groups[pavel.id]
            assert [d[:4] for d in shown["details"]] == pavel_expected, shown
            assert shown["overBudget"]
            assert shown["summary"][0].startswith(pavel.id), shown
            assert "past a budget" in shown["summary"][0]
            assert shown["summary"][1:5] == [
                "unknown order: 9, rate limited: 1, invalid code: 1",
                "well-formed code: 10, phone-number-like: 1",
                f"4, {len(digits)}, {len(formatted)}",
                "11",
            ], shown
            assert shown["details"][3][4][1:5] == [
                "invalid code",
                "phone-number-like",
                str(len(formatted)),
                "1",
            ]
            assert page.inner_text("#probing-status").startswith("1 manager with refused attempts since ")
            page.screenshot(path=str(trace_dir / "ops-probing.png"), full_page=True)

            # The last 7 days, chosen with the keyboard: vera too, after pavel (newest first), not marked.
            page.focus("#p-period")
            page.keyboard.press("ArrowDown")
            page.wait_for_function("() => document.querySelectorAll('#probing-table tbody').length === 2")
            groups = _probing_groups(page)
            assert list(groups) == [pavel.id, vera.id], groups
            assert [d[:4] for d in groups[vera.id]["details"]] == [["unknown_order", "well_formed", 4, 1]]
            assert not groups[vera.id]["overBudget"]
            assert "past a budget" not in groups[vera.id]["summary"][0]

            # The manager filter, typed and sent with Enter.
            page.focus("#p-manager")
            page.keyboard.type(vera.id)
            page.keyboard.press("Enter")
            page.wait_for_function(
                "id => { const b = document.querySelectorAll('#probing-table tbody');"
                " return b.length === 1 && b[0].dataset.managerId === id; }",
                arg=vera.id,
            )
            page.fill("#p-manager", "")
            page.keyboard.press("Enter")
            page.wait_for_function("() => document.querySelectorAll('#probing-table tbody').length === 2")

            # In Russian: the section, the outcomes and shapes, the mark and the status redone at once.
            page.select_option("#lang", "ru")
            assert page.inner_text("#probing-title") == "Подбор кодов"
            groups = _probing_groups(page)
            shown = groups[pavel.id]
            assert "превышен лимит" in shown["summary"][0]
            assert shown["summary"][2] == "код верного вида: 10, похоже на номер телефона: 1", shown
            assert shown["details"][0][4][1] == "превышен лимит"
            assert shown["details"][3][4][1:3] == ["неверный код заказа", "похоже на номер телефона"]
            assert page.inner_text("#probing-status").startswith("2 менеджера с отказами с ")
            page.screenshot(path=str(trace_dir / "ops-probing-ru.png"), full_page=True)
            html = page.content()
            assert not errors, errors
        finally:
            browser.close()

    (trace_dir / "ops-probing.html").write_text(html)
    assert any("/v1/probing" in t for t in traffic), traffic
    assert_not_leaked(number, page_html=html, network="\n".join(traffic), daemon_log=daemon.log_text())
