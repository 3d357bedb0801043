"""The server-verification hole (rc14 accepts any certificate chain): a simulator signed by a root nobody trusts
must be refused by the real worker, with a clear reason in the daemon's status and never a QR."""

from __future__ import annotations

import pytest

from .e2e_harness import assert_rests

pytestmark = pytest.mark.e2e


def test_wrong_root_is_refused_with_a_clear_reason_and_no_qr(make_sim, make_daemon):
    sim = make_sim("--root-key", "wrong")
    d = make_daemon(sim)
    d.start_tenant("t")
    seen_qr = []

    def refused(s: dict) -> bool:
        seen_qr.append(s["hasQR"])
        return s["state"] == "failed"

    st = d.wait_status("t", refused, what="failed")
    assert st["stateReason"] == "server_verification_failed", st
    assert st["lastDisconnect"]["code"] == 400 and "certificate" in st["lastDisconnect"]["message"], st
    assert not any(seen_qr) and d.qr("t")["qr"] is None
    errors = [e for e in d.log_events() if e.get("event") == "worker.error"]
    assert any(e.get("code") == "server_verification_failed" for e in errors), errors
    c = sim.counters()
    assert c["registrations"] == 0 and c["qrRefsIssued"] == 0  # never got past the Noise handshake
    # Refused means refused: no reconnect loop against an untrusted server (it needs an operator).
    upgrades = c["upgrades"]
    assert_rests(d, "t", 400)  # the decision, not a 2 s watch window (tests/e2e/test_restart_table.py)
    assert sim.counters()["upgrades"] == upgrades
    assert d.status("t")["state"] == "failed"
