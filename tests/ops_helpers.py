"""Shared helpers of the tests/test_ops_*.py files: the config of a real `baileys-supervisor run` subprocess
(support.DaemonProcess) with tests/fake_worker.py workers, the API and log as seen from outside, and a real
NOTIFY_SOCKET datagram socket to listen to it."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from support import WAIT, fake_config, json_lines, wait_for

SECRET = "ops-secret"
H = {"X-Internal-Secret": SECRET}


def config(tmp_path: Path, marker: str, port: int, *, boot=(), env=None, script=None, worker=None,
           **sections: Any) -> dict:
    """support.fake_config as systemd would run it: a secret, JSON logs, storage relative to the config file."""
    state = tmp_path / "fake-state"
    state.mkdir(exist_ok=True)
    return fake_config(Path("storage"), state, marker, script, port=port, secret=SECRET, boot=boot, env=env,
                       worker={"heartbeat_interval": 0.5, **(worker or {})},
                       **{"logging": {"format": "json"}, **sections})


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

    def wait_for(self, predicate, timeout: float = 2 * WAIT) -> str:
        """The first message (from now on, earlier ones are kept in .messages) for which predicate(msg) holds. The
        default bound covers a daemon's start-up (imports alone) at load 20-30 on 2 cores: 15 s ran out there."""
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


def api(port: int, method: str, path: str, timeout: float = 30.0) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=H,
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def log_events(log_path: Path) -> list[dict]:
    return json_lines(log_path.read_text(errors="replace"))


def wait_log(log_path: Path, event: str, timeout: float = 30.0, n: int = 1) -> list[dict]:
    def found() -> list[dict]:
        hits = [e for e in log_events(log_path) if e.get("event") == event]
        return hits if len(hits) >= n else []

    return wait_for(found, timeout, f"{n} x {event} in the log")


def pids(port: int) -> dict[str, int | None]:
    return {s["tenant"]: s["pid"] for s in api(port, "GET", "/whatsapp")["tenants"]}


def wait_pids(port: int, predicate, timeout: float = 30.0) -> dict[str, int | None]:
    last: dict[str, int | None] = {}

    def check() -> dict[str, int | None] | None:
        last.clear()
        last.update(pids(port))
        return dict(last) if predicate(last) else None

    try:
        return wait_for(check, timeout, "pids")
    except AssertionError:
        raise AssertionError(f"pids never matched: {last}") from None
