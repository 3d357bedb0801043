"""The `outbox:` section of the config (README "Sending messages"), as strict as the rest of config.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .settings import OutboxSettings

_KEYS = ("rate", "burst", "send_timeout", "max_attempts", "keep_days", "path")


def outbox_config(ctx: Any, raw: Any, *, storage_root: Path) -> OutboxSettings:
    from .config_types import _float, _int, _mapping, _str  # the shared scalar validators

    d = _mapping(ctx, "outbox", raw, _KEYS)
    out: dict[str, Any] = {}
    for key in ("rate", "send_timeout", "keep_days"):
        if key in d:
            out[key] = _float(ctx, f"outbox.{key}", d[key], lambda f: f > 0, "a number > 0")
    for key in ("burst", "max_attempts"):
        if key in d:
            out[key] = _int(ctx, f"outbox.{key}", d[key], lo=1)
    if d.get("path") is not None:
        s = _str(ctx, "outbox.path", d["path"])
        if not s:
            raise ctx.fail("outbox.path", "a non-empty path", s)
        p = Path(s).expanduser()
        out["path"] = p if p.is_absolute() else (storage_root / p)
    return OutboxSettings(**out)
