"""The static files of /ops/ and /c (bridged.ops.static_file): a name from the URL reaches a file only when
it is one of the served names, exactly. Generated names: path traversal (``..``, encoded and doubly
encoded slashes and backslashes), NUL and other control characters, lone surrogates, names of thousands
of characters; over the wire as raw bytes too, so that what aiohttp decodes before the handler sees it is
in the test."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from bridged import callpage, ops
from bridged.api.errors import error_middleware
from bridged.appkeys import CONFIG
from bridged.config import ConfigHolder

from .fakes import make_config
from .test_http_server import _exchange, _split, guarded

SERVED = {"/ops/static/": ops._STATIC_TYPES, "/c/static/": callpage._STATIC_TYPES}
ALL_NAMES = sorted({name for types in SERVED.values() for name in types})

# Pieces a traversal is made of, raw and percent-encoded (once and twice), and the package's own files.
_PIECES = [
    "..",
    ".",
    "/",
    "\\",
    "%2e%2e",
    "%2E%2E",
    "%2f",
    "%2F",
    "%5c",
    "%252f",
    "%00",
    "\x00",
    "%",
    "?",
    "#",
    ";",
    "__init__.py",
    "index.html",
    "call.html",
    "static",
    "ops",
    "callpage",
    *ALL_NAMES,
]
_TEXT = st.text(st.characters(codec="utf-8"), max_size=20) | st.text(max_size=5)
names = st.one_of(
    st.sampled_from(ALL_NAMES),
    st.lists(st.sampled_from(_PIECES) | _TEXT, min_size=1, max_size=8).map("".join),
    st.builds(
        lambda name, n: name * n, st.sampled_from([*ALL_NAMES, "a", "../", "%2F"]), st.integers(2, 3000)
    ),
)


HANDLERS = {
    "/ops/static/": (ops.static, ops._STATIC_TYPES),
    "/c/static/": (callpage.static, callpage._STATIC_TYPES),
}


def _served_text(name: str) -> str:
    """What the file a served name names holds (base.css is the /ops/ folder's, served by both)."""
    folder = ops.STATIC if name in ops._STATIC_TYPES else callpage.STATIC
    return (folder / name).read_text(encoding="utf-8")


async def _handled(prefix: str, name: str) -> web.StreamResponse | None:
    handler, _ = HANDLERS[prefix]
    request = make_mocked_request("GET", prefix + "x", match_info={"name": name})
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return None


@settings(max_examples=300, deadline=None)
@given(name=names | st.text(max_size=300))
def test_a_name_reaches_a_file_only_when_it_is_a_served_name(name: str) -> None:
    """The handlers themselves, any text as the name (what aiohttp's router would pass them)."""
    for prefix, (_, types) in HANDLERS.items():
        response = asyncio.run(_handled(prefix, name))
        if name in types:
            assert isinstance(response, web.Response) and response.status == 200
            assert response.text == _served_text(name) and response.content_type == types[name]
        else:
            assert response is None, (prefix, name)


async def _get(port: int, path: bytes) -> tuple[int, dict[str, str], bytes]:
    """One GET of ``path`` as raw bytes (no normalisation of ``..``, no re-encoding)."""
    request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    return _split(await _exchange(port, request))


def _raw(name: str) -> bytes:
    """The name as a URL path segment: what is not URL-safe ASCII percent-encoded, the rest ('/', '%',
    '..', backslash among it) left as the generator made it."""
    return quote(name.encode("utf-8", "surrogatepass"), safe="/%;.\\-_~!$&'()*+,=:@").encode("ascii")


@settings(max_examples=20, deadline=None)
@given(batch=st.lists(names, min_size=1, max_size=12))
def test_over_the_wire_a_name_is_a_served_file_or_a_json_error(batch: list[str]) -> None:
    """The daemon's server (bridged.api.server: aiohttp's parser, the router, the error middleware):
    a URL that resolves elsewhere ('..', '/') reaches another route or none, never a file of the
    package that is not served, never a 500; every error is bridged's JSON, with /c's headers under /c."""

    async def check() -> None:
        app = web.Application(middlewares=[error_middleware])
        app[CONFIG] = ConfigHolder(make_config())
        ops.setup(app)
        callpage.setup(app)
        async with guarded(app) as port:
            for prefix, (_, types) in HANDLERS.items():
                for name in batch:
                    path = prefix.encode() + _raw(name)
                    status, headers, body = await _get(port, path)
                    if name in types:
                        assert (status, body.decode()) == (200, _served_text(name)), (prefix, name)
                        continue
                    assert status in (200, 308, 400, 404, 405), (path[:80], status)
                    if status == 200:  # '..' resolved to a page or another served file
                        text = body.decode()
                        page = text.startswith("<!doctype html>") and "{{" not in text  # rendered
                        assert page or text in map(_served_text, ALL_NAMES), (path[:80], text[:80])
                        continue
                    if status == 308:
                        assert headers["location"] == "/ops/"  # /ops/static/.. is /ops
                        continue
                    assert set(json.loads(body)) == {"error"}, (path[:80], status, body[:200])
                    if status != 400 and path.startswith(b"/c/"):
                        assert headers["cache-control"] == "no-store", (path[:80], status)

    asyncio.run(check())
