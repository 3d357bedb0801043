"""Control API (aiohttp): the seed's routes, constant-time auth, and JSON for every answer including errors.

Order of checks for a request: route (404/405) -> auth (401) -> body size (413) -> tenant id (400) -> supervisor.
The tenant id is validated here, before the supervisor (and therefore the filesystem) sees it.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from .errors import BadRequest, InvalidTenantId, SupervisorError, UnknownTenant
from . import stream_token
from .events import get_logger
from .states import iso

SUPERVISOR: web.AppKey[Any] = web.AppKey("supervisor", object)
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Digits of an international number without '+', E.164 allows at most 15.
PHONE_RE = re.compile(r"^[0-9]{6,15}$")
# /openapi.json is open on purpose: it describes the API (no secrets, no tenant data), and tools fetch it unauthenticated.
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}
# `{tenant:[^/]*}` also matches the empty id, so `/whatsapp//start` is a clear 400 instead of a bare 404.
_T = "/whatsapp/{tenant:[^/]*}"

log = get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


def error_response(status: int, code: str, message: str, **details: Any) -> web.Response:
    return json_response({"error": code, "message": message, **details}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: times and logs the request, and turns every exception into a JSON error without a trace."""
    started = time.monotonic()
    try:
        response = await handler(request)
    except SupervisorError as exc:
        response = error_response(exc.status, exc.code, exc.message, **_json_safe(exc.details))
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects etc. are answers, not errors
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 413 else "request body too large"
        response = error_response(exc.status, code, message)
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "")
    except Exception as exc:  # noqa: BLE001 - the client gets a generic 500, the log gets the type
        log.error("api.error", method=request.method, route=_route(request), error=type(exc).__name__,
                  exc_info=True)
        response = error_response(500, "internal", "internal error")
    # Successful reads (status/qr polling, health checks, scrapes) only at debug: rendering one info line per
    # request cost ~25-30 % of GET /status throughput. Errors (>= 400) and every mutating request stay at info.
    quiet = request.method in ("GET", "HEAD") and response.status < 400
    (log.debug if quiet else log.info)(
        "api.request",
        method=request.method,
        route=_route(request),
        tenant=request.match_info.get("tenant") if _valid_tenant(request.match_info.get("tenant")) else None,
        status=response.status,
        duration_ms=round((time.monotonic() - started) * 1000, 2),
    )
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    secret = request.app[SUPERVISOR].settings.api.secret
    if secret and request.path not in OPEN_PATHS and not _authorized(request, secret) \
            and not _stream_token_ok(request, secret):
        return error_response(401, "unauthorized", "missing or wrong secret (X-Internal-Secret or Bearer)")
    return await handler(request)


def _stream_token_ok(request: web.Request, secret: str) -> bool:
    """`?token=` opens one tenant's event stream and nothing else (supervisor/stream_token.py)."""
    token = request.query.get("token")
    if token is None or request.method != "GET" or _route(request) != "/whatsapp/{tenant}/events":
        return False
    tid = request.match_info.get("tenant")
    return _valid_tenant(tid) and stream_token.valid(secret, str(tid), token, time.time())


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 before any handler runs, also for routes that ignore their body (a 1 MiB POST /start)."""
    limit = request.app[SUPERVISOR].settings.api.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, "body_too_large", f"request body over {limit} bytes")
    if request.body_exists and request.content_length is None:
        await request.read()  # chunked: aiohttp enforces client_max_size while reading -> HTTP 413
    return await handler(request)


def _authorized(request: web.Request, secret: str) -> bool:
    provided = request.headers.get("X-Internal-Secret")
    if provided is None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            provided = auth[7:].strip()
    if not provided:
        return False
    return hmac.compare_digest(provided.encode("utf-8"), secret.encode("utf-8"))


def _route(request: web.Request) -> str:
    """The route template (bounded cardinality, no tenant ids or junk paths in metrics/logs)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


def _valid_tenant(tid: str | None) -> bool:
    return tid is not None and TENANT_RE.match(tid) is not None


def _tenant(request: web.Request) -> str:
    tid = request.match_info.get("tenant", "")
    if not _valid_tenant(tid):
        # Echo a bounded, repr'd id only: the message must stay readable even for hostile input.
        raise InvalidTenantId(f"invalid tenant id {tid[:80]!r}: expected ^[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}$")
    return tid


def _json_safe(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if k not in ("error", "message")}


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


# -- handlers -------------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return json_response(request.app[SUPERVISOR].health())


async def list_tenants(request: web.Request) -> web.Response:
    return json_response({"tenants": request.app[SUPERVISOR].statuses()})


