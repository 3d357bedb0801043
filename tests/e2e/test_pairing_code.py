"""Linking by phone-number code end to end: daemon + real worker + real Baileys + the simulator's phone typing the
code (`POST /whatsapp/<t>/pairing-code`, then the simulator's `POST /enter-code`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .e2e_harness import CLI

pytestmark = pytest.mark.e2e

PHONE = "972501234567"


def request_code(d, tid: str, phone: str = PHONE, *, via_cli: bool = False) -> str:
    if via_cli:  # what an operator types: `baileys-supervisor pairing-code T PHONE`, URL from the daemon's config
        env = {k: v for k, v in os.environ.items() if k != "INTERNAL_SECRET"}
        out = subprocess.run([str(CLI), "pairing-code", tid, f"+{phone}", "--config", str(d.config_path), "--json"],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        body = json.loads(out.stdout)
    else:
        code, body = d.call("POST", f"/whatsapp/{tid}/pairing-code", {"phone": f"+{phone}"})
        assert code == 200, body
    assert body["ok"] is True, body
    assert len(body["code"]) == 8, body  # Baileys' 8-character code, as the worker got it
    return body["code"]


def other_code(code: str) -> str:
    return ("B" if code[0] == "A" else "A") + code[1:]


@pytest.mark.parametrize("path", ["in-process", "exit-prewarm", "exit-no-prewarm"])
def test_code_links_through_the_515_restart_and_a_restart_needs_no_new_code(sim, make_daemon, storage_root: Path,
                                                                              path):
    # in-process: the product's default (the worker logs in on a new socket itself); exit-*: the worker exits after
    # the 515 (BSUP_RESTART_IN_PROCESS=off, the fallback path) and the daemon restarts it, with or without a standby
    worker = {} if path == "in-process" else {"env": {"BSUP_RESTART_IN_PROCESS": "off"},
                                              "prewarm": path == "exit-prewarm"}
    d = make_daemon(sim, worker=worker)
    d.start_tenant("1")
    d.wait_qr("1")
    first = d.status("1")
    standby = None
    if path == "exit-prewarm":  # the login worker after the 515 is already waiting
        standby = d.wait_status("1", lambda s: s["standbyPid"], what="standbyPid")["standbyPid"]
    prewarm = None if path != "exit-no-prewarm" else False  # the CLI path once, the API otherwise
    code = request_code(d, "1", via_cli=prewarm is False)
    res = sim.enter_code(PHONE, f"{code[:4]}-{code[4:]}", pushName="Erin")
    assert res["ok"] is True and res["linked"] is True, res

    st = d.wait_connected("1")
    assert st["me"]["id"] == res["jid"] and res["jid"].startswith(f"{PHONE}:")
    assert st["pushName"] == "Erin" and st["hasQR"] is False
    assert st["lastDisconnect"]["code"] == 515
    if path == "in-process":
        assert st["restarts"] == 0 and st["pid"] == first["pid"] and st["standbyPid"] is None
    else:
        assert st["restarts"] == 1 and st["pid"] != first["pid"]
    if standby is not None:
        assert st["pid"] == standby and st["standbyPid"] is None  # promoted, no Node start-up after the link
    assert st["auth"]["registered"] is True
    creds = json.loads((storage_root / "whatsapp" / "1" / "auth" / "creds.json").read_text())
    assert creds["registered"] is True and creds["me"]["id"] == res["jid"] and creds["account"]
    s = sim.state()
    assert s["devices"][res["jid"]]["via"] == "code"
    c = s["counters"]
    assert (c["registrations"], c["linkCodeRequests"], c["codeEntries"], c["pairings"], c["scans"]) == (1, 1, 1, 1, 0)

    # stop/start: the saved creds log in; no registration socket, no code, no QR.
    assert d.call("POST", "/whatsapp/1/stop")[0] == 200
    d.start_tenant("1")
    st2 = d.wait_connected("1")
    assert st2["me"]["id"] == res["jid"] and st2["hasQR"] is False
    c2 = sim.counters()
    assert c2["registrations"] == 1 and c2["logins"] == c["logins"] + 1 and c2["conflicts"] == 0
    # A linked tenant cannot hand out another code.
    code_, body = d.call("POST", "/whatsapp/1/pairing-code", {"phone": PHONE})
    assert code_ == 409 and body["error"] == "already_linked" and "logout first" in body["message"], body


def test_wrong_code_leaves_the_tenant_waiting_on_the_same_worker(sim, make_daemon):
    d = make_daemon(sim)
    d.start_tenant("1")
    d.wait_qr("1")
    before = d.status("1")
    code = request_code(d, "1")
    wrong = sim.enter_code(PHONE, other_code(code))
    assert wrong["ok"] is False and wrong["error"] == "wrong_code", wrong
    assert wrong["companionAcked"] is True  # the worker's Baileys has handled the refused companion_finish

    st = d.status("1")
    assert st["state"] == "qr" and st["connected"] is False and st["hasQR"] is True
    assert st["pid"] == before["pid"] and st["restarts"] == 0 and st["lastDisconnect"] is None
    assert st["auth"]["registered"] is False
    assert not [e for e in d.log_events() if e.get("event") == "tenant.close"]
    assert sim.counters()["pairings"] == 0

    # The same worker is still good: typing the right code links it.
    right = sim.enter_code(PHONE, code)
    assert right["ok"] is True, right
    st = d.wait_connected("1")
    assert st["me"]["id"] == right["jid"] and st["restarts"] == 0 and st["pid"] == before["pid"]  # 515 in-process


def test_a_code_never_typed_does_not_turn_into_a_logout_at_the_next_start(sim, make_daemon, storage_root: Path):
    """Baileys saves creds.me when it asks for a code; without the worker's guard the next start logged in as
    device 0 of that number, got 401 and the daemon archived the auth as logged out (Baileys issue #2494)."""
    d = make_daemon(sim)
    d.start_tenant("1")
    d.wait_qr("1")
    request_code(d, "1")
    creds = storage_root / "whatsapp" / "1" / "auth" / "creds.json"
    d.wait_status("1", lambda s: creds.exists() and json.loads(creds.read_text()).get("me"), what="creds.me saved")
    assert d.call("POST", "/whatsapp/1/stop")[0] == 200

    d.start_tenant("1")
    qr = d.wait_qr("1")  # registers again instead of logging in
    st = d.status("1")
    assert st["state"] == "qr" and st["lastDisconnect"]["code"] is None, st  # the stop's, no 401
    assert not list((storage_root / "whatsapp" / "1").glob("auth.logged-out-*"))
    assert sim.counters()["loginFailures"] == 0
    res = sim.scan(qr)
    assert res["ok"], res
    assert d.wait_connected("1")["me"]["id"] == res["jid"]
