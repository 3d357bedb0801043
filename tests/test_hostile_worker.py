"""Hostile workers against the real daemon in its own process (`baileys-supervisor run`, support.DaemonProcess, JSON
logging as in production) with real worker subprocesses (tests/hostile/hostile_worker.py).

What docs/protocol.md promises, checked from outside: junk on stdout is counted (baileys_supervisor_worker_invalid
_lines) and ignored; lines over 1 MiB are dropped and counted, a line of exactly 1 MiB is accepted; a worker that
sends no complete line for heartbeat_timeout is killed and restarted with backoff; the daemon's RSS (psutil, sampled
every 10 ms) stays bounded; and a well-behaved tenant on the same daemon keeps answering (status latency) and keeps
having its heartbeats processed (its `rss` counts up, read back from /metrics) while the neighbour misbehaves.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from support import WAIT, DaemonProcess, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
from hostile_worker import flood_plan  # noqa: E402

HOSTILE = Path(__file__).resolve().parent / "hostile"
MiB = 1 << 20
# Headroom over the idle daemon's RSS. The framing layer holds at most one 1 MiB line plus a 64 KiB chunk per
# stream, and the pipe transport pauses reading past 2 x 64 KiB: anything near the flood size (8-100 MB) is a leak.
RSS_HEADROOM = 24 * MiB
HEARTBEAT_TIMEOUT = 3.0
# Daemon CPU seconds (user + system, so the same on a loaded machine as on an idle one) for the 2 MB junk flood:
# 0.36 s measured on an idle 2-core machine; logging every junk line (the bug fixed in worker._protocol_error) costs
# 3.1 s, which the old 4 s wall-clock budget let through.
FLOOD_CPU_BUDGET = 1.5
# Worst neighbour status latency during a hostile run (see Prober.check): STATUS_BOUND on an idle machine, scaled by
# the machine's load (runnable tasks per core) and never below STALL_FACTOR times the median latency measured just
# before in the same test. (The median alone did not scale: 15 ms at load 30, where the worst took 1.67 s.)
STATUS_BOUND = 1.5
STALL_FACTOR = 10


def load_factor() -> float:
    """Runnable tasks per core (1-minute load average / cores), at least 1: how much slower everything runs."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


