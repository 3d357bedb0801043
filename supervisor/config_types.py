"""The strict scalar validators of the config loader (config.py, config_webhook.py): each checks one value, and a
bad one becomes a ConfigError naming the file, the key path, what was expected and what was found. Split out of
config.py (section parsing stays there); behaviour unchanged."""

from __future__ import annotations

import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError


class _Ctx:
    """Where we are: the file (for messages) and its directory (for relative paths)."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base

    def fail(self, path: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: expected {expected}, got {value!r}", key=path, file=self.source)


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _mapping(ctx: _Ctx, path: str, raw: Any, allowed: tuple[str, ...] | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ctx.fail(path or "<top level>", "a mapping", raw)
    if allowed is not None:
        for key in raw:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                raise ConfigError(
                    f"{ctx.source}: {where}: unknown key (allowed: {', '.join(allowed)})", key=where, file=ctx.source
                )
    return raw


def _str(ctx: _Ctx, path: str, v: Any) -> str:
    # NUL bytes are refused everywhere: paths, argv and env cannot carry them (ValueError much later otherwise).
    if not isinstance(v, str) or "\x00" in v:
        raise ctx.fail(path, "a string without NUL bytes", v)
    return v


def _choice(ctx: _Ctx, path: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise ctx.fail(path, "one of " + "|".join(choices), v)
    return v


def _bool(ctx: _Ctx, path: str, v: Any) -> bool:
    if not isinstance(v, bool):  # YAML 1.1 yes/no/on/off already arrive as bool; "true" (a string) does not
        raise ctx.fail(path, "true or false", v)
    return v


def _int(ctx: _Ctx, path: str, v: Any, lo: int | None = None, hi: int | None = None, what: str | None = None) -> int:
    ok = isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and (hi is None or v <= hi)
    if not ok:
        raise ctx.fail(path, what or (f"an integer >= {lo}" if lo is not None else "an integer"), v)
    return v


def _float(ctx: _Ctx, path: str, v: Any, pred: Callable[[float], bool], what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ctx.fail(path, what, v)
    try:
        f = float(v)  # a huge YAML int overflows here (found by tests/test_fuzz_config.py)
    except OverflowError:
        raise ctx.fail(path, what, v) from None
    if not math.isfinite(f) or not pred(f):
        raise ctx.fail(path, what, v)
    return f


def _pos_float(ctx: _Ctx, path: str, v: Any) -> float:
    return _float(ctx, path, v, lambda x: x > 0, "a number > 0")


def _backoff(ctx: _Ctx, section: str, d: dict[str, Any], positive: tuple[str, ...]) -> dict[str, Any]:
    """The backoff numbers shared by `restart:` and `webhook:` (plus the section's other positive floats)."""
    out: dict[str, Any] = {}
    for name in ("initial_delay", "max_delay", *positive):
        if name in d:
            out[name] = _pos_float(ctx, f"{section}.{name}", d[name])
    if "multiplier" in d:
        out["multiplier"] = _float(ctx, f"{section}.multiplier", d["multiplier"], lambda x: x >= 1, "a number >= 1")
    if "jitter" in d:
        out["jitter"] = _float(ctx, f"{section}.jitter", d["jitter"], lambda x: 0 <= x < 1, "a number in [0, 1)")
    return out


def _path(ctx: _Ctx, path: str, v: Any) -> Path:
    s = _str(ctx, path, v)
    if not s:
        raise ctx.fail(path, "a non-empty path", v)
    p = Path(os.path.expanduser(s))
    return p if p.is_absolute() else (ctx.base / p).resolve()
