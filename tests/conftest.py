"""Shared fixtures: temporary storage, a Settings factory wired to tests/fake_worker.py, a fake clock, and helpers
to find live fake workers (by a per-test marker in their argv) and their spawn log. Plain helpers (ports, waiting,
the test config, a daemon subprocess) live in tests/support.py; wait_until and fake_worker_command stay importable
from here for the files that import them from conftest."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import support
from support import FAKE_WORKER, TESTS_DIR, fake_config, settings_of, wait_until  # noqa: F401 - re-exported
from supervisor.events import StdlibBridge
from supervisor.settings import Settings


class FakeClock:
    """Wall clock (epoch seconds) advanced only by `sleep()`. Past `limit`, sleep blocks until cancelled, so a
    restart loop can be run for N simulated minutes and then inspected."""

    def __init__(self, start: float = 1_700_000_000.0, limit: float | None = None) -> None:
        self.now = start
        self.start = start
        self.limit = limit
        self.sleeps: list[float] = []
        self.limit_reached = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        if self.limit is not None and self.now - self.start >= self.limit:
            self.limit_reached.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)


def fake_worker_command(marker: str) -> tuple[str, ...]:
    """Kept for old importers; the one definition is support.fake_worker_command."""
    return tuple(support.fake_worker_command(marker))


@pytest.fixture
def marker() -> str:
    """Unique argv marker of this test's fake workers (for process scans)."""
    return f"bsup-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    root.mkdir()
    return root


@pytest.fixture
def fake_state(tmp_path: Path) -> Path:
    d = tmp_path / "fake-state"
    d.mkdir()
    return d


@pytest.fixture
def make_settings(storage: Path, fake_state: Path, marker: str) -> Callable[..., Settings]:
    """make_settings(script=None, *, worker={...}, restart={...}, api={...}, boot=(...)) -> Settings.
    `script` is the fake worker's script (see tests/fake_worker.py); worker/restart/api override fields."""

    def factory(script: Any = None, *, worker: dict[str, Any] | None = None, restart: dict[str, Any] | None = None,
                api: dict[str, Any] | None = None, boot: tuple[str, ...] = (), env: dict[str, str] | None = None
                ) -> Settings:
        return settings_of(fake_config(storage, fake_state, marker, script, worker=worker, restart=restart, api=api,
                                       boot=boot, env=env))

    return factory


def spawn_records(fake_state: Path) -> list[dict[str, Any]]:
    path = fake_state / "spawns.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def signal_records(fake_state: Path) -> list[dict[str, Any]]:
    """Every SIGTERM a fake worker received ({"tenant", "pid", "signal", "t"}; see tests/fake_worker.py)."""
    path = fake_state / "signals.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def live_workers(marker: str) -> dict[int, str]:
    """pid -> tenant of every live (non-zombie) fake worker carrying `marker` in its argv."""
    found: dict[int, str] = {}
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if marker in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc.environ().get("BSUP_TENANT", "?")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_marked(marker: str) -> None:
    """Last-resort cleanup of a test's own workers (found by its unique marker), so a failing test leaks nothing."""
    for pid in live_workers(marker):
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(autouse=True)
def _no_stdlib_bridge_left():
    """configure_logging() routes the root logger into structlog, whose output a test points at its own buffer: undo
    it after each test, so later library records never go to a finished test's stream."""
    yield
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, StdlibBridge)]:
        root.removeHandler(h)
    logging.captureWarnings(False)


@pytest.fixture(autouse=True)
def _no_leaked_workers(marker: str):
    yield
    leaked = live_workers(marker)
    # Workers of a killed daemon exit on stdin EOF within ~1 s idle; many more at load 30 (a safety bound: only a
    # test that really leaks pays it).
    deadline = time.monotonic() + support.WAIT / 2
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = live_workers(marker)
    kill_marked(marker)
    assert not leaked, f"fake workers left running: {leaked}"
