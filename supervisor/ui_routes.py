"""The operator console: `GET /ui/` serves the static page in `supervisor/ui/` (docs/ui.md).

The page is public on purpose (it holds no data: it signs in with the API secret itself, kept in the tab's
sessionStorage and sent as `X-Internal-Secret`), so it is served ahead of the API's checks instead of by a route: it
never reaches the API's auth, body-limit and origin checks, and it is no API route (supervisor/openapi.json lists the
API).
Every answer carries a strict Content-Security-Policy: the page has no inline script or style, and the QR is a
`data:` PNG from `GET /whatsapp/{t}/qr`, hence `img-src 'self' data:`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from . import doctor
from .states import CLOSE_CODES, reason_name

UI_DIR = Path(__file__).with_name("ui")
PREFIX = "/ui/"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".json": "application/json"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def doctor_texts() -> dict[str, object]:
    """The doctor's words for the page (one source: supervisor/doctor.py); `T` in a fix is the tenant id."""
    codes = {code: (entry.meaning, entry.fix) for code, entry in CLOSE_CODES.items()}
    return {
        "closeCodes": {str(code): {"meaning": m, "fix": f} for code, (m, f) in codes.items()},
        "states": {s: {"verdict": v, "text": t, "fix": f} for s, (v, t, f) in doctor._STATE_ADVICE.items()},
        "networkErrors": [{"needles": list(n), "fix": f} for n, f in doctor._NETWORK_ERRORS],
        "reasons": {reason_name(code): code for code in codes},  # Baileys' name -> code, for the event list
    }


def load_files() -> dict[str, tuple[bytes, str]]:
    """name -> (body, content type); read once: the files ship with the package and change only with it."""
    files = {p.name: (p.read_bytes(), TYPES[p.suffix]) for p in sorted(UI_DIR.iterdir()) if p.suffix in TYPES}
    files["doctor.json"] = (json.dumps(doctor_texts(), separators=(",", ":")).encode(), TYPES[".json"])
    return files


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = json.dumps({"error": code, "message": message})
    return web.Response(text=body, status=status, content_type="application/json", headers={**HEADERS, **headers})


def is_console_path(path: str) -> bool:
    return path == "/ui" or path.startswith(PREFIX)


def console(files: dict[str, tuple[bytes, str]]) -> Handler:
    """The answer for a console path (`is_console_path`). The API's middleware calls it before any of its checks
    (supervisor/api.py): an outer middleware of its own cost every API request one more layer."""
    etags = {name: '"' + hashlib.sha256(body).hexdigest()[:16] + '"' for name, (body, _) in files.items()}

    async def serve_ui(request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "the console is read-only: GET", Allow="GET, HEAD")
        if path == "/ui":
            raise web.HTTPMovedPermanently(PREFIX)
        name = path[len(PREFIX):] or "index.html"
        if name not in files:
            return _error(404, "not_found", "no such console file")
        body, ctype = files[name]
        headers = {**HEADERS, "ETag": etags[name]}
        if request.headers.get("If-None-Match") == etags[name]:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)

    return serve_ui
