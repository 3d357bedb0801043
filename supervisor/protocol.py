"""Worker line protocol (docs/protocol.md): parse stdout lines into validated events, encode stdin commands.

The names, fields, version and limits come from `protocol.json` (package data), which the Node worker reads too:
one description for both sides (tests/test_protocol_contract.py checks that they and the doc agree).

Nothing a worker writes can crash the daemon: every malformed line becomes a `ProtocolError` the caller logs and
counts, and `read_lines()` survives over-long lines and any bytes at all.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

DESCRIPTION: dict[str, Any] = json.loads(resources.files(__package__).joinpath("protocol.json").read_text("utf-8"))
PROTOCOL_VERSION: int = DESCRIPTION["version"]
MAX_LINE_BYTES: int = DESCRIPTION["maxLineBytes"]  # longer lines are dropped and counted
READ_CHUNK = 64 * 1024


class ProtocolError(ValueError):
    """A stdout line that is not a valid protocol object; `kind` is a short stable tag for counters/logs."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _TooLong:
    """Marker yielded by `read_lines()` in place of a dropped over-long line."""

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG = _TooLong()

# The description's type names as Python types. bool is a subclass of int: _type_ok keeps them apart.
PY_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "number": (int, float), "string": (str,), "bool": (bool,),
                                         "object": (dict,), "array": (list,), "null": (type(None),)}


def _py_types(spec: dict[str, Any]) -> tuple[type, ...]:
    names = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    return tuple(t for name in names for t in PY_TYPES[name])


def _fields(fields: dict[str, dict[str, Any]]) -> dict[str, tuple[tuple[type, ...], bool]]:
    return {name: (_py_types(spec), bool(spec.get("required"))) for name, spec in fields.items()}


# type -> {field: (allowed python types, required)}
_SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    etype: _fields(fields) for etype, fields in DESCRIPTION["events"].items()}
_COMMON = _fields(DESCRIPTION["eventCommon"])  # allowed on every event (`ts`)
EVENT_TYPES = frozenset(_SCHEMA)
COMMANDS = frozenset(DESCRIPTION["commands"])


@dataclass(frozen=True)
class Event:
    """One validated worker event: `type` plus its fields (unknown extra fields are kept, never trusted)."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    # JSON true/false parse to bool, which isinstance() also accepts as int: keep them apart.
    if isinstance(value, bool) and bool not in allowed:
        return False
    return isinstance(value, allowed)


# Heartbeats are nearly all an idle daemon reads (200 workers: 40 lines/s), and each arrives on a loop wake-up of
# its own, when the CPU caches are cold: json.loads + the generic schema walk cost ~80 us there (8 us hot). The
# canonical heartbeat -- what the Node worker's JSON.stringify and tests/fake_worker.py's json.dumps write: `type`
# first, integer `rss` and `uptimeMs`, optional integer `ts` -- is recognised by one regex instead. It only accepts
# text that json.loads parses to exactly these ints (JSON whitespace, no leading zeros, no escapes, no duplicate
# keys), and the schema accepts that; any other heartbeat takes the general path below.
_J_WS = rb"[ \t\n\r]*"
_J_INT = rb"(-?(?:0|[1-9][0-9]{0,17}))"


def _int_member(name: bytes) -> bytes:
    return b"," + _J_WS + b'"' + name + b'"' + _J_WS + b":" + _J_WS + _J_INT + _J_WS


_HEARTBEAT_RE = re.compile(
    _J_WS + rb"\{" + _J_WS + rb'"type"' + _J_WS + b":" + _J_WS + rb'"heartbeat"' + _J_WS
    + _int_member(b"rss") + _int_member(b"uptimeMs") + b"(?:" + _int_member(b"ts") + b")?" + rb"\}" + _J_WS
)


def _heartbeat(match: re.Match[bytes]) -> Event:
    rss, uptime, ts = match.groups()
    fields = {"rss": int(rss), "uptimeMs": int(uptime)}
    if ts is not None:
        fields["ts"] = int(ts)
    return Event("heartbeat", fields)


def parse_line(line: bytes) -> Event:
    """Parse and validate one stdout line (with or without its newline). Raises ProtocolError, nothing else."""
    if len(line) > MAX_LINE_BYTES + 1:
        raise ProtocolError("too_long", f"line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
    match = _HEARTBEAT_RE.fullmatch(line)
    if match is not None:
        return _heartbeat(match)
    return _parse_json(line)


def _parse_json(line: bytes) -> Event:
    """The general path: any event type, checked against _SCHEMA."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    text = text.strip()
    if not text:
        raise ProtocolError("empty", "empty line")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    etype = obj.get("type")
    if not isinstance(etype, str):
        raise ProtocolError("no_type", "missing or non-string 'type'")
    schema = _SCHEMA.get(etype)
    if schema is None:
        # The type name is worker-controlled: cap it before it reaches a log line.
        raise ProtocolError("unknown_type", f"unknown event type {etype[:40]!r}")
    for name, (allowed, required) in (_COMMON | schema).items():
        if name not in obj:
            if required:
                raise ProtocolError("missing_field", f"{etype}.{name} is required")
            continue
        if not _type_ok(obj[name], allowed):
            raise ProtocolError("bad_field", f"{etype}.{name} has the wrong type")
    fields = {k: v for k, v in obj.items() if k != "type"}
    return Event(etype, fields)


