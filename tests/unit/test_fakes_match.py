"""Every fake the unit tests use has the shape of the real class it stands in for.

A fake that drifts from its real class lets a unit test pass on a call the real class would reject. For
each pair below, every public method the fake defines must exist on the real class with the same
parameters (names, kinds, defaults), be async or an async generator exactly when the real one is, and
carry the same annotations (``typing.get_type_hints``; not for third-party classes, whose annotations, if
any, name their own private types). A fake method the real class lacks is allowed only when listed as a
test-only helper. Every class the unit tests define must be a listed fake, a subclass of a real class, or
listed as no stand-in at all, so a new fake cannot escape the check.

mypy checks the same pairs (the ``Fits`` classes at the end): a class deriving from the fake and then the
real class is an error wherever a method both define has incompatible types, which ``mypy tests`` reports
without running anything, against the real class itself (a Protocol would be one more copy of the
signatures to drift, and bridged would have to take it instead of its classes). mypy cannot see a
renamed positional parameter, a changed default or a fake that accepts more than the real class: the
test here does.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest

import tests.unit
from bridged.ari.client import AriClient
from bridged.ari.events import AriEventStream
from bridged.orders import OrderDirectory
from bridged.recordings import AriRecordings, _AriRecording
from bridged.service import CallService
from bridged.serving import Serving
from bridged.store import Store
from bridged.store.attempts import ManagerAttempts
from bridged.store.audit import AuditTrail
from bridged.store.callers import StickyCallers
from bridged.store.calls import CallRows
from bridged.store.idempotency import IdempotencyKeys
from bridged.store.leases import AppLeases
from bridged.store.links import CallLinks
from bridged.store.outbox import WebhookOutbox
from bridged.store.settings import Settings

from . import (
    fakes,
    test_agi,
    test_app,
    test_availability,
    test_db,
    test_inbound,
    test_leases,
    test_review,
    test_service,
    test_webhooks,
)

# Dunder methods a fake may stand in for (``async with``, a callable): compared like public methods.
PROTOCOL_DUNDERS = frozenset({"__aenter__", "__aexit__", "__call__", "__aiter__", "__anext__"})


@dataclass(frozen=True)
class Pair:
    fake: type
    real: type
    # Compare annotations too: not for a third-party class (unannotated, or annotated with its own types).
    hints: bool = True
    # The fake's test-only helpers: methods the real class does not have, which no bridged code calls.
    helpers: frozenset[str] = field(default_factory=frozenset)

    @property
    def id(self) -> str:
        return f"{self.fake.__module__.rsplit('.', 1)[-1]}.{self.fake.__qualname__}"


# The FakeAri's queries over what it recorded (the tests' assertions read them).
ARI_HELPERS = frozenset({"named", "methods", "variables", "hung_up"})

PAIRS = [
    # tests/unit/fakes.py
    Pair(fakes.FakeAri, AriClient, helpers=ARI_HELPERS),
    Pair(fakes.FakeStore, Store, helpers=frozenset({"add_row"})),  # a row as a test sets it up
    Pair(fakes.DownStore, Store, helpers=frozenset({"add_row"})),
    Pair(fakes.FakeAuditTrail, AuditTrail),
    Pair(fakes.FakeCallRows, CallRows),
    Pair(fakes.FakeCallLinks, CallLinks),
    Pair(fakes.FakeIdempotencyKeys, IdempotencyKeys),
    Pair(fakes.FakeStickyCallers, StickyCallers),
    Pair(fakes.FakeManagerAttempts, ManagerAttempts),
    # fakes local to one test module
    Pair(test_agi.FakeService, CallService),
    Pair(test_service.FakeDirectory, OrderDirectory),
    Pair(test_inbound.FakeDirectory, OrderDirectory),
    Pair(test_leases.FakeLeases, AppLeases),
    Pair(test_leases.FakeHost, Serving),
    Pair(test_app._Events, AriEventStream),
    Pair(test_app._ServingStandIn, Serving),
    Pair(test_availability._Stream, AriEventStream),
    Pair(test_review.ReviewCalls, CallRows),
    Pair(test_review.ReviewSettings, Settings),
    Pair(test_review._RetentionCalls, CallRows),
    Pair(test_review._RetentionSettings, Settings),
    Pair(test_review._Purged, ManagerAttempts),
    Pair(test_review._Purged, WebhookOutbox),
    Pair(test_review._BrokenSource, AriRecordings),
    Pair(test_review._BrokenRecording, _AriRecording),
    Pair(test_webhooks._Store, WebhookOutbox),
    Pair(test_webhooks._Outbox, WebhookOutbox),
    Pair(test_webhooks._OutboxAway, WebhookOutbox),
    # third-party classes
    Pair(fakes.FakePool, asyncpg.Pool, hints=False),
    Pair(test_db._Conn, asyncpg.Connection, hints=False),
    Pair(test_webhooks._Session, aiohttp.ClientSession, hints=False),
    Pair(test_webhooks._Response, aiohttp.ClientResponse, hints=False),
]

# Classes the unit tests define that stand in for no class of bridged's or a library's: what a test
# drives or holds, never handed to code expecting a real part.
NOT_STAND_INS = {
    "test_ari_client.FakeAri",  # an HTTP server answering as Asterisk: the real client talks to it
    "test_ari_events.FakeEvents",  # a websocket server sending as Asterisk: the real stream reads it
    "test_ari_transport.Server",  # the same for the transport
    "test_availability.Env",
    "test_calls.Env",
    "test_database_down.Table",
    "test_inbound.Env",
    "test_leases.Env",
    "test_limits.Clock",  # a time function (``clock=``)
    "test_links.Served",
    "test_manager_tokens.Served",
}


def _public(cls: type) -> Iterator[tuple[str, Any]]:
    """The public members ``cls`` (and the test classes it derives from) defines, as stored."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("tests."):
            continue
        for name, member in vars(klass).items():
            if name in seen or (name.startswith("_") and name not in PROTOCOL_DUNDERS):
                continue
            seen.add(name)
            if callable(member) or isinstance(member, property | staticmethod | classmethod):
                yield name, member


