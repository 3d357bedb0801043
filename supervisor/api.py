"""Control API (aiohttp): the seed's routes, constant-time auth, and JSON for every answer including errors.

Order of checks for a request: route (404/405) -> auth (401), or without a secret the web-page guard (403/415,
supervisor/api_guard.py) -> body size (413) -> tenant id (400) -> supervisor.
The tenant id is validated here, before the supervisor (and therefore the filesystem) sees it.
`make_app` takes everything it serves as arguments (the runner wires them): no attribute probing of the supervisor.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from . import api_cluster, stream_token, ui_routes
from .api_guard import no_secret_check
from .api_server import (HTTP_CODES, JSON_HEADERS, error_response, json_body, json_response, limit_body,
                         read_body, serve)
from .errors import BadRequest, SupervisorError, UnknownTenant
from .eventbus import EventBus
from .events import enabled_for, get_logger
from .ids import is_tenant_id, validate_phone, validate_tenant_id
from .settings import ApiSettings
from .sse import HEARTBEAT, stream
from .ui_routes import is_console_path
from .states import iso

if TYPE_CHECKING:
    from .metrics import Metrics
    from .webhook import WebhookForwarder

# What make_app serves. SUPERVISOR: the tenant operations of docs/design.md's Supervisor interface (a stub in tests).
SUPERVISOR: web.AppKey[Any] = web.AppKey("supervisor", object)
API: web.AppKey[ApiSettings] = web.AppKey("api", ApiSettings)
EVENTS: web.AppKey[EventBus | None] = web.AppKey("events")
SSE_HEARTBEAT: web.AppKey[float] = web.AppKey("sse_heartbeat", float)
METRICS: web.AppKey[Metrics | None] = web.AppKey("metrics")
WEBHOOK: web.AppKey[WebhookForwarder | None] = web.AppKey("webhook")
# /openapi.json is open on purpose: it describes the API (no secrets, no tenant data), and tools fetch it unauthenticated.
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
# `{tenant:[^/]*}` also matches the empty id, so `/whatsapp//start` is a clear 400 instead of a bare 404.
_T = "/whatsapp/{tenant:[^/]*}"

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


def _tenant(request: web.Request) -> str:
    return validate_tenant_id(request.match_info.get("tenant", ""))


def _json_safe(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if k not in ("error", "message")}


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request, request.app[API].body_timeout)
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    except RecursionError:  # `[[[[...` 60,000 deep fits in the body limit; the C decoder recurses per level
        raise BadRequest("request body is nested too deeply") from None
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


async def forget(request: web.Request) -> web.Response:
    """DELETE /whatsapp/{tenant}: forget a tenant that was never linked (Supervisor.forget_tenant)."""
    return json_response(await request.app[SUPERVISOR].forget_tenant(_tenant(request)))


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
    # The answer is a function of these four values alone: its JSON (~5 us for the ~1.4 KB data URL) is kept.
    key = (tid, raw, state, connected)
    body = _qr_bodies.get(key) if type(state) is str else None  # exact types: True == 1 would share an entry
    if body is None:
        body = json_body({"tenant": tid, "dataUrl": qrimg.png_data_url(raw) if raw else None, "qr": raw,
                          "state": state, "connected": connected})
        if len(_qr_bodies) >= _QR_BODIES_MAX:  # stale entries (old QRs, other states) go all at once
            _qr_bodies.clear()
        _qr_bodies[key] = body
    return web.Response(body=body, headers=_QR_HEADERS)


_qr_bodies: dict[tuple[str, str | None, Any, bool], bytes] = {}
_QR_BODIES_MAX = 1024
_QR_HEADERS = {**JSON_HEADERS, "Cache-Control": "no-store"}


async def pairing_code(request: web.Request) -> web.Response:
    tid = _tenant(request)
    data = await _json_body(request)
    digits = validate_phone(data.get("phone"))
    code = await request.app[SUPERVISOR].pairing_code(tid, digits)
    return json_response({"ok": True, "tenant": tid, "code": code})


async def metrics_route(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    assert m is not None  # the route exists only with a Metrics object
    body, content_type = m.render()
    # headers=, not content_type=: aiohttp refuses a content_type that carries parameters (version=0.0.4).
    return web.Response(body=body, headers={"Content-Type": content_type})


async def events_all(request: web.Request) -> web.StreamResponse:
    return await _events(request, None)


async def events_tenant(request: web.Request) -> web.StreamResponse:
    return await _events(request, _tenant(request))


async def _events(request: web.Request, tenant: str | None) -> web.StreamResponse:
    bus = request.app[EVENTS]
    assert bus is not None  # the routes exist only with an EventBus
    return await stream(request, bus, request.app[SUPERVISOR], tenant, request.app[SSE_HEARTBEAT])


async def events_token(request: web.Request) -> web.Response:
    tid = _tenant(request)
    secret = request.app[API].secret or ""  # without a secret the stream is open anyway
    token, expires = stream_token.issue(secret, tid, time.time())
    return json_response({"ok": True, "tenant": tid, "token": token, "expiresAt": iso(expires),
                          "url": f"/whatsapp/{tid}/events?token={token}"})


async def webhook_status(request: web.Request) -> web.Response:
    """The forwarder's counters for operators; all null/0 when `webhook.url` is unset (the spool is not opened)."""
    fw = request.app[WEBHOOK]
    if fw is None:
        return json_response({"enabled": False, "queued": 0, "deadLetters": None, "refused": 0})
    return json_response(await fw.stats())


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")


