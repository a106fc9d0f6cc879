"""Asterisk REST Interface: typed REST client, event websocket, operation table."""

from __future__ import annotations

from .client import AriAccess, AriClient, background_requests, basic_auth_header, is_background
from .errors import AriBadRequest, AriConflict, AriError, AriNotFound, AriUnavailable
from .events import AriEventStream, event_bridge_id, event_channel_id, event_type
from .operations import OPERATIONS, Operation

__all__ = [
    "OPERATIONS",
    "AriAccess",
    "AriBadRequest",
    "AriClient",
    "AriConflict",
    "AriError",
    "AriEventStream",
    "AriNotFound",
    "AriUnavailable",
    "Operation",
    "background_requests",
    "basic_auth_header",
    "event_bridge_id",
    "event_channel_id",
    "event_type",
    "is_background",
]