def _function(member: Any) -> Any:
    if isinstance(member, property):
        return member.fget
    if isinstance(member, staticmethod | classmethod):
        return member.__func__
    return member


def _kind(member: Any) -> str:
    for kind in (property, staticmethod, classmethod):
        if isinstance(member, kind):
            return kind.__name__
    function = _function(member)
    if inspect.isasyncgenfunction(function):
        return "async generator"
    return "async" if inspect.iscoroutinefunction(function) else "sync"


def _parameters(function: Any) -> list[tuple[str, str, Any]]:
    return [(p.name, p.kind.description, p.default) for p in inspect.signature(function).parameters.values()]


def _hints(function: Any) -> dict[str, Any] | str:
    try:
        return typing.get_type_hints(function)
    except Exception as unresolved:  # an annotation naming what its module does not import: a drift too
        return f"unresolvable in {function.__module__}: {unresolved!r}"


def drifts(pair: Pair) -> list[str]:
    """How the fake differs from the real class, one line each (none when it matches)."""
    found = []
    for name, member in _public(pair.fake):
        real = inspect.getattr_static(pair.real, name, None)
        if real is None:
            if name not in pair.helpers:
                found.append(f"{name}: {pair.real.__name__} has no such method (or list it as a helper)")
            continue
        if name in pair.helpers:
            found.append(f"{name}: listed as a helper, but {pair.real.__name__} has it")
        if (fake_kind := _kind(member)) != (real_kind := _kind(real)):
            found.append(f"{name}: {fake_kind} in the fake, {real_kind} in {pair.real.__name__}")
            continue
        fake_function, real_function = _function(member), _function(real)
        if (fake_parameters := _parameters(fake_function)) != (real_parameters := _parameters(real_function)):
            found.append(f"{name}: parameters {fake_parameters} != {real_parameters}")
        if pair.hints:
            fake_hints, real_hints = _hints(fake_function), _hints(real_function)
            if isinstance(fake_hints, str) or isinstance(real_hints, str) or fake_hints != real_hints:
                found.append(f"{name}: annotations {fake_hints} != {real_hints}")
    for name in pair.helpers:
        if name not in dict(_public(pair.fake)):
            found.append(f"{name}: listed as a helper, but the fake has no such method")
    return found


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p.id}-{p.real.__name__}")
def test_the_fake_has_the_real_classes_signatures(pair: Pair) -> None:
    if found := drifts(pair):
        pytest.fail("\n".join(found))


