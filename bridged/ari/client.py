"""A thin typed ARI REST client on aiohttp.

Every call goes through :meth:`AriClient._call`, driven by :data:`bridged.ari.operations.OPERATIONS`, so the
table checked against the live Swagger description is exactly what is sent. Nothing here logs or raises
with a query parameter or body in it: those carry dial strings and caller ids, i.e. phone numbers.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from . import jsontext
from .context import ContextSetting
from .deadlines import Deadlines
from .errors import AriBadRequest, AriConflict, AriError, AriNotFound, AriUnavailable
from .operations import Operation
from .targets import PLANS, encode_value
from .transport import HttpTransport

__all__ = ["AriAccess", "AriClient", "basic_auth_header"]

log = logging.getLogger(__name__)

# Asterisk's error texts are generic ("Channel not found", "Allocation failed"); a long run of digits in
# one means something was echoed back and might be a phone number, so the text is dropped.
_DIGIT_RUN = re.compile(r"\d{4,}")
_MAX_ERROR_TEXT = 200


def basic_auth_header(username: str, password: str) -> str:
    """The ``Authorization`` header value; aiohttp 3.14 deprecates ``BasicAuth``/``auth=``."""
    encode = getattr(aiohttp, "encode_basic_auth", None)
    if encode is not None:
        return str(encode(username, password))
    return aiohttp.BasicAuth(username, password).encode()


@dataclass(frozen=True)
class AriAccess:
    """Where Asterisk's ARI is (``http://host:8088/ari``) and the user bridged logs in as: what the REST
    client and the event websocket both need."""

    base_url: str
    username: str
    password: str = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": basic_auth_header(self.username, self.password)}


def _secret_values(path_params: Mapping[str, Any], params: Mapping[str, Any], body: Any) -> list[str]:
    """Every string we sent, to make sure none of them comes back in an error text."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(k)
                walk(v)
            return
        if isinstance(value, list | tuple):
            for v in value:
                walk(v)
        text = encode_value(value)
        # Very short values ("ulaw", "0") would match ordinary words; they cannot hold a number anyway.
        if len(text) >= 3:
            found.append(text)

    walk(path_params)
    walk(params)
    walk(body)
    return found


def _safe_error_text(payload: Any, secrets: list[str]) -> str | None:
    if not isinstance(payload, dict):
        return None
    # ast_ari_response_error() answers {"message": ...}; allocation failures answer {"error": ...}.
    text = payload.get("message") or payload.get("error")
    if not isinstance(text, str) or not text:
        return None
    if _DIGIT_RUN.search(text):
        return None
    lowered = text.lower()
    if any(secret.lower() in lowered for secret in secrets):
        return None
    return text[:_MAX_ERROR_TEXT]


def _json_or_none(raw: bytes) -> Any:
    try:
        return jsontext.loads(raw)
    except ValueError:
        return None


def _error_for(operation: str, status: int, text: str | None) -> AriError:
    message = f"ARI {operation} failed: HTTP {status}"
    if text:
        message = f"{message}: {text}"
    if status == 404:
        return AriNotFound(operation, status, message)
    if status == 409:
        return AriConflict(operation, status, message)
    if status in (400, 422):
        return AriBadRequest(operation, status, message)
    if status >= 500 and text is None:
        return AriUnavailable(operation, status, message)
    return AriError(operation, status, message)


_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("bridged_ari_background", default=False)


def background_requests() -> ContextSetting[bool]:
    """Requests made inside (in this task and the tasks it starts) are left out of
    :attr:`AriClient.pending` and :meth:`AriClient.oldest_wait`.

    For work nobody waits on, such as a hangup retried in the background or the stray sweep. A request
    Asterisk never answers there must not make the overload guard refuse calls while everything else
    is answered quickly.
    """
    return ContextSetting(_BACKGROUND, True)


def is_background() -> bool:
    return _BACKGROUND.get()