class Daemon:
    """A daemon process (support.DaemonProcess) plus an RSS sampler thread and an HTTP client."""

    def __init__(self, tmp_path: Path, marker: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        storage = tmp_path / "storage"
        storage.mkdir(exist_ok=True)
        cfg = {"storage": {"root": str(storage)}, "api": {"host": "127.0.0.1", "port": self.port, "secret_env": None},
               "worker": {"command": [sys.executable, "-I", str(HOSTILE / "hostile_worker.py"), "--marker", marker],
                          "env": env or {}, "heartbeat_interval": 0.5, "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                          "stop_grace": 1.0, "prewarm": False},
               "restart": {"initial_delay": 0.2, "max_delay": 0.5, "jitter": 0.0},
               "logging": {"format": "json", "level": "info"}}
        self.daemon = DaemonProcess(tmp_path / "daemon", cfg)
        self.peak_rss = 0
        self._sampling = False
        self._sampler: threading.Thread | None = None

    @property
    def log(self) -> Path:
        return self.daemon.log_path

    async def __aenter__(self) -> "Daemon":
        await asyncio.to_thread(self.daemon.start)
        self.ps = psutil.Process(self.daemon.pid)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop_sampling()
        await self.http.close()
        await asyncio.to_thread(self.daemon.stop)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def start_sampling(self) -> None:
        self._sampling = True

        def loop() -> None:
            while self._sampling:
                try:
                    self.peak_rss = max(self.peak_rss, self.rss())
                except psutil.NoSuchProcess:
                    return
                time.sleep(0.01)

        self._sampler = threading.Thread(target=loop, daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._sampling = False
        if self._sampler is not None:
            self._sampler.join()

    async def post(self, path: str) -> dict:
        async with self.http.post(self.url + path) as r:
            body = await r.json()
            assert r.status == 200, body
            return body

    async def get(self, path: str) -> dict:
        async with self.http.get(self.url + path) as r:
            body = await r.json()
            assert r.status == 200, body
            return body

    async def metric(self, name: str, tenant: str) -> float:
        async with self.http.get(self.url + "/metrics") as r:
            text = await r.text()
        m = re.search(rf'^baileys_supervisor_{name}(?:_total)?{{tenant="{re.escape(tenant)}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0


class Prober:
    """Polls the good tenant's status every 20 ms and records each answer's latency."""

    def __init__(self, d: Daemon, tenant: str) -> None:
        self.d, self.tenant = d, tenant
        self.latencies: list[float] = []
        self.marks: list[float] = []  # when the probe started, each answer arrived, the probe stopped
        self.answers: list[dict] = []
        self.base = 0.0
        self.load = 1.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            self.answers.append(await self.d.get(f"/whatsapp/{self.tenant}/status"))
            self.latencies.append(time.perf_counter() - t0)
            self.marks.append(time.perf_counter())
            await asyncio.sleep(0.02)

    def __enter__(self) -> "Prober":
        self.marks = [time.perf_counter()]
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()
        self.marks.append(time.perf_counter())

    async def baseline(self, n: int = 25) -> float:
        """Median status latency with no hostile neighbour yet: what this machine's load makes of one request."""
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await self.d.get(f"/whatsapp/{self.tenant}/status")
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)
        self.base = statistics.median(lat)
        self.load = load_factor()
        return self.base

    def check(self, pid: int) -> None:
        # A stalled API shows as a long request or as a long gap without an answer (a request still hanging when
        # the probe stopped): both count. How many polls fit depends on how long the hostile phase took, which on
        # an idle machine can be a few polls only; that alone says nothing about a stall.
        assert self.latencies, "the good tenant's status was never answered during the hostile run"
        gaps = [b - a for a, b in zip(self.marks, self.marks[1:])]
        worst = max(max(self.latencies), max(gaps) - 0.02)
        # A stall this long would also let the watchdog kill healthy neighbours (heartbeat_timeout). A loose safety
        # bound, not a latency target: ~0.15 s worst on an idle 2-core machine (median ~5 ms), where the unfixed
        # daemon stalled its neighbours for 2.3 s. On a loaded machine every request (and such a stall) is slower
        # by about the number of runnable tasks per core, so the bound grows with it.
        load = max(self.load, load_factor())
        bound = max(STATUS_BOUND * load, STATUS_BOUND + STALL_FACTOR * self.base)
        assert worst < bound, (f"good tenant's status took {worst:.3f}s during the hostile run (bound {bound:.2f}s: "
                               f"load factor {load:.1f}, baseline median {self.base * 1000:.0f} ms)")
        for a in self.answers:
            assert (a["state"], a["pid"], a["restarts"]) == ("qr", pid, 0), a


async def start_good(d: Daemon, tenant: str = "good-1") -> int:
    st = await d.post(f"/whatsapp/{tenant}/start")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        st = await d.get(f"/whatsapp/{tenant}/status")
        if st["hasQR"] and await d.metric("worker_rss_bytes", tenant) > 0:
            return st["pid"]
        await asyncio.sleep(0.05)
    raise AssertionError(f"good tenant never got going: {st}")


async def wait_status(d: Daemon, tenant: str, pred, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = await d.get(f"/whatsapp/{tenant}/status")
        if pred(st):
            return st
        assert time.monotonic() < deadline, f"{tenant}: condition not met within {timeout}s: {st}"
        await asyncio.sleep(0.05)


async def idle_baseline(d: Daemon, probe: Prober) -> int:
    """The daemon's RSS and the probe's latency baseline, before any hostile tenant (the allocator settles during
    the baseline's requests)."""
    await probe.baseline()
    return d.rss()


@pytest.mark.slow
async def test_flood_of_junk_lines_is_counted_bounded_and_does_not_stall_neighbours(tmp_path, marker):
    # 2 MB = 132,000 junk lines. Parsing a junk line costs a few microseconds, so the whole flood is a fraction of a
    # second of daemon CPU when junk is only counted. CPU time, not wall time: a loaded machine stretches the wall
    # clock (7.7 s measured next to 6 CPU burners) but not the work the daemon does.
    mb = 2
    async with Daemon(tmp_path, marker, env={"BSUP_HOSTILE_MB": str(mb)}) as d:
        good_pid = await start_good(d)
        probe = Prober(d, "good-1")
        base = await idle_baseline(d, probe)
        hb_before = await d.metric("worker_rss_bytes", "good-1")
        d.start_sampling()
        with probe:
            t0, cpu0 = time.monotonic(), d.cpu_seconds()
            await d.post("/whatsapp/flood-1/start")
            st = await wait_status(d, "flood-1", lambda s: s["hasQR"], timeout=WAIT * 2)
            elapsed, cpu = time.monotonic() - t0, d.cpu_seconds() - cpu0
            await asyncio.sleep(0.3)
        d.stop_sampling()
        invalid = await d.metric("worker_invalid_lines", "flood-1")
        hb_after = await d.metric("worker_rss_bytes", "good-1")
    _, expected = flood_plan(mb)
    print(f"flood {mb} MB ({expected} junk lines) in {elapsed:.2f}s, daemon CPU {cpu:.2f}s; daemon RSS idle {base / MiB:.1f} MiB, "
          f"peak {d.peak_rss / MiB:.1f} MiB; good status p_max {max(probe.latencies) * 1000:.0f} ms "
          f"over {len(probe.latencies)} polls; good heartbeats {hb_before:.0f} -> {hb_after:.0f}")
    assert invalid == expected, (invalid, expected)
    assert cpu < FLOOD_CPU_BUDGET, (f"{expected} junk lines took the daemon {cpu:.1f}s of CPU "
                                    f"({expected / cpu:,.0f} lines/s): junk is too expensive to ignore")
    assert st["state"] == "qr" and st["restarts"] == 0  # junk is ignored, never a reason to restart
    assert d.peak_rss - base < RSS_HEADROOM, f"daemon RSS grew by {(d.peak_rss - base) / MiB:.1f} MiB"
    probe.check(good_pid)
    # The good worker heartbeats every 0.1 s with a counting rss: its lines were processed throughout. (A quarter
    # of the nominal rate: on a loaded machine the worker's own 0.1 s sleeps overrun too.)
    assert hb_after - hb_before >= elapsed * 10 * 0.25


@pytest.mark.slow
async def test_100mb_line_without_newline_then_valid_lines(tmp_path, marker):
    async with Daemon(tmp_path, marker) as d:
        good_pid = await start_good(d)
        probe = Prober(d, "good-1")
        base = await idle_baseline(d, probe)
        d.start_sampling()
        with probe:
            t0 = time.monotonic()
            await d.post("/whatsapp/hugeline-1/start")
            # The valid qr line right after the 100 MB line's newline is processed: framing recovered.
            st = await wait_status(d, "hugeline-1", lambda s: s["hasQR"], timeout=WAIT * 3)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(0.3)
        d.stop_sampling()
        qr = await d.get("/whatsapp/hugeline-1/qr")
        invalid = await d.metric("worker_invalid_lines", "hugeline-1")
    print(f"100 MB line in {elapsed:.2f}s; daemon RSS idle {base / MiB:.1f} MiB, peak {d.peak_rss / MiB:.1f} MiB; "
          f"good status max {max(probe.latencies) * 1000:.0f} ms")
    assert qr["qr"] == "after-huge-line"
    assert invalid == 1  # dropped and counted once, not once per chunk
    assert st["restarts"] == 0
    assert d.peak_rss - base < RSS_HEADROOM, f"daemon RSS grew by {(d.peak_rss - base) / MiB:.1f} MiB"
    probe.check(good_pid)


@pytest.mark.slow
async def test_invalid_utf8_and_lines_at_the_limit(tmp_path, marker):
    async with Daemon(tmp_path, marker) as d:
        good_pid = await start_good(d)
        probe = Prober(d, "good-1")
        base = await idle_baseline(d, probe)
        d.start_sampling()
        with probe:
            await d.post("/whatsapp/badutf8-1/start")
            await d.post("/whatsapp/limit-1/start")
            await wait_status(d, "badutf8-1", lambda s: s["hasQR"], timeout=WAIT)
            st = await wait_status(d, "limit-1", lambda s: s["hasQR"], timeout=WAIT)
            # Wait for the over-limit `connecting` line to be counted (an event, not a fixed sleep), then look.
            deadline = time.monotonic() + WAIT
            while await d.metric("worker_invalid_lines", "limit-1") < 1:
                assert time.monotonic() < deadline, "the over-limit line was never counted"
                await asyncio.sleep(0.05)
            st = await d.get("/whatsapp/limit-1/status")
        d.stop_sampling()
        bad = await d.metric("worker_invalid_lines", "badutf8-1")
        limit = await d.metric("worker_invalid_lines", "limit-1")
        qr = await d.get("/whatsapp/badutf8-1/qr")
    assert bad == 20_000 and qr["qr"] == "after-bad-utf8"
    # Exactly 1 MiB: accepted (state qr, hasQR). 1 MiB + 1: dropped and counted, so no `connecting` transition.
    assert (st["state"], st["hasQR"], st["restarts"]) == ("qr", True, 0), st
    assert limit == 1
    assert d.peak_rss - base < RSS_HEADROOM, f"daemon RSS grew by {(d.peak_rss - base) / MiB:.1f} MiB"
    probe.check(good_pid)


@pytest.mark.slow
async def test_endless_line_is_killed_by_the_watchdog_and_restarted(tmp_path, marker):
    """No complete line for heartbeat_timeout -> killed (process group) and handled as a crash: backoff, respawn."""
    async with Daemon(tmp_path, marker) as d:
        good_pid = await start_good(d)
        probe = Prober(d, "good-1")
        base = await idle_baseline(d, probe)
        d.start_sampling()
        with probe:
            first = (await d.post("/whatsapp/endless-1/start"))["pid"]
            st = await wait_status(d, "endless-1", lambda s: s["restarts"] >= 1 and s["pid"] not in (None, first),
                                   timeout=HEARTBEAT_TIMEOUT + WAIT)
        d.stop_sampling()
        await d.post("/whatsapp/endless-1/stop")
        log = d.log.read_text()
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert '"worker.heartbeat_timeout"' in log and '"tenant": "endless-1"' in log
    assert st["state"] in ("qr", "starting", "connecting"), st
    assert d.peak_rss - base < RSS_HEADROOM, f"daemon RSS grew by {(d.peak_rss - base) / MiB:.1f} MiB"
    probe.check(good_pid)
