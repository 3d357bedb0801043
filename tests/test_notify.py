"""supervisor.notify against a real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import tempfile
import threading
import time
import uuid

import pytest

from supervisor.notify import Notifier, run_watchdog, watchdog_interval


class FakeSystemd:
    """Receives notify datagrams on a thread and stamps their arrival time.

    A thread (not the event loop under test) so arrival times stay true while that loop is deliberately blocked.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def messages(self) -> list[str]:
        return [m for _, m in self.received]

    def wait_for(self, count: int, timeout: float = 2.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.messages()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


@pytest.fixture
def fake_systemd(monkeypatch):
    # A short path of our own: tmp_path can exceed the 108-byte sun_path limit for long test names.
    with tempfile.TemporaryDirectory(prefix="bsup-ntf-") as tmp:
        path = os.path.join(tmp, "notify.sock")
        server = FakeSystemd(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        try:
            yield server
        finally:
            server.close()


def test_messages_arrive(fake_systemd):
    n = Notifier.from_env()
    assert n.enabled
    assert n.ready("2 tenants\nconnected") is True
    assert n.status("1/2 connected")
    assert n.reloading()
    assert n.stopping("shutting down")
    assert n.watchdog()
    msgs = fake_systemd.wait_for(5)
    n.close()
    assert msgs[0] == "READY=1\nSTATUS=2 tenants connected"  # newline in the status flattened, no bogus key
    assert msgs[1] == "STATUS=1/2 connected"
    reload_lines = msgs[2].split("\n")
    assert reload_lines[0] == "RELOADING=1"
    stamp = int(reload_lines[1].removeprefix("MONOTONIC_USEC="))
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now - stamp < 5_000_000  # CLOCK_MONOTONIC in microseconds, as systemd compares it
    assert msgs[3] == "STOPPING=1\nSTATUS=shutting down"
    assert msgs[4] == "WATCHDOG=1"


def test_abstract_namespace_socket(monkeypatch):
    name = f"bsup-test-{uuid.uuid4().hex}"
    server = FakeSystemd("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier.from_env()
        assert n.ready()
        assert server.wait_for(1) == ["READY=1"]
    finally:
        server.close()


def test_noop_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = Notifier.from_env()
    assert not n.enabled
    assert n.watchdog_interval is None
    assert n.ready("x") is False and n.status("x") is False and n.watchdog() is False
    assert n.stopping() is False and n.reloading() is False
    assert n._sock is None  # not even a socket was created


async def test_run_watchdog_returns_at_once_when_disabled(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    await asyncio.wait_for(run_watchdog(Notifier.from_env(), asyncio.Event(), interval=0.1), 0.5)


def test_send_failure_does_not_raise(tmp_path):
    n = Notifier(str(tmp_path / "gone.sock"))
    assert n.ready() is False
    assert isinstance(n.last_error, OSError)


def test_unset_keeps_env_out_of_children(fake_systemd, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env(unset=True)
    assert n.enabled and n.watchdog_interval == 2.0
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("3000000", None, 3.0),
        ("3000000", "self", 3.0),
        ("3000000", "other", None),  # the watchdog belongs to another process (an inherited environment)
        ("0", None, None),
        ("junk", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(usec, pid, expected):
    env = {}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    assert watchdog_interval(env) == expected


async def test_watchdog_cadence_and_stop(fake_systemd, monkeypatch):
    # WatchdogSec=0.8s -> a ping every 0.4 s. Periods this long keep the bounds meaningful on a loaded CI machine.
    monkeypatch.setenv("WATCHDOG_USEC", "800000")
    n = Notifier.from_env()
    assert n.watchdog_interval == 0.8
    stop = asyncio.Event()
    task = asyncio.create_task(run_watchdog(n, stop))
    await asyncio.sleep(1.0)
    stop.set()
    t0 = time.monotonic()
    await asyncio.wait_for(task, 1)
    assert time.monotonic() - t0 < 0.2  # stopping does not wait out the 0.4 s period
    await asyncio.sleep(0.05)
    pings = [t for t, m in fake_systemd.received if m == "WATCHDOG=1"]
    assert 2 <= len(pings) <= 4, pings  # t = 0, 0.4, 0.8
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(0.35 <= g < 0.8 for g in gaps), gaps  # never a whole WatchdogSec between pings
    count = len(fake_systemd.received)
    await asyncio.sleep(0.25)
    assert len(fake_systemd.received) == count  # no pings after stop


async def test_blocked_loop_delays_pings(fake_systemd, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    n = Notifier.from_env()
    stop = asyncio.Event()
    task = asyncio.create_task(run_watchdog(n, stop))
    await asyncio.sleep(0.35)
    blocked: list[float] = []

    def block() -> None:  # the bug the watchdog exists for: a synchronous call that hangs the loop
        blocked.append(time.monotonic())
        time.sleep(0.6)
        blocked.append(time.monotonic())

    asyncio.get_running_loop().call_soon(block)
    await asyncio.sleep(0.1)  # runs only after the block: the loop was stuck
    await asyncio.sleep(0.35)  # the pings resume
    stop.set()
    await asyncio.wait_for(task, 1)
    pings = [t for t, m in fake_systemd.received if m == "WATCHDOG=1"]
    start, end = blocked
    during = [t for t in pings if start + 0.01 < t < end - 0.01]
    assert during == [], "a ping was sent while the event loop was blocked"
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) >= 0.55, gaps  # the blocked stretch shows up as one long silence
    assert len([t for t in pings if t > end]) >= 2, "pings did not resume after the loop was free again"
    assert statistics.median(gaps) < 0.2, gaps  # ...while the normal cadence is interval/2


def test_status_summary():
    from supervisor.notify import status_summary
    from supervisor.states import TenantState

    assert status_summary([]) == "0 tenants"
    assert status_summary([TenantState.CONNECTED]) == "1 tenant: 1 connected"
    states = ["qr", TenantState.CONNECTED, "connected", "backoff"]
    assert status_summary(states) == "4 tenants: 2 connected, 1 backoff, 1 qr"
