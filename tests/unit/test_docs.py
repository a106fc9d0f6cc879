"""The admin's documents against the code: every config key the loader reads is in the example config
(and every key the example names is one it reads), every route, error id and metric the daemon has is in
the README's tables (and nothing there that the daemon lacks). A key, route, error or metric added without
its line in the docs fails here, as does a line left behind by a removed one."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridged import callpage, metrics, ops
from bridged.api import errors, openapi, routes, server
from bridged.api.auth import TokenRegistry
from bridged.app import make_app
from bridged.config import ApiToken
from bridged.configfile import parse_config
from bridged.configsection import Section
from bridged.outcomes import OUTCOME_ERRORS, REFUSALS, ROW_REFUSALS, Outcome
from tests.unit.fakes import EXAMPLE_CONFIG, ROOT, example_data, make_config
from tests.unit.test_api_calls import call_app

README = (ROOT / "README.md").read_text(encoding="utf-8")
# What an admin reads: the README (and its Russian short guide), the Asterisk notes, the example config.
DOCS = ("README.md", "README.ru.md", "docs/asterisk.md", "config/bridged.example.yaml")


# -- the example config -----------------------------------------------------------------------------


def _keys_read(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every dotted key the loader asks for while loading the example (list indexes dropped, the manager
    ids under limits.managers as ``*``)."""
    read: set[str] = set()
    real_get = Section._get

    def recording_get(self: Section, name: str, required: bool) -> Any:
        read.add(self.key(name))
        return real_get(self, name, required)

    monkeypatch.setattr(Section, "_get", recording_get)
    data = example_data()
    data["limits"]["managers"] = {"anna": {"calls": 120}}  # commented out in the example
    parse_config(data)
    return {
        re.sub(r"^limits\.managers\.[^.]+\.", "limits.managers.*.", re.sub(r"\[\d+\]", "", k)) for k in read
    }


def _example_sections() -> dict[str, str]:
    """The example's text by top-level key: from the key's line to the next top-level key's comments."""
    sections: dict[str, str] = {}
    name = None
    for line in EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines():
        top = re.match(r"([a-z_]+):", line)
        if top:
            name = top[1]
            sections[name] = ""
        if name is not None and line.startswith(" "):
            sections[name] += line + "\n"
    return sections


def _named(section: str, leaf: str) -> bool:
    """``leaf:`` as a key of the section, written or commented out (``# leaf: value``, ``- leaf:``)."""
    return re.search(rf"^\s*(?:#\s*)?(?:-\s+)?{leaf}:", section, re.M) is not None


def test_every_key_the_loader_reads_is_in_the_example(monkeypatch: pytest.MonkeyPatch) -> None:
    sections = _example_sections()
    missing = []
    for key in sorted(_keys_read(monkeypatch)):
        top, _, rest = key.partition(".")
        if not rest:
            assert top in sections, f"the example has no top-level {top}:"
            continue
        if not _named(sections.get(top, ""), rest.rpartition(".")[2]):
            missing.append(key)
    assert not missing, f"keys the loader reads that config/bridged.example.yaml does not name: {missing}"


def test_every_key_the_example_comments_out_is_one_the_loader_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Written keys are checked by loading the example (an unknown one is an error); commented-out ones
    # (``# template: ...``, the prompts, ``# name:``) are not, so an admin uncommenting one must not meet
    # "is not a known key".
    leaves: dict[str, set[str]] = {}
    for key in _keys_read(monkeypatch):
        top, _, rest = key.partition(".")
        leaves.setdefault(top, set()).add(rest.rpartition(".")[2])
    unknown = []
    for top, text in _example_sections().items():
        # One space after '#': a key commented out; prose and nested examples are indented further.
        for leaf in re.findall(r"^\s*# ?([a-z_]+):(?: |$)", text, re.M):
            if leaf not in leaves.get(top, set()):
                unknown.append(f"{top}: # {leaf}:")
    assert not unknown, f"commented-out keys the loader would refuse: {unknown}"


# -- routes -----------------------------------------------------------------------------------------


