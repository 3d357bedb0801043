"""What the tests share, in one place: a free port, bounded waiting, the one builder of a test config (fake workers,
short intervals), and the one way to run a daemon in its own process (`baileys-supervisor run --config`).

Timeouts here are safety bounds, not expectations: conditions that hold within a second on an idle machine get
WAIT (30 s) so they still hold with the whole suite at load 20-30 on 2 cores; a failing test pays the wait, a
passing one never does. Standard library + the package only: scripts/ and bench/ import it too (via e2e_harness).
"""

from __future__ import annotations

import asyncio
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

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
FAKE_WORKER = TESTS_DIR / "fake_worker.py"
CLI = Path(sys.executable).with_name("baileys-supervisor")
WAIT = 30.0
# Variables a test's daemon must not inherit from the shell that runs the suite (a secret would change every
# auth answer; a NOTIFY_SOCKET would send our READY=1 to the real systemd).
SCRUBBED_ENV = ("INTERNAL_SECRET", "NOTIFY_SOCKET", "WATCHDOG_USEC")


class NotWithin(AssertionError, TimeoutError):
    """A bounded wait ran out. Both an AssertionError (a test failure) and a TimeoutError (what callers catch)."""


def free_port() -> int:
    """A port nobody listens on right now, for daemons whose port must be known before they start (their config
    says which; port 0 would not be discoverable from outside the process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll `predicate` until truthy (returned) or `timeout` (NotWithin). Only for state that has no event to wait
    on: other processes, files, HTTP answers."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise NotWithin(f"{what}: not within {timeout}s")
        time.sleep(interval)


async def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.02,
                     what: str = "condition") -> Any:
    """wait_for inside an event loop (the loop keeps running between polls)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise NotWithin(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)


# -- the test config --------------------------------------------------------------------------------------------


def fake_worker_command(marker: str) -> list[str]:
    # -I keeps the user's site/env from leaking into the worker; the marker lets a test find its own workers in ps.
    return [sys.executable, "-I", str(FAKE_WORKER), "--marker", marker]


def fake_config(storage: Path, fake_state: Path, marker: str, script: Any = None, *, port: int = 0,
                secret: str | None = None, boot: tuple[str, ...] | list[str] = (), env: dict[str, str] | None = None,
                worker: dict[str, Any] | None = None, restart: dict[str, Any] | None = None,
                api: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """The config (the YAML file's schema, as a dict) of a daemon whose workers are tests/fake_worker.py running
    `script` (see that file). Short heartbeats and backoff so restart rows take milliseconds, not seconds; a
    heartbeat_timeout (which also bounds the wait for hello) that a worker's start-up meets at load 30; `prewarm` off because most tests count processes per tenant (tests/test_standby.py turns it on).
    `worker`/`restart`/`api` override single keys; other keyword arguments are whole sections (logging, webhook)."""
    wenv = {"BSUP_FAKE_STATE_DIR": str(fake_state)}
    if script is not None:
        wenv["BSUP_FAKE_SCRIPT"] = json.dumps(script)
    wenv.update(env or {})
    return {
        "storage": {"root": str(storage)},
        # secret_env null: the shell's INTERNAL_SECRET never leaks into a test daemon.
        "api": {"host": "127.0.0.1", "port": port, "secret": secret, "secret_env": None, **(api or {})},
        "worker": {"command": fake_worker_command(marker), "env": wenv, "heartbeat_interval": 0.2,
                   "heartbeat_timeout": 15.0, "stop_grace": 2.0, "prewarm": False, **(worker or {})},
        "restart": {"initial_delay": 0.05, "max_delay": 0.2, "jitter": 0.0, **(restart or {})},
        "tenants": {"boot": list(boot)},
        **sections,
    }


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively: what a YAML file would have given the config loader."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def settings_of(config: dict[str, Any]):
    """Settings (for an in-process Supervisor) from a fake_config. Built field by field, without the config
    loader's checks: unit tests also feed values `run` would refuse (a NUL in an env value, a missing command)
    to see that the daemon survives them. A subprocess daemon gets the same dict through the real loader."""
    from supervisor.settings import (ApiSettings, LoggingSettings, RestartSettings, Settings, StorageSettings,
                                     TenantsSettings, WorkerSettings)

    c = dict(config)
    api = {k: v for k, v in c.pop("api", {}).items() if k not in ("secret_env", "secret_file")}
    w = dict(c.pop("worker", {}))
    w["command"] = tuple(w.get("command") or ())
    sections = {"storage": StorageSettings(root=Path(c.pop("storage")["root"])), "api": ApiSettings(**api),
                "worker": WorkerSettings(**w), "restart": RestartSettings(**c.pop("restart", {})),
                "tenants": TenantsSettings(boot=tuple(c.pop("tenants", {}).get("boot", ())))}
    if "logging" in c:
        sections["logging"] = LoggingSettings(**c.pop("logging"))
    assert not c, f"settings_of: sections only the config loader knows: {sorted(c)}"
    return Settings(**sections)


# -- a daemon in its own process --------------------------------------------------------------------------------


def http_json(method: str, url: str, body: Any = None, timeout: float = WAIT,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, JSON body) of one request; error statuses are answers too (both the daemon and the simulator
    answer errors with JSON)."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, method=method, data=data,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.load(e)
        finally:
            e.close()


class DaemonProcess:
    """`baileys-supervisor run --config <workdir>/config.yaml` as a subprocess, so it can be SIGTERMed or SIGKILLed
    like in production. Each start() logs to its own <workdir>/daemon-<n>.log (a file, never a pipe: a chatty
    daemon must never block on a full pipe). JSON is a subset of YAML, so the config is written with json.dumps.

    Options for the variants the suite needs: `env` (extra environment, e.g. NOTIFY_SOCKET), `new_session` (own
    process group, so a test's Ctrl-C does not reach it), `prefix` (a command the daemon runs under, e.g. `ip netns
    exec NS`, which execs it: the pid stays the daemon's), and start(wait=False) for a daemon without a known port
    (api.port 0) or one that is expected to fail. The URL uses `api.host` (a daemon in a namespace listens on an
    address the test can route to)."""

    def __init__(self, workdir: Path, config: dict[str, Any], *, env: dict[str, str] | None = None,
                 new_session: bool = False, prefix: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.port: int = config.get("api", {}).get("port", 0)
        self.url = f"http://{config.get('api', {}).get('host', '127.0.0.1')}:{self.port}"
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(json.dumps(_plain(config), indent=1))
        self.extra_env = dict(env or {})
        self.new_session = new_session
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / f"daemon-{self.runs}.log"

    def start(self, wait: bool = True, timeout: float = WAIT) -> DaemonProcess:
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        env.update(self.extra_env)
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen([*self.prefix, str(CLI), "run", "--config", str(self.config_path)], stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                                         start_new_session=self.new_session)
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = WAIT) -> None:
        assert self.port, "a daemon on port 0 has no known URL: start(wait=False)"

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                return http_json("GET", self.url + "/healthz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(up, timeout, "daemon /healthz")

    def log_text(self) -> str:
        return "".join(self.workdir.joinpath(f"daemon-{n}.log").read_text(errors="replace")
                       for n in range(1, self.runs + 1))

    def log_events(self) -> list[dict[str, Any]]:
        return json_lines(self.log_text())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)

    def stop(self, timeout: float = WAIT) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); the exit code, None if never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        return self.proc.returncode


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among a log's lines (a crash may leave plain text between them)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
