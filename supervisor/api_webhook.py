"""Dead letters through the API (docs/webhook.md "Dead letters"): list them, put one back in its tenant's queue.
Registered by `api.make_app`; the same routes and answers on the SQLite spool and on the cluster's PostgreSQL one
(there any node answers: the rows are shared, and the tenant's owner delivers a requeued item).

    GET  /webhook/dead-letters?tenant=&limit=&after=&payload=   oldest first (by seq); `next` is the cursor
    POST /webhook/dead-letters/{id}/retry                          idempotent; 404 dead_letter_not_found,
                                                                   409 already_pending, 503 spool_full
Without `webhook.url` both answer 404 `webhook_disabled` (no spool is open). Payloads (message contents, phone
numbers) are returned only on `payload=true`, behind the API's auth, and never logged.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from .api import WEBHOOK
from .api_server import json_response
from .errors import BadRequest, SupervisorError
from .ids import validate_tenant_id
from .states import iso

MAX_LIMIT = 1000
ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")  # the row's transport key: a uuid (older spools: any such string)
_BOOL = {"true": True, "1": True, "false": False, "0": False}


class WebhookDisabled(SupervisorError):
    code = "webhook_disabled"
    status = 404


def _forwarder(request: web.Request) -> Any:
    fw = request.app[WEBHOOK]
    if fw is None:
        raise WebhookDisabled("the webhook is off (webhook.url is not set): there are no dead letters")
    return fw


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:  # isdigit: no sign, no spaces; the range bounds its length
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}, got {raw[:20]!r}")
    return int(raw)


def _item(d: dict, with_payload: bool) -> dict[str, Any]:
    out = {"id": d["key"], "seq": d["seq"], "tenant": d["tenant"], "eventId": d["event_id"],
           "idempotencyKey": d["event_id"] or d["key"], "status": d["status"], "attempts": d["attempts"],
           "createdAt": iso(d["created_at"]), "deadAt": iso(d["dead_at"]), "size": d["size"]}
    if with_payload:
        out["payload"] = json.loads(d["body"])
    return out


async def list_dead_letters(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant")
    if tenant is not None:
        validate_tenant_id(tenant)
    limit = _int(request, "limit", 100, 1, MAX_LIMIT)
    after = _int(request, "after", 0, 0, 2**63 - 1)
    raw = request.query.get("payload", "false")
    if raw not in _BOOL:
        raise BadRequest(f"payload must be true or false, got {raw[:20]!r}")
    rows = await _forwarder(request).dead_letters(tenant, limit, after)
    return json_response({"deadLetters": [_item(d, _BOOL[raw]) for d in rows],
                          "next": rows[-1]["seq"] if len(rows) == limit else None})


async def retry_dead_letter(request: web.Request) -> web.Response:
    key = request.match_info["id"]
    if not ID_RE.fullmatch(key):
        raise BadRequest(f"invalid dead letter id {key[:80]!r}")
    return json_response({"ok": True, **await _forwarder(request).requeue(key)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/webhook/dead-letters", list_dead_letters)
    app.router.add_post("/webhook/dead-letters/{id}/retry", retry_dead_letter)
