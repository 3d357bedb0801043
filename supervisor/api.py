"""Control API (aiohttp): the seed's routes, constant-time auth, and JSON for every answer including errors.

Order of checks for a request: route (404/405) -> auth (401), or without a secret the web-page guard (403/415,
supervisor/api_guard.py) -> body size (413) -> tenant id (400) -> supervisor.
The tenant id is validated here, before the supervisor (and therefore the filesystem) sees it.
`make_app` takes everything it serves as arguments (the runner wires them): no attribute probing of the supervisor.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from . import api_cluster, stream_token, ui_routes
from .api_middleware import api_middleware
from .api_server import JSON_HEADERS, error_response, json_body, json_response, read_body, serve
from .errors import BadRequest, UnknownTenant
from .eventbus import EventBus
from .events import get_logger
from .ids import validate_phone, validate_tenant_id
from .settings import ApiSettings
from .sse import HEARTBEAT, stream
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
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
# `{tenant:[^/]*}` also matches the empty id, so `/whatsapp//start` is a clear 400 instead of a bare 404.
_T = "/whatsapp/{tenant:[^/]*}"

log = get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _tenant(request: web.Request) -> str:
    return validate_tenant_id(request.match_info.get("tenant", ""))


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
    # The answer is a function of the tenant and these three values alone: its JSON (~5 us for the ~1.4 KB data URL)
    # is kept, the last one per tenant (an expired QR is not kept past the next poll).
    key = (raw, state, connected)
    kept = _qr_bodies.get(tid)
    if kept is not None and kept[0] == key and type(state) is str:  # exact types: True == 1 would match
        body = kept[1]
    else:
        body = json_body({"tenant": tid, "dataUrl": qrimg.png_data_url(raw) if raw else None, "qr": raw,
                          "state": state, "connected": connected})
        if len(_qr_bodies) >= _QR_BODIES_MAX:  # many ids polled (unknown ones too): start over
            _qr_bodies.clear()
        _qr_bodies[tid] = (key, body)
    return web.Response(body=body, headers=_QR_HEADERS)


_qr_bodies: dict[str, tuple[tuple[str | None, Any, bool], bytes]] = {}
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
    from . import api_webhook  # imports this module: here, not at the top

    api_webhook.add_routes(app)  # the dead letters: list, retry
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
