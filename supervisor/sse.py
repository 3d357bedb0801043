"""Server-Sent Events for `GET /events` and `GET /whatsapp/{tenant}/events` (docs/events.md, "Live events").

Each stream starts with a `snapshot` event (current status, no id) unless the client resumes with `Last-Event-ID`
(header, or `?lastEventId=` for clients that cannot set headers), then carries `state` and `qr` events with ids.
A resume that cannot be exact (eventbus.py: another run's or node's id, the buffer, a tenant that moved) gets a
`reset` and then the `snapshot`, so the client has the current status without another request.
A comment line (`: keep-alive`) every `heartbeat` seconds keeps proxies from closing an idle stream and lets the
client notice a dead daemon. Auth is the API's auth middleware: QR strings only ever go to authenticated clients.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from .eventbus import Event, EventBus
from .errors import BadRequest, UnknownTenant
from .events import get_logger

HEARTBEAT = 15.0
_DIGITS = re.compile(r"[0-9]{1,18}")
log = get_logger()


def format_event(ev: Event) -> bytes:
    lines = []
    if ev.id is not None:
        lines.append(f"id: {ev.id}")
    lines.append(f"event: {ev.type}")
    lines.append("data: " + json.dumps(ev.data, separators=(",", ":"), default=str))  # one line: no \n inside
    return ("\n".join(lines) + "\n\n").encode()


def _last_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    if raw is None or raw == "":
        return None
    if not _DIGITS.fullmatch(raw):  # not str.isdigit(): "²" is a digit to it, and int("²") raises
        raise BadRequest("Last-Event-ID must be a non-negative integer from this stream")
    return int(raw)


async def stream(request: web.Request, bus: EventBus, sup: Any, tenant: str | None,
                 heartbeat: float = HEARTBEAT) -> web.StreamResponse:
    """`bus` carries the events; `sup` answers the snapshot (statuses() / status(tenant))."""
    last_id = _last_id(request)
    sub = bus.subscribe(tenant, last_id)  # before the snapshot: nothing can fall between the two
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})  # nginx: do not buffer the stream
    await resp.prepare(request)
    try:
        await resp.write(b"retry: 2000\n\n")
        if sub.reset:  # not resumable (another run or node, the buffer, a move): the reset, then the status now
            await resp.write(format_event(sub.queue.get_nowait()))  # the backlog's first item
        if last_id is None or sub.reset:
            await resp.write(format_event(Event(None, "snapshot", tenant, _snapshot(bus, sup, tenant))))
        while True:
            try:
                ev = await sub.get(timeout=heartbeat)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if ev is None:  # daemon shutdown or this client fell behind: it reconnects with Last-Event-ID
                break
            await resp.write(format_event(ev))
    except ConnectionError:
        # The client went away (a closed browser tab): the normal end of a stream, not an error. Found at the next
        # write, i.e. within one heartbeat. The response is returned as it is; aiohttp skips the rest quietly.
        log.debug("sse.client_closed", tenant=tenant)
    finally:
        sub.close()
    return resp


def _snapshot(bus: EventBus, sup: Any, tenant: str | None) -> dict[str, Any]:
    if tenant is None:
        return {"lastEventId": bus.last_id, "tenants": sup.statuses()}
    try:
        st = sup.status(tenant)
    except UnknownTenant:
        st = None
    return {"lastEventId": bus.last_id, "tenant": tenant, "status": st}
