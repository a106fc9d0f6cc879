"""Who is asking, and what they may do: bearer tokens with roles, and the audit row of every denial.

Tokens are configured as SHA-256 hashes and compared in constant time. Every 403 leaves an ``api.denied``
audit row; so does a 401 on the endpoints that ask for it (:func:`audited`); the rows one client address
writes are capped (bridged.api.limits), never dropped silently.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from aiohttp import web

from .. import metrics
from ..appkeys import CONFIG, STORE
from ..config import ApiToken
from .errors import Forbidden, Unauthorized
from .limits import DeniedAuditLimiter

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"

# What each role may do. admin includes everything ops may do; shop is the shop admin's backend.
# calls.any_client: the role's calls.* permissions reach every call, not only those its token placed
# (a shop token reads and ends its own calls only; phone calls belong to no token).
# manager: a token bound to one manager (api.tokens[].manager), for a script in a page that manager
# uses: it places calls only as that manager and reads and ends only that manager's calls (see
# :meth:`Principal.owns`); it may not list calls, listen to recordings, or read the audit trail.
# calls.callback: call back the customer of a missed inbound call (POST /v1/calls with callback_of, from
# /ops/): an ordinary masked call whose order and manager bridged takes from the missed call's row, so
# the role cannot pick who is rung; calls.create (any order, any manager) stays with the shop's backend.
PERMISSIONS: dict[str, frozenset[str]] = {
    "shop": frozenset({"calls.create", "calls.read", "calls.end"}),
    "manager": frozenset({"calls.create", "calls.read", "calls.end"}),
    "ops": frozenset(
        {
            "calls.list",
            "calls.read",
            "calls.any_client",
            "calls.callback",
            "recordings.listen",
            "probing.read",
        }
    ),
    "admin": frozenset(
        {
            "calls.list",
            "calls.read",
            "calls.any_client",
            "calls.callback",
            "recordings.listen",
            "audit.read",
            "retention.read",
            "retention.write",
            # canary orders (bridged.canaries) and managers' refused attempts (bridged.limits)
            "canaries.manage",
            "probing.read",
        }
    ),
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    # The manager a "manager" token is bound to; None for every other role.
    manager_id: str | None = None

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())

    def owns(self, *, manager_id: str | None, created_by: str | None) -> bool:
        """Whether a call (its manager and the client that placed it) is this token's to read and end:
        any call with ``calls.any_client``; the bound manager's calls for a manager token (placed by
        any client, by a link or from the desk phone: they are that manager's own calls); else the
        calls the token placed itself (a phone call belongs to no token)."""
        if self.may("calls.any_client"):
            return True
        if self.manager_id is not None:
            return manager_id == self.manager_id
        return created_by is not None and created_by == self.name


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
        if found is None:
            return None
        # A manager token without its binding would be no one's: it is refused like an unknown token
        # (the config check makes this unreachable, this keeps it so if that check ever changes).
        if found.role == "manager" and not found.manager:
            return None
        return Principal(found.name, found.role, found.manager if found.role == "manager" else None)


PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
TOKENS = web.AppKey("tokens", TokenRegistry)


def principal(request: web.Request) -> Principal:
    found = request.get(PRINCIPAL)
    if found is None:
        raise Unauthorized()
    return found


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def requires(permission: str, *alternatives: str) -> Callable[[Handler], Handler]:
    """Decorator: the request must carry a valid token whose role has ``permission`` or one of the
    ``alternatives`` (401, 403: audited). A handler that takes an alternative checks what it allows
    with :func:`forbid_unless`."""

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            who = request.app[TOKENS].authenticate(request.headers.get("Authorization"))
            if who is None:
                raise Unauthorized()
            request[PRINCIPAL] = who
            if not any(who.may(p) for p in (permission, *alternatives)):
                await forbid_unless(request, permission)
            return await handler(request)

        return _named(checked, handler, permission)

    return wrap


async def forbid_unless(request: web.Request, *permissions: str) -> None:
    """403 (audited, naming the first permission) unless the request's token has one of ``permissions``."""
    who = principal(request)
    if not any(who.may(p) for p in permissions):
        await audit_denied(request, who.name, "forbidden", {"permission": permissions[0], "role": who.role})
        raise Forbidden()


def audited(permission: str) -> Callable[[Handler], Handler]:
    """``requires(permission)``, plus an audit row for a missing or unknown token (401)."""

    def wrap(handler: Handler) -> Handler:
        checked = requires(permission)(handler)

        async def with_audit(request: web.Request) -> web.StreamResponse:
            try:
                return await checked(request)
            except Unauthorized:
                await audit_unauthenticated(request, permission)
                raise

        return _named(with_audit, handler, permission)

    return wrap


def _named(wrapper: Handler, handler: Handler, permission: str) -> Handler:
    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    setattr(wrapper, "permission", permission)  # noqa: B010 - read by the OpenAPI builder
    return wrapper


# -- auditing denials -------------------------------------------------------------------------------

# Caps the audit rows refused requests write per client (bridged.api.limits).
DENIED_LIMITER: web.AppKey[DeniedAuditLimiter] = web.AppKey("denied_limiter", DeniedAuditLimiter)


async def audit_unauthenticated(request: web.Request, permission: str | None) -> None:
    header = request.headers.get("Authorization")
    details: dict[str, Any] = {"token": "invalid" if header else "none"}
    if permission is not None:
        details["permission"] = permission
    await audit_denied(request, ANONYMOUS, "unauthenticated", details)


async def audit_denied(
    request: web.Request,
    actor: str,
    outcome: str,
    details: dict[str, Any],
    *,
    action: str = "api.denied",
    reason: str | None = None,
    order_id: str | None = None,
    call_id: str | None = None,
) -> None:
    """The audit row of a refused request, within the per-client quota (bridged.api.limits); its loss
    never turns the refusal into a 500."""
    client = client_address(request)
    limiter = request.app.get(DENIED_LIMITER)
    if limiter is not None:
        write, folded = limiter.admit(client or "?")
        if not write:
            metrics.API_DENIALS_FOLDED.inc()
            return
        if folded:
            details = {**details, "suppressed_before": folded}
    details = {"method": request.method, "path": request.rel_url.path, "client": client, **details}
    try:
        await request.app[STORE].audit.add(
            actor=actor,
            action=action,
            outcome=outcome,
            reason=reason,
            details=details,
            order_id=order_id,
            call_id=call_id,
        )
    except Exception as exc:
        # The refusal stands either way; losing its audit row must not turn it into a 500.
        log.error("denied request not audited (%s %s): %s", request.method, request.rel_url.path, exc)


def client_address(request: web.Request) -> str | None:
    """The client's address: the peer, or, when the peer is a trusted reverse proxy
    (``http.trusted_proxies``), the last address in X-Forwarded-For that is not one of them."""
    peer = request.remote
    trusted = request.app[CONFIG].current.http.trusted_proxies
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [
        h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()
    ]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop if _is_address(hop) else peer
    return hops[0] if hops else peer


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _is_trusted(address: str | None, trusted: tuple[Any, ...]) -> bool:
    try:
        ip = ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in trusted)