class AriClient:
    """Calls the ARI REST API. Methods return Asterisk's JSON as plain dicts/lists."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        access: AriAccess,
        *,
        request_timeout: float = 5.0,
        connections: int = 40,
    ) -> None:
        # aiohttp's session: the recordings' file downloads (streamed); every other request goes through
        # the lean keep-alive transport, at most ``connections`` at once (bridged.ari.transport).
        self._session = session
        self._base_url = access.base_url.rstrip("/")
        # What every request's target starts with ("/ari"), the base URL's path as it is written.
        self._base_path = URL(self._base_url, encoded=True).raw_path.rstrip("/")
        self._headers = access.headers
        self._transport = HttpTransport(self._base_url, self._headers, limit=connections)
        self._request_timeout = request_timeout
        self._deadlines = Deadlines()
        # When each REST request still waiting for its answer was sent (in sending order).
        self._waiting: dict[int, float] = {}
        self._seq = itertools.count()

    @property
    def pending(self) -> int:
        """REST requests sent and not yet answered (or failed), background ones left out."""
        return len(self._waiting)

    # Unanswered requests oldest_wait passes over: so many stuck on their own do not say Asterisk is behind.
    STRAGGLERS = 2

    def oldest_wait(self) -> float:
        """How far behind Asterisk is: seconds the oldest unanswered REST request has waited, the
        :attr:`STRAGGLERS` oldest left out.

        A request can be stuck on its own (a channel lock, a slow channel driver) while Asterisk answers
        everything else at once; it gets its own timeout, and must not make the overload guard turn
        calls away meanwhile. When Asterisk is really behind, hundreds of requests wait, and the third
        oldest has waited about as long as the first. (Leaving out the requests that a newer answered
        one overtook does not work: under load Asterisk answers out of order, and that signal stayed
        near zero while customers were rung for calls that then failed.)
        """
        if len(self._waiting) <= self.STRAGGLERS:
            return 0.0
        for index, sent in enumerate(self._waiting.values()):
            if index == self.STRAGGLERS:
                return time.monotonic() - sent
        return 0.0

    # -- plumbing -------------------------------------------------------------------------------------

    def _prepare(
        self,
        op_name: str,
        path_params: Mapping[str, Any],
        params: Mapping[str, Any],
        body: Mapping[str, Any] | None,
    ) -> tuple[Operation, str, dict[str, Any] | None]:
        """The operation, the request's path and query below the base URL (``/channels/c1/answer``), and
        its JSON body. Raises ValueError, naming no value, for what Asterisk would silently ignore."""
        plan = PLANS[op_name]
        return plan.op, plan.target(path_params, params, body), plan.json_body(body)

    @staticmethod
    def _ids(path_params: Mapping[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in path_params.items()) or "-"

    async def _raise_for(
        self,
        op_name: str,
        resp: aiohttp.ClientResponse,
        path_params: Mapping[str, Any],
        params: Mapping[str, Any],
        body: Mapping[str, Any] | None,
    ) -> None:
        try:
            payload: Any = await resp.json(content_type=None)
        except (TimeoutError, ValueError, aiohttp.ClientError):
            payload = None
        raise _error_for(
            op_name, resp.status, _safe_error_text(payload, _secret_values(path_params, params, body))
        )

    async def _call(
        self,
        op_name: str,
        path_params: Mapping[str, Any],
        params: Mapping[str, Any],
        body: Mapping[str, Any] | None = None,
        *,
        decode: bool = True,
    ) -> Any:
        """Run one operation; JSON result, None for 204 or with ``decode`` off (an answer nobody reads is
        not parsed; an error's is, for its text). Raises AriError subclasses or ValueError."""
        op, target, json_body = self._prepare(op_name, path_params, params, body)
        sent = None if json_body is None else jsontext.dumps(json_body)
        token = next(self._seq)
        self._deadlines.start(token, self._request_timeout)
        tracked = not _BACKGROUND.get()
        if tracked:
            self._waiting[token] = time.monotonic()
        try:
            try:
                status, raw = await self._transport.request(op.method, self._base_path + target, sent)
            finally:
                timed_out = self._deadlines.end(token)
                if tracked:
                    del self._waiting[token]
        except asyncio.CancelledError:
            if not timed_out:
                raise
            # "from None": keep the request (its query string carries dial strings) out of any traceback.
            raise self._unreachable(op_name, path_params, "TimeoutError") from None
        except (TimeoutError, ConnectionError) as exc:
            raise self._unreachable(op_name, path_params, type(exc).__name__) from None
        if log.isEnabledFor(logging.DEBUG):  # the ids' text is made only for a debug log
            log.debug("ARI %s %s -> %d", op_name, self._ids(path_params), status)
        if status >= 400:
            raise _error_for(
                op_name,
                status,
                _safe_error_text(_json_or_none(raw), _secret_values(path_params, params, body)),
            )
        if status == 204 or not raw or not decode:
            return None
        try:
            return jsontext.loads(raw)
        except ValueError:
            raise AriError(op_name, status, f"ARI {op_name}: invalid JSON in response") from None

    def _unreachable(self, op_name: str, path_params: Mapping[str, Any], failure: str) -> AriUnavailable:
        log.debug("ARI %s %s -> transport error %s", op_name, self._ids(path_params), failure)
        return AriUnavailable(op_name, 0, f"ARI {op_name} failed: Asterisk unreachable ({failure})")

    async def close(self) -> None:
        """Close the kept-alive connections (the session is its owner's to close)."""
        await self._transport.close()

    # For the calls where "already gone" is normal, a 404 is an answer rather than an error.

    async def _get(self, op_name: str, path_params: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """The result; None when Asterisk has no such resource (404)."""
        try:
            return await self._call(op_name, path_params, params)
        except AriNotFound:
            return None

    async def _found(self, op_name: str, path_params: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
        """Done: True; False when the resource was already gone (404)."""
        try:
            await self._call(op_name, path_params, params, decode=False)
        except AriNotFound:
            return False
        return True

    # -- asterisk -------------------------------------------------------------------------------------

    async def get_info(self) -> dict[str, Any]:
        return await self._call("get_info", {}, {})

    async def get_global(self, variable: str) -> str:
        """A global dialplan variable's value ("" if it is not set)."""
        found = await self._call("get_global", {}, {"variable": variable})
        value = found.get("value") if isinstance(found, dict) else None
        return value if isinstance(value, str) else ""

    # -- channels -------------------------------------------------------------------------------------

    async def list_channels(self) -> list[dict[str, Any]]:
        return await self._call("list_channels", {}, {})

    async def get_channel(self, channel_id: str) -> dict[str, Any] | None:
        return await self._get("get_channel", {"channelId": channel_id}, {})

    async def get_endpoint(self, tech: str, resource: str) -> dict[str, Any] | None:
        """An endpoint's snapshot (``state``: online/offline/unknown, ``channel_ids``), None if unknown."""
        return await self._get("get_endpoint", {"tech": tech, "resource": resource}, {})

    async def create_channel(
        self,
        *,
        endpoint: str,
        app: str,
        app_args: str | None = None,
        channel_id: str | None = None,
        variables: dict[str, str] | None = None,
        originator: str | None = None,
    ) -> dict[str, Any]:
        """A channel to ``endpoint`` in Stasis of ``app`` (StasisStart at once, state Down), not dialled:
        :meth:`dial` rings it. Its identity is set by its variables (bridged.dialplan.identity_variables):
        there is no ``callerId`` as on an originate (``POST /channels``, which bridged does not use: an
        originated channel enters Stasis only when answered, and is hung up if no daemon serves the
        application then; docs/asterisk.md)."""
        params = {
            "endpoint": endpoint,
            "app": app,
            "appArgs": app_args,
            "channelId": channel_id,
            "originator": originator,
        }
        body = {"variables": variables} if variables else None
        return await self._call("create_channel", {}, params, body)

    async def originate_to_dialplan(
        self,
        *,
        endpoint: str,
        context: str,
        extension: str,
        channel_id: str,
        caller_id: str,
        timeout: int,  # noqa: ASYNC109 - ARI's ring timeout, not ours
        variables: dict[str, str],
        originator: str | None = None,
    ) -> None:
        """Ring ``endpoint`` on channel ``channel_id``; answered, it runs ``context``/``extension``/1.
        Not in any application until then: its events come to one subscribed to it (:meth:`subscribe`)."""
        params = {
            "endpoint": endpoint,
            "context": context,
            "extension": extension,
            "priority": 1,
            "callerId": caller_id,
            "timeout": timeout,
            "channelId": channel_id,
            "originator": originator,
        }
        await self._call("originate", {}, params, {"variables": variables}, decode=False)

    async def dial(
        self,
        channel_id: str,
        *,
        timeout: int | None = None,  # noqa: ASYNC109 - ARI's ring timeout, not ours
    ) -> None:
        """Ring a channel made by :meth:`create_channel` for up to ``timeout`` seconds (Asterisk hangs it up
        then: ChannelDestroyed cause 19). No ``caller``: Asterisk would copy that channel's identity onto
        this one."""
        await self._call("dial", {"channelId": channel_id}, {"timeout": timeout}, decode=False)

    async def hangup(self, channel_id: str, reason: str = "normal") -> bool:
        """False when the channel was already gone."""
        return await self._found("hangup", {"channelId": channel_id}, {"reason": reason})

    async def answer(self, channel_id: str) -> None:
        await self._call("answer", {"channelId": channel_id}, {}, decode=False)

    async def ring(self, channel_id: str) -> None:
        await self._call("ring", {"channelId": channel_id}, {}, decode=False)

    async def ring_stop(self, channel_id: str) -> None:
        await self._call("ring_stop", {"channelId": channel_id}, {}, decode=False)

    async def play(
        self,
        channel_id: str,
        media: str | list[str],
        *,
        playback_id: str | None = None,
        lang: str | None = None,
    ) -> dict[str, Any]:
        params = {"media": media, "lang": lang, "playbackId": playback_id}
        return await self._call("play", {"channelId": channel_id}, params)

    async def stop_playback(self, playback_id: str) -> bool:
        """False when the playback had already finished."""
        return await self._found("stop_playback", {"playbackId": playback_id}, {})

    async def get_variable(self, channel_id: str, variable: str) -> str | None:
        """The value, or None when the variable is unset or the channel is gone (both are 404)."""
        result = await self._get("get_variable", {"channelId": channel_id}, {"variable": variable})
        if not isinstance(result, dict):
            return None
        value = result.get("value")
        return value if isinstance(value, str) else None

    async def set_variable(self, channel_id: str, variable: str, value: str) -> None:
        await self._call(
            "set_variable", {"channelId": channel_id}, {"variable": variable, "value": value}, decode=False
        )

    async def continue_in_dialplan(
        self,
        channel_id: str,
        *,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
        label: str | None = None,
    ) -> None:
        params = {"context": context, "extension": extension, "priority": priority, "label": label}
        await self._call("continue_in_dialplan", {"channelId": channel_id}, params, decode=False)

    # -- bridges --------------------------------------------------------------------------------------

    async def list_bridges(self) -> list[dict[str, Any]]:
        return await self._call("list_bridges", {}, {})

    async def create_bridge(self, bridge_id: str, *, type: str = "mixing", name: str | None = None) -> None:
        params = {"type": type, "bridgeId": bridge_id, "name": name}
        await self._call("create_bridge", {}, params, decode=False)

    async def get_bridge(self, bridge_id: str) -> dict[str, Any] | None:
        return await self._get("get_bridge", {"bridgeId": bridge_id}, {})

    async def destroy_bridge(self, bridge_id: str) -> bool:
        """False when the bridge was already gone."""
        return await self._found("destroy_bridge", {"bridgeId": bridge_id}, {})

    async def add_channel(
        self,
        bridge_id: str,
        channel_ids: list[str],
        *,
        inhibit_connected_line_updates: bool = True,
        role: str | None = None,
    ) -> None:
        # inhibitConnectedLineUpdates defaults to on: a bridge join otherwise copies the customer's caller
        # id into the manager's connected line (see docs/asterisk.md).
        params = {
            "channel": list(channel_ids),
            "role": role,
            "inhibitConnectedLineUpdates": inhibit_connected_line_updates,
        }
        await self._call("add_channel", {"bridgeId": bridge_id}, params, decode=False)

    async def remove_channel(self, bridge_id: str, channel_id: str) -> bool:
        """False when the bridge is gone (404); a channel not in the bridge raises AriBadRequest (400)."""
        return await self._found("remove_channel", {"bridgeId": bridge_id}, {"channel": channel_id})

    async def record_bridge(
        self,
        bridge_id: str,
        *,
        name: str,
        format: str,
        if_exists: str = "fail",
        beep: bool = False,
        terminate_on: str = "none",
        max_duration_seconds: int | None = None,
    ) -> dict[str, Any]:
        params = {
            "name": name,
            "format": format,
            "ifExists": if_exists,
            "beep": beep,
            "terminateOn": terminate_on,
            "maxDurationSeconds": max_duration_seconds,
        }
        return await self._call("record_bridge", {"bridgeId": bridge_id}, params)

    # -- applications ---------------------------------------------------------------------------------

    async def transfer_progress(self, channel_id: str, states: str) -> None:
        """Answer a REFER that Asterisk handed to us (``PJSIP_TRANSFER_HANDLING()=ari-only``):
        ``channel_declined``, ``channel_unavailable``, ``channel_progress`` or ``channel_answered``
        become the NOTIFY the phone gets."""
        await self._call("transfer_progress", {"channelId": channel_id}, {"states": states}, decode=False)

    async def get_application(self, name: str) -> dict[str, Any]:
        return await self._call("get_application", {"applicationName": name}, {})

    async def subscribe(self, app: str, event_sources: list[str]) -> None:
        """Its answer (the application with all its sources: grows with the calls in progress) is not read."""
        await self._call("subscribe", {"applicationName": app}, {"eventSource": event_sources}, decode=False)

    async def allow_events(self, app: str, event_types: Iterable[str]) -> dict[str, Any]:
        """Have Asterisk send ``app`` only these event types (``PUT .../eventFilter``).

        Asterisk skips serializing and sending the rest: a channel in Stasis otherwise produces a
        ``ChannelVarset`` for every variable set on it (a dozen RTP statistics at each hangup),
        ``ChannelDialplan``, ``ChannelCallerId``... about 40 events per bridged call.
        """
        allowed = [{"type": t} for t in sorted(set(event_types))]
        return await self._call(
            "filter_events", {"applicationName": app}, {}, {"filter": {"allowed": allowed}}
        )

    # -- recordings -----------------------------------------------------------------------------------

    async def list_stored_recordings(self) -> list[dict[str, Any]]:
        return await self._call("list_stored_recordings", {}, {})

    async def get_stored_recording(self, name: str) -> dict[str, Any] | None:
        return await self._get("get_stored_recording", {"recordingName": name}, {})

    async def delete_stored_recording(self, name: str) -> bool:
        return await self._found("delete_stored_recording", {"recordingName": name}, {})

    async def get_live_recording(self, name: str) -> dict[str, Any] | None:
        return await self._get("get_live_recording", {"recordingName": name}, {})

    async def stop_live_recording(self, name: str) -> bool:
        """False when the recording had already ended."""
        return await self._found("stop_live_recording", {"recordingName": name}, {})

    async def stored_recording_file(
        self, name: str, *, range_header: str | None = None
    ) -> aiohttp.ClientResponse:
        """The open response; the caller streams its content and must release() it.

        Asterisk 22.10 ignores ``Range`` on this endpoint (200, whole file, no Content-Range): callers that
        serve ranges must check for 206 and slice themselves otherwise.
        """
        op_name = "stored_recording_file"
        path_params = {"recordingName": name}
        op, target, _ = self._prepare(op_name, path_params, {}, None)
        url = URL(self._base_url + target, encoded=True)
        headers = dict(self._headers)
        if range_header is not None:
            headers["Range"] = range_header
        # No total timeout: a large file may stream for longer than a REST call is allowed to take.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._request_timeout, sock_read=self._request_timeout
        )
        try:
            resp = await self._session.request(op.method, url, headers=headers, timeout=timeout)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(op_name, path_params, type(exc).__name__) from None
        log.debug("ARI %s %s -> %d", op_name, self._ids(path_params), resp.status)
        if resp.status >= 400:
            try:
                await self._raise_for(op_name, resp, path_params, {}, None)
            finally:
                resp.release()
        return resp

    async def stored_recording_size(self, name: str) -> int | None:
        """The size in bytes of a stored recording's file; None when Asterisk has no such recording.

        Its ``StoredRecording`` carries only name and format, so the size is the file's Content-Length
        (Asterisk 22 sends one; the body is read when it does not).
        """
        try:
            resp = await self.stored_recording_file(name)
        except AriNotFound:
            return None
        try:
            if resp.content_length is not None:
                return resp.content_length
            try:
                return len(await resp.read())
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise AriUnavailable(
                    "stored_recording_file", 0, f"ARI stored_recording_file failed: {type(exc).__name__}"
                ) from None
        finally:
            resp.release()