def _readme_table(heading: str) -> list[list[str]]:
    """The rows of the table under ``### heading``, as cells (header and rule left out)."""
    section = README.split(f"\n### {heading}\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


def _documented_routes() -> set[tuple[str, str]]:
    routes = set()
    for cells in _readme_table("Routes"):
        for method, path in re.findall(r"`([A-Z]+) (/[^`]*)`", cells[0]):
            routes.add((method, path))
    return routes


def _served_routes() -> set[tuple[str, str]]:
    served = set()
    for route in make_app(make_config()).router.routes():
        path = re.sub(r"\{[a-z_]*id\}", "{id}", route.resource.canonical if route.resource else "")
        if route.method == "HEAD" or path.endswith("/static/{name}") or path == "/ops":
            continue  # HEAD mirrors GET; static files and the /ops redirect are named in the text
        served.add((route.method, path))
    return served


def test_every_route_is_in_the_readme_and_every_documented_route_is_served() -> None:
    assert _documented_routes() == _served_routes()


# -- error ids --------------------------------------------------------------------------------------


def _error_ids() -> set[str]:
    """Every error id an answer of bridged can carry."""
    ids = {
        value.error_id
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.ApiError)
    }
    ids |= {meaning.http.error_id for meaning in REFUSALS.values()}
    ids |= {http.error_id for http in OUTCOME_ERRORS.values()}
    for value in vars(server).values():  # the answers written straight to a connection
        if isinstance(value, bytes) and value.startswith(b"HTTP/1.1 "):
            ids.add(json.loads(value.split(b"\r\n\r\n", 1)[1])["error"]["id"])
    return ids


def _ids_in(cell: str) -> Iterator[str]:
    return iter(re.findall(r"`([a-z_]+)`", cell))


def test_the_readme_lists_every_error_id_and_no_other() -> None:
    listed = {error_id for cells in _readme_table("Error ids") for error_id in _ids_in(cells[0])}
    assert listed == _error_ids()


def test_the_error_ids_of_each_route_exist() -> None:
    named = {error_id for cells in _readme_table("Routes") for error_id in _ids_in(cells[2])}
    assert named - _error_ids() == set()


def test_the_readme_lists_every_outcome_a_call_row_can_hold_and_no_other() -> None:
    listed = [cells[0].strip("`") for cells in _readme_table("Outcomes")]
    assert sorted(listed) == sorted([*Outcome, *ROW_REFUSALS])


# -- metrics ----------------------------------------------------------------------------------------


def _rendered_metrics() -> set[str]:
    text = metrics.render(active_calls=0, bridged_calls=0, ari_connected=False, draining=False)
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_the_readme_lists_every_metric_and_no_other() -> None:
    listed = {re.match(r"`([a-z_]+)", cells[0])[1] for cells in _readme_table("Metrics")}  # type: ignore[index]
    assert listed == _rendered_metrics()


@pytest.mark.parametrize("doc", DOCS)
def test_every_metric_the_docs_name_exists(doc: str) -> None:
    named = set(re.findall(r"`(bridged_[a-z_]+)", (ROOT / doc).read_text(encoding="utf-8")))
    assert named - _rendered_metrics() == set()


# -- the OpenAPI document against the handlers ------------------------------------------------------


async def test_every_operation_that_refuses_an_unknown_query_parameter_documents_its_422() -> None:
    # Each handler parses its query first (params.Query): a parameter it does not know is 422
    # invalid_parameter, which the operation's responses must list for a client generated from them.
    tokens = {"admin": "admin-token-0123456789", "shop": "shop-token-0123456789"}
    config = make_config()
    registered = tuple(
        ApiToken(name=role, role=role, sha256=hashlib.sha256(token.encode()).hexdigest())
        for role, token in tokens.items()
    )
    config = replace(config, api=replace(config.api, tokens=registered))
    built = call_app(config, {}, middleware=False)  # routes.setup adds it
    routes.setup(built.app)
    built.app[routes.TOKENS] = TokenRegistry(lambda: registered)
    client = TestClient(TestServer(built.app))
    await client.start_server()
    undocumented, refused_ops = [], []
    try:
        for path, operations in openapi.document()["paths"].items():
            for method, operation in operations.items():
                if "requestBody" in operation:
                    continue  # a body of its own to get right first; its 422 is documented for the body
                role = "shop" if method == "delete" and path.startswith("/v1/calls/") else "admin"
                url = path.replace("{call_id}", "c1").replace("{canary_id}", "k1") + "?bogus=1"
                headers = {"Authorization": f"Bearer {tokens[role]}"}
                resp = await client.request(method.upper(), url, headers=headers)
                refused = resp.status == 422 and (method == "head" or (await resp.json())["error"]["id"])
                if refused in (True, "invalid_parameter"):
                    refused_ops.append(f"{method.upper()} {path}")
                    if "422" not in operation["responses"]:
                        undocumented.append(f"{method.upper()} {path}")
    finally:
        await client.close()
        await built.engine.shutdown()
    assert "GET /v1/audit" in refused_ops  # the requests did reach the handlers' parsing
    assert not undocumented, (
        f"operations answering 422 invalid_parameter without documenting it: {undocumented}"
    )


