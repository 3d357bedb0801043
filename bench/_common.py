"""Shared helpers for the benchmarks: percentiles, a daemon in its own process (tests/hostile/daemon_host.py, the
real run_daemon with JSON logging), tenant start-up over the HTTP API, and wrk runs with parsed results."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKE_WORKER = ROOT / "tests" / "fake_worker.py"
DAEMON_HOST = ROOT / "tests" / "hostile" / "daemon_host.py"
PYTHON = sys.executable

sys.path.insert(0, str(ROOT / "tests"))
from support import free_port  # noqa: E402,F401 - the one copy (tests/support.py); re-exported to the benchmarks


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def http(method: str, url: str, timeout: float = 10.0) -> dict:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@contextmanager
def daemon(storage: Path, *, script: list | None = None, marker: str = "bsup-bench", log_level: str = "info",
           heartbeat_interval: float = 5.0, log_path: Path | None = None, max_concurrent_spawns: int = 8,
           tree: Path = ROOT):
    """Yields (url, psutil-less Popen). Workers: tests/fake_worker.py with `script`. `tree`: the source tree whose
    daemon runs (another checkout, e.g. a `git archive` of a baseline commit, for A/B runs in one invocation)."""
    port = free_port()
    env = {}
    if script is not None:
        env["BSUP_FAKE_SCRIPT"] = json.dumps(script)
    cfg = {"storage": str(storage), "port": port, "command": [PYTHON, "-I", str(FAKE_WORKER), "--marker", marker],
           "env": env, "heartbeat_interval": heartbeat_interval, "heartbeat_timeout": heartbeat_interval * 6,
           "stop_grace": 2.0, "log_level": log_level, "max_concurrent_spawns": max_concurrent_spawns}
    out = open(log_path or os.devnull, "ab")
    penv = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([PYTHON, str(tree / DAEMON_HOST.relative_to(ROOT)), json.dumps(cfg)], stdout=out,
                            stderr=subprocess.STDOUT, env=penv)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                http("GET", url + "/healthz", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("daemon did not come up")
                time.sleep(0.05)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def start_tenants(url: str, tenants: list[str], want: str, timeout: float = 120.0) -> float:
    """POST start for each tenant (sequentially: the API is idempotent, order does not matter), then wait until all
    are in state `want`. Returns the seconds it took."""
    t0 = time.monotonic()
    for t in tenants:
        http("POST", f"{url}/whatsapp/{t}/start")
    while True:
        states = {s["tenant"]: s["state"] for s in http("GET", url + "/whatsapp")["tenants"]}
        if all(states.get(t) == want for t in tenants):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"tenants not {want} after {timeout}s: {sorted(set(states.values()))}")
        time.sleep(0.2)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, *, connections: int, duration: int, threads: int = 2, script: Path | None = None) -> dict:
    """Run wrk against `url`; returns {rps, p50, p99 (ms), requests, errors, non2xx}."""
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    argv = [exe, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=duration + 30).stdout
    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
           "p50": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
           "p99": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
           "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


def teardown(daemons: list, sim, marker: str, grace: float) -> int:
    """Stop every daemon (each within `grace` s) and the simulator, then SIGKILL the process group of any worker still
    carrying `marker` in its argv. Returns how many were left, for the report: a bench must not leak workers."""
    for d in daemons:
        try:
            d.stop(grace)
        except Exception as exc:  # noqa: BLE001 - one daemon's failure must not leave the others running
            print(f"stop failed: {exc}", file=sys.stderr)
    sim.stop()
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    for pid in left:
        try:
            os.killpg(int(pid), signal.SIGKILL)  # workers lead their own session (start_new_session)
        except OSError:
            pass
    return len(left)
