"""A worker that speaks the protocol only partly, for tests/test_hostile_worker.py. The mode comes from the tenant id
(BSUP_TENANT = "<mode>-<anything>"), so one daemon (one worker.command) can run hostile and well-behaved tenants.

  good       hello, qr, then a heartbeat every 0.1 s whose `rss` counts up (1, 2, 3...): the test reads it back
             from /metrics to prove this tenant's lines are still processed while a neighbour floods
  flood      hello, then BSUP_HOSTILE_MB megabytes of short junk lines (not JSON, JSON non-objects, unknown types,
             invalid UTF-8), then a qr line, then heartbeats
  hugeline   hello, then 100 MB without a newline (log lines on stderr meanwhile), the newline, a qr line, heartbeats
  badutf8    hello, 20,000 lines of invalid UTF-8 (overlongs, lone continuation bytes, surrogates), qr, heartbeats
  limit      hello, a qr line of exactly MAX_LINE_BYTES (accepted), a `connecting` line of MAX_LINE_BYTES + 1
             (must be dropped: the tenant stays in qr), heartbeats
  endless    hello, qr, then stdout bytes forever without a newline: no complete line -> the watchdog kills it

Exits on stdin EOF (the daemon is gone) or a `stop` command; SIGTERM keeps its default action. The inherited lock fd
(BSUP_LOCK_FD) is simply never closed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

# The version the daemon speaks: the one description of the line protocol (docs/protocol.md).
PROTOCOL = json.loads((Path(__file__).resolve().parents[2] / "supervisor" / "protocol.json").read_text())["version"]

OUT = sys.stdout.buffer
MAX_LINE_BYTES = 1 << 20  # docs/protocol.md; duplicated on purpose: the worker side must not import the daemon


def write(data: bytes) -> None:
    OUT.write(data)
    OUT.flush()


def emit(obj: dict) -> None:
    write(json.dumps(obj).encode() + b"\n")


def padded(obj: dict, size: int) -> bytes:
    """`obj` as one JSON line of exactly `size` bytes without its newline (padding in a `pad` field)."""
    base = json.dumps({**obj, "pad": ""}).encode()
    line = json.dumps({**obj, "pad": "p" * (size - len(base))}).encode()
    assert len(line) == size, (len(line), size)
    return line


def watch_stdin() -> None:
    for line in sys.stdin.buffer:
        if b'"stop"' in line:
            break
    os._exit(0)  # EOF or stop: the daemon is gone or wants us gone


def heartbeats(forever: bool = True) -> None:
    n = 0
    while True:
        n += 1
        emit({"type": "heartbeat", "rss": n, "uptimeMs": n * 100})
        time.sleep(0.1)


def stderr_alive() -> None:
    while True:
        sys.stderr.write('{"level":30,"msg":"still writing"}\n')
        sys.stderr.flush()
        time.sleep(0.5)


JUNK = [b"not json at all", b"[1,2,3]", b'"a string"', b'{"type":"nope"}', b'{"no":"type"}', b"\xff\xfe\xfd",
        b'{"type":"qr"}', b'{"type":"heartbeat","rss":"x"}', b"{" * 40, b"\xc0\xaf\xed\xa0\x80"]


def flood_block() -> bytes:
    return b"\n".join(JUNK * 200) + b"\n"  # ~60 KB, 2,000 junk lines


def flood_plan(mb: float) -> tuple[int, int]:
    """(blocks written, junk lines written) for BSUP_HOSTILE_MB=mb: the test's exact expected invalid-line count."""
    block = flood_block()
    blocks = -(-int(mb * (1 << 20)) // len(block))
    return blocks, blocks * block.count(b"\n")


def main() -> None:
    tenant = os.environ["BSUP_TENANT"]
    mode = tenant.split("-", 1)[0]
    threading.Thread(target=watch_stdin, daemon=True).start()
    emit({"type": "hello", "protocol": PROTOCOL, "pid": os.getpid(), "worker": f"hostile/{mode}", "baileys": "none",
          "waVersion": [2, 3000, 1]})
    if mode == "good":
        emit({"type": "qr", "qr": "good-qr"})
    elif mode == "flood":
        blocks, _ = flood_plan(float(os.environ.get("BSUP_HOSTILE_MB", "8")))
        block = flood_block()
        for _ in range(blocks):
            write(block)
        emit({"type": "qr", "qr": "after-flood"})
    elif mode == "hugeline":
        # Alive on stderr (as Baileys' pino logs are) while stdout has no complete line: the watchdog counts stderr
        # lines, so the test is about framing, not about how fast a loaded machine moves 100 MB through a pipe.
        threading.Thread(target=stderr_alive, daemon=True).start()
        chunk = b"x" * (1 << 20)
        for _ in range(100):
            write(chunk)
        write(b"\n")
        emit({"type": "qr", "qr": "after-huge-line"})
    elif mode == "badutf8":
        bad = [b"\xc0\x80", b"\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b'{"type":"qr","qr":"\xff"}']
        write(b"\n".join(bad * 4000) + b"\n")
        emit({"type": "qr", "qr": "after-bad-utf8"})
    elif mode == "limit":
        write(padded({"type": "qr", "qr": "at-limit"}, MAX_LINE_BYTES) + b"\n")
        write(padded({"type": "connecting"}, MAX_LINE_BYTES + 1) + b"\n")
    elif mode == "endless":
        emit({"type": "qr", "qr": "endless"})
        chunk = b"y" * (64 * 1024)
        while True:
            write(chunk)
            time.sleep(0.001)  # fast, but leaves the (2-core) machine some air
    heartbeats()


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        os._exit(0)