def _test_classes() -> Iterator[tuple[str, type]]:
    """Every class the unit test modules define (not imported), by ``module.Name``."""
    for info in pkgutil.iter_modules(tests.unit.__path__):
        if info.name == "test_fakes_match":  # its drifted samples below stand in for nothing
            continue
        module = importlib.import_module(f"tests.unit.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, type) and value.__module__ == module.__name__:
                yield f"{info.name}.{name}", value


def _real_base(cls: type) -> type | None:
    """The first class ``cls`` derives from that is not a test's (but ``object``)."""
    return next((base for base in cls.__mro__[1:-1] if not base.__module__.startswith("tests.")), None)


def _subclasses() -> list[Pair]:
    """The unit tests' subclasses of a real class, each paired with it: an override keeps the shape of
    the method it replaces (mypy checks an override's types, not a renamed parameter or a default)."""
    found = []
    for _, cls in _test_classes():
        if (base := _real_base(cls)) is not None and not issubclass(cls, BaseException):
            found.append(Pair(cls, base, hints=base.__module__.startswith("bridged.")))
    return found


@pytest.mark.parametrize("pair", _subclasses(), ids=lambda p: f"{p.id}-{p.real.__name__}")
def test_a_subclass_of_a_real_class_overrides_with_its_signatures(pair: Pair) -> None:
    if found := drifts(pair):
        pytest.fail("\n".join(found))


def test_every_class_the_unit_tests_define_is_checked_or_stands_in_for_nothing() -> None:
    paired = {pair.id for pair in PAIRS}
    unchecked = [
        name
        for name, cls in _test_classes()
        # Not paired, not a subclass of a real class (checked above), and with methods (not a record).
        if name not in paired | NOT_STAND_INS and _real_base(cls) is None and list(_public(cls))
    ]
    assert not unchecked, f"pair each with its real class in PAIRS, or list it in NOT_STAND_INS: {unchecked}"
    assert not paired & NOT_STAND_INS


# -- the check catches drift -----------------------------------------------------------------------


class _Real:
    async def get(self, call_id: str, *, fresh: bool = False) -> str | None:
        return None

    def size(self) -> int:
        return 0


class _Renamed:
    async def get(self, row_id: str, *, fresh: bool = False) -> str | None:
        return None


class _Defaulted:
    async def get(self, call_id: str, *, fresh: bool = True) -> str | None:
        return None


class _Looser:
    async def get(self, call_id: str, **filters: Any) -> str | None:
        return None


class _Retyped:
    async def get(self, call_id: str, *, fresh: bool = False) -> str:
        return ""


class _Sync:
    def get(self, call_id: str, *, fresh: bool = False) -> str | None:
        return None

    async def size(self) -> int:
        return 0


class _Invented:
    async def get(self, call_id: str, *, fresh: bool = False) -> str | None:
        return None

    def rows(self) -> list[str]:
        return []


@pytest.mark.parametrize(
    ("fake", "drift"),
    [
        (_Renamed, "get: parameters"),
        (_Defaulted, "get: parameters"),
        (_Looser, "get: parameters"),
        (_Retyped, "get: annotations"),
        (_Sync, "get: sync in the fake, async in _Real"),
        (_Sync, "size: async in the fake, sync in _Real"),
        (_Invented, "rows: _Real has no such method"),
    ],
)
def test_a_drifted_fake_is_reported(fake: type, drift: str) -> None:
    found = drifts(Pair(fake, _Real))
    assert any(line.startswith(drift) for line in found), found


def test_a_listed_helper_is_allowed_and_only_while_it_is_one() -> None:
    assert drifts(Pair(_Invented, _Real, helpers=frozenset({"rows"}))) == []
    assert drifts(Pair(_Invented, _Real, helpers=frozenset({"rows", "get"}))) == [
        "get: listed as a helper, but _Real has it"
    ]
    assert drifts(Pair(_Real, _Real, helpers=frozenset({"gone"}))) == [
        "gone: listed as a helper, but the fake has no such method"
    ]


# -- mypy checks the same pairs ----------------------------------------------------------------------
# Each class below derives from a fake, then from its real class: ``mypy tests`` reports every method
# both define whose types do not fit (a parameter the fake lacks or types otherwise, a keyword-only one
# renamed, another return type, sync for async). Never instantiated.


class _FakeAriFits(fakes.FakeAri, AriClient): ...


class _FakeAuditTrailFits(fakes.FakeAuditTrail, AuditTrail): ...


class _FakeCallRowsFits(fakes.FakeCallRows, CallRows): ...


class _FakeCallLinksFits(fakes.FakeCallLinks, CallLinks): ...


class _FakeIdempotencyKeysFits(fakes.FakeIdempotencyKeys, IdempotencyKeys): ...


class _FakeStickyCallersFits(fakes.FakeStickyCallers, StickyCallers): ...


class _FakeManagerAttemptsFits(fakes.FakeManagerAttempts, ManagerAttempts): ...


class _FakeServiceFits(test_agi.FakeService, CallService): ...


class _FakeDirectoryFits(test_service.FakeDirectory, OrderDirectory): ...


class _FakeCallerDirectoryFits(test_inbound.FakeDirectory, OrderDirectory): ...


class _FakeLeasesFits(test_leases.FakeLeases, AppLeases): ...


class _FakeHostFits(test_leases.FakeHost, Serving): ...


class _EventsFits(test_app._Events, AriEventStream): ...


class _ServingStandInFits(test_app._ServingStandIn, Serving): ...


class _StreamFits(test_availability._Stream, AriEventStream): ...


class _ReviewCallsFits(test_review.ReviewCalls, CallRows): ...


class _ReviewSettingsFits(test_review.ReviewSettings, Settings): ...


class _RetentionCallsFits(test_review._RetentionCalls, CallRows): ...


class _RetentionSettingsFits(test_review._RetentionSettings, Settings): ...


class _PurgedAttemptsFits(test_review._Purged, ManagerAttempts): ...


class _PurgedOutboxFits(test_review._Purged, WebhookOutbox): ...


class _BrokenSourceFits(test_review._BrokenSource, AriRecordings): ...


class _BrokenRecordingFits(test_review._BrokenRecording, _AriRecording): ...


class _StoreFits(test_webhooks._Store, WebhookOutbox): ...


class _OutboxFits(test_webhooks._Outbox, WebhookOutbox): ...


class _OutboxAwayFits(test_webhooks._OutboxAway, WebhookOutbox): ...


# The pairs mypy cannot judge: a FakeStore's parts are fakes where Store's are the real aggregates (each
# checked above); asyncpg has no types (its classes are Any to mypy); the fake aiohttp response is its
# own context manager, where aiohttp's types name theirs.
NOT_FOR_MYPY = {(fakes.FakeStore, Store), (fakes.DownStore, Store)} | {
    (pair.fake, pair.real) for pair in PAIRS if not pair.hints
}


def test_mypy_checks_every_pair_it_can() -> None:
    fits = {cls.__bases__ for name, cls in globals().items() if name.endswith("Fits")}
    assert fits == {(pair.fake, pair.real) for pair in PAIRS} - NOT_FOR_MYPY
