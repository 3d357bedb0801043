"""Signed stream tokens: how a browser's EventSource, which cannot send headers, opens one tenant's live events.

The web app's backend holds the secret and asks `POST /whatsapp/{tenant}/events-token`; the browser then opens
`GET /whatsapp/{tenant}/events?token=...`. A token is `<expiry, unix seconds>.<HMAC-SHA256 hex>` over the tenant and
the expiry, keyed with the API secret:
- stateless: the daemon stores nothing, and a restart keeps tokens valid;
- bound to one tenant and to the secret: rotating the secret revokes every token at once;
- it only opens that tenant's event stream (QR strings included: that is why the stream needs auth at all); it cannot
  start, stop or read anything else.
A stream opened with a token that expires later stays open; a reconnect after the expiry gets 401 and the page asks
its backend for a new token.
"""

from __future__ import annotations

import hashlib
import hmac

TTL = 3600  # seconds: long enough for a pairing page left open, short enough for a leaked URL to go stale
_DOMAIN = b"baileys-supervisor events v1"  # a token signs nothing else that the secret might sign one day


def _mac(secret: str, tenant: str, expires: int) -> str:
    msg = b"\0".join((_DOMAIN, tenant.encode("utf-8"), str(expires).encode("ascii")))
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def issue(secret: str, tenant: str, now: float, ttl: int = TTL) -> tuple[str, int]:
    """(token, expiry in unix seconds) for `tenant`'s event stream."""
    expires = int(now) + ttl
    return f"{expires}.{_mac(secret, tenant, expires)}", expires


def valid(secret: str, tenant: str, token: str, now: float) -> bool:
    """Whether `token` opens `tenant`'s stream at `now`. Never raises on junk."""
    expires_s, dot, mac = token.partition(".")
    if not (dot and expires_s.isascii() and expires_s.isdigit() and len(expires_s) <= 12 and mac.isascii()
            and len(mac) == 64):
        return False
    expires = int(expires_s)
    return now < expires and hmac.compare_digest(mac, _mac(secret, tenant, expires))
