"""Doctor against a real daemon subprocess with fake workers, through the real CLI (`doctor --json`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ops_helpers import config, wait_pids
from supervisor import doctor
from support import CLI, WAIT, DaemonProcess, free_port, wait_for


def run_doctor(cfg_path: Path, *args: str) -> tuple[int, dict]:
    p = subprocess.run([str(CLI), "doctor", *args, "--config", str(cfg_path), "--json", "--timeout", "5"],
                       capture_output=True, text=True, timeout=2 * WAIT)
    return p.returncode, json.loads(p.stdout)


def by_name(checks: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in checks}


@pytest.mark.timeout(8 * WAIT)  # a daemon start-up and four doctor runs, each seconds at load 30
def test_doctor_verdicts_with_a_live_daemon(tmp_path, marker):
    port = free_port()
    script = {"spawns": [[{"hello": {}}, {"emit": {"type": "open", "me": {"id": "1@s"}, "serverTime":
                                                   time.time() * 1000 - 120_000}}, {"wait": True}]]}
    # the config's storage is relative to its file: tmp_path/storage
    daemon = DaemonProcess(tmp_path, config(tmp_path, marker, port, boot=["ok1"], script=script))
    cfg_path = daemon.config_path
    # a second tenant whose auth holds a broken file: found by the auth check
    bad = tmp_path / "storage" / "whatsapp" / "bad1" / "auth"
    bad.mkdir(parents=True)
    (bad / "creds.json").write_text("{not json")
    intruder = None
    try:
        daemon.start()
        wait_pids(port, lambda p: p.get("ok1"))
        rc, rep = run_doctor(cfg_path, "ok1")
        checks = by_name(rep["tenants"]["ok1"])
        assert rep["daemon"][0]["verdict"] == "pass"
        assert checks["state"]["verdict"] == "pass" and checks["processes"]["verdict"] == "pass"
        # serverTime 120 s behind our clock: a failing skew with the NTP fix
        assert checks["clock"]["verdict"] == "fail" and "ntp" in checks["clock"]["fix"].lower()
        assert rc == 1 and rep["ok"] is False

        # a second process using the auth directory is a failure naming both
        auth = tmp_path / "storage" / "whatsapp" / "ok1" / "auth"
        auth.mkdir(exist_ok=True)
        (auth / "x.json").write_text("{}")
        intruder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1]); time.sleep(60)",
                                     str(auth / "x.json")])
        wait_for(lambda: psutil.Process(intruder.pid).open_files(), what="the intruder holding the auth file")
        rc, rep = run_doctor(cfg_path, "ok1")
        proc_check = by_name(rep["tenants"]["ok1"])["processes"]
        assert proc_check["verdict"] == "fail" and str(intruder.pid) in proc_check["detail"], proc_check

        rc, rep = run_doctor(cfg_path)  # all tenants, bad1 included (known from its auth dir)
        assert by_name(rep["tenants"]["bad1"])["auth"]["verdict"] == "fail"
    finally:
        if intruder is not None:
            intruder.kill()
            intruder.wait()
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
    rc, rep = run_doctor(cfg_path, "ok1")  # daemon gone: a failing daemon check with the fix, exit 1
    assert rc == 1 and rep["daemon"][0]["verdict"] == "fail" and "systemctl" in rep["daemon"][0]["fix"]


def test_close_codes_and_clock_unknown():
    t = lambda s: s  # noqa: E731
    assert doctor.close_check({"code": 401, "at": "x"}, t).verdict == "fail"
    assert "Linked devices" in doctor.close_check({"code": 401, "at": "x"}, t).fix
    assert doctor.close_check({"code": 515, "at": "x"}, t).verdict == "pass"
    assert doctor.close_check({"code": 440, "at": "x"}, t).verdict == "fail"
    assert doctor.close_check({"code": 408, "at": "x"}, t).verdict == "warn"
    assert doctor.clock_check(None).verdict == "skip" and "unknown" in doctor.clock_check(None).detail
    assert doctor.clock_check({"skewMs": 1200}).verdict == "pass"


OFFLINE = {"tenant": "1", "state": "backoff", "connected": False, "hasQR": False, "pid": None, "restarts": 5,
           "stateReason": "close", "lastDisconnect": {"code": 408, "reason": "timedOut", "at": "x",
                                                      "message": "getaddrinfo ENOTFOUND web.whatsapp.com"}}


def test_repeated_failed_connects_are_a_failure_with_the_real_cause(tmp_path):
    """Five failed connects on a host without DNS used to end in `verdict: OK`."""
    t = lambda s: s  # noqa: E731
    checks = {c.name: c for c in doctor.tenant_checks("1", OFFLINE, tmp_path / "1", None, True)}
    assert checks["state"].verdict == "fail" and "5 restarts" in checks["state"].detail
    assert checks["state"].fix.startswith("DNS")
    last = doctor.close_check(OFFLINE["lastDisconnect"], t)
    assert "getaddrinfo ENOTFOUND web.whatsapp.com" in last.detail and last.fix.startswith("DNS")
    report = doctor.Report(tenants={"1": list(checks.values())})
    assert not report.ok and doctor.render(report).endswith("verdict: PROBLEMS FOUND")
    # a first blip is still only a warning, and says so in the verdict
    blip = {**OFFLINE, "restarts": 1}
    (tmp_path / "1" / "auth").mkdir(parents=True)
    (tmp_path / "1" / "auth" / "creds.json").write_text("{}")
    report = doctor.Report(tenants={"1": doctor.tenant_checks("1", blip, tmp_path / "1", None, True)})
    assert report.ok and doctor.render(report).endswith("verdict: OK with 2 warning(s)")  # state, last close