def encode_command(cmd: str, *, id: str | None = None, **fields: Any) -> bytes:
    """One command line for the worker's stdin."""
    if cmd not in COMMANDS:
        raise ValueError(f"unknown command {cmd!r}")
    obj: dict[str, Any] = {"cmd": cmd}
    if id is not None:
        obj["id"] = id
    obj.update(fields)
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


class LineSplitter:
    """Synchronous framing: feed() bytes as they arrive, get complete lines (without the newline) back; an over-long
    line is discarded up to its newline and reported once as TOO_LONG. Memory stays bounded by `limit` plus one
    chunk whatever the input. The worker feeds it straight from the pipe transport (no task wake-up per line)."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._discarding = False

    def feed(self, chunk: bytes) -> list[bytes | _TooLong]:
        out: list[bytes | _TooLong] = []
        buf, start = self._buf, 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not self._discarding:
                    buf += chunk[start:]
                    if len(buf) > self.limit:
                        buf.clear()
                        self._discarding = True
                        out.append(TOO_LONG)
                return out
            if self._discarding:
                self._discarding = False
            elif not buf:  # the common case: the whole line is in this chunk, one slice
                out.append(chunk[start:nl] if nl - start <= self.limit else TOO_LONG)
            else:
                buf += chunk[start:nl]
                out.append(TOO_LONG if len(buf) > self.limit else bytes(buf))
                buf.clear()
            start = nl + 1

    def close(self) -> list[bytes | _TooLong]:
        """At EOF: a final line without a newline is still a line."""
        line = bytes(self._buf) if self._buf and not self._discarding else None
        self._buf.clear()
        return [line] if line is not None else []


async def read_lines(reader: asyncio.StreamReader, limit: int = MAX_LINE_BYTES) -> AsyncIterator[bytes | _TooLong]:
    """LineSplitter over a StreamReader (the worker's stderr, tests). Our own framing instead of
    StreamReader.readline(), whose limit errors leave the stream in an awkward state and whose limit is fixed at
    construction."""
    splitter = LineSplitter(limit)
    while True:
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            for line in splitter.close():
                yield line
            return
        for line in splitter.feed(chunk):
            yield line
        # A pipe that always has data never makes read() suspend: without this, one flooding worker's lines would
        # be handled back to back while every other tenant's reader, the API and the watchdogs wait. A short chunk
        # means read() emptied the reader's buffer, so the next read() suspends anyway: no extra loop turn then.
        if len(chunk) >= READ_CHUNK:
            await asyncio.sleep(0)
