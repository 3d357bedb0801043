"""The seed's GO/NO-GO and cause 1, end to end: daemon + real worker + real Baileys + the simulator."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .e2e_harness import auth_files_parse, pair, wait_for

pytestmark = pytest.mark.e2e


OLD_515_PATH = {"BSUP_RESTART_IN_PROCESS": "off"}  # the worker exits after every close (docs/protocol.md)


def events(d, name: str, tid: str = "1") -> list[dict]:
    return [e for e in d.log_events() if e.get("event") == name and e.get("tenant") == tid]


def test_go_no_go_scan_to_connected_through_the_515_reconnected_in_process(sim, make_daemon, storage_root: Path):
    d = make_daemon(sim)
    d.start_tenant("1")
    # Before the scan: what the web app polls.
    d.wait_status("1", lambda s: s["hasQR"], what="hasQR")
    before = d.status("1")
    assert before["connected"] is False and before["hasQR"] is True and before["state"] == "qr"
    qr = d.qr("1")
    assert qr["dataUrl"].startswith("data:image/png;base64,") and qr["qr"].startswith("https://wa.me/settings/")

    t_scan = time.monotonic()
    res = sim.scan(qr["qr"], pushName="Alice")
    assert res["ok"], res
    st = d.wait_connected("1")
    print(f"\nscan -> connected: {time.monotonic() - t_scan:.3f} s")
    # The 515 after pair-success: the same worker logged in on a new socket, no restart, nobody called start again.
    assert st["pid"] == before["pid"] and st["standbyPid"] is None
    assert st["restarts"] == 0
    assert st["pushName"] == "Alice"
    assert st["me"]["id"] == res["jid"]
    assert st["hasQR"] is False
    assert st["lastDisconnect"]["code"] == 515 and st["lastDisconnect"]["reason"] == "restartRequired"
    assert st["auth"]["registered"] is True and st["auth"]["files"] > 1
    auth = storage_root / "whatsapp" / "1" / "auth"
    files = auth_files_parse(auth)
    creds = json.loads((auth / "creds.json").read_text())
    assert "creds.json" in files and creds["me"]["id"] == res["jid"]
    c = sim.counters()
    assert c["registrations"] == 1 and c["pairings"] == 1 and c["logins"] >= 1
    assert c["conflicts"] == 0
    assert state_max_concurrent(sim) == 1  # never two sockets, not even for a moment
    starts = [e for e in d.log_events() if e.get("event") == "tenant.state" and e.get("reason") == "start"]
    assert len(starts) == 1, starts
    assert [e["to_state"] for e in events(d, "tenant.state") if e.get("reason") == "restartRequired"] == ["connecting"]
    assert not events(d, "tenant.decision")
    # hello said restartInProcess: no standby was started for it (worker.prewarm is on by default)
    assert not [e for e in d.log_events() if e.get("event", "").startswith("standby.")]


def test_a_scan_right_at_the_qr_keeps_the_worker_and_uses_no_standby(sim, make_daemon):
    """The instant scan (issue 12): a standby started at the QR would still be importing Baileys when the 515 comes;
    the worker that showed the QR logs in itself instead. Same pid from the QR to connected, one worker spawned, no
    standby at all."""
    d = make_daemon(sim)
    d.start_tenant("1")
    qr = d.wait_qr("1")
    pid = d.status("1")["pid"]
    res = sim.scan(qr, pushName="Dana")
    assert res["ok"], res
    seen = d.wait_connected("1")
    assert seen["pid"] == pid and seen["restarts"] == 0 and seen["me"]["id"] == res["jid"]
    assert [e["worker_pid"] for e in events(d, "worker.spawned") if not e.get("standby")] == [pid]
    assert not [e for e in d.log_events() if e.get("event", "").startswith("standby.")]
    assert sim.counters()["registrations"] == 1 and state_max_concurrent(sim) == 1


def test_a_failed_in_process_reconnect_falls_back_to_the_515_restart(sim, make_daemon):
    """Opening the new socket fails (forced by a test hook): the worker reports a plain close 515 and exits, and the
    daemon restarts it at once, as before the in-process reconnect existed."""
    d = make_daemon(sim, worker={"env": {"BSUP_TEST_FAIL_RECONNECT": "1"}})
    d.start_tenant("1")
    qr = d.wait_qr("1")
    first = d.status("1")["pid"]
    res = sim.scan(qr, pushName="Fay")
    assert res["ok"], res
    st = d.wait_connected("1")
    assert st["pid"] not in (None, first) and st["restarts"] == 1 and st["me"]["id"] == res["jid"]
    assert st["lastDisconnect"]["code"] == 515 and "in-process reconnect failed" in st["lastDisconnect"]["message"]
    assert [(e["action"], e["reason"]) for e in events(d, "tenant.decision")] == [("restart", "restartRequired")]
    assert sim.counters()["registrations"] == 1 and state_max_concurrent(sim) == 1


@pytest.mark.parametrize("prewarm", [True, False])
def test_with_the_in_process_reconnect_off_the_515_restarts_the_worker(sim, make_daemon, prewarm):
    """The old path, which a failed in-process reconnect falls back to: exit after the 515, the daemon restarts at
    once, with the standby promoted when one is up."""
    d = make_daemon(sim, worker={"prewarm": prewarm, "env": OLD_515_PATH})
    d.start_tenant("1")
    qr = d.wait_qr("1")
    first = d.status("1")["pid"]
    standby = None
    if prewarm:
        standby = d.wait_status("1", lambda s: s["standbyPid"], what="standbyPid")["standbyPid"]
        wait_for(lambda: events(d, "standby.ready"), what="standby.ready")
    else:
        assert d.status("1")["standbyPid"] is None
    res = sim.scan(qr, pushName="Carol")
    assert res["ok"], res
    st = d.wait_connected("1")
    assert st["pid"] not in (None, first) and st["restarts"] == 1 and st["me"]["id"] == res["jid"]
    assert st["lastDisconnect"]["code"] == 515
    if prewarm:
        assert st["pid"] == standby and st["standbyPid"] is None  # promoted: no Node start-up after the scan
        assert state_max_concurrent(sim) == 1  # the standby never opened a socket of its own before `go`
    else:
        assert not any(e.get("event", "").startswith("standby.") for e in d.log_events())


def state_max_concurrent(sim) -> int:
    return sim.state()["maxConcurrentAnyDevice"]


def test_cause1_fifty_concurrent_starts_one_registration_socket(sim, make_daemon):
    d = make_daemon(sim)
    barrier = threading.Barrier(50)

    def start(_i: int) -> dict:
        barrier.wait()  # all 50 requests leave together, like a UI calling start in a loop
        return d.start_tenant("1")

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(start, range(50)))
    assert all(a["ok"] for a in answers)
    assert len({a["pid"] for a in answers}) == 1, {a["pid"] for a in answers}  # one worker for everyone

    first_qr = d.wait_qr("1")
    res = sim.scan(first_qr, pushName="Bob")
    assert res["ok"], res  # the QR the first caller saw was never replaced under the user
    st = d.wait_connected("1")
    assert st["me"]["id"] == res["jid"]
    state = sim.state()
    c = state["counters"]
    assert c["registrations"] == 1, c
    assert c["pairings"] == 1 and c["conflicts"] == 0 and c["conflictsFromDuplicates"] == 0
    assert state["maxConcurrentAnyDevice"] == 1
    assert state["devices"][res["jid"]]["maxConcurrent"] == 1


def test_serial_pairings_of_several_tenants(sim, make_daemon):
    """Three tenants paired one after another on one daemon: each gets its own device, nobody disturbs another."""
    d = make_daemon(sim)
    jids = set()
    for tid in ("a", "b", "c"):
        r = pair(d, sim, tid)
        jids.add(r["status"]["me"]["id"])
    assert len(jids) == 3
    assert all(d.status(t)["connected"] for t in ("a", "b", "c"))
    c = sim.counters()
    assert c["registrations"] == 3 and c["pairings"] == 3 and c["conflicts"] == 0
