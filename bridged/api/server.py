"""bridged's HTTP server: aiohttp's, with limits on slow and greedy clients and JSON for its own errors.

aiohttp answers requests it cannot parse (a bad request line, oversized headers, broken chunked
encoding) itself, before any middleware, with a plain-text body that quotes the request's bytes, and
logs them with a traceback. It also waits for a request's headers as long as the client keeps the
connection open. The supported place to change both is the protocol: ``web.Server`` builds one
:class:`RequestHandler` per connection, so a ``Server`` subclass builds :class:`GuardedRequestHandler`
instead, and :class:`GuardedAppRunner` (an ``AppRunner``) serves the application through it:

- ``handle_error`` (aiohttp's hook for those answers) answers with bridged's error body, and the log says
  which kind of error it was, never what the client sent;
- a connection whose request line and headers have not all arrived within ``http.header_timeout`` of its
  opening (or of the first byte of a later request on it) gets a 408 and is closed; the body has
  ``http.body_timeout`` (``params.read_json``);
- each client address may hold ``http.max_connections_per_client`` connections; one more is answered
  503 ``too_many_connections`` and closed. Trusted reverse proxies (``http.trusted_proxies``) are not
  capped: every client behind them shares their address.

The construction of the server reads two attributes aiohttp keeps for it (``Server._kwargs`` and
``_loop``, the arguments of every ``RequestHandler``); tests/unit/test_http_server.py drives this over
real sockets, so an aiohttp that changes them fails there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from contextlib import suppress
from http import HTTPStatus
from ipaddress import ip_address
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .. import metrics
from ..config import HttpConfig
from .errors import ApiError, HeadersTimeout, TooManyConnections, aiohttp_error, error_response

log = logging.getLogger(__name__)


def raw_response(error: ApiError) -> bytes:
    """A whole HTTP/1.1 answer with the error's JSON body, written straight to a connection that is then
    closed (no request object exists: the request never arrived whole)."""
    body = json.dumps(error.body()).encode()
    head = [
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if error.retry_after is not None:
        head.append(f"Retry-After: {error.retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


# How long a refused connection is kept half-closed, its input dropped, before it is closed.
_LINGER_SECONDS = 2.0
_HEADER_TIMEOUT = raw_response(HeadersTimeout())
_TOO_MANY = raw_response(TooManyConnections())


class PeerCounter:
    """Open connections per client address."""

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.open: dict[str, int] = {}

    def _trusted(self, host: str) -> bool:
        try:
            address = ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.config.trusted_proxies)

    def admit(self, host: str) -> bool:
        """Count a new connection from ``host``; False (not counted) if it is one too many."""
        count = self.open.get(host, 0)
        if count >= self.config.max_connections_per_client and not self._trusted(host):
            return False
        self.open[host] = count + 1
        return True

    def release(self, host: str) -> None:
        count = self.open.get(host, 0) - 1
        if count > 0:
            self.open[host] = count
        else:
            self.open.pop(host, None)


class GuardedRequestHandler(RequestHandler):
    __slots__ = ("_guard", "_host", "_head_timer", "_in_request", "_close_after_response", "_refusing")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._host: str | None = None  # counted against the client's connections while set
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._close_after_response = False
        # Answered and closing: what the client still sends is read and dropped (see _answer_and_close).
        self._refusing: asyncio.TimerHandle | None = None

    # -- connection limits and the header timeout ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._guard.peers.admit(host):
            metrics.HTTP_CONNECTIONS_REFUSED.inc()
            log.warning("connection from %s refused: it already has the most connections allowed", host)
            self._answer_and_close(_TOO_MANY)
            return
        self._host = host
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._refusing is not None:
            self._refusing.cancel()
        if self._host is not None:
            self._guard.peers.release(self._host)
            self._host = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusing is not None:
            return
        # Between requests a keep-alive connection idles under aiohttp's keepalive_timeout; the first
        # byte of the next request starts that request's header clock.
        if data and not self._in_request:
            self._arm()
        super().data_received(data)

    def request_started(self) -> None:
        """The request's line and headers are all in (called as aiohttp builds the request)."""
        self._in_request = True
        self._disarm()

    def close_after_response(self) -> None:
        """Close the connection once this request's answer is out, without reading the rest of its body
        (aiohttp would linger up to 10 s for it): the client was too slow sending it."""
        self._close_after_response = True

    def log_access(self, request: BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        # aiohttp calls this once the response is written, whatever the outcome: the request is over.
        self._in_request = False
        super().log_access(request, response, time)
        if self._close_after_response:
            self.force_close()

    def _arm(self) -> None:
        if self._head_timer is None and self._host is not None:
            self._head_timer = asyncio.get_running_loop().call_later(
                self._guard.config.header_timeout, self._header_timeout
            )

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _header_timeout(self) -> None:
        self._head_timer = None
        metrics.HTTP_HEADER_TIMEOUTS.inc()
        log.info("connection from %s closed: its request's headers did not arrive in time", self._host)
        self._answer_and_close(_HEADER_TIMEOUT)

    def _answer_and_close(self, answer: bytes) -> None:
        """Send ``answer`` and close. Closing a socket with unread input makes the kernel reset the
        connection, and a reset can reach the client before the answer does: so the answer goes out
        with a FIN (half-close), what the client still sends is dropped unread, and the connection is
        closed a moment later (or when the client closes it)."""
        self._disarm()
        transport = self.transport  # asyncio's or uvloop's (which is no asyncio.Transport subclass)
        if transport is None or transport.is_closing():
            self.force_close()
            return
        with suppress(OSError, RuntimeError):
            transport.write(answer)
            if transport.can_write_eof():
                transport.write_eof()
        self._refusing = asyncio.get_running_loop().call_later(_LINGER_SECONDS, self.force_close)

    # -- aiohttp's own error answers ---------------------------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # ``message`` and ``exc`` quote the request's bytes: neither goes into the answer or the log.
        kind = type(exc).__name__ if exc is not None else "error"
        if status >= 500:
            log.error("request from %s failed outside the API's handlers: %s (%d)", self._host, kind, status)
        else:
            log.info("request from %s refused by the HTTP parser: %s (%d)", self._host, kind, status)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; no error answer can follow")
        response = error_response(aiohttp_error(status))
        response.force_close()
        return response


_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    BaseRequest,
]


