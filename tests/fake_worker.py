"""A fake worker speaking docs/protocol.md, scripted per test.

Script (JSON) from BSUP_FAKE_SCRIPT or the file BSUP_FAKE_SCRIPT_FILE: either a list of steps (every spawn runs
it) or {"spawns": [[steps of spawn 1], [steps of spawn 2], ...]} (the last list repeats). Spawns are counted per
tenant in BSUP_FAKE_STATE_DIR (which also gets one JSON line per spawn in spawns.jsonl). Steps:
  {"hello": {...overrides}}   hello event (the current protocol version unless overridden)
  {"emit": {...}}             any event object as is
  {"qr": "..."}               qr event            {"open": "me-jid"}   open event with me/pushName
  {"close": code, "message": "...", "reason": "..."}   close event, then exit 0 (one socket per process)
  {"raw": "text", "repeat": N} / {"raw_b64": "..."}   a raw stdout line (protocol garbage, over-long lines)
  {"stderr": "text"}          a stderr line          {"sleep": seconds}
  {"exit": code}              exit now               {"wait": true}   idle until stop/EOF/signal
  {"heartbeats": false}       stop sending heartbeats (watchdog tests)
  {"wait_file": "name"}       idle until BSUP_FAKE_STATE_DIR/name exists (the test decides when the script goes on)
No script: hello, connecting, qr, wait. Heartbeats every BSUP_HEARTBEAT_MS. Commands: stop -> exit 0; logout ->
close 401 + exit 0; pairing_code -> reply {code} + pairing_code event (BSUP_FAKE_PAIRING_ERROR: that error); ping, lease -> reply {}; others -> bad_command.
BSUP_FAKE_GRANDCHILD=1 starts a SIGTERM-immune grandchild in the worker's process group (group-kill tests).
Every SIGTERM is appended to BSUP_FAKE_STATE_DIR/signals.jsonl ({"tenant", "pid", "signal", "t"}).
The `send` command: one line in BSUP_FAKE_STATE_DIR/sends.jsonl ({tenant, pid, waId, text}), reply
{waMessageId, status: sent}.
BSUP_FAKE_IGNORE_TERM=1 ignores SIGTERM and `stop` (tests SIGKILL escalation); stdin EOF exits (the daemon is
gone) unless BSUP_FAKE_IGNORE_EOF=1 (a hung leftover for take-over tests); and the inherited BSUP_LOCK_FD is kept open for the whole life of the process.
BSUP_STANDBY=1 (a standby, supervisor/standby.py): hello at once, then wait for `go`; only then is the spawn counted
and its script run (its hello steps skipped: hello was said). BSUP_FAKE_STANDBY_DELAY=<s> delays its hello.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
from pathlib import Path

# The version the daemon speaks: the one description of the line protocol (docs/protocol.md).
PROTOCOL = json.loads((Path(__file__).resolve().parents[1] / "supervisor" / "protocol.json").read_text())["version"]

OUT = sys.stdout.buffer
IGNORE_TERM = os.environ.get("BSUP_FAKE_IGNORE_TERM") == "1"
STANDBY = os.environ.get("BSUP_STANDBY") == "1"
PAIRING_ERROR = os.environ.get("BSUP_FAKE_PAIRING_ERROR")  # the worker's error code for pairing_code, e.g. not_ready
heartbeats_on = True


def emit(obj: dict) -> None:
    OUT.write(json.dumps(obj).encode() + b"\n")
    OUT.flush()


def load_steps(tenant: str) -> list[dict]:
    raw = os.environ.get("BSUP_FAKE_SCRIPT")
    if raw is None and os.environ.get("BSUP_FAKE_SCRIPT_FILE"):
        raw = Path(os.environ["BSUP_FAKE_SCRIPT_FILE"]).read_text()
    script = json.loads(raw) if raw else [{"hello": {}}, {"emit": {"type": "connecting"}}, {"qr": "fake-qr-1"},
                                          {"wait": True}]
    n = 1
    state_dir = os.environ.get("BSUP_FAKE_STATE_DIR")
    if state_dir:
        counter = Path(state_dir) / f"{tenant}.count"
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))  # never two workers of one tenant at once: no race to guard against
        with open(Path(state_dir) / "spawns.jsonl", "a") as fh:
            fh.write(json.dumps({"tenant": tenant, "pid": os.getpid(), "n": n, "t": time.time()}) + "\n")
    if isinstance(script, dict):
        spawns = script["spawns"]
        return spawns[min(n, len(spawns)) - 1]
    return script


async def run_steps(steps: list[dict], done: asyncio.Future) -> None:
    global heartbeats_on
    for step in steps:
        if "hello" in step:
            emit({"type": "hello", "protocol": PROTOCOL, "pid": os.getpid(), "worker": "fake/1", "baileys": "fake",
                  "waVersion": [2, 3000, 1], **step["hello"]})
        elif "emit" in step:
            emit(step["emit"])
        elif "qr" in step:
            emit({"type": "qr", "qr": step["qr"]})
        elif "open" in step:
            emit({"type": "open", "me": {"id": step["open"]}, "pushName": "Fake"})
        elif "close" in step:
            emit({"type": "close", "code": step["close"], "reason": step.get("reason"),
                  "message": step.get("message", "closed")})
            return done.set_result(0) if not done.done() else None
        elif "raw" in step:
            OUT.write(step["raw"].encode() * step.get("repeat", 1) + b"\n")
            OUT.flush()
        elif "raw_b64" in step:
            OUT.write(base64.b64decode(step["raw_b64"]) + b"\n")
            OUT.flush()
        elif "stderr" in step:
            sys.stderr.write(step["stderr"] + "\n")
            sys.stderr.flush()
        elif "sleep" in step:
            await asyncio.sleep(step["sleep"])
        elif "exit" in step:
            return done.set_result(step["exit"]) if not done.done() else None
        elif "heartbeats" in step:
            heartbeats_on = bool(step["heartbeats"])
        elif "wait_file" in step:
            flag = Path(os.environ["BSUP_FAKE_STATE_DIR"]) / step["wait_file"]
            while not flag.exists():
                await asyncio.sleep(0.02)
        elif "wait" in step:
            await asyncio.Event().wait()


async def heartbeat() -> None:
    interval = int(os.environ.get("BSUP_HEARTBEAT_MS", "5000")) / 1000
    started = time.monotonic()
    while True:
        # On multiples of the interval (wall clock), as node_worker's nextHeartbeatDelay: all workers' heartbeats
        # arrive together and the daemon wakes up once for all of them instead of once per worker.
        delay = interval - time.time() % interval
        await asyncio.sleep(delay + interval if delay < interval / 10 else delay)
        if heartbeats_on:
            emit({"type": "heartbeat", "rss": 1, "uptimeMs": int((time.monotonic() - started) * 1000)})


async def standby_then_steps(tenant: str, go: asyncio.Future, done: asyncio.Future) -> None:
    await asyncio.sleep(float(os.environ.get("BSUP_FAKE_STANDBY_DELAY", "0")))
    emit({"type": "hello", "protocol": PROTOCOL, "pid": os.getpid(), "worker": "fake/1", "baileys": "fake",
          "waVersion": [2, 3000, 1]})
    await go
    await run_steps([s for s in load_steps(tenant) if "hello" not in s], done)


async def commands(done: asyncio.Future, go: asyncio.Future) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            cmd = json.loads(line)
        except ValueError:
            emit({"type": "error", "code": "bad_command", "message": "not JSON", "fatal": False})
            continue
        cid, name = cmd.get("id"), cmd.get("cmd")
        if name == "stop" and not IGNORE_TERM:
            done.done() or done.set_result(0)
        elif name == "logout":
            emit({"type": "close", "code": 401, "reason": "loggedOut", "message": "logged out"})
            done.done() or done.set_result(0)
        elif name == "send":  # recorded (the test counts sends per WhatsApp id), then "the server acked it"
            state_dir = os.environ.get("BSUP_FAKE_STATE_DIR")
            if state_dir:
                with open(Path(state_dir) / "sends.jsonl", "a") as fh:
                    fh.write(json.dumps({"tenant": os.environ.get("BSUP_TENANT"), "pid": os.getpid(),
                                         "waId": cmd.get("waId"), "text": cmd.get("text")}) + "\n")
            emit({"type": "reply", "id": cid, "ok": True, "result": {"waMessageId": cmd.get("waId"),
                                                                      "status": "sent"}}) if cid else None
        elif name == "pairing_code" and PAIRING_ERROR:
            emit({"type": "reply", "id": cid, "ok": False, "error": PAIRING_ERROR, "message": "as the worker says"})
        elif name == "pairing_code":
            emit({"type": "reply", "id": cid, "ok": True, "result": {"code": "FAKE1234"}}) if cid else None
            emit({"type": "pairing_code", "code": "FAKE1234"})
        elif name == "go" and STANDBY and not go.done():
            emit({"type": "reply", "id": cid, "ok": True, "result": {}}) if cid else None
            go.set_result(None)
        elif name in ("ping", "lease"):  # lease (cluster mode): accepted, never enforced by this fake
            emit({"type": "reply", "id": cid, "ok": True, "result": {}}) if cid else None
        elif cid:
            emit({"type": "reply", "id": cid, "ok": False, "error": "bad_command", "message": str(name)})
        elif name != "stop":
            emit({"type": "error", "code": "bad_command", "message": str(name), "fatal": False})
    if os.environ.get("BSUP_FAKE_IGNORE_EOF") != "1":  # =1 plays a hung worker that outlives its daemon
        done.done() or done.set_result(0)  # stdin EOF: the daemon is gone


def spawn_grandchild() -> None:
    """A child of the worker in its process group that ignores SIGTERM from birth (SIG_IGN survives exec) and owns
    no pipe of ours: only a SIGKILL of the whole group ends it. Carries our argv's marker, so a test finds it."""
    import subprocess

    subprocess.Popen([sys.executable, "-I", "-c", "import time; time.sleep(3600)", *sys.argv[1:]],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))


