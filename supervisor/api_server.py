"""The API's HTTP layer below the routes: connection cap, idle and body timeouts, JSON error bodies (also for
aiohttp's own low-level 400s), and a rate-limited log when the process runs out of file descriptors.

Why each piece (docs/api-security.md, "Connections"):
- aiohttp's AppRunner keeps an idle connection for 3630 s, and one still sending its headers just as long: 250 idle
  plus 300 half-sent connections stayed open, and at the fd limit `/healthz` timed out. `api.idle_timeout` closes a
  connection that has no request in progress: aiohttp's keep-alive timer runs from the connection's start and from
  each response, and a request whose headers are incomplete is not in progress, so it bounds a slowloris too.
- `api.max_connections`: at the cap, a new connection evicts the oldest connection that is waiting for a request
  (idle or half-sent), so one more `/healthz` is always answered; only when every connection is busy (event streams,
  requests in flight) is the new one answered 503 JSON and closed.
- A body that does not arrive within `api.body_timeout` is 408 `request_timeout` (the handler waited forever).
"""

from __future__ import annotations

import asyncio
from asyncio import constants as asyncio_constants
import json
import resource
import time
from typing import Any

from aiohttp import web

from .errors import SupervisorError
from .events import get_logger
from .settings import ApiSettings

log = get_logger()
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              408: "request_timeout", 413: "body_too_large", 415: "unsupported_media_type",
              431: "headers_too_large"}
LOG_EVERY = 60.0  # seconds between two lines of one rate-limited warning (the count of the others rides along)
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's context message (selector_events.py)


class RequestTimeout(SupervisorError):
    code = "request_timeout"
    status = 408


# One encoder for every answer: json.dumps(o, default=str) builds a new JSONEncoder per call.
_encode = json.JSONEncoder(default=str).encode
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}  # what web.json_response sends


def json_body(data: Any) -> bytes:
    return _encode(data).encode()


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(data).encode(), status=status, headers=JSON_HEADERS)


def error_response(status: int, code: str, message: str, **details: Any) -> web.Response:
    return json_response({"error": code, "message": message, **details}, status=status)


async def limit_body(request: web.Request, api: ApiSettings) -> web.Response | None:
    """The 413 answer before any handler runs, also for routes that ignore their body (a 1 MiB POST /start); a
    chunked body is read here (aiohttp enforces client_max_size while reading), within `api.body_timeout`. None:
    go on. Called by the API's one middleware (supervisor/api.py)."""
    length = request.content_length
    if length is not None and length > api.max_body_bytes:
        return error_response(413, "body_too_large", f"request body over {api.max_body_bytes} bytes")
    if length is None and request.body_exists:
        await read_body(request, api.body_timeout)
    return None


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The whole body (aiohttp caches it: a second call is free), or RequestTimeout for one sent too slowly."""
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout:g} s") from None


class RateLimitedWarning:
    """One log line per LOG_EVERY seconds for something that can happen thousands of times a second."""

    def __init__(self, event: str, level: str = "warning") -> None:
        self.event, self.level = event, level
        self._last = float("-inf")
        self.suppressed = 0

    def __call__(self, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < LOG_EVERY:
            self.suppressed += 1
            return
        getattr(log, self.level)(self.event, suppressed=self.suppressed, **fields)
        self._last, self.suppressed = now, 0


class ConnectionLimits:
    def __init__(self, max_connections: int) -> None:
        self.max = max_connections
        self.open: dict[ApiRequestHandler, None] = {}  # insertion order: the first idle one is the oldest
        self.evicted = self.refused = 0
        self._warn = RateLimitedWarning("api.connections_full")

    def admit(self, handler: ApiRequestHandler) -> bool:
        if len(self.open) >= self.max:
            victim = next((c for c in self.open if c.waiting), None)
            if victim is None:
                self.refused += 1
                self._warn(max_connections=self.max, refused=self.refused, evicted=self.evicted)
                return False
            self.evicted += 1
            self.open.pop(victim)
            victim.force_close()
        self.open[handler] = None
        return True

    def release(self, handler: ApiRequestHandler) -> None:
        self.open.pop(handler, None)


_FULL_BODY = json.dumps({"error": "too_many_connections",
                         "message": "the API has api.max_connections connections, all busy: retry shortly"}).encode()
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_FULL_BODY), _FULL_BODY))


class ApiRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, counted against `api.max_connections`, with JSON for its own errors."""

    __slots__ = ("_limits", "_admitted")

    def __init__(self, manager: web.Server, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._admitted = False

    @property
    def waiting(self) -> bool:
        """Waiting for a request (idle keep-alive, or its headers are not complete yet): nothing is lost by closing.
        aiohttp's own keep-alive timer asks the very same question."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._limits.admit(self):
            assert isinstance(transport, asyncio.Transport)
            transport.write(_FULL)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._limits.release(self)
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to what never reached the app (a malformed request line, oversized headers, a bad
        method) and to an exception that escaped every middleware: JSON like every other answer, and a traceback in
        the log only for the latter (a client's malformed bytes are not our bug)."""
        if isinstance(exc, ConnectionError):  # the client went away while its request ran: nothing to answer
            raise exc
        if request.writer.output_size > 0:  # part of a response is out: the connection is beyond repair
            raise ConnectionError("response already started")
        if status >= 500:
            log.error("api.error", route="<server>", error=type(exc).__name__, exc_info=exc)
            body = {"error": "internal", "message": "internal error"}
        else:
            log.info("api.bad_http", status=status, error=type(exc).__name__)
            body = {"error": HTTP_CODES.get(status, "bad_request"),
                    "message": f"malformed HTTP request ({type(exc).__name__})"}
        resp = json_response(body, status=status)
        resp.force_close()
        return resp


class _Server(web.Server):
    """The AppRunner's server, making ApiRequestHandler connections (web.Server offers no handler-class option)."""

    def __init__(self, base: web.Server, limits: ConnectionLimits) -> None:
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, loop=base._loop, **base._kwargs)
        self.limits = limits

    def __call__(self) -> ApiRequestHandler:
        return ApiRequestHandler(self, self.limits, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server(), self.limits)