def make_app(supervisor: Any, api: ApiSettings, *, events: EventBus | None = None, metrics: Metrics | None = None,
             webhook: WebhookForwarder | None = None, sse_heartbeat: float = HEARTBEAT,
             outbox: Any = None) -> web.Application:
    """The control API around `supervisor`'s tenant operations (docs/design.md). `events` adds the SSE routes and
    `metrics` GET /metrics; GET /webhook answers "disabled" without a forwarder; the send API answers 503 without an
    `outbox` (supervisor/outbox_dispatch.py). Serve it with `start_api`."""
    # GET /ui/: the operator console, public static files outside the auth (supervisor/ui_routes.py)
    ui = ui_routes.console(ui_routes.load_files())
    app = web.Application(middlewares=[api_middleware(api, ui)], client_max_size=api.max_body_bytes)
    app[SUPERVISOR], app[API], app[EVENTS], app[SSE_HEARTBEAT] = supervisor, api, events, sse_heartbeat
    app[METRICS], app[WEBHOOK] = metrics, webhook
    # The polled routes first: aiohttp tries every `/whatsapp/{tenant}/...` route in registration order (a regex
    # each) until one matches. No two of them match the same path, so the order changes no answer.
    app.router.add_get(f"{_T}/status", status)
    app.router.add_get(f"{_T}/qr", qr)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/whatsapp", list_tenants)
    for name in ("start", "stop", "restart", "logout"):
        app.router.add_post(f"{_T}/{name}", _action(name))
    app.router.add_delete(_T, forget)
    app.router.add_post(f"{_T}/pairing-code", pairing_code)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/webhook", webhook_status)
    from .api_messages import add_message_routes  # imports this module: here, not at the top

    add_message_routes(app, outbox, _T)  # the send API and its durable outbox (supervisor/outbox_dispatch.py)
    if events is not None:
        app.router.add_get("/events", events_all)
        app.router.add_get(f"{_T}/events", events_tenant)
        app.router.add_post(f"{_T}/events-token", events_token)
    if metrics is not None:
        app.router.add_get("/metrics", metrics_route)
    api_cluster.add_routes(app)  # GET /cluster (cluster mode)
    return app


async def start_api(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port with its ApiSettings' connection limits (supervisor/api_server.py); returns the runner
    (stop with `await runner.cleanup()`) and the bound port (the one the kernel chose for port 0)."""
    runner, bound = await serve(app, host, port, app[API])
    if not app[API].secret:
        log.warning("api.auth_disabled", host=host, port=bound,
                    message="no api.secret: every local process can control tenants and read QR codes; web pages "
                            "are kept out by Host/Origin/Content-Type checks (docs/api-security.md)")
    return runner, bound
