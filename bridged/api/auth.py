"""Bearer tokens with roles. Tokens are configured as SHA-256 hashes and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from ..config import ApiToken
from .errors import Forbidden, Unauthorized

# What each role may do. admin includes everything ops may do; shop is the shop admin's backend.
# calls.any_client: the role's calls.* permissions reach every call, not only those its token placed
# (a shop token reads and ends its own calls only; phone calls belong to no token).
PERMISSIONS: dict[str, frozenset[str]] = {
    "shop": frozenset({"calls.create", "calls.read", "calls.end"}),
    "ops": frozenset({"calls.list", "calls.read", "calls.any_client", "recordings.listen"}),
    "admin": frozenset(
        {
            "calls.list",
            "calls.read",
            "calls.any_client",
            "recordings.listen",
            "audit.read",
            "retention.read",
            "retention.write",
        }
    ),
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


class TokenRegistry:
    """The configured tokens, read at each request (``tokens``: the config in force's, after reloads)."""

    def __init__(self, tokens: Callable[[], tuple[ApiToken, ...]]) -> None:
        self._tokens = tokens

    def authenticate(self, authorization: str | None) -> Principal | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = hash_token(authorization[len("Bearer ") :].strip())
        found: ApiToken | None = None
        # Compare against every token so the time taken does not depend on which one matched.
        for token in self._tokens():
            if hmac.compare_digest(digest, token.sha256):
                found = token
        return None if found is None else Principal(found.name, found.role)


PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
TOKENS = web.AppKey("tokens", TokenRegistry)


def principal(request: web.Request) -> Principal:
    found = request.get(PRINCIPAL)
    if found is None:
        raise Unauthorized()
    return found


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def requires(permission: str) -> Callable[[Handler], Handler]:
    """Decorator: the request must carry a valid token whose role has ``permission``."""

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            who = request.app[TOKENS].authenticate(request.headers.get("Authorization"))
            if who is None:
                raise Unauthorized()
            request[PRINCIPAL] = who
            if not who.may(permission):
                on_denied = request.app.get(ON_DENIED)
                if on_denied is not None:
                    await on_denied(request, who, permission)
                raise Forbidden()
            return await handler(request)

        checked.__name__ = handler.__name__
        checked.__doc__ = handler.__doc__
        setattr(checked, "permission", permission)  # noqa: B010 - read by the OpenAPI builder
        return checked

    return wrap


DeniedHook = Callable[[web.Request, Principal, str], Awaitable[None]]
# Optional hook (set by the app) to audit denied requests.
ON_DENIED: web.AppKey[DeniedHook] = web.AppKey("on_denied")
