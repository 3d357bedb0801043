"""The real parts, wired together: the WhatsApp Web simulator (tests/wa_sim, Node), a real `baileys-supervisor run`
daemon subprocess on a YAML config, and the real worker (node_worker) with real Baileys that the daemon spawns.

Shared by the e2e tests (tests/e2e/conftest.py), the demo (scripts/demo.py) and the benchmark
(bench/e2e_latency.py), so all three run exactly the same processes. Standard library only (plus the package and
tests/support.py, whose free_port, wait_for and DaemonProcess are re-exported here for those callers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: scripts/ and bench/ import us by path
from support import CLI, WAIT, DaemonProcess, free_port, wait_for  # noqa: E402,F401 - re-exported
from support import http_json as _http  # noqa: E402

from supervisor.settings import WORKER_NODE_FLAGS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIM_MAIN = ROOT / "tests" / "wa_sim" / "main.mjs"
TRUST_PRELOAD = ROOT / "tests" / "wa_sim" / "trust-test-root.mjs"
WORKER = ROOT / "node_worker" / "src" / "worker.mjs"


def worker_command(marker: str | None = None) -> list[str]:
    """The real worker, trusting the simulator's test root (test-only preload). A trailing `marker` argument is
    ignored by the worker (it reads only its environment) and lets a test find its own workers in `ps`."""
    cmd = ["node", "--import", str(TRUST_PRELOAD), *WORKER_NODE_FLAGS, str(WORKER)]  # the shipped flags
    return cmd + ([marker] if marker else [])


class Simulator:
    """`node tests/wa_sim/main.mjs` on ports 0; the ready line gives the URLs."""

    def __init__(self, *args: str, log_path: Path | None = None) -> None:
        self.log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["node", str(SIM_MAIN), "--port", "0", "--control-port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()  # blocks until both ports are bound (or the process died)
        if not line:
            raise RuntimeError(f"simulator did not start (exit {self.proc.wait(5)})")
        ready = json.loads(line)
        self.ws_url: str = ready["wsUrl"]
        self.control: str = ready["controlUrl"]

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return _http(method, self.control + path, body)[1]

    def scan(self, qr: str, **kw: Any) -> dict[str, Any]:
        return self.call("POST", "/scan", {"qr": qr, **kw})

    def enter_code(self, phone: str, code: str, **kw: Any) -> dict[str, Any]:
        """The phone of `phone` types a companion's link code (pairing by code; tests/wa_sim/link_code.mjs)."""
        return self.call("POST", "/enter-code", {"phone": phone, "code": code, **kw})

    def kill(self, jid: str, variant: str) -> dict[str, Any]:
        return self.call("POST", "/kill", {"jid": jid, "variant": variant})

    def state(self) -> dict[str, Any]:
        return self.call("GET", "/state")

    def counters(self) -> dict[str, Any]:
        return self.state()["counters"]

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        return self.call("GET", f"/events?since={since}")["events"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def daemon_config(storage: Path, port: int, wa_url: str, *, marker: str | None = None,
                  socket_options: dict[str, int] | None = None, restart: dict[str, Any] | None = None,
                  worker: dict[str, Any] | None = None, boot: list[str] | None = None) -> dict[str, Any]:
    return {
        "storage": {"root": str(storage)},
        "api": {"host": "127.0.0.1", "port": port},
        "worker": {"command": worker_command(marker), "wa_url": wa_url, "log_level": "warn",
                   "socket_options": socket_options or {}, "heartbeat_interval": 1.0,
                   # also the bound for a worker's hello: Node + the Baileys import take seconds at load 20-30
                   "heartbeat_timeout": 2 * WAIT,
                   "stop_grace": 3.0, **(worker or {})},
        # Short backoff: the restart rows are about *what* happens, not about waiting a second per row.
        "restart": {"initial_delay": 0.2, "multiplier": 2.0, "max_delay": 2.0, "jitter": 0.1, **(restart or {})},
        "tenants": {"boot": boot or []},
        "logging": {"format": "json", "level": "info"},
    }


class Daemon(DaemonProcess):
    """support.DaemonProcess with the e2e calls (tenant start, status, QR, waiting for states)."""

    def start(self, timeout: float = WAIT) -> Daemon:  # type: ignore[override] - bench passes the timeout only
        return super().start(True, timeout)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        secret = self.config.get("api", {}).get("secret")  # a daemon on a non-loopback address needs one
        return _http(method, self.url + path, body, timeout=timeout,
                     headers={"X-Internal-Secret": secret} if secret else None)

    def start_tenant(self, tid: str) -> dict[str, Any]:
        code, body = self.call("POST", f"/whatsapp/{tid}/start")
        assert code == 200, body
        return body

    def status(self, tid: str) -> dict[str, Any]:
        code, body = self.call("GET", f"/whatsapp/{tid}/status")
        assert code == 200, body
        return body

    def qr(self, tid: str) -> dict[str, Any]:
        code, body = self.call("GET", f"/whatsapp/{tid}/qr")
        assert code == 200, body
        return body

    # Bounds: safety bounds (support.WAIT) that real Baileys start-ups meet at load 20-30 on 2 cores.
    def wait_status(self, tid: str, pred: Callable[[dict[str, Any]], Any], timeout: float = WAIT,
                    what: str = "") -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        def check() -> dict[str, Any] | None:
            st = self.status(tid)
            seen[:] = [st]
            return st if pred(st) else None

        try:
            return wait_for(check, timeout, f"{tid} {what}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last status: {seen[-1] if seen else None}") from None

    def wait_connected(self, tid: str, timeout: float = 2 * WAIT) -> dict[str, Any]:
        # With a live worker: right after a SIGKILL the status can still say connected with pid null, until the
        # daemon has handled the exit (a caller that signals the pid would get None).
        return self.wait_status(tid, lambda s: s["connected"] and s["pid"] is not None, timeout, "connected")

    def wait_qr(self, tid: str, timeout: float = WAIT) -> str:
        self.wait_status(tid, lambda s: s.get("hasQR"), timeout, "hasQR")  # cluster: no hasQR before the claim
        qr = self.qr(tid)["qr"]
        assert qr, "hasQR but /qr has no qr"
        return qr


def pair(daemon: Daemon, sim: Simulator, tid: str, push_name: str | None = None,
         timeout: float = 2 * WAIT) -> dict[str, Any]:
    """start -> QR -> scan -> connected. Returns the timings (seconds) and the scan answer."""
    t0 = time.monotonic()
    daemon.start_tenant(tid)
    qr = daemon.wait_qr(tid)
    t_qr = time.monotonic()
    res = sim.scan(qr, **({"pushName": push_name} if push_name else {}))
    assert res.get("ok"), res
    st = daemon.wait_connected(tid, timeout)
    t_open = time.monotonic()
    return {"start_to_qr": t_qr - t0, "scan_to_connected": t_open - t_qr, "scan": res, "status": st}


def decisions(d: Daemon, tid: str) -> list[dict]:
    return [e for e in d.log_events() if e.get("event") == "tenant.decision" and e.get("tenant") == tid]


def assert_rests(d: Daemon, tid: str, code: int) -> dict:
    """No new connection, checked by the event that decides it instead of a watch window (2.5 s of sleep per row
    before): the daemon decides what follows a worker's end once, in its tenant.decision; `rest` means no new worker
    until an API call, and the status shows neither a worker, a standby nor a pending retry."""
    dec = wait_for(lambda: [e for e in decisions(d, tid) if e.get("code") == code], what=f"decision on {code}")[-1]
    assert dec["action"] == "rest" and dec["delay"] == 0, dec
    st = d.status(tid)
    assert st["pid"] is None and st.get("standbyPid") is None and st["nextRetryAt"] is None, st
    return dec


def auth_files_parse(auth_dir: Path) -> list[str]:
    """Names of every file in `auth_dir`, asserting each one is valid JSON (a torn write would not be). The atomic
    writer's own temp files (`.<name>.tmp-<pid>-<n>`, never read by Baileys, removed at the next start) are skipped:
    a SIGKILL mid-write legitimately leaves one."""
    names = []
    for p in sorted(auth_dir.iterdir()):
        if p.is_file() and not (p.name.startswith(".") and ".tmp-" in p.name):
            json.loads(p.read_text("utf-8"))
            names.append(p.name)
    return names


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]
