"""Our ARI operation table against the Swagger description the live Asterisk serves.

A wrong path, method or parameter name in ``bridged.ari.operations`` would otherwise surface as a 404/400
in the middle of a call; here it fails before any call is placed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from bridged.ari.client import basic_auth_header
from bridged.ari.operations import OPERATIONS, Operation
from bridged.calls.engine import EVENT_TYPES

pytestmark = pytest.mark.e2e

_PATH_PARAM = re.compile(r"\{(\w+)\}")


def _index(resources: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{path: {METHOD: operation}} over every API declaration."""
    paths: dict[str, dict[str, dict[str, Any]]] = {}
    for declaration in resources.values():
        for api in declaration.get("apis", []):
            methods = paths.setdefault(api["path"], {})
            for operation in api.get("operations", []):
                methods[operation["httpMethod"].upper()] = operation
    return paths


def _check_one(name: str, op: Operation, spec_op: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    spec_params = {p["name"]: p for p in spec_op.get("parameters", [])}
    spec_path = {n for n, p in spec_params.items() if p.get("paramType") == "path"}
    ours_path = set(op.path_params)
    if spec_path != ours_path:
        problems.append(f"{name}: path params {sorted(ours_path)} != spec {sorted(spec_path)}")
    for pname, p in spec_params.items():
        if p.get("paramType") == "path":
            continue
        if p.get("required") and pname not in op.required:
            problems.append(f"{name}: spec requires {pname!r}, ours does not")
    for pname in op.all_params:
        p = spec_params.get(pname)
        if p is None or p.get("paramType") == "path":
            problems.append(f"{name}: parameter {pname!r} is not in the spec")
            continue
        in_body = p.get("paramType") == "body"
        if in_body != (pname in op.body_params):
            where = "body" if in_body else p.get("paramType")
            problems.append(f"{name}: parameter {pname!r} travels in {where} per the spec")
    for pname in op.body_params:
        if pname not in op.all_params:
            problems.append(f"{name}: body param {pname!r} is neither required nor optional")
    return problems


def check_operations(
    resources: Mapping[str, Mapping[str, Any]], operations: Mapping[str, Operation] | None = None
) -> list[str]:
    """Problems found comparing ``operations`` (default: OPERATIONS) with Swagger API declarations.

    ``resources`` maps a resource name ("channels") to its declaration (the parsed channels.json).
    """
    ops = OPERATIONS if operations is None else operations
    paths = _index(resources)
    problems: list[str] = []
    for name, op in ops.items():
        methods = paths.get(op.path)
        if methods is None:
            problems.append(f"{name}: path {op.path} not in the spec")
            continue
        spec_op = methods.get(op.method.upper())
        if spec_op is None:
            problems.append(f"{name}: {op.method} not allowed on {op.path} (spec has {sorted(methods)})")
            continue
        problems.extend(_check_one(name, op, spec_op))
    return problems


async def fetch_resources(ari_url: str, user: str, password: str) -> dict[str, dict[str, Any]]:
    """Every API declaration listed by the live resources.json."""
    headers = {"Authorization": basic_auth_header(user, password)}
    base = ari_url.rstrip("/")
    declarations: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{base}/api-docs/resources.json") as resp:
            resp.raise_for_status()
            listing = await resp.json(content_type=None)
        for api in listing["apis"]:
            # Asterisk 22 lists "/api-docs/channels.{format}" (not "/channels.{format}"): keep the last
            # segment either way -> channels.json
            resource = api["path"].rsplit("/", 1)[-1].split(".")[0]
            async with session.get(f"{base}/api-docs/{resource}.json") as resp:
                resp.raise_for_status()
                declarations[resource] = await resp.json(content_type=None)
    return declarations


async def test_operations_match_live_spec(asterisk: Any) -> None:
    resources = await fetch_resources(asterisk.ari_url, asterisk.ari_user, asterisk.ari_password)
    assert {"channels", "bridges", "applications", "recordings", "playbacks", "asterisk"} <= set(resources)
    assert check_operations(resources) == []


async def test_the_events_bridged_asks_for_are_asterisks_with_the_fields_it_reads(asterisk: Any) -> None:
    """A misspelt type in the app's event filter would silently never arrive."""
    resources = await fetch_resources(asterisk.ari_url, asterisk.ari_user, asterisk.ari_password)
    models = resources["events"]["models"]
    assert sorted(EVENT_TYPES - set(models)) == []
    for kind in ("RecordingStarted", "RecordingFinished", "RecordingFailed"):
        assert models[kind]["properties"]["recording"]["type"] == "LiveRecording"
    live = resources["recordings"]["models"]["LiveRecording"]["properties"]
    assert {"name", "state", "duration", "cause", "target_uri"} <= set(live)
    assert {"done", "failed"} <= set(live["state"]["allowableValues"]["values"])
