"""Typed ARI errors whose text is safe to log.

Request parameters can carry phone numbers (an originate endpoint like ``PJSIP/+15551234@carrier``, a
``callerId``), so no error built here ever contains one: only the operation name, the HTTP status and
Asterisk's own error text when it does not echo anything we sent.
"""

from __future__ import annotations

__all__ = ["AriBadRequest", "AriConflict", "AriError", "AriNotFound", "AriUnavailable"]


class AriError(Exception):
    """An ARI request failed. ``status`` is the HTTP status, 0 when no response arrived."""

    def __init__(self, operation: str, status: int, message: str) -> None:
        self.operation = operation
        self.status = status
        self.message = message
        # args holds only the sanitised text: str(), repr() and tracebacks all read it.
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(operation={self.operation!r}, status={self.status}, message={self.message!r})"


class AriNotFound(AriError):
    """404: the channel, bridge, recording... does not exist (often: it is already gone)."""


class AriConflict(AriError):
    """409: wrong state (channel not in Stasis, duplicate id on originate, recording name taken...)."""


class AriBadRequest(AriError):
    """400 or 422: Asterisk rejected the parameters (bad value, unknown endpoint in a bridge...)."""


class AriUnavailable(AriError):
    """Asterisk could not be reached: refused, timed out, dropped, or a 5xx with no body."""
