"""Shared helpers of the tests/test_ops_*.py files: a real `baileys-supervisor run` subprocess with a config that
points at tests/fake_worker.py, and a real NOTIFY_SOCKET datagram socket to listen to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_worker.py"
SECRET = "ops-secret"
H = {"X-Internal-Secret": SECRET}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(tmp_path: Path, marker: str, port: int, *, boot=(), env=None, script=None, **extra: Any) -> dict:
    state = tmp_path / "fake-state"
    state.mkdir(exist_ok=True)
    wenv = {"BSUP_FAKE_STATE_DIR": str(state), **(env or {})}
    if script is not None:
        wenv["BSUP_FAKE_SCRIPT"] = json.dumps(script)
    worker = {"command": [sys.executable, "-I", str(FAKE), "--marker", marker], "env": wenv,
              "heartbeat_interval": 0.5, "heartbeat_timeout": 10, "stop_grace": 2,
              "prewarm": False}  # process counts in these tests assume no standby (tests/test_standby.py has it)
    worker.update(extra.pop("worker", {}))
    return {"storage": {"root": "storage"}, "api": {"host": "127.0.0.1", "port": port, "secret": SECRET},
            "worker": worker, "restart": {"initial_delay": 0.05, "max_delay": 0.2, "jitter": 0.0},
            "tenants": {"boot": list(boot)}, "logging": {"format": "json"}, **extra}


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


class NotifySocket:
    """A stand-in for systemd's notify socket (abstract namespace: no path length limits)."""

    def __init__(self) -> None:
        self.name = f"@bsup-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.messages: list[str] = []

    def wait_for(self, predicate, timeout: float = 15.0) -> str:
        """The first message (from now on, earlier ones are kept in .messages) for which predicate(msg) holds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching notify message; got {self.messages[-10:]}")
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(msg)
            if predicate(msg):
                return msg

    def close(self) -> None:
        self.sock.close()


def spawn(cfg_path: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("INTERNAL_SECRET", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(extra_env or {})
    cli = str(Path(sys.executable).with_name("baileys-supervisor"))
    return subprocess.Popen([cli, "run", "--config", str(cfg_path)], stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, env=env)


def api(port: int, method: str, path: str, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=H,
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            api(port, "GET", "/healthz", 1)
            return
        except OSError:
            assert proc.poll() is None, "daemon exited"
            assert time.monotonic() < deadline, "daemon never answered"
            time.sleep(0.05)


def log_events(log_path: Path) -> list[dict]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def wait_log(log_path: Path, event: str, timeout: float = 10.0, n: int = 1) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in log_events(log_path) if e.get("event") == event]
        if len(found) >= n:
            return found
        assert time.monotonic() < deadline, f"no {event} in the log"
        time.sleep(0.05)


def pids(port: int) -> dict[str, int | None]:
    return {s["tenant"]: s["pid"] for s in api(port, "GET", "/whatsapp")["tenants"]}


def wait_pids(port: int, predicate, timeout: float = 10.0) -> dict[str, int | None]:
    deadline = time.monotonic() + timeout
    while True:
        p = pids(port)
        if predicate(p):
            return p
        assert time.monotonic() < deadline, f"pids never matched: {p}"
        time.sleep(0.05)
