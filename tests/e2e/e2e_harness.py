"""The real parts, wired together: the WhatsApp Web simulator (tests/wa_sim, Node), a real `baileys-supervisor run`
daemon subprocess on a YAML config, and the real worker (node_worker) with real Baileys that the daemon spawns.

Shared by the e2e tests (tests/e2e/conftest.py), the demo (scripts/demo.py) and the benchmark
(bench/e2e_latency.py), so all three run exactly the same processes. Standard library only (plus the package).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.settings import WORKER_NODE_FLAGS

ROOT = Path(__file__).resolve().parents[2]
SIM_MAIN = ROOT / "tests" / "wa_sim" / "main.mjs"
TRUST_PRELOAD = ROOT / "tests" / "wa_sim" / "trust-test-root.mjs"
WORKER = ROOT / "node_worker" / "src" / "worker.mjs"
CLI = Path(sys.executable).with_name("baileys-supervisor")


def worker_command(marker: str | None = None) -> list[str]:
    """The real worker, trusting the simulator's test root (test-only preload). A trailing `marker` argument is
    ignored by the worker (it reads only its environment) and lets a test find its own workers in `ps`."""
    cmd = ["node", "--import", str(TRUST_PRELOAD), *WORKER_NODE_FLAGS, str(WORKER)]  # the shipped flags
    return cmd + ([marker] if marker else [])


def _http(method: str, url: str, body: Any = None, timeout: float = 30.0,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:  # both the daemon and the simulator answer errors with JSON bodies
        return e.code, json.load(e)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Bounded polling of another process's state (HTTP status / files): there is no event to wait on."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(interval)


def free_port() -> int:
    # The daemon's API needs a known port (its config says which; port 0 would not be discoverable from outside).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                   "socket_options": socket_options or {}, "heartbeat_interval": 1.0, "heartbeat_timeout": 15.0,
                   "stop_grace": 3.0, **(worker or {})},
        # Short backoff: the restart rows are about *what* happens, not about waiting a second per row.
        "restart": {"initial_delay": 0.2, "multiplier": 2.0, "max_delay": 2.0, "jitter": 0.1, **(restart or {})},
        "tenants": {"boot": boot or []},
        "logging": {"format": "json", "level": "info"},
    }


class Daemon:
    """`baileys-supervisor run --config <yaml>` as a subprocess (so it can be SIGKILLed like in production).
    JSON is a subset of YAML, so the config file is written with json.dumps."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config = config
        self.url = f"http://127.0.0.1:{config['api']['port']}"
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, timeout: float = 20.0) -> None:
        self.runs += 1
        log = open(self.workdir / f"daemon-{self.runs}.log", "wb")  # noqa: SIM115 - the child owns it
        env = dict(os.environ)
        env.pop("INTERNAL_SECRET", None)  # loopback without a secret: every e2e part is on 127.0.0.1
        self.proc = subprocess.Popen([str(CLI), "run", "--config", str(self.config_path)], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                return _http("GET", self.url + "/healthz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(up, timeout, "daemon /healthz")

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("daemon-*.log")))

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        return _http(method, self.url + path, body, timeout=timeout)

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

    def wait_status(self, tid: str, pred: Callable[[dict[str, Any]], Any], timeout: float = 20.0,
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

    def wait_connected(self, tid: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait_status(tid, lambda s: s["connected"], timeout, "connected")

    def wait_qr(self, tid: str, timeout: float = 20.0) -> str:
        self.wait_status(tid, lambda s: s["hasQR"], timeout, "hasQR")
        qr = self.qr(tid)["qr"]
        assert qr, "hasQR but /qr has no qr"
        return qr

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def pair(daemon: Daemon, sim: Simulator, tid: str, push_name: str | None = None,
         timeout: float = 30.0) -> dict[str, Any]:
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