def on_sigterm(tenant: str, done: asyncio.Future) -> None:
    # Recorded so a test can wait for "the daemon has sent TERM" (an event) instead of sleeping a fixed time.
    state_dir = os.environ.get("BSUP_FAKE_STATE_DIR")
    if state_dir:
        with open(Path(state_dir) / "signals.jsonl", "a") as fh:
            fh.write(json.dumps({"tenant": tenant, "pid": os.getpid(), "signal": "TERM", "t": time.time()}) + "\n")
    if not IGNORE_TERM and not done.done():
        done.set_result(0)


async def main() -> int:
    try:
        lock_fd = int(os.environ["BSUP_LOCK_FD"])
        os.fstat(lock_fd)  # must be inherited and open; kept open (never closed) for the flock's sake
        tenant = os.environ["BSUP_TENANT"]
    except (KeyError, ValueError, OSError):
        sys.stderr.write("bad environment\n")
        return 2
    if os.environ.get("BSUP_FAKE_GRANDCHILD") == "1":
        spawn_grandchild()
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: on_sigterm(tenant, done))
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # a terminal Ctrl-C is the daemon's business
    go: asyncio.Future = loop.create_future()
    steps = standby_then_steps(tenant, go, done) if STANDBY else run_steps(load_steps(tenant), done)
    tasks = [asyncio.create_task(c) for c in (steps, heartbeat(), commands(done, go))]
    code = await done
    for t in tasks:
        t.cancel()
    return code


if __name__ == "__main__":
    os._exit(asyncio.run(main()))  # _exit: skip flushing a stdout the daemon may already have closed
