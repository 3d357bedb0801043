"""The `webhook:` section of the config (docs/webhook.md), validated as strictly as the rest of config.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .settings import WebhookSettings

URL_RE = re.compile(r"^https?://[^\s/]+", re.IGNORECASE)
_KEYS = ("url", "secret", "timeout", "initial_delay", "multiplier", "max_delay", "jitter", "max_items", "max_bytes",
         "spool_path")


def webhook_config(ctx: Any, raw: Any, *, storage_root: Path, api_secret: str | None) -> WebhookSettings:
    from .config_types import _backoff, _int, _mapping, _str  # the shared scalar validators

    d = _mapping(ctx, "webhook", raw, _KEYS)
    out: dict[str, Any] = {}
    if d.get("url") is not None:
        url = _str(ctx, "webhook.url", d["url"])
        if not URL_RE.match(url):
            raise ctx.fail("webhook.url", "an http:// or https:// URL", url)
        out["url"] = url
    # The seed's web app checks the same X-Internal-Secret it uses to call us: default to the API secret.
    # An explicit empty string turns the header off.
    if "secret" in d and d["secret"] is not None:
        out["secret"] = _str(ctx, "webhook.secret", d["secret"]) or None
    else:
        out["secret"] = api_secret
    out.update(_backoff(ctx, "webhook", d, ("timeout",)))
    if "max_items" in d:
        out["max_items"] = _int(ctx, "webhook.max_items", d["max_items"], lo=1)
    if d.get("max_bytes") is not None:
        out["max_bytes"] = _int(ctx, "webhook.max_bytes", d["max_bytes"], lo=1)
    if d.get("spool_path") is not None:
        s = _str(ctx, "webhook.spool_path", d["spool_path"])
        if not s:
            raise ctx.fail("webhook.spool_path", "a non-empty path", s)
        p = Path(s).expanduser()
        out["spool_path"] = p if p.is_absolute() else (storage_root / p)  # relative to storage, not the file
    w = WebhookSettings(**out)
    if w.max_delay < w.initial_delay:
        raise ctx.fail("webhook.max_delay", f"a number >= initial_delay ({w.initial_delay})", w.max_delay)
    return w