class GuardedServer(web.Server):
    def __init__(self, plain: web.Server, config: HttpConfig) -> None:
        build_request: _RequestFactory = plain.request_factory

        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> BaseRequest:
            if isinstance(protocol, GuardedRequestHandler):
                protocol.request_started()
            return build_request(message, payload, protocol, writer, task)

        super().__init__(
            plain.request_handler,
            request_factory=request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.config = config
        self.peers = PeerCounter(config)

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    def __init__(self, app: web.Application, config: HttpConfig, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.config = config

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self.config)


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one: each client connection is a descriptor, and
    a soft limit of 1024 (a common default) is reached by a few hundred slow clients plus bridged's own
    sockets, after which new connections fail to be accepted at all. Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(app: web.Application, config: HttpConfig) -> None:
    """Start the application and serve it on ``http.host:http.port`` until cancelled or GracefulExit."""
    log.info("open files limit %d", raise_fd_limit())
    # run_app's defaults: SIGINT/SIGTERM raise GracefulExit (the app installs its own SIGTERM drain),
    # idle keep-alive connections are closed after 75 s; no access log (URLs may carry anything).
    runner = GuardedAppRunner(app, config, handle_signals=True, access_log=None, keepalive_timeout=75.0)
    try:
        # Inside the try: a start that fails at one cleanup context closes the ones started before it.
        await runner.setup()
        await web.TCPSite(runner, config.host, config.port).start()
        await asyncio.Event().wait()  # until cancelled (GracefulExit stops the loop, then cancels)
    finally:
        await runner.cleanup()


def run_app(app: web.Application, config: HttpConfig, *, loop: asyncio.AbstractEventLoop) -> None:
    """``web.run_app`` for :class:`GuardedAppRunner`: run ``app`` on ``loop`` until SIGINT/SIGTERM
    (GracefulExit), then clean up the application and close the loop. A start-up error (raised by the
    app's cleanup contexts) propagates to the caller."""
    main = loop.create_task(serve(app, config))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
