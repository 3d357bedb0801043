"""Every row of the restart table (README "Restart policy") with real Baileys closing for real reasons: the simulator
kills the session the way WhatsApp does and the daemon must react as the table says."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .e2e_harness import assert_rests, auth_files_parse, decisions, pair

pytestmark = pytest.mark.e2e


def test_401_logged_out_archives_auth_and_next_start_shows_a_new_qr(sim, make_daemon, storage_root: Path):
    d = make_daemon(sim)
    r = pair(d, sim, "t")
    jid = r["scan"]["jid"]
    assert sim.kill(jid, "401")["ok"]
    st = d.wait_status("t", lambda s: s["state"] == "logged_out", what="logged_out")
    assert st["lastDisconnect"]["code"] == 401 and st["connected"] is False and st["pid"] is None
    tdir = storage_root / "whatsapp" / "t"
    archives = list(tdir.glob("auth.logged-out-*"))
    assert len(archives) == 1 and "creds.json" in auth_files_parse(archives[0])
    assert not (tdir / "auth").exists() or not any((tdir / "auth").iterdir())
    upgrades = sim.counters()["upgrades"]
    assert assert_rests(d, "t", 401)["next_state"] == "logged_out"
    assert sim.counters()["upgrades"] == upgrades, "a logged-out tenant reconnected on its own"
    assert d.status("t")["state"] == "logged_out"

    d.start_tenant("t")
    qr = d.wait_qr("t")
    assert qr != r["scan"].get("qr")
    assert sim.counters()["registrations"] == 2  # a fresh registration: the old creds are gone, not reused
    res = sim.scan(qr)
    assert res["ok"] and res["jid"] != jid  # a new device
    d.wait_connected("t")


def test_440_conflict_the_daemon_does_not_fight_back(sim, make_daemon):
    d = make_daemon(sim)
    r = pair(d, sim, "t")
    jid = r["scan"]["jid"]
    assert sim.kill(jid, "440")["ok"]
    st = d.wait_status("t", lambda s: s["state"] == "conflict", what="conflict")
    assert st["lastDisconnect"]["code"] == 440 and st["pid"] is None
    upgrades = sim.counters()["upgrades"]
    assert assert_rests(d, "t", 440)["next_state"] == "conflict"
    state = sim.state()
    assert state["counters"]["upgrades"] == upgrades, "the daemon reconnected after a 440: a replace war"
    assert state["devices"][jid]["live"] == 0 and state["counters"]["conflicts"] == 1
    assert d.status("t")["state"] == "conflict"
    # Only an explicit start retries, and it logs in with the same creds.
    d.start_tenant("t")
    st = d.wait_connected("t")
    assert st["me"]["id"] == jid and sim.counters()["registrations"] == 1


# One row per way the connection ends on the wire: a stream:error (500; 503 takes the same path with another code,
# which tests/test_backoff.py's table covers), the server ending the stream, the TCP connection dropping.
@pytest.mark.parametrize("variant,code", [("500", 500), ("stream_end", 428), ("tcp_drop", 428)])
def test_transient_drops_back_off_and_reconnect_with_the_same_creds(sim, make_daemon, variant: str, code: int):
    d = make_daemon(sim)
    r = pair(d, sim, "t")
    jid = r["scan"]["jid"]
    before = sim.counters()
    restarts = r["status"]["restarts"]
    assert sim.kill(jid, variant)["ok"]
    # restarts grows by one and the tenant is back: the new worker logged in with the saved creds.
    st = d.wait_status("t", lambda s: s["connected"] and s["restarts"] == restarts + 1,
                       what=f"reconnected after {variant}")
    assert st["lastDisconnect"]["code"] == code
    assert st["me"]["id"] == jid
    after = sim.counters()
    assert after["logins"] > before["logins"]
    assert after["registrations"] == 1 and after["pairings"] == 1 and after["scans"] == 1  # no re-scan
    assert after["conflicts"] == 0
    last = decisions(d, "t")[-1]
    assert last["action"] == "backoff" and last["code"] == code and last["delay"] > 0, last
    assert sim.state()["maxConcurrentAnyDevice"] == 1


def test_qr_never_scanned_stops_with_qr_timeout_and_no_qr_loop(make_sim, make_daemon):
    # Baileys rotates QRs on its own qrTimeout; the simulator must agree on the lifetimes (wa_sim README, note 4).
    sim = make_sim("--qr-refs", "3", "--qr-first-ms", "1000", "--qr-next-ms", "1000")
    d = make_daemon(sim, socket_options={"qrTimeout": 1000})
    t0 = time.monotonic()
    d.start_tenant("t")
    d.wait_qr("t")
    st = d.wait_status("t", lambda s: s["state"] == "stopped", what="stopped")
    print(f"\nstart -> qr_timeout stop: {time.monotonic() - t0:.2f} s")
    assert st["stateReason"] == "qr_timeout" and st["lastDisconnect"]["code"] == 408
    assert st["hasQR"] is False and st["pid"] is None
    c = sim.counters()
    assert c["registrations"] == 1 and c["qrRefsIssued"] == 3
    assert assert_rests(d, "t", 408)["next_state"] == "stopped"
    assert sim.counters()["upgrades"] == c["upgrades"], "a new QR session was started after qr_timeout"
    assert d.qr("t")["qr"] is None
