"""Structured events: structlog set-up, one JSON object per line on stdout, secrets scrubbed before rendering.

Every event carries `event`, `ts` (ISO-8601 UTC), `level` and `pid`. The scrubber runs last before the renderer,
so no code path (including a careless `log.info("x", headers=request.headers)`) can write a secret, a QR string,
creds or a message body to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import traceback
from typing import Any, Mapping, MutableMapping, TextIO

import structlog

REDACTED = "[redacted]"

# A key is sensitive when its lower-cased name contains one of these (x-internal-secret, access_token, qr, ...).
_SENSITIVE_PARTS = ("secret", "token", "password", "passwd", "authorization", "cookie", "creds", "credential")
# ...or equals one of these exactly (substring matching would also hit e.g. "messages_count" or "hasQR").
_SENSITIVE_EXACT = frozenset(
    {"qr", "qrcode", "qr_code", "dataurl", "data_url", "body", "text", "messages", "message_body", "payload",
     "pairing_code", "phone", "private_key", "noise_key"}
)
# `code` is deliberately not listed: close codes and error codes are what operators need to read.
_MAX_DEPTH = 6
# Keys whose string values are identifiers the operator chose and needs to correlate lines: kept as they are (so a
# tenant id must not be a phone number; README "Logs").
_VALUE_KEPT = frozenset({"tenant", "event", "ts", "level"})

# By value: a careless field name (`me`, `message`, a library's free text) must not carry a number or a key either.
# - WhatsApp JIDs (972501234567:12@s.whatsapp.net, ...@lid, groups): the user part goes, the server stays readable.
# - Node's inspection of key material: <Buffer 05 1a ...>, Uint8Array(32) [ 12, 34, ... ].
# - hex runs >= 32 (a 16-byte key; message ids are ~22) and base64 runs >= 40 with digits and both cases (a 32-byte
#   key is 43-44 characters; paths and words lack one of the three).
# - digit runs >= 9 (an international number with its country code; +972 50-123-4567 spelt with separators too).
_VALUE_PATTERNS = re.compile(
    # (each alternative starts only where its run starts, and the JID's user part is bounded: linear time on any
    # input, also a 64 KiB line without a space)
    r"(?P<jid>(?<![^\s@'\"<>(){}\[\],;=])[^\s@'\"<>(){}\[\],;=]{1,96}"
    r"@(?=(?:s\.whatsapp\.net|c\.us|g\.us|lid|broadcast|newsletter|hosted(?:\.lid)?)\b))"
    r"|(?P<buffer><Buffer(?: [0-9a-f]{2})+(?: \.\.\. \d+ more bytes)?>?)"
    r"|(?P<bytes>\[\s*\d{1,3}(?:,\s*\d{1,3}){7,}(?:,\s*\.\.\. \d+ more items?)?\s*\]?)"
    r"|(?P<hex>(?<![0-9A-Za-z])[0-9A-Fa-f]{32,}(?![0-9A-Za-z]))"
    r"|(?P<b64>(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*\d)(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[a-z])"
    r"[A-Za-z0-9+/]{40,}={0,2})"
    r"|(?P<phone>\+\d(?:[ -]?\d){7,14}|\d{9,})"
)
_VALUE_REPLACEMENT = {"jid": REDACTED + "@", "buffer": "<Buffer [redacted]>", "bytes": "[bytes redacted]",
                      "hex": REDACTED, "b64": REDACTED, "phone": REDACTED}


# Every pattern above needs a digit or an "@" (hex keys and base64 without a digit: ~1e-14 and excluded): the common
# value without either costs one fast C scan instead of the alternation at every position.
_MAYBE_SENSITIVE = re.compile(r"[0-9@]")


def scrub_text(text: str) -> str:
    """`text` with phone numbers, JIDs' user parts and key material replaced (idempotent)."""
    if len(text) < 9 or not _MAYBE_SENSITIVE.search(text):
        return text
    return _VALUE_PATTERNS.sub(lambda m: _VALUE_REPLACEMENT[m.lastgroup or "phone"], text)


