"""What keeps web pages out of an API that runs without a secret (docs/api-security.md).

Without `api.secret` the API binds loopback only (config.is_loopback), but a browser on the same machine can still
reach it: a page on any site can send a "simple" cross-site POST (`text/plain`, no CORS preflight) that logs a tenant
out, and a DNS-rebinding page (its own name resolving to 127.0.0.1) becomes same-origin and can read QR codes. So,
with no secret, a request is served only when:
  - its `Host` names this machine (`localhost`, `127.0.0.1`, `[::1]` or `api.host`; any port, so an ssh tunnel's
    local port works): a rebinding page sends its own name;
  - its `Origin`, if any, is the API's own (`http://` + that Host): a cross-site page sends its own origin, and every
    browser sends `Origin` on a cross-origin POST;
  - a POST that has a body says `Content-Type: application/json`, which no page can send cross-site without a CORS
    preflight (that this API never answers).
Non-browser clients (curl, the CLI, a backend) send no Origin and are unaffected. With a secret these checks are off:
a page cannot know the secret, and without CORS headers it cannot read an answer.
"""

from __future__ import annotations

from typing import Callable

from aiohttp import web

from .errors import SupervisorError
from .settings import ApiSettings

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_MAX_ECHO = 100  # how much of a refused header the error message repeats


class ForbiddenHost(SupervisorError):
    code = "forbidden_host"
    status = 403


class ForbiddenOrigin(SupervisorError):
    code = "forbidden_origin"
    status = 403


class UnsupportedMediaType(SupervisorError):
    code = "unsupported_media_type"
    status = 415


def host_name(host: str) -> str:
    """The name part of a Host header, lower-cased: `[::1]:3300` -> `::1`, `LocalHost:3300` -> `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


def no_secret_check(api: ApiSettings) -> Callable[[web.Request], None]:
    """The checks for an API without a secret (the API's middleware runs them only then; module docstring): raises
    ForbiddenHost, ForbiddenOrigin or UnsupportedMediaType, else returns. A plain function, not a middleware of its
    own: every middleware layer is paid by every request (docs/benchmarks.md, "API under load")."""
    allowed = LOOPBACK_NAMES | {api.host.lower()}  # api.host is a loopback address here (config.is_loopback)

    def check(request: web.Request) -> None:
        host = request.headers.get("Host")
        # No Host at all is an HTTP/1.0 tool, never a browser (the only client DNS rebinding can drive).
        if host is not None and host_name(host) not in allowed:
            raise ForbiddenHost(f"Host {host[:_MAX_ECHO]!r} is not this machine: without api.secret the API only "
                                f"answers requests addressed to localhost, 127.0.0.1, [::1] or {api.host}")
        origin = request.headers.get("Origin")
        if origin is not None and (host is None or origin.lower() != f"http://{host.lower()}"):
            raise ForbiddenOrigin(f"cross-origin request from {origin[:_MAX_ECHO]!r} refused: without api.secret "
                                  "the API does not serve web pages of other origins (docs/api-security.md)")
        if request.method == "POST" and request.body_exists and request.content_type != "application/json":
            raise UnsupportedMediaType("a POST with a body must be Content-Type: application/json "
                                       f"(got {request.content_type[:_MAX_ECHO]!r})")

    return check
