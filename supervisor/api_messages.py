"""The send API (README "Sending messages"): `POST /whatsapp/{tenant}/messages` into the durable outbox, and
`GET /whatsapp/{tenant}/messages/{messageId}` for its status. Registered by `api.make_app`; the outbox itself is
supervisor/outbox_dispatch.py.

Checks, in order after the app's own (route, auth, body size, tenant id): the Idempotency-Key header, the body, the
tenant is known (404 otherwise: a typo must not queue messages forever). A known tenant that is not connected is fine:
its messages wait in the outbox.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from .api import SUPERVISOR, _json_body, _tenant
from .api_server import error_response, json_response
from .errors import BadRequest, SupervisorError
from .ids import validate_phone

OUTBOX: web.AppKey[Any] = web.AppKey("outbox")
KEY_RE = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces: what clients put in headers
JID_RE = re.compile(r"[0-9]{1,20}@(s\.whatsapp\.net|lid)")
WA_ID_RE = re.compile(r"[A-Za-z0-9]{1,128}")
MESSAGE_ID_RE = re.compile(r"msg_[0-9a-f]{24}")
MAX_TEXT_BYTES = 60_000  # the text, JSON-encoded, must fit the worker's 64 KiB command line with room for the rest
_BODY_KEYS = frozenset({"to", "text", "replyTo"})
_REPLY_KEYS = frozenset({"id", "fromMe", "participant", "text"})


class OutboxUnavailable(SupervisorError):
    code = "outbox_unavailable"
    status = 503


def _to(value: Any) -> str:
    """`to` as a user jid: digits (country code first, as for pairing codes) become `<digits>@s.whatsapp.net`."""
    if isinstance(value, str) and JID_RE.fullmatch(value):
        return value
    if isinstance(value, str) and "@" in value:
        raise BadRequest("to must be the digits of a phone number (country code first) or a user jid "
                         "(<digits>@s.whatsapp.net or <digits>@lid); groups are not supported")
    try:
        return validate_phone(value) + "@s.whatsapp.net"
    except BadRequest:
        raise BadRequest("to must be the digits of a phone number, country code first (e.g. 972501234567), or a "
                         "user jid (<digits>@s.whatsapp.net or <digits>@lid)") from None


def _reply_to(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not set(value) <= _REPLY_KEYS or not isinstance(value.get("id"), str) \
            or not WA_ID_RE.fullmatch(value["id"]):
        raise BadRequest('replyTo must be {"id": "<WhatsApp message id>", "fromMe"?: bool, "participant"?: jid, '
                         '"text"?: string}')
    if "fromMe" in value and not isinstance(value["fromMe"], bool):
        raise BadRequest("replyTo.fromMe must be true or false")
    participant = value.get("participant")
    if "participant" in value and not (isinstance(participant, str) and JID_RE.fullmatch(participant)):
        raise BadRequest("replyTo.participant must be a user jid")
    if "text" in value and not (isinstance(value["text"], str) and len(value["text"]) <= 4096):
        raise BadRequest("replyTo.text must be a string of at most 4096 characters")
    return value


def parse_send(data: dict[str, Any]) -> dict[str, Any]:
    """The request body, checked and normalised (`to` as a jid); BadRequest says what is wrong."""
    extra = set(data) - _BODY_KEYS
    if extra:
        raise BadRequest(f"unknown field(s) {sorted(extra)[:5]}: the body is {{\"to\", \"text\", \"replyTo\"?}}")
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("text must be a non-empty string")
    if len(json.dumps(text, ensure_ascii=False).encode()) > MAX_TEXT_BYTES:
        raise BadRequest(f"text is too long (at most {MAX_TEXT_BYTES} bytes as JSON)")
    body: dict[str, Any] = {"to": _to(data.get("to")), "text": text}
    if data.get("replyTo") is not None:
        body["replyTo"] = _reply_to(data["replyTo"])
    return body


def _outbox(request: web.Request) -> Any:
    box = request.app[OUTBOX]
    if box is None:
        raise OutboxUnavailable("sending is not available in this daemon: another daemon on this storage owns the "
                                "outbox (outbox.locked in its log)")
    return box


async def post_message(request: web.Request) -> web.Response:
    tid = _tenant(request)
    key = request.headers.get("Idempotency-Key")
    if key is None or not KEY_RE.fullmatch(key):
        raise BadRequest("the Idempotency-Key header is required: 1-200 printable ASCII characters, no spaces "
                         "(e.g. a uuid); a retry with the same key and body is answered, not sent again")
    body = parse_send(await _json_body(request))
    box = _outbox(request)
    request.app[SUPERVISOR].status(tid)  # UnknownTenant (404): never started here and no auth on disk
    answer, created = await box.submit(tid, key, body)
    response = json_response(answer, status=202)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def get_message(request: web.Request) -> web.Response:
    tid = _tenant(request)
    message_id = request.match_info.get("messageId", "")
    found = await _outbox(request).get(tid, message_id) if MESSAGE_ID_RE.fullmatch(message_id) else None
    if found is None:
        return error_response(404, "unknown_message", f"no message {message_id[:40]!r} for tenant {tid}")
    return json_response(found)


def add_message_routes(app: web.Application, outbox: Any, tenant_path: str) -> None:
    """Always registered (the routes are in openapi.json); without an outbox they answer 503."""
    app[OUTBOX] = outbox
    app.router.add_post(f"{tenant_path}/messages", post_message)
    app.router.add_get(f"{tenant_path}/messages/{{messageId}}", get_message)