class AcceptErrorLog:
    """The loop's exception handler while the API serves: asyncio reports every failed accept at the fd limit (EMFILE,
    retried each second per listening socket) with a traceback; this makes it one `api.accept_failed` line per
    LOG_EVERY seconds and passes every other report on unchanged."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.previous = loop.get_exception_handler()
        self._warn = RateLimitedWarning("api.accept_failed", "error")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_FAILED:
            exc = context.get("exception")
            self._warn(error=getattr(exc, "strerror", None) or type(exc).__name__,
                       hint="out of file descriptors: raise LimitNOFILE or lower api.max_connections")
        elif _stale_accept_retry(context):
            pass  # the listener closed while asyncio's accept retries were pending: nothing left to serve
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    async def restore(self, _app: web.Application) -> None:
        # not at once: accept retries armed before the close still fire up to ACCEPT_RETRY_DELAY later
        self.loop.call_later(asyncio_constants.ACCEPT_RETRY_DELAY + 0.5, self._restore_now)

    def _restore_now(self) -> None:
        if self.loop.get_exception_handler() is self:
            self.loop.set_exception_handler(self.previous)


def _stale_accept_retry(context: dict[str, Any]) -> bool:
    """After a failed accept (EMFILE) asyncio re-arms the listener ACCEPT_RETRY_DELAY later, once per failed accept
    (`call_later(_start_serving)`); a retry that fires after the server closed finds fd -1 and raises ValueError."""
    callback = getattr(context.get("handle"), "_callback", None)
    return (getattr(callback, "__name__", "") == "_start_serving"
            and isinstance(context.get("exception"), (ValueError, OSError)))


async def serve(app: web.Application, host: str, port: int, api: ApiSettings) -> tuple[web.AppRunner, int]:
    loop = asyncio.get_running_loop()
    accept_log = AcceptErrorLog(loop)
    app.on_cleanup.append(accept_log.restore)
    # access_log=None: api.request replaces it. shutdown_timeout: cleanup() waits this long for requests in flight.
    runner = _Runner(app, ConnectionLimits(api.max_connections), shutdown_timeout=2.0, access_log=None,
                     keepalive_timeout=api.idle_timeout)
    await runner.setup()
    loop.set_exception_handler(accept_log)
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and api.max_connections > soft // 2:
        # Workers need descriptors too (pipes, lock files): past this the fd limit, not the cap, refuses clients.
        log.warning("api.max_connections_high", max_connections=api.max_connections, fd_limit=soft)
    return runner, runner.addresses[0][1]
