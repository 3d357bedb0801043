"""`baileys-supervisor doctor T --json` against a tenant connected through the real worker, real Baileys and the
simulator: the clock check must see the `serverTime` the real worker takes from the server's <success t=...> node
(docs/protocol.md), i.e. the whole path worker -> `open` event -> tenant -> status.clock -> doctor works."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from .e2e_harness import CLI, pair

pytestmark = pytest.mark.e2e


def test_doctor_clock_check_passes_for_a_connected_tenant(sim, make_daemon):
    d = make_daemon(sim)
    t0 = time.time()
    pair(d, sim, "1")
    st = d.status("1")
    clock = st["clock"]
    assert clock is not None, f"no serverTime reached the status: {st}"
    # The simulator runs on this host: the only skew is the second truncation of <success t> plus the login time,
    # which on a loaded machine can be seconds (6.3 s seen at load ~30): bounded by the time this test has run.
    elapsed_ms = (time.time() - t0) * 1000
    assert t0 * 1000 - 1000 <= clock["serverTime"] <= time.time() * 1000, clock
    assert 0 <= clock["skewMs"] <= elapsed_ms + 1000, (clock, elapsed_ms)

    out = subprocess.run([str(CLI), "doctor", "1", "--json", "--config", str(d.config_path)],
                         capture_output=True, text=True, timeout=60)
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["tenants"]["1"]}
    assert checks["clock"]["verdict"] == "pass", checks["clock"]
    assert "WhatsApp's server time" in checks["clock"]["detail"]
    assert checks["state"]["verdict"] == "pass", checks["state"]
    assert out.returncode == 0, (out.returncode, out.stderr, report)
