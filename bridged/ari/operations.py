"""The ARI operations bridged uses: one table for the client and for the conformance test.

Names are Asterisk's own parameter names (camelCase, ``reason_code``...). The e2e test
``tests/e2e/test_ari_spec.py`` compares every entry with the Swagger description served by the live
Asterisk, so a wrong path, method or parameter name fails there rather than as a 400 in a call.
Checked against Asterisk 22.10 ``rest-api/*.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["OPERATIONS", "Operation"]

# A path template's parameters: "/channels/{channelId}/answer".
PATH_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Operation:
    """One ARI call: HTTP method, path template and the non-path parameters it accepts."""

    method: str
    path: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    # Parameters that travel in the JSON body (Swagger paramType "body"), e.g. originate's variables.
    body_params: tuple[str, ...] = ()
    # Asterisk hands the whole JSON body over as the one body parameter: True sends that parameter's
    # value as the body itself (eventFilter's {"allowed": [...]}); False sends {name: value} (originate,
    # whose handler reads body["variables"]).
    body_whole: bool = False

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(PATH_PARAM.findall(self.path))

    @property
    def all_params(self) -> tuple[str, ...]:
        return self.required + self.optional


def _op(
    method: str,
    path: str,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    body_params: tuple[str, ...] = (),
    body_whole: bool = False,
) -> Operation:
    return Operation(method, path, required, optional, body_params, body_whole)


OPERATIONS: dict[str, Operation] = {
    # asterisk.json
    "get_info": _op("GET", "/asterisk/info", optional=("only",)),
    # A global variable (not a function: Asterisk 22 answers "" for VERSION() here).
    "get_global": _op("GET", "/asterisk/variable", required=("variable",)),
    # channels.json
    "list_channels": _op("GET", "/channels"),
    # A channel made in Stasis without dialling, then dialled: in the application from its creation, so
    # its answer needs no live websocket (an originated channel enters Stasis only once answered, and that
    # fails while its daemon is dead: docs/asterisk.md).
    "create_channel": _op(
        "POST",
        "/channels/create",
        required=("endpoint", "app"),
        optional=("appArgs", "channelId", "otherChannelId", "originator", "formats", "variables"),
        body_params=("variables",),
    ),
    # A customer's leg rung from the dialplan (context bridged-customer): it enters the application with
    # Stasis() once answered, retrying while no daemon serves it (docs/asterisk.md).
    "originate": _op(
        "POST",
        "/channels",
        required=("endpoint",),
        optional=(
            "extension",
            "context",
            "priority",
            "callerId",
            "timeout",
            "channelId",
            "originator",
            "formats",
            "variables",
        ),
        body_params=("variables",),
    ),
    "dial": _op("POST", "/channels/{channelId}/dial", optional=("caller", "timeout")),
    "get_channel": _op("GET", "/channels/{channelId}"),
    "hangup": _op("DELETE", "/channels/{channelId}", optional=("reason_code", "reason")),
    "answer": _op("POST", "/channels/{channelId}/answer"),
    "ring": _op("POST", "/channels/{channelId}/ring"),
    "ring_stop": _op("DELETE", "/channels/{channelId}/ring"),
    "play": _op(
        "POST",
        "/channels/{channelId}/play",
        required=("media",),
        optional=("lang", "offsetms", "skipms", "playbackId"),
    ),
    "get_variable": _op("GET", "/channels/{channelId}/variable", required=("variable",)),
    "set_variable": _op(
        "POST", "/channels/{channelId}/variable", required=("variable",), optional=("value",)
    ),
    "continue_in_dialplan": _op(
        "POST",
        "/channels/{channelId}/continue",
        optional=("context", "extension", "priority", "label"),
    ),
    # playbacks.json
    "stop_playback": _op("DELETE", "/playbacks/{playbackId}"),
    # bridges.json
    "list_bridges": _op("GET", "/bridges"),
    "create_bridge": _op("POST", "/bridges", optional=("type", "bridgeId", "name")),
    "get_bridge": _op("GET", "/bridges/{bridgeId}"),
    "destroy_bridge": _op("DELETE", "/bridges/{bridgeId}"),
    "add_channel": _op(
        "POST",
        "/bridges/{bridgeId}/addChannel",
        required=("channel",),
        optional=("role", "absorbDTMF", "mute", "inhibitConnectedLineUpdates"),
    ),
    # Asterisk models removal as POST .../removeChannel?channel=..., not a DELETE.
    "remove_channel": _op("POST", "/bridges/{bridgeId}/removeChannel", required=("channel",)),
    "record_bridge": _op(
        "POST",
        "/bridges/{bridgeId}/record",
        # Swagger marks format required and Asterisk 22 segfaults without it: never make it optional.
        required=("name", "format"),
        optional=("maxDurationSeconds", "maxSilenceSeconds", "ifExists", "beep", "terminateOn"),
    ),
    # applications.json
    # endpoints.json
    "transfer_progress": _op("POST", "/channels/{channelId}/transfer_progress", required=("states",)),
    "get_endpoint": _op("GET", "/endpoints/{tech}/{resource}"),
    "get_application": _op("GET", "/applications/{applicationName}"),
    "subscribe": _op("POST", "/applications/{applicationName}/subscription", required=("eventSource",)),
    "filter_events": _op(
        "PUT",
        "/applications/{applicationName}/eventFilter",
        optional=("filter",),
        body_params=("filter",),
        body_whole=True,
    ),
    # recordings.json
    "list_stored_recordings": _op("GET", "/recordings/stored"),
    "get_stored_recording": _op("GET", "/recordings/stored/{recordingName}"),
    "stored_recording_file": _op("GET", "/recordings/stored/{recordingName}/file"),
    "delete_stored_recording": _op("DELETE", "/recordings/stored/{recordingName}"),
    "get_live_recording": _op("GET", "/recordings/live/{recordingName}"),
    "stop_live_recording": _op("POST", "/recordings/live/{recordingName}/stop"),
}
