"""A Russian-speaking shop on the real rig: every prompt from Asterisk's sounds/ru/ on every leg, Cyrillic
labels over SIP intact, and an announcement of the shop's own made with scripts/announcement.

What was played, on which channel and in which language, is read from Asterisk's verbose log (its
``<PJSIP/...> Playing 'x.gsm' (language 'ru')`` lines); that the language's own file exists on the rig
is checked beside it (Asterisk falls back to the English file when it does not, with the same log line).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bridged.config import DEFAULT_PROMPTS, LANGUAGES, Prompts
from rig import Asterisk
from rig.sipp import SipMessage, parse_trace

from .harness import (
    REPO_ROOT,
    add_order,
    assert_not_leaked,
    carrier,
    dial,
    invites,
    new_customer_number,
    new_order_id,
    wait_for,
)
from .test_http_calls import http, manager_phone, token_config, wait_state
from .test_masked_call import _invite_ok, _stub_agi_phone

RUSSIAN = {"language": "ru"}
PROVISION = "run scripts/provision-asterisk outside the tests' network namespace"
# About 2.3 s in either language; Debian's sounds have no "this call is recorded" (README).
STOCK_ANNOUNCEMENT = "conf-now-recording"


def _sounds_dir(root: Path, language: str) -> Path:
    """``/usr/share/asterisk/sounds/<language>`` of the chroot as Asterisk sees it: Debian links it to
    ``/etc/alternatives/asterisk-prompt-<language>``, an absolute link to be followed inside the chroot."""
    path = Path("/usr/share/asterisk/sounds") / language
    for _ in range(10):
        host = root / path.relative_to("/")
        if not host.is_symlink():
            return host
        target = Path(os.readlink(host))
        path = target if target.is_absolute() else path.parent / target
    raise AssertionError(f"{path}: too many links")


def _sound_file(root: Path, language: str, sound: str) -> Path | None:
    found = sorted(_sounds_dir(root, language).glob(f"{sound}.*"))
    return found[0] if found else None


def _played(asterisk: Asterisk, channel: str, sound: str, language: str) -> list[str]:
    """Asterisk's log lines that say ``sound`` was played on a channel of ``channel`` (an endpoint's
    channel name prefix, e.g. ``PJSIP/carrier``) in ``language``."""
    pattern = re.compile(
        rf"<{re.escape(channel)}-[0-9a-f]+> Playing '{re.escape(sound)}\.\w+' \(language '{re.escape(language)}'\)"
    )
    return [line for line in asterisk.log_text().splitlines() if pattern.search(line)]


def _assert_played_in_russian(asterisk: Asterisk, root: Path, channel: str, sound: str) -> None:
    wait_for(lambda: _played(asterisk, channel, sound, "ru"), 10, f"{sound} played in Russian on {channel}")
    # Asterisk took sounds/ru/<sound> (it looks there first): the Russian file is there, and is not the
    # English one.
    russian, english = _sound_file(root, "ru", sound), _sound_file(root, "en", sound)
    assert russian is not None, f"no Russian {sound} on the rig ({PROVISION})"
    assert english is None or russian.read_bytes() != english.read_bytes()


def _identities(trace: str) -> list[tuple[str, str]]:
    """(header, value) of every identity header the phone received: P-Asserted-Identity and
    Remote-Party-ID of every message, From of the requests that start a dialog with it."""
    found = []
    for message in parse_trace(trace):
        if message.direction != "received":
            continue
        names = ["P-Asserted-Identity", "Remote-Party-ID"]
        if message.is_request and message.method == "INVITE" and not _in_dialog(message):
            names.append("From")
        found += [(name, value) for name in names for value in message.header(name)]
    return found


def _in_dialog(message: SipMessage) -> bool:
    return bool(re.search(r";\s*tag=", "".join(message.header("To"))))


def _assert_label_only(trace_bytes: bytes, order: str, shown: str) -> None:
    """Every identity the manager's phone received is the order label, quoted and in UTF-8, whose URI
    user part redials the order (ASCII ``*77<order>``)."""
    trace = trace_bytes.decode("utf-8")  # strict: a mangled byte fails here
    identities = _identities(trace)
    assert identities, "the phone received no identity header"
    label = re.compile(rf'^"{re.escape(shown)}" <sip:\*77{re.escape(order)}@[^>]+>(;.*)?$')
    for header, value in identities:
        assert label.match(value), (header, value)


def _answered_call(
    make_bridged, trace_dir: Path, rig_alloc, customer_name: str, **options: Any
) -> tuple[Any, ...]:
    """A Russian shop's daemon with one manager, who dials ``*77<order>``; the customer answers and the
    manager hangs up after 3 s. (daemon, order, number, the phone's SIPp, the carrier's SIPp)."""
    daemon = make_bridged(("mira",), extra=RUSSIAN, **options)
    mira = daemon.managers[0]
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, customer_name, mira.id)
    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)
    phone = dial(mira, trace_dir, f"*77{order}", hold_ms=3000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)
    return daemon, order, number, phone, customer


# -- the prompts the rig has ------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_default_prompt_is_in_the_rigs_stock_sounds_of_its_language(
    asterisk_root: Path, language: str
) -> None:
    """The defaults of each language name files Debian's sounds of that language hold (else Asterisk
    would play the English one, or nothing)."""
    prompts = DEFAULT_PROMPTS[language]
    sounds = {s for name in Prompts.__dataclass_fields__ for s in getattr(prompts, name).split("&")}
    sounds.add(STOCK_ANNOUNCEMENT)
    missing = sorted(s for s in sounds if _sound_file(asterisk_root, language, s) is None)
    assert not missing, f"{language}: {missing} (a cache from before the language: {PROVISION})"


# -- the phone path ---------------------------------------------------------------------------------


def test_phone_path_in_russian_prompts_labels_and_announcement(
    make_bridged, asterisk: Asterisk, asterisk_root: Path, trace_dir: Path, rig_alloc
) -> None:
    """*77, the code keyed in (the code prompt in Russian), the customer hears the announcement in
    Russian, the manager's phone is shown the Cyrillic label (family name first: last_first_initial).
    Then an unknown order: the dialplan's refusal prompt in Russian."""
    daemon = make_bridged(
        ("vera",),
        announcement=STOCK_ANNOUNCEMENT,
        extra={**RUSSIAN, "labels": {"name_style": "last_first_initial"}},
    )
    vera = daemon.managers[0]
    endpoint = f"PJSIP/{vera.endpoint}"
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Иванов Иван Петрович", vera.id)

    customer = carrier(trace_dir, rig_alloc, hold_ms=30000)
    phone = dial(vera, trace_dir, "*77", dtmf=f"{order}#", hold_ms=5000)
    assert phone.wait(timeout=60) == 0, phone.describe()
    customer.wait(timeout=20)
    row = wait_for(lambda: [r for r in daemon.call_rows(vera.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert (row["outcome"], row["order_id"]) == ("completed", order), row

    # The code prompt (FastAGI's GET DATA, before bridged's answer) and the customer's announcement.
    _assert_played_in_russian(asterisk, asterisk_root, endpoint, DEFAULT_PROMPTS["ru"].enter_code)
    _assert_played_in_russian(asterisk, asterisk_root, "PJSIP/carrier", STOCK_ANNOUNCEMENT)
    assert not _played(asterisk, endpoint, STOCK_ANNOUNCEMENT, "ru"), "the manager heard the announcement"
    # The manager was connected only once the customer had heard it out.
    answered, connected = _invite_ok(customer.messages(), "sent"), _invite_ok(phone.messages(), "received")
    assert answered and connected

    # The label: in the 200 OK's identity and in the connected-line update that followed the code.
    trace = phone.message_file.read_bytes()
    _assert_label_only(trace, order, f"Заказ {order} Иванов И.")
    assert_not_leaked(number, manager_sip_trace=trace.decode(), daemon_log=daemon.log_text())

    # An unknown order: bridged answers "refused" in Russian, the dialplan plays the prompt.
    missing = new_order_id()
    refused = dial(vera, trace_dir / "refused", f"*77{missing}", hold_ms=20000, timeout_s=40)
    assert refused.wait(timeout=30) == 0, refused.describe()
    _assert_played_in_russian(asterisk, asterisk_root, endpoint, DEFAULT_PROMPTS["ru"].unknown_order)


def test_a_direct_code_in_russian_shows_the_label_in_the_first_answer(
    make_bridged, asterisk: Asterisk, trace_dir: Path, rig_alloc
) -> None:
    """*77<order>: the label is in the phone's 180/200 identity headers from the start, the URI user part
    redials the order."""
    daemon, order, number, phone, _ = _answered_call(make_bridged, trace_dir, rig_alloc, "Иван Петров")
    trace = phone.message_file.read_bytes()
    _assert_label_only(trace, order, f"Заказ {order} Иван П.")
    ok = next(
        m
        for m in parse_trace(trace.decode("utf-8"))
        if m.direction == "received" and m.status == 200 and m.method == "INVITE"
    )
    assert ok.header("P-Asserted-Identity"), ok.text
    assert_not_leaked(number, manager_sip_trace=trace.decode(), daemon_log=daemon.log_text())


def test_the_dialplans_own_prompt_when_stasis_fails_is_in_the_answers_language(
    asterisk: Asterisk, asterisk_root: Path, trace_dir: Path, rig_alloc, unique_name
) -> None:
    """bridged answered "ok" in Russian, but its application is gone when the channel gets to Stasis():
    the dialplan's "try later" is the Russian file, which has another name than the English one."""
    phone_info, asked, cleanup = _stub_agi_phone(
        asterisk, rig_alloc, unique_name, '"ok|ru|bridged-nobody,order,x|\\"Заказ 1\\" <*771>"'
    )
    try:
        phone = dial(phone_info, trace_dir, "*771", hold_ms=20000)
        assert phone.wait(timeout=40) == 0, phone.describe()
    finally:
        cleanup()
    assert asked.is_set()
    prompt = DEFAULT_PROMPTS["ru"].unavailable
    _assert_played_in_russian(asterisk, asterisk_root, f"PJSIP/{phone_info.endpoint}", prompt)


# -- the HTTP path ----------------------------------------------------------------------------------


def test_http_path_in_russian_label_announcement_and_the_managers_prompt(
    make_bridged, asterisk: Asterisk, asterisk_root: Path, trace_dir: Path, rig_alloc
) -> None:
    """POST /v1/calls: the manager's phone rings showing the Cyrillic label (From, PAI, RPID), the
    customer leg hears the announcement in Russian; a second call whose customer is busy plays the
    busy prompt to the manager's leg in Russian (both legs bridged originated carry the language)."""
    # The shop's token places the call; the manager-bound one needs a manager id known before start.
    shop_tokens = [t for t in token_config("-") if t["role"] != "manager"]
    api = {"tokens": shop_tokens, "manager_ring_timeout": 5}
    daemon = make_bridged(("dina",), announcement=STOCK_ANNOUNCEMENT, extra={**RUSSIAN, "api": api})
    dina = daemon.managers[0]
    endpoint = f"PJSIP/{dina.endpoint}"
    order, number = new_order_id(), new_customer_number()
    add_order(daemon.postgres, order, number, "Иван Петров", dina.id)

    phone = manager_phone(dina, trace_dir / "answered", hold_ms=60000)
    customer = carrier(trace_dir / "answered", rig_alloc, hold_ms=5000)
    status, call, _ = http(daemon, "POST", "/v1/calls", {"order_id": order, "manager_id": dina.id})
    assert status == 202, call
    ended = wait_state(daemon, call["id"], "ended", timeout=40)
    assert ended["outcome"] == "completed", ended
    assert customer.wait(timeout=10) == 0 and phone.wait(timeout=10) == 0
    trace = phone.message_file.read_bytes()
    from_line = re.search(r"^From:.*$", invites(trace.decode("utf-8"))[0], re.M)
    assert from_line and f'"Заказ {order} Иван П." <sip:*77{order}@' in from_line[0], from_line
    _assert_label_only(trace, order, f"Заказ {order} Иван П.")
    _assert_played_in_russian(asterisk, asterisk_root, "PJSIP/carrier", STOCK_ANNOUNCEMENT)
    assert not _played(asterisk, endpoint, STOCK_ANNOUNCEMENT, "ru"), "the manager heard the announcement"
    assert_not_leaked(number, manager_sip_trace=trace.decode(), daemon_log=daemon.log_text())

    busy_order = new_order_id()
    add_order(daemon.postgres, busy_order, new_customer_number(), "Иван Петров", dina.id)
    phone = manager_phone(dina, trace_dir / "busy", hold_ms=60000)
    customer = carrier(trace_dir / "busy", rig_alloc, "carrier_busy", timeout_s=40)
    status, call, _ = http(daemon, "POST", "/v1/calls", {"order_id": busy_order, "manager_id": dina.id})
    assert status == 202, call
    assert wait_state(daemon, call["id"], "ended", timeout=40)["outcome"] == "customer_busy"
    customer.wait(timeout=10)
    phone.wait(timeout=20)
    for sound in DEFAULT_PROMPTS["ru"].busy.split("&"):
        _assert_played_in_russian(asterisk, asterisk_root, endpoint, sound)


# -- an announcement of the shop's own ---------------------------------------------------------------


def test_a_converted_announcement_is_played_to_the_customer_in_its_language_and_never_to_the_manager(
    make_bridged, asterisk: Asterisk, asterisk_root: Path, trace_dir: Path, rig_alloc
) -> None:
    """scripts/announcement turns a 44.1 kHz stereo WAV (a 2.5 s tone standing in for a shop's
    recording) into Asterisk's 8 kHz mono WAV in the chroot's sounds/ru/; the customer hears it before
    the bridge, the manager never."""
    source = trace_dir / "shop-recording.wav"
    subprocess.run(
        ["sox", "-n", "-r", "44100", "-c", "2", str(source), "synth", "2.5", "sine", "700"],
        check=True,
        capture_output=True,
    )
    name = f"custom/bridged-test-{os.getpid()}"
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "announcement"), "--root", str(asterisk_root), str(source), name, "ru"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"announcement: {name}" in done.stdout
    installed = _sounds_dir(asterisk_root, "ru") / f"{name}.wav"
    try:
        info = subprocess.run(["soxi", str(installed)], capture_output=True, text=True, check=True).stdout
        assert re.search(r"Channels\s*: 1\b", info) and re.search(r"Sample Rate\s*: 8000\b", info), info
        daemon, order, _, phone, customer = _answered_call(
            make_bridged, trace_dir, rig_alloc, "Лидия Орлова", announcement=name
        )
        lida = daemon.managers[0]
    finally:
        installed.unlink(missing_ok=True)
    wait_for(
        lambda: _played(asterisk, "PJSIP/carrier", name, "ru"), 10, "the announcement on the customer leg"
    )
    assert not _played(asterisk, f"PJSIP/{lida.endpoint}", name, "ru"), "the manager heard the announcement"
    answered, connected = _invite_ok(customer.messages(), "sent"), _invite_ok(phone.messages(), "received")
    assert answered and connected
    # The manager's phone is answered only once the customer has heard the 2.5 s out.
    assert (connected - answered).total_seconds() > 2.3, (answered, connected)
    row = wait_for(lambda: [r for r in daemon.call_rows(lida.id) if r["state"] == "ended"], 10, "ended row")[
        -1
    ]
    assert row["outcome"] == "completed", row
