"""Crash safety with the real parts: SIGKILL the worker at random moments (pairing, login, steady state) and SIGKILL
the daemon itself with several tenants connected. Nothing may need a re-scan, no auth file may be torn, and the
simulator must never see two live connections for one device."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest

from .e2e_harness import auth_files_parse, pair

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def kill9(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended on its own in the meantime: still a valid "random moment"


def new_pid(d, tid: str, old: int | None, timeout: float = 20.0) -> int:
    st = d.wait_status(tid, lambda s: s["pid"] is not None and s["pid"] != old, timeout, "a new worker")
    return st["pid"]


def test_worker_sigkill_at_random_moments_never_costs_a_rescan(sim, make_daemon, storage_root: Path):
    rng = random.Random(int(os.environ.get("E2E_SEED", time.time())))
    # stable_after 1 s: after each recovery the backoff starts small again, so 15 kills stay quick.
    d = make_daemon(sim, restart={"stable_after": 1.0})
    auth = storage_root / "whatsapp" / "t" / "auth"
    d.start_tenant("t")

    # 1. During pairing, while the QR is shown: the next worker shows a new QR (nothing was linked yet).
    for _ in range(2):
        d.wait_qr("t")
        pid = d.status("t")["pid"]
        time.sleep(rng.uniform(0.0, 0.5))
        kill9(pid)
        new_pid(d, "t", pid)
    qr = d.wait_qr("t")
    res = sim.scan(qr, pushName="Crashy")
    assert res["ok"], res
    jid = res["jid"]

    # 2. During login: the worker that logs in on its new socket after the scan's 515 (in-process), then its
    # successors, killed at random points of their start-up and handshake. Each must log in with the creds written
    # at pair-success.
    pid = d.status("t")["pid"]
    for i in range(4):
        if i:
            pid = new_pid(d, "t", pid)
        time.sleep(rng.uniform(0.0, 0.8))
        kill9(pid)
    st = d.wait_connected("t")
    assert st["me"]["id"] == jid
    regs = sim.counters()["registrations"]
    assert sim.counters()["pairings"] == 1

    # 3. Steady state: connected, killed at a random moment, back connected with the same device.
    for i in range(6):
        st = d.wait_connected("t")
        time.sleep(rng.uniform(0.0, 0.6))
        kill9(st["pid"])
        st = d.wait_status("t", lambda s, old=st["pid"]: s["connected"] and s["pid"] not in (None, old),
                           what=f"reconnected after kill {i}")
        assert st["me"]["id"] == jid
        auth_files_parse(auth)

    c = sim.counters()
    assert c["registrations"] == regs and c["pairings"] == 1 and c["scans"] == 1, c
    assert sim.state()["devices"][jid]["removed"] is False
    assert "creds.json" in auth_files_parse(auth)
    assert c["conflictsFromDuplicates"] == 0 and sim.state()["maxConcurrentAnyDevice"] == 1


def test_daemon_sigkill_with_tenants_connected_comes_back_without_rescan(sim, make_daemon, storage_root: Path):
    tenants = [f"t{i}" for i in range(4)]
    d = make_daemon(sim, boot=tenants)  # boot list: a restarted daemon brings every tenant back by itself
    jids = {}
    for tid in tenants:
        jids[tid] = sim.scan(d.wait_qr(tid))["jid"]
    for tid in tenants:
        assert d.wait_connected(tid)["me"]["id"] == jids[tid]
    old_workers = {tid: d.status(tid)["pid"] for tid in tenants}

    for round_ in range(2):
        d.kill9()
        # Restart at once, while the orphaned workers may still be alive and holding their locks: the new daemon
        # must stop them (recorded daemon pid is dead) before spawning, never run two per tenant.
        d.start()
        for tid in tenants:
            st = d.wait_connected(tid)
            assert st["me"]["id"] == jids[tid], (round_, st)
            assert st["pid"] != old_workers[tid]
        for tid, pid in old_workers.items():
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, tid
        old_workers = {tid: d.status(tid)["pid"] for tid in tenants}

    state = sim.state()
    c = state["counters"]
    assert c["registrations"] == 4 and c["pairings"] == 4 and c["scans"] == 4, c
    assert state["maxConcurrentAnyDevice"] == 1, state["devices"]
    assert c["conflictsFromDuplicates"] == 0 and c["conflicts"] == 0
    for tid in tenants:
        auth_files_parse(storage_root / "whatsapp" / tid / "auth")
    # worker.prewarm is on, but the workers reconnect in-process after the scan's 515 (hello.restartInProcess): no
    # standby at the pairings, and none for a tenant a restarted daemon finds linked on disk (Baileys' QR flow leaves
    # "registered": false in creds.json; `account` is what says linked).
    standbys = [e["tenant"] for e in d.log_events() if e["event"] == "standby.spawned"]
    assert standbys == [], standbys
