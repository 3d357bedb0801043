"""The API's one middleware: the console, then auth or the web-page guard, the body limit, JSON for every error,
and the request log (supervisor/api.py's docstring has the order of checks).

One middleware, not one per concern: every aiohttp middleware layer is paid by every request, and GET /status is
polled (docs/benchmarks.md, "API under load").
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from . import stream_token
from .api_guard import no_secret_check
from .api_server import HTTP_CODES, error_response, limit_body
from .errors import SupervisorError
from .events import enabled_for, get_logger
from .ids import is_tenant_id
from .settings import ApiSettings
from .ui_routes import is_console_path

# /openapi.json is open on purpose: it describes the API (no secrets, no tenant data), and tools fetch it unauthenticated.
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})

log = get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_middleware(api: ApiSettings, ui: Handler) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The app's one middleware (every layer costs each request; this was four): the console (`ui`) first, outside
    everything else; then, in order, auth (401) or, without a secret, the web-page guard (403/415,
    supervisor/api_guard.py), then the body limit (413), then the handler; around all of it, every exception becomes
    a JSON error without a trace, and the request is timed and logged."""
    secret = api.secret
    guard = None if secret else no_secret_check(api)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_console_path(request.path):
            return await ui(request)
        started = time.monotonic()
        try:
            if secret:
                response = None
                if request.path not in OPEN_PATHS and not _authorized(request, secret) \
                        and not _stream_token_ok(request, secret):
                    response = error_response(401, "unauthorized",
                                              "missing or wrong secret (X-Internal-Secret or Bearer)")
            else:
                guard(request)  # type: ignore[misc]  # set whenever there is no secret
                response = None
            if response is None:
                response = await limit_body(request, api)  # not `or`: a Response is a mapping, empty is falsy
            if response is None:
                response = await handler(request)
        except SupervisorError as exc:
            response = error_response(exc.status, exc.code, exc.message, **_json_safe(exc.details))
        except web.HTTPException as exc:
            if exc.status < 400:  # redirects etc. are answers, not errors
                raise
            code = HTTP_CODES.get(exc.status, "http_error")
            message = exc.reason if exc.status != 413 else "request body too large"
            response = error_response(exc.status, code, message)
            if exc.status == 405:
                response.headers["Allow"] = exc.headers.get("Allow", "")
        except ConnectionError:  # the client went away mid-request: nobody to answer, nothing to log as an error
            raise  # aiohttp drops the connection quietly (api_server.ApiRequestHandler.handle_error)
        except Exception as exc:  # noqa: BLE001 - the client gets a generic 500, the log gets the type
            log.error("api.error", method=request.method, route=_route(request), error=type(exc).__name__,
                      exc_info=True)
            response = error_response(500, "internal", "internal error")
        # Successful reads (status/qr polling, health checks, scrapes) only at debug: rendering one info line per
        # request cost ~25-30 % of GET /status throughput; and at info the dropped debug event is not even built.
        # Errors (>= 400) and every mutating request stay at info.
        quiet = request.method in ("GET", "HEAD") and response.status < 400
        if not quiet or enabled_for(logging.DEBUG):
            tenant = request.match_info.get("tenant")
            (log.debug if quiet else log.info)(
                "api.request", method=request.method, route=_route(request),
                tenant=tenant if is_tenant_id(tenant) else None, status=response.status,
                duration_ms=round((time.monotonic() - started) * 1000, 2))
        return response

    return middleware


def _stream_token_ok(request: web.Request, secret: str) -> bool:
    """`?token=` opens one tenant's event stream and nothing else (supervisor/stream_token.py)."""
    token = request.query.get("token")
    if token is None or request.method != "GET" or _route(request) != "/whatsapp/{tenant}/events":
        return False
    tid = request.match_info.get("tenant")
    return is_tenant_id(tid) and stream_token.valid(secret, str(tid), token, time.time())


def _authorized(request: web.Request, secret: str) -> bool:
    provided = request.headers.get("X-Internal-Secret")
    if provided is None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            provided = auth[7:].strip()
    if not provided:
        return False
    # surrogateescape: aiohttp decodes header bytes that are not UTF-8 (0xff) to lone surrogates, which plain
    # .encode("utf-8") refuses with a 500; such a header is simply a wrong secret.
    return hmac.compare_digest(provided.encode("utf-8", "surrogateescape"), secret.encode("utf-8"))


def _route(request: web.Request) -> str:
    """The route template (bounded cardinality, no tenant ids or junk paths in metrics/logs)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


def _json_safe(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if k not in ("error", "message")}