def _action(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        tid = _tenant(request)
        result = await getattr(request.app[SUPERVISOR], f"{name}_tenant")(tid)
        return json_response({"ok": True, **result})

    handler.__name__ = f"{name}_tenant"
    return handler


async def status(request: web.Request) -> web.Response:
    return json_response(request.app[SUPERVISOR].status(_tenant(request)))


async def qr(request: web.Request) -> web.StreamResponse:
    """Always 200 JSON for the web app (the seed's "Unexpected end of JSON input" fix); images on request."""
    tid = _tenant(request)
    sup = request.app[SUPERVISOR]
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "png", "svg"):
        raise BadRequest(f"format must be json, png or svg, got {fmt[:20]!r}")
    try:
        raw = sup.qr(tid)
    except UnknownTenant:  # never started: "no QR yet", which the web app must get as JSON, not a 404
        raw = None
    if raw is not None:
        from . import qr as qrimg  # imported on use: everything else keeps working even if segno is broken
    if fmt != "json":
        if raw is None:
            return error_response(404, "no_qr", "no QR code right now")
        if fmt == "png":
            return web.Response(body=qrimg.png_bytes(raw), content_type="image/png",
                                headers={"Cache-Control": "no-store"})
        return web.Response(text=qrimg.svg(raw), content_type="image/svg+xml", headers={"Cache-Control": "no-store"})
    try:
        st = sup.status(tid)
        state, connected = st.get("state"), bool(st.get("connected"))
    except UnknownTenant:
        state, connected = "stopped", False
    body = {"tenant": tid, "dataUrl": qrimg.png_data_url(raw) if raw else None, "qr": raw,
            "state": state, "connected": connected}
    response = json_response(body)
    response.headers["Cache-Control"] = "no-store"
    return response


async def pairing_code(request: web.Request) -> web.Response:
    tid = _tenant(request)
    data = await _json_body(request)
    phone = data.get("phone")
    if not isinstance(phone, (str, int)) or isinstance(phone, bool):
        raise BadRequest('body must be {"phone": "<international number>"}')
    digits = re.sub(r"[\s()+.-]", "", str(phone))
    if not PHONE_RE.match(digits):
        raise BadRequest("phone must be an international number of 6 to 15 digits, e.g. 972501234567")
    code = await request.app[SUPERVISOR].pairing_code(tid, digits)
    return json_response({"ok": True, "tenant": tid, "code": code})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[SUPERVISOR].metrics.render()
    # headers=, not content_type=: aiohttp refuses a content_type that carries parameters (version=0.0.4).
    return web.Response(body=body, headers={"Content-Type": content_type})


async def events_all(request: web.Request) -> web.StreamResponse:
    from .sse import stream

    return await stream(request, request.app[SUPERVISOR], None)


async def events_tenant(request: web.Request) -> web.StreamResponse:
    from .sse import stream

    return await stream(request, request.app[SUPERVISOR], _tenant(request))


async def events_token(request: web.Request) -> web.Response:
    tid = _tenant(request)
    secret = request.app[SUPERVISOR].settings.api.secret or ""  # without a secret the stream is open anyway
    token, expires = stream_token.issue(secret, tid, time.time())
    return json_response({"ok": True, "tenant": tid, "token": token, "expiresAt": iso(expires),
                          "url": f"/whatsapp/{tid}/events?token={token}"})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")


def make_app(supervisor: Any) -> web.Application:
    """The control API around a `Supervisor` (see docs/design.md). The daemon serves it with AppRunner/TCPSite."""
    limit = supervisor.settings.api.max_body_bytes
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware, body_limit_middleware], client_max_size=limit
    )
    app[SUPERVISOR] = supervisor
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/whatsapp", list_tenants)
    for name in ("start", "stop", "restart", "logout"):
        app.router.add_post(f"{_T}/{name}", _action(name))
    app.router.add_get(f"{_T}/status", status)
    app.router.add_get(f"{_T}/qr", qr)
    app.router.add_post(f"{_T}/pairing-code", pairing_code)
    app.router.add_get("/openapi.json", openapi)
    if getattr(supervisor, "events", None) is not None:  # supervisor/eventbus.py: live events (SSE)
        app.router.add_get("/events", events_all)
        app.router.add_get(f"{_T}/events", events_tenant)
        app.router.add_post(f"{_T}/events-token", events_token)
    if getattr(supervisor, "metrics", None) is not None:  # supervisor/metrics.py, when the daemon owns one
        app.router.add_get("/metrics", metrics)
    return app


async def start_api(supervisor: Any, host: str | None = None, port: int | None = None) -> tuple[web.AppRunner, int]:
    """Serve `make_app(supervisor)` on host:port (defaults from settings). Returns the runner and the bound port
    (useful with port 0). Stop with `await runner.cleanup()`."""
    api = supervisor.settings.api
    runner = web.AppRunner(make_app(supervisor), access_log=None)  # api.request replaces the access log
    await runner.setup()
    site = web.TCPSite(runner, host or api.host, api.port if port is None else port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []  # noqa: SLF001 - the only way to learn port 0's port
    bound = sockets[0].getsockname()[1] if sockets else (api.port if port is None else port)
    return runner, bound
