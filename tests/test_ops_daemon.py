"""The daemon as systemd runs it: a real `baileys-supervisor run` subprocess, a real NOTIFY_SOCKET, real signals."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from conftest import live_workers, signal_records
from ops_helpers import NotifySocket, api, config, log_events, pids, wait_log, wait_pids, write
from support import WAIT, DaemonProcess, free_port, wait_for


@pytest.fixture
def notify():
    s = NotifySocket()
    yield s
    s.close()


@pytest.mark.timeout(180)
def test_notify_reload_diff_and_shutdown(tmp_path, marker, notify):
    port = free_port()
    d = DaemonProcess(tmp_path, config(tmp_path, marker, port, boot=["a", "b"]),
                      env={"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "400000"}).start(wait=False)
    proc, cfg_path, log = d.proc, d.config_path, d.log_path
    try:
        notify.wait_for(lambda m: "READY=1" in m.split("\n"))
        # READY=1 means: the API answers and both boot tenants have a worker already.
        first = pids(port)
        assert set(first) == {"a", "b"} and all(first.values()), first
        notify.wait_for(lambda m: m == "WATCHDOG=1")  # pings from the loop (every 0.2 s here)
        notify.wait_for(lambda m: m.startswith("STATUS=2 tenants"))
        # the workers never see the notify socket: they could otherwise ping for a wedged daemon
        for pid in first.values():
            assert "NOTIFY_SOCKET" not in psutil.Process(pid).environ()

        # 1. boot list a,b -> b,c: a stops, c starts, b keeps its worker
        write(cfg_path, config(tmp_path, marker, port, boot=["b", "c"]))
        proc.send_signal(signal.SIGHUP)
        notify.wait_for(lambda m: m.startswith("RELOADING=1"))
        notify.wait_for(lambda m: m.startswith("READY=1"))
        after = wait_pids(port, lambda p: p.get("c") and p.get("a") is None)
        assert after["b"] == first["b"]
        assert api(port, "GET", "/whatsapp/a/status")["state"] == "stopped"

        # 2. a changed worker setting restarts every running tenant (b, c), not the stopped one (a)
        write(cfg_path, config(tmp_path, marker, port, boot=["b", "c"], env={"X_NEW": "1"}))
        proc.send_signal(signal.SIGHUP)
        notify.wait_for(lambda m: m.startswith("RELOADING=1"))
        notify.wait_for(lambda m: m.startswith("READY=1"))
        changed = wait_pids(port, lambda p: p["b"] and p["c"] and p["b"] != after["b"] and p["c"] != after["c"])
        assert changed["a"] is None
        assert psutil.Process(changed["b"]).environ().get("X_NEW") == "1"

        # 3. an invalid file: logged, the old config keeps running, nothing restarts
        cfg_path.write_text("worker:\n  bogus_key: 1\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for(lambda m: m.startswith("READY=1") and "reload failed" in m)
        failed = wait_log(log, "config.reload_failed")
        assert "bogus_key" in failed[0]["message"]
        assert pids(port) == changed

        # 4. api.* cannot change live: logged as not applied, the API keeps its port, workers untouched
        write(cfg_path, config(tmp_path, marker, free_port(), boot=["b", "c"], env={"X_NEW": "1"}))
        proc.send_signal(signal.SIGHUP)
        notify.wait_for(lambda m: m.startswith("READY=1"))
        assert wait_log(log, "config.reload_not_applied")[0]["section"] == "api"
        assert pids(port) == changed

        # 5. daemon-side worker fields (spawn slots, prewarm) apply without restarting any worker
        plans = len([e for e in log_events(log) if e.get("event") == "config.reload_plan"])
        write(cfg_path, config(tmp_path, marker, port, boot=["b", "c"], env={"X_NEW": "1"},
                               worker={"max_concurrent_spawns": 3, "prewarm": True}))
        proc.send_signal(signal.SIGHUP)
        notify.wait_for(lambda m: m.startswith("READY=1"))
        plan = wait_log(log, "config.reload_plan", n=plans + 1)[-1]
        assert plan["changed"] == ["worker"] and plan["restart"] == []
        assert pids(port) == changed

        proc.send_signal(signal.SIGTERM)
        notify.wait_for(lambda m: m.startswith("STOPPING=1"))
        assert proc.wait(2 * WAIT) == 0
        assert live_workers(marker) == {}
        names = [e["event"] for e in log_events(log)]
        assert names.index("daemon.ready") > names.index("daemon.started")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(180)
def test_second_signal_forces_workers_down(tmp_path, marker, notify):
    """Workers that ignore SIGTERM with a 30 s grace: the first SIGTERM waits, the second kills them at once."""
    port = free_port()
    cfg = config(tmp_path, marker, port, boot=["f1", "f2"], worker={"stop_grace": 30},
                 env={"BSUP_FAKE_IGNORE_TERM": "1", "BSUP_FAKE_IGNORE_EOF": "1"})
    d = DaemonProcess(tmp_path, cfg, env={"NOTIFY_SOCKET": notify.name}).start(wait=False)
    proc, log = d.proc, d.log_path
    try:
        notify.wait_for(lambda m: m.startswith("READY=1"))
        # the fake installs its SIGTERM-ignoring handler after start-up: wait until both said hello and showed a QR
        wait_pids(port, lambda p: all(api(port, "GET", f"/whatsapp/{t}/status")["state"] == "qr" for t in p))
        assert len(live_workers(marker)) == 2
        workers = set(live_workers(marker))
        proc.send_signal(signal.SIGTERM)
        notify.wait_for(lambda m: m.startswith("STOPPING=1"))
        # Both workers have had their SIGTERM (an event, not a sleep): the daemon is inside the 30 s grace now, and
        # a daemon that did not wait for the grace would already be escalating.
        wait_for(lambda: {r["pid"] for r in signal_records(tmp_path / "fake-state")} >= workers, what="TERM sent")
        assert proc.poll() is None and set(live_workers(marker)) == workers  # still inside the 30 s grace
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert time.monotonic() - t0 < 15  # the second signal cut the 30 s grace short (loose: loaded machines)
        assert live_workers(marker) == {}
        assert wait_log(log, "daemon.force_stop")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