def is_sensitive(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return k in _SENSITIVE_EXACT or any(part in k for part in _SENSITIVE_PARTS)


def scrub(value: Any, depth: int = 0) -> Any:
    """Return a copy of `value` with sensitive keys redacted and every string scrubbed by value (`scrub_text`),
    recursing into mappings and sequences."""
    if depth > _MAX_DEPTH:
        return "[truncated]"
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            ks = scrub_text(str(k))  # libsignal keys its chains by base64 public keys
            if is_sensitive(ks):
                out[ks] = REDACTED if v is not None else None
            elif ks in _VALUE_KEPT and isinstance(v, str):
                out[ks] = v
            else:
                out[ks] = scrub(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [scrub(v, depth + 1) for v in value]
    return value


def scrub_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: scrub every field except the event name itself."""
    event = event_dict.pop("event", None)
    cleaned = scrub(dict(event_dict))
    event_dict.clear()
    if event is not None:
        event_dict["event"] = event
    event_dict.update(cleaned)
    return event_dict


def _add_pid(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.setdefault("pid", os.getpid())
    return event_dict


def _level_number(level: str) -> int:
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog globally. `fmt`: auto (console on a TTY, else JSON) | json | console."""
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r}")
    out = stream if stream is not None else sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False, default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(out, "isatty", lambda: False)())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            _add_pid,
            structlog.processors.format_exc_info,
            scrub_processor,  # last before rendering: nothing added later can bypass it
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib(_level_number(level))


class StdlibBridge(logging.Handler):
    """Records of the standard `logging` module (asyncio's "Task exception was never retrieved", aiohttp's "Error
    handling request", Python warnings) as `python.log` events through the same processors and renderer. Without it
    they reach logging's last-resort handler: plain, multi-line text on stderr that a log shipper cannot parse. Their
    text is free-form, so the key-name scrubber cannot help there: URLs in it lose userinfo and query string."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            method, fields = _python_log(record)
        except Exception:  # a logging failure must never take the daemon down; logging reports it on stderr
            self.handleError(record)
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            _write_python_log(method, fields)
        else:
            # asyncio's never-retrieved exceptions are logged by finalisers, which the garbage collector can run in the
            # middle of one of our own writes, while this thread holds the output's lock (not reentrant): writing now
            # would wait for ourselves. The loop writes the record on its next turn instead.
            loop.call_soon(_write_python_log, method, fields)


_MAX_LIB_MSG = 2000  # a library's message; its traceback (`exception`) is kept whole
_URL = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^\s/@'\"<>]+@)?(?P<rest>[^\s?#'\"<>]*)"
                  r"(?P<query>\?[^\s#'\"<>]*)?", re.IGNORECASE)


def redact_urls(text: str) -> str:
    """URLs in free text keep scheme, host and path; userinfo and query string (where tokens travel) are redacted."""
    return _URL.sub(lambda m: m["scheme"] + (f"{REDACTED}@" if m["user"] else "") + m["rest"]
                    + (f"?{REDACTED}" if m["query"] else ""), text)


def _python_log(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    n = record.levelno
    method = "debug" if n < 20 else "info" if n < 30 else "warning" if n < 40 else "error" if n < 50 else "critical"
    fields: dict[str, Any] = {"logger": record.name, "msg": redact_urls(record.getMessage()[:_MAX_LIB_MSG])}
    if record.exc_info and record.exc_info[0] is not None:
        fields["exception"] = redact_urls("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    return method, fields


def _write_python_log(method: str, fields: dict[str, Any]) -> None:
    try:
        getattr(structlog.get_logger(), method)("python.log", **fields)
    except Exception:  # noqa: BLE001 - never raise from here: the loop would log that, through here, again
        with contextlib.suppress(Exception):
            sys.__stderr__.write(f"python.log not written: {fields.get('logger')}: {fields.get('msg')}\n")


def _bridge_stdlib(level: int) -> None:
    """Route the root logger into StdlibBridge (idempotent: a reload reconfigures without stacking handlers)."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, StdlibBridge)]:
        root.removeHandler(h)
    root.addHandler(StdlibBridge())
    # Libraries' info chatter is not ours to ship; their warnings and errors are. A debug daemon gets everything.
    root.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    logging.captureWarnings(True)


def enabled_for(level: int) -> bool:
    """Whether an event at `level` (logging.DEBUG, ...) would be written now, so that a hot path can skip building
    one that would be dropped (GET /status's `api.request`). Read from structlog's live configuration: a reload's
    configure_logging, or a test's reset_defaults (everything enabled), applies at once."""
    try:  # make_filtering_bound_logger's classes (configure_logging, structlog's default): a level comparison
        return bool(structlog.get_config()["wrapper_class"].is_enabled_for(None, level))
    except Exception:  # noqa: BLE001 - another wrapper class (e.g. stdlib's) needs a logger: let the logger decide
        return True


def get_logger(**bind: Any) -> Any:
    """A bound logger; e.g. `get_logger(tenant="1")` so every event of that tenant carries it."""
    return structlog.get_logger(**bind)  # a lazy proxy: picks up configure_logging() even if called later
