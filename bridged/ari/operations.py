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


OPERATIONS: dict[str, Operation] = {
    # asterisk.json
    "get_info": Operation("GET", "/asterisk/info", optional=("only",)),
    # A global variable (not a function: Asterisk 22 answers "" for VERSION() here).
    "get_global": Operation("GET", "/asterisk/variable", required=("variable",)),
    # channels.json
    "list_channels": Operation("GET", "/channels"),
    # A channel made in Stasis without dialling, then dialled: in the application from its creation, so
    # its answer needs no live websocket (an originated channel enters Stasis only once answered, and that
    # fails while its daemon is dead: docs/asterisk.md).
    "create_channel": Operation(
        "POST",
        "/channels/create",
        required=("endpoint", "app"),
        optional=("appArgs", "channelId", "otherChannelId", "originator", "formats", "variables"),
        body_params=("variables",),
    ),
    # A customer's leg rung from the dialplan (context bridged-customer): it enters the application with
    # Stasis() once answered, retrying while no daemon serves it (docs/asterisk.md).
    "originate": Operation(
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
    "dial": Operation("POST", "/channels/{channelId}/dial", optional=("caller", "timeout")),
    "get_channel": Operation("GET", "/channels/{channelId}"),
    "hangup": Operation("DELETE", "/channels/{channelId}", optional=("reason_code", "reason")),
    "answer": Operation("POST", "/channels/{channelId}/answer"),
    "ring": Operation("POST", "/channels/{channelId}/ring"),
    "ring_stop": Operation("DELETE", "/channels/{channelId}/ring"),
    "play": Operation(
        "POST",
        "/channels/{channelId}/play",
        required=("media",),
        optional=("lang", "offsetms", "skipms", "playbackId"),
    ),
    "get_variable": Operation("GET", "/channels/{channelId}/variable", required=("variable",)),
    "set_variable": Operation(
        "POST", "/channels/{channelId}/variable", required=("variable",), optional=("value",)
    ),
    "continue_in_dialplan": Operation(
        "POST",
        "/channels/{channelId}/continue",
        optional=("context", "extension", "priority", "label"),
    ),
    "transfer_progress": Operation("POST", "/channels/{channelId}/transfer_progress", required=("states",)),
    # playbacks.json
    "stop_playback": Operation("DELETE", "/playbacks/{playbackId}"),
    # bridges.json
    "list_bridges": Operation("GET", "/bridges"),
    "create_bridge": Operation("POST", "/bridges", optional=("type", "bridgeId", "name")),
    "get_bridge": Operation("GET", "/bridges/{bridgeId}"),
    "destroy_bridge": Operation("DELETE", "/bridges/{bridgeId}"),
    "add_channel": Operation(
        "POST",
        "/bridges/{bridgeId}/addChannel",
        required=("channel",),
        optional=("role", "absorbDTMF", "mute", "inhibitConnectedLineUpdates"),
    ),
    # Asterisk models removal as POST .../removeChannel?channel=..., not a DELETE.
    "remove_channel": Operation("POST", "/bridges/{bridgeId}/removeChannel", required=("channel",)),
    "record_bridge": Operation(
        "POST",
        "/bridges/{bridgeId}/record",
        # Swagger marks format required and Asterisk 22 segfaults without it: never make it optional.
        required=("name", "format"),
        optional=("maxDurationSeconds", "maxSilenceSeconds", "ifExists", "beep", "terminateOn"),
    ),
    # endpoints.json
    "get_endpoint": Operation("GET", "/endpoints/{tech}/{resource}"),
    # applications.json
    "get_application": Operation("GET", "/applications/{applicationName}"),
    "subscribe": Operation("POST", "/applications/{applicationName}/subscription", required=("eventSource",)),
    "filter_events": Operation(
        "PUT",
        "/applications/{applicationName}/eventFilter",
        optional=("filter",),
        body_params=("filter",),
        body_whole=True,
    ),
    # recordings.json
    "list_stored_recordings": Operation("GET", "/recordings/stored"),
    "get_stored_recording": Operation("GET", "/recordings/stored/{recordingName}"),
    "stored_recording_file": Operation("GET", "/recordings/stored/{recordingName}/file"),
    "delete_stored_recording": Operation("DELETE", "/recordings/stored/{recordingName}"),
    "get_live_recording": Operation("GET", "/recordings/live/{recordingName}"),
    "stop_live_recording": Operation("POST", "/recordings/live/{recordingName}/stop"),
}
