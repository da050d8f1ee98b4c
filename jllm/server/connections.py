"""Connection limits: a header-read timeout, a bounded number of open connections, and refusal that stays quiet.

aiohttp closes a connection idle past ``keepalive_timeout`` (counted from its opening too), but by default after an
hour, and it accepts connections until the process runs out of file descriptors, after which asyncio logs a
traceback per failed accept. Here every connection must finish its first request's headers within
``header_timeout_s``, and each request's body within ``body_timeout_s`` (a 408 else); at ``max_connections`` the
oldest connection with no request in progress is closed to make room (an idle or slowloris one), and only when every
connection is serving a request is a newcomer answered 503 and closed. What was closed or refused is logged as one
line per interval, never per connection.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import ssl
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from jllm.config import ServerConfig
from jllm.config_base import ConfigError
from jllm.server.errors import APIError, Handler

logger = logging.getLogger(__name__)
LOG_INTERVAL_SECONDS = 10.0
FD_HEADROOM = 256  # descriptors kept for the model files, the engine and logs beyond the connections
_REFUSAL_BODY = json.dumps(
    {
        "error": {
            "message": "the server holds its maximum of open connections, all serving requests; retry later",
            "type": "server_error",
            "param": None,
            "code": "too_many_connections",
        }
    }
).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
    + f"Content-Length: {len(_REFUSAL_BODY)}\r\n\r\n".encode()
    + _REFUSAL_BODY
)


class _Refusal(asyncio.Protocol):
    """Answers one connection with the 503 and closes it, reading nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(REFUSAL)
        transport.close()


class JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering what fails before routing (a malformed request line or header, an
    oversize header or URL, a bad Content-Length) in OpenAI's error JSON (Anthropic's on its routes), with one log
    line and no traceback."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        logger.info("protocol error from %s: %d %s", request.remote, status, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("a response is already partly sent; the connection is broken")
        phrase = HTTPStatus(status).phrase
        kind = "server_error" if status >= 500 else "invalid_request_error"
        error = APIError(status, f"{phrase}: {message or exc or 'malformed request'}", type=kind)
        response = error.response_for(request)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A body that cannot be read (not in its ``Content-Encoding``) fails again when aiohttp reads what the
        handler left unread, after the answer went out (a 401 before the body was read, say): one line, not a
        traceback per request."""
        error = kw.get("exc_info")
        if isinstance(error, web.RequestPayloadError):
            logger.info("unreadable request body: %s", str(error.__cause__ or error).strip())
            return
        super().log_exception(*args, **kw)


class ConnectionGuard:
    """Counts connections and the requests in progress on each (its ``middleware`` sees every request)."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        # aiohttp's handlers take no weak references: these are pruned to the live connections as they grow.
        self._opened: dict[RequestHandler, float] = {}  # when each connection opened
        self._active: dict[RequestHandler, int] = {}  # requests in progress on a connection
        self._events: Counter[str] = Counter()
        self._last_log = 0.0

    def factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to listen with, around aiohttp's."""
        loop = asyncio.get_running_loop()

        def make() -> asyncio.Protocol:
            connections = [h for h in server.connections if h.transport is not None]  # closed ones linger a while
            if len(self._opened) > 2 * len(connections) + 64:
                self._prune(connections)
            if len(connections) >= self.max_connections and not self._make_room(connections):
                self._note("refused (every connection busy)")
                return _Refusal()
            # Built as web.Server.__call__ builds aiohttp's own handler (its settings are the server's _kwargs).
            handler = JsonErrorHandler(server, loop=loop, **server._kwargs)
            self._opened[handler] = loop.time()
            loop.call_later(self.header_timeout, self._check_headers, handler)
            return handler

        return make

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        self._active[protocol] = self._active.get(protocol, 0) + 1
        try:
            return await handler(request)
        finally:
            self._active[protocol] -= 1
            if not self._active[protocol]:
                del self._active[protocol]

    def _prune(self, connections: list[RequestHandler]) -> None:
        live = set(connections)
        self._opened = {h: t for h, t in self._opened.items() if h in live}

    def _make_room(self, connections: list[RequestHandler]) -> bool:
        idle = [h for h in connections if not self._active.get(h)]
        if not idle:
            return False
        oldest = min(idle, key=lambda h: self._opened.get(h, 0.0))
        oldest.force_close()
        self._note("closed to make room (idle)")
        return True

    def _check_headers(self, handler: RequestHandler) -> None:
        # aiohttp counts a request as it parses its headers, before its handler runs: one the event loop has not
        # got to yet (held up past the timeout) arrived in time, and had been closed unanswered.
        if not handler._request_count and handler.transport is not None:
            handler.force_close()
            self._note(f"closed (no request headers within {self.header_timeout:g} s)")

    def _note(self, event: str) -> None:
        self._events[event] += 1
        now = asyncio.get_running_loop().time()
        if now - self._last_log >= LOG_INTERVAL_SECONDS:
            summary = ", ".join(f"{count} {what}" for what, count in self._events.items())
            logger.warning("connections: %s (max_connections=%d)", summary, self.max_connections)
            self._events.clear()
            self._last_log = now


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` listening through a ``ConnectionGuard`` (over TLS with an ``ssl_context``)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog, ssl=self._ssl_context
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


def tls_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context from vLLM's flags (``ssl_certfile`` and ``ssl_keyfile``; ``ssl_ca_certs`` with
    ``ssl_cert_reqs`` 1 or 2 asks clients for certificates signed by those CAs); None: plain HTTP."""
    if server.ssl_certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(server.ssl_certfile, server.ssl_keyfile)
        if server.ssl_ca_certs is not None:
            context.load_verify_locations(server.ssl_ca_certs)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"ssl_certfile / ssl_keyfile / ssl_ca_certs: cannot be loaded: {e}") from e
    context.verify_mode = ssl.VerifyMode(server.ssl_cert_reqs)
    return context


def body_timeout_middleware(timeout: float) -> Middleware:
    """Reads a request's body whole within ``timeout`` seconds of its headers, before any handler runs (aiohttp keeps
    it for their ``read``): a chunked body that stalls, or one cut short of its Content-Length, would otherwise hold
    the connection, counted as busy, as long as its client likes. Late: a 408 in OpenAI's JSON, connection closed.
    Inside ``error_middleware``, so an oversize or unreadable body is its 413 or 400."""

    @web.middleware
    async def read_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                await asyncio.wait_for(request.read(), timeout)
            except TimeoutError:
                logger.info("request body from %s not whole within %g s; closing", request.remote, timeout)
                message = f"the request body did not arrive whole within {timeout:g} s (body_timeout_s)"
                response = APIError(408, message, code="request_timeout").response_for(request)
                response.force_close()
                await response.prepare(request)  # sent now: aiohttp would otherwise linger 10 s reading the body
                await response.write_eof()
                request.protocol.force_close()
                return response
        return await handler(request)

    return read_body


def fit_descriptor_limit(max_connections: int) -> int:
    """Raises the soft open-file limit to fit ``max_connections`` (up to the hard limit, as vLLM does); returns the
    connections that fit when the hard limit is lower, with a warning."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < want:
        fitted = max(1, soft - FD_HEADROOM)
        logger.warning("max_connections=%d lowered to %d: the open-file limit is %d", max_connections, fitted, soft)
        return fitted
    return max_connections