def _described_operations() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> which document describes it."""
    described: dict[tuple[str, str], str] = {}
    for which, document in (("api", openapi.document()), ("web", openapi.web_document())):
        for path, operations in document["paths"].items():
            for method in operations:
                assert (method.upper(), path) not in described, f"{method} {path} is in both documents"
                described[(method.upper(), path)] = which
    return described


def test_every_route_is_described_in_one_of_the_openapi_documents_and_every_operation_is_served() -> None:
    served = {
        (route.method, route.resource.canonical if route.resource else "?")
        for route in make_app(make_config()).router.routes()
    }
    described = _described_operations()
    # aiohttp's HEAD beside a GET mirrors it; one described (a recording's) is served.
    assert {key for key in served if key[0] != "HEAD"} == {key for key in described if key[0] != "HEAD"}
    assert {key for key in described if key[0] == "HEAD"} <= served
    # The API's routes in the API's document, the others in the second one.
    assert {key for key, which in described.items() if which == "api"} == {
        key for key in described if key[1].startswith("/v1/") and key[1] != "/v1/openapi-web.json"
    }


def test_the_web_documents_static_names_are_the_served_files() -> None:
    paths = openapi.web_document()["paths"]
    for prefix, types in (("/ops", ops._STATIC_TYPES), ("/c", callpage._STATIC_TYPES)):
        operation = paths[f"{prefix}/static/{{name}}"]["get"]
        [name] = operation["parameters"]
        assert set(name["schema"]["enum"]) == set(types)
        assert set(operation["responses"]["200"]["content"]) == set(types.values())


def _status_of(error: type[errors.ApiError] | errors.HttpError) -> int:
    return error.status


def test_the_link_endpoints_document_every_status_they_answer_with() -> None:
    """POST /c/place answers with the link errors, the body parser's and every refusal of POST /v1/calls
    (and the one outcome that fails it): each status is a documented response, with the Error schema."""
    paths = openapi.web_document()["paths"]
    place = paths["/c/place"]["post"]["responses"]
    link_errors = (
        errors.LinksDisabled,
        errors.CrossSite,
        errors.LinkMalformed,
        errors.LinkInvalid,
        errors.LinkExpired,
        errors.LinkTooLong,
        errors.LinkInUse,
        errors.LinkUnknown,
        errors.InvalidJson,
        errors.InvalidRequest,
        errors.BodyTooLarge,
        errors.UnsupportedMediaType,
        errors.RequestTimeout,
        errors.DatabaseDown,
    )
    statuses = {_status_of(e) for e in link_errors}
    statuses |= {_status_of(meaning.http) for meaning in REFUSALS.values()}
    statuses |= {_status_of(http) for http in OUTCOME_ERRORS.values()}
    assert statuses - {int(s) for s in place} == set()
    for status in statuses:
        assert place[str(status)]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    for method in ("get", "delete"):
        follow = paths["/c/call"][method]
        assert follow["security"] == [{"capability": []}]
        for error in (errors.CrossSite, errors.CapabilityRequired, errors.LinkUnknown, errors.DatabaseDown):
            assert str(error.status) in follow["responses"], (method, error.error_id)
    # The link's page is HTML whatever it says; every answer under /c carries the no-store headers.
    for status, response in paths["/c"]["get"]["responses"].items():
        assert set(response["content"]) == {"text/html"}, status
    for path, operations in paths.items():
        if path.startswith("/c"):
            for operation in operations.values():
                for status, response in operation["responses"].items():
                    headers = response.get("headers", {})
                    assert headers["Cache-Control"]["schema"]["const"] == "no-store", (path, status)
                    assert headers["Referrer-Policy"]["schema"]["const"] == "no-referrer", (path, status)


# -- the dialplan's names ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS)
def test_every_context_and_bridged_variable_the_docs_name_exists(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    shipped = (ROOT / "dialplan" / "bridged.conf").read_text(encoding="utf-8")
    sample = (ROOT / "config" / "asterisk" / "extensions.conf").read_text(encoding="utf-8")
    contexts = set(re.findall(r"^\[([a-z-]+)\]", shipped + "\n" + sample, re.M))
    named = set(re.findall(r"\[((?:bridged|from)-[a-z-]+)\]", text))
    assert named - contexts == set(), "contexts that dialplan/bridged.conf and the sample do not have"
    # BRIDGED_AGI_2, BRIDGED_APP_3, ...: the dialplan builds those names from BRIDGED_AGI_ and a number.
    variables = {re.sub(r"_\d+$", "_", v) for v in re.findall(r"\bBRIDGED_[A-Z0-9_]+", text)}
    # The others are the rig's and the test runner's environment variables.
    code = shipped + "".join(
        p.read_text(encoding="utf-8")
        for p in (*ROOT.glob("scripts/*"), *ROOT.glob("rig/*.py"), *ROOT.glob("tests/**/conftest.py"))
        if p.is_file()
    )
    assert {v for v in variables if v not in code} == set()
