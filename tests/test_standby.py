"""The standby worker (worker.prewarm, supervisor/standby.py) with the real fake worker: real subprocesses, real
inherited flocks. It is started while a QR is shown, promoted by `go` after the scan's 515, and never outlives the
need for it (open without 515, stop, forced shutdown, a rest)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import FakeClock, live_workers, spawn_records, wait_until
from supervisor.daemon import Supervisor
from supervisor.doctor import PASS, process_check
from test_daemon import by_tenant

HELLO = {"hello": {}}
QR_THEN_SCAN = [HELLO, {"emit": {"type": "connecting"}}, {"qr": "2@fake"}, {"wait_file": "scanned"}]
SCAN_515 = QR_THEN_SCAN + [{"close": 515, "reason": "restartRequired"}]
LOGIN = [{"emit": {"type": "connecting"}}, {"open": "1@s.whatsapp.net"}, {"wait": True}]


def prewarm_sup(make_settings, script, env=None, **worker) -> Supervisor:
    clock = FakeClock()
    settings = make_settings(script, worker={"prewarm": True, **worker}, env=env)
    return Supervisor(settings, clock=clock, sleep=clock.sleep)


async def ready_standby(sup: Supervisor, tid: str = "t") -> int:
    tenant = sup.tenants[tid]
    await wait_until(lambda: tenant.standby.current is not None and tenant.standby.current.ready)
    assert tenant.standby.pid is not None
    return tenant.standby.pid


def scan(fake_state: Path) -> None:
    (fake_state / "scanned").touch()


async def test_515_after_the_scan_promotes_the_standby(make_settings, fake_state, marker, storage):
    sup = prewarm_sup(make_settings, {"spawns": [SCAN_515, LOGIN]})
    st = await sup.start_tenant("t")
    qr_pid = st["pid"]
    standby_pid = await ready_standby(sup)
    st = sup.status("t")
    assert st["state"] == "qr" and st["pid"] == qr_pid and st["standbyPid"] == standby_pid != qr_pid
    assert set(live_workers(marker)) == {qr_pid, standby_pid}
    # the standby inherited the tenant's locked fd like any worker (flock invariant), and has no socket yet
    lock = (storage / "whatsapp" / "t" / "auth.lock").resolve()
    assert any(os.path.realpath(f"/proc/{standby_pid}/fd/{fd}") == str(lock) for fd in os.listdir(f"/proc/{standby_pid}/fd"))
    assert [r["pid"] for r in spawn_records(fake_state)] == [qr_pid]  # it has not started its script (no `go`)

    scan(fake_state)
    await wait_until(lambda: sup.status("t")["state"] == "connected")
    st = sup.status("t")
    assert st["pid"] == standby_pid and st["standbyPid"] is None and st["restarts"] == 1
    assert [r["pid"] for r in spawn_records(fake_state)] == [qr_pid, standby_pid]
    assert set(live_workers(marker)) == {standby_pid}
    await sup.shutdown()


async def test_a_standby_still_starting_at_the_515_is_waited_for_and_promoted(make_settings, fake_state, marker):
    sup = prewarm_sup(make_settings, {"spawns": [SCAN_515, LOGIN]}, env={"BSUP_FAKE_STANDBY_DELAY": "1.0"})
    await sup.start_tenant("t")
    tenant = sup.tenants["t"]
    await wait_until(lambda: tenant.standby.pid is not None)
    slow_pid = tenant.standby.pid
    assert not tenant.standby.current.ready
    scan(fake_state)  # the 515 comes before its hello: it is further along than a fresh spawn would be
    await wait_until(lambda: sup.status("t")["state"] == "connected")
    assert sup.status("t")["pid"] == slow_pid
    assert set(live_workers(marker)) == {slow_pid}
    await sup.shutdown()


async def test_a_hung_standby_is_reaped_after_the_bound_and_a_worker_spawned(make_settings, fake_state, marker):
    sup = prewarm_sup(make_settings, {"spawns": [SCAN_515, LOGIN]}, env={"BSUP_FAKE_STANDBY_DELAY": "60"},
                      heartbeat_timeout=1.0)  # the bound for a standby's hello, like a spawn's
    await sup.start_tenant("t")
    tenant = sup.tenants["t"]
    await wait_until(lambda: tenant.standby.pid is not None)
    slow_pid = tenant.standby.pid
    scan(fake_state)
    await wait_until(lambda: sup.status("t")["state"] == "connected")
    st = sup.status("t")
    assert st["pid"] not in (None, slow_pid) and st["standbyPid"] is None
    assert set(live_workers(marker)) == {st["pid"]}
    await sup.shutdown()


async def test_a_dead_standby_is_not_promoted(make_settings, fake_state, marker):
    sup = prewarm_sup(make_settings, {"spawns": [SCAN_515, LOGIN]})
    await sup.start_tenant("t")
    standby_pid = await ready_standby(sup)
    os.kill(standby_pid, signal.SIGKILL)
    await wait_until(lambda: sup.status("t")["standbyPid"] is None)
    scan(fake_state)
    await wait_until(lambda: sup.status("t")["state"] == "connected")
    assert sup.status("t")["pid"] not in (None, standby_pid)
    assert sup.status("t")["state"] == "connected"
    await sup.shutdown()


async def test_open_without_a_515_dismisses_the_standby(make_settings, fake_state, marker):
    sup = prewarm_sup(make_settings, QR_THEN_SCAN + [{"open": "1@s.whatsapp.net"}, {"wait": True}])
    st = await sup.start_tenant("t")
    standby_pid = await ready_standby(sup)
    scan(fake_state)
    await wait_until(lambda: sup.status("t")["state"] == "connected")
    await wait_until(lambda: standby_pid not in live_workers(marker))
    assert set(live_workers(marker)) == {st["pid"]}
    await sup.shutdown()


async def test_a_worker_that_says_hello_and_cannot_connect_gets_no_standby(make_settings, fake_state, marker):
    # Offline: every worker says hello, tries to connect and closes with 408; no QR is ever shown. A standby
    # started at hello would idle through each backoff (one more Baileys process per cycle, for a scan that
    # cannot come). The fake clock runs the backoff loop until its limit, where the tenant sits in `backoff`.
    clock = FakeClock(limit=6.0)  # backoff 1 + 2, then the third sleep (4 s) passes the limit: 3 workers
    offline = [HELLO, {"emit": {"type": "connecting"}}, {"close": 408, "reason": "timedOut"}]
    settings = make_settings(offline, worker={"prewarm": True}, restart={"initial_delay": 1.0, "max_delay": 4.0})
    sup = Supervisor(settings, clock=clock, sleep=clock.sleep)
    await sup.start_tenant("t")
    tenant = sup.tenants["t"]
    await asyncio.wait_for(clock.limit_reached.wait(), 30)
    await wait_until(lambda: sup.status("t")["state"] == "backoff")
    assert len(spawn_records(fake_state)) == 3  # three hello -> connecting -> 408 cycles ran
    assert tenant.standby.current is None and sup.status("t")["standbyPid"] is None
    assert live_workers(marker) == {}  # no idle standby waits out the backoff
    await sup.shutdown()


async def test_the_first_qr_starts_the_standby_not_the_hello(make_settings, fake_state, marker):
    sup = prewarm_sup(make_settings, [HELLO, {"emit": {"type": "connecting"}}, {"wait_file": "go_on"},
                                      {"qr": "2@fake"}, {"wait": True}])
    st = await sup.start_tenant("t")
    tenant = sup.tenants["t"]
    await wait_until(lambda: sup.status("t")["state"] == "connecting")  # its hello has been handled
    assert tenant.standby.current is None and set(live_workers(marker)) == {st["pid"]}
    (fake_state / "go_on").touch()
    standby_pid = await ready_standby(sup)
    assert sup.status("t")["state"] == "qr" and set(live_workers(marker)) == {st["pid"], standby_pid}
    await sup.shutdown()


async def test_stop_and_a_resting_close_take_the_standby_down(make_settings, fake_state, marker):
    sup = prewarm_sup(make_settings, {"spawns": [QR_THEN_SCAN + [{"close": 408, "reason": "timedOut"}],
                                                 QR_THEN_SCAN + [{"wait": True}]]})
    await sup.start_tenant("t")
    await ready_standby(sup)
    scan(fake_state)  # here: the QR expired (408 while waiting for a scan) -> rest in `stopped`
    await wait_until(lambda: sup.status("t")["state"] == "stopped")
    assert live_workers(marker) == {} and sup.status("t")["standbyPid"] is None
    assert not sup.tenants["t"].lock.held

    (fake_state / "scanned").unlink()
    await sup.start_tenant("t")
    await ready_standby(sup)
    assert len(live_workers(marker)) == 2
    await sup.stop_tenant("t")
    assert live_workers(marker) == {} and sup.status("t")["standbyPid"] is None
    await sup.shutdown()


async def test_forced_shutdown_kills_a_standby_that_ignores_sigterm(make_settings, fake_state, marker):
    sup = prewarm_sup(make_settings, QR_THEN_SCAN, stop_grace=30.0, env={"BSUP_FAKE_IGNORE_TERM": "1", "BSUP_FAKE_IGNORE_EOF": "1"})
    await sup.start_tenant("t")
    await ready_standby(sup)
    force = asyncio.Event()
    t0 = time.monotonic()
    shutdown = asyncio.create_task(sup.shutdown(force=force))
    await asyncio.sleep(0.3)
    assert len(live_workers(marker)) == 2  # inside the 30 s grace: nothing killed yet
    force.set()
    await asyncio.wait_for(shutdown, 10)
    assert time.monotonic() - t0 < 10
    assert live_workers(marker) == {}


async def test_doctor_counts_the_standby_as_the_daemons_own(make_settings, fake_state, storage):
    sup = prewarm_sup(make_settings, QR_THEN_SCAN)
    st = await sup.start_tenant("t")
    await ready_standby(sup)
    st = sup.status("t")
    tdir = storage / "whatsapp" / "t"
    check = process_check(tdir, st["pid"], None, standby_pid=st["standbyPid"])
    assert check.verdict == PASS and str(st["standbyPid"]) in check.detail, check
    # without knowing it, the same two holders are reported: the check is live
    assert process_check(tdir, st["pid"], None).verdict != PASS
    await sup.shutdown()


@pytest.mark.slow
async def test_kill9_daemon_with_standbys_up_then_takeover(storage, fake_state, marker, tmp_path):
    """The standby holds an inherited copy of the flock: after the daemon's kill -9 it leaves on stdin EOF like the
    worker, and the next daemon takes every tenant over (its own worker and standby), nothing of the old one left."""
    from support import WAIT, DaemonProcess, fake_config

    tenants = ["s1", "s2"]
    cfg = fake_config(storage, fake_state, marker, boot=tenants, worker={"prewarm": True})
    first, second = DaemonProcess(tmp_path / "d1", cfg), DaemonProcess(tmp_path / "d2", cfg)
    first.start(wait=False)
    try:
        # a QR-showing worker and its standby per tenant, and the worker recorded in worker.pid (a daemon's
        # start-up plus four spawns: seconds at load 30)
        await wait_until(lambda: sorted(len(p) for p in by_tenant(marker).values()) == [2, 2], timeout=2 * WAIT)
        await wait_until(lambda: all((storage / "whatsapp" / t / "worker.pid").exists() for t in tenants))
        old = set(live_workers(marker))
        first.kill9()
        second.start(wait=False)
        await wait_until(lambda: not old & set(live_workers(marker))
                         and sorted(len(p) for p in by_tenant(marker).values()) == [2, 2], timeout=2 * WAIT)
    finally:
        for d in (first, second):
            if d.proc is not None and d.proc.poll() is None:
                assert d.stop() == 0, d.log_text()[-3000:]


async def test_a_standby_queued_for_a_spawn_slot_is_cancelled_not_waited_for(make_settings, fake_state, marker):
    sup = prewarm_sup(make_settings, QR_THEN_SCAN)
    await sup.start_tenant("t")
    tenant = sup.tenants["t"]
    await ready_standby(sup)
    await tenant.standby.reap()
    held = [await sup.spawn_slots.acquire() for _ in range(sup.settings.worker.max_concurrent_spawns)]  # a big boot
    tenant._prewarm()
    queued = tenant.standby.current
    assert queued is not None and queued.worker.proc is None
    await asyncio.wait_for(sup.stop_tenant("t"), 5)  # does not wait for a slot that never comes
    assert queued.task.done() and tenant.standby.current is None and live_workers(marker) == {}
    for _ in held:
        sup.spawn_slots.release()
    await sup.shutdown()
