"""The ARI event websocket: one reader that never blocks, reconnects forever, reconciles on connect.

Delivery contract
-----------------
* ``handler(event)`` is called synchronously, in websocket order, once per event. It must only enqueue
  (e.g. into the worker of the call the event belongs to): the reader awaits nothing per event but the
  next frame, so a slow consumer can never stall it or make Asterisk drop the socket.
* On every (re)connection ``connected`` turns True and ``on_connect()`` runs (the daemon reconciles there:
  ``GET /applications/{app}``, ``/channels``, ``/bridges``). The reader keeps receiving while it runs and
  holds the frames in a buffer; when ``on_connect()`` returns, the buffer is delivered in order before any
  later frame. So the daemon sees "state as of reconcile" followed by every event since the socket opened,
  and events from the gap before the socket opened are lost (Asterisk does not replay them).
* If ``on_connect()`` raises, the buffered events are dropped and the socket is closed: the daemon's view
  is unreliable, and the next connection runs ``on_connect()`` again from scratch.
* Neither bad JSON nor a raising handler stops the reader. Their log lines never carry the event body:
  events hold dial strings and caller ids, i.e. phone numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from . import jsontext
from .client import AriAccess

__all__ = ["AriEventStream", "event_bridge_id", "event_channel_id", "event_type", "ws_url_from_base"]

log = logging.getLogger(__name__)

# A connection that lived this long was healthy: the next failure starts again from min_backoff.
_STABLE_AFTER = 10.0
# How long a connect (TCP, TLS and the upgrade) may take, and the websocket ping interval that notices a
# silent Asterisk (no caller ever chose other values).
_CONNECT_TIMEOUT = 10.0
_HEARTBEAT = 15.0


def ws_url_from_base(base_url: str) -> URL:
    """``http://host:8088/ari`` -> ``ws://host:8088/ari/events`` (https -> wss)."""
    url = URL(base_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(url.scheme, url.scheme)
    return url.with_scheme(scheme).with_path(url.path.rstrip("/") + "/events")


def event_type(event: dict[str, Any]) -> str | None:
    value = event.get("type")
    return value if isinstance(value, str) else None


def event_channel_id(event: dict[str, Any]) -> str | None:
    """The id of the event's main channel (``channel``, else ``peer`` for Dial events), if any."""
    for key in ("channel", "peer"):
        obj = event.get(key)
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            return str(obj["id"])
    return None


def event_bridge_id(event: dict[str, Any]) -> str | None:
    obj = event.get("bridge")
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        return str(obj["id"])
    return None


class AriEventStream:
    """Keeps one websocket to ``/ari/events`` for ``app`` open until :meth:`close`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        access: AriAccess,
        app: str,
        *,
        handler: Callable[[dict[str, Any]], None],
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self._session = session
        self._url = ws_url_from_base(access.base_url).with_query({"app": app, "subscribeAll": "false"})
        self._headers = access.headers
        self._app = app
        # For messages: the base URL only (the websocket URL's query is harmless, but keep it short).
        self._base_url = access.base_url
        self._handler = handler
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._connected = asyncio.Event()
        self._closing = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._run_task: asyncio.Task[None] | None = None
        # A connection whose on_connect() failed was not healthy however long it lasted: keep backing off.
        self._reconcile_failed = False
        # Strong refs: the loop only keeps weak ones to tasks.
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - part of the API
        """True once connected (now or within ``timeout`` seconds)."""
        if self._connected.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return self._connected.is_set()

    async def close(self) -> None:
        """Stop reconnecting, close the socket and make :meth:`run` return."""
        self._closing.set()
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except TimeoutError:
                log.warning("ARI event stream did not stop in time; cancelling it")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:  # run() failed; it logged already
                pass

    async def run(self) -> None:
        """Connect, read, reconnect with backoff until :meth:`close`."""
        self._run_task = asyncio.current_task()
        attempt = 0
        try:
            while not self._closing.is_set():
                started = time.monotonic()
                self._reconcile_failed = False
                delay: float | None = None
                try:
                    await self._session_once()
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status in (401, 403):
                        # Credentials are wrong; a config reload may fix them, so retry, but slowly.
                        log.error(
                            "ARI websocket for app %s at %s refused: HTTP %d (check ari.username and"
                            " ari.password against ari.conf)",
                            self._app,
                            self._base_url,
                            exc.status,
                        )
                        delay = self._max_backoff
                    else:
                        log.warning(
                            "ARI websocket handshake with %s failed: HTTP %d", self._base_url, exc.status
                        )
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    # No str(exc): aiohttp puts the URL in some messages, and the ws URL is harmless, but
                    # keep one rule for every transport error in this package.
                    log.warning(
                        "ARI websocket connection to %s failed: %s", self._base_url, type(exc).__name__
                    )
                if self._closing.is_set():
                    break
                if time.monotonic() - started > _STABLE_AFTER and not self._reconcile_failed:
                    attempt = 0
                if delay is None:
                    cap = min(self._max_backoff, self._min_backoff * (2**attempt))
                    delay = random.uniform(0, cap)  # full jitter: many daemons must not reconnect in step
                    attempt = min(attempt + 1, 32)
                log.info("ARI websocket reconnecting in %.1fs", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self._set_disconnected()
            for task in list(self._tasks):
                task.cancel()
            log.info("ARI event stream stopped")

    # -- one connection -------------------------------------------------------------------------------

    async def _session_once(self) -> None:
        ws = await self._connect()
        self._ws = ws
        try:
            if self._closing.is_set():
                return
            self._connected.set()
            log.info("ARI websocket connected for app %s", self._app)
            await self._read(ws)
        finally:
            self._ws = None
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
            self._set_disconnected()

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            return await self._session.ws_connect(
                self._url,
                headers=self._headers,
                heartbeat=_HEARTBEAT,
                max_msg_size=0,  # a ChannelVarset storm or a big Bridge snapshot must not kill the socket
            )

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # Frames received while on_connect() runs; None once it has finished and delivery is direct.
        buffer: list[str] | None = [] if self._on_connect is not None else None
        reconcile: asyncio.Task[None] | None = None

        def reconciled(task: asyncio.Task[None]) -> None:
            nonlocal buffer
            self._tasks.discard(task)
            if task.cancelled():
                return
            exc = task.exception()
            if exc is not None:
                self._reconcile_failed = True
                log.error(
                    "ARI on_connect failed (%s); dropping the connection to reconcile again",
                    type(exc).__name__,
                )
                dropped, buffer = buffer or [], []
                log.info("ARI dropped %d events received during the failed reconcile", len(dropped))
                closer = asyncio.ensure_future(ws.close())
                self._tasks.add(closer)
                closer.add_done_callback(self._tasks.discard)
                return
            pending, buffer = buffer or [], None
            if pending:
                log.debug("ARI delivering %d events received during on_connect", len(pending))
            # Synchronous and in one callback: no frame read afterwards can overtake these.
            for raw in pending:
                self._dispatch(raw)

        if self._on_connect is not None:
            reconcile = asyncio.ensure_future(self._on_connect())
            self._tasks.add(reconcile)
            reconcile.add_done_callback(reconciled)
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    if buffer is not None:
                        buffer.append(msg.data)
                    else:
                        self._dispatch(msg.data)
                elif msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    if self._closing.is_set():
                        log.info("ARI websocket closed on request")
                    else:
                        log.warning("ARI websocket closed (code %s)", ws.close_code)
                    return
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    log.warning("ARI websocket error: %s", type(ws.exception()).__name__)
                    return
                # BINARY/PING/PONG: Asterisk sends none we care about; aiohttp answers pings itself.
        finally:
            if reconcile is not None and not reconcile.done():
                reconcile.cancel()

    def _dispatch(self, raw: str) -> None:
        try:
            event = jsontext.loads(raw)
        except ValueError:
            log.warning("ARI event is not valid JSON (%d bytes); skipped", len(raw))
            return
        if not isinstance(event, dict):
            log.warning("ARI event is not a JSON object; skipped")
            return
        try:
            self._handler(event)
        except Exception as exc:
            # Traceback frames only: the exception text may quote the event (a dial string, a caller id).
            log.error(
                "ARI event handler failed on %s: %s\n%s",
                event_type(event),
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
            )

    def _set_disconnected(self) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and self._on_disconnect is not None:
            try:
                self._on_disconnect()
            except Exception as exc:
                log.error("ARI on_disconnect failed: %s", type(exc).__name__)
