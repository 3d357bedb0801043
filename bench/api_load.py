"""Benchmark: the control API under load from a separate process (wrk), 200 tenants registered (fake workers idle
in `qr`, each with its standby), GET /whatsapp/{t}/status and /qr at 10 and 50 connections, random tenant per
request. Baseline in the same run with the same wrk settings: supervisord (PyPI `supervisor`) with 200 programs
(`sleep infinity`) answering XML-RPC supervisor.getProcessInfo(<random program>) on loopback.

    .venv/bin/python bench/api_load.py [--duration 10] [--rounds 1] [--base-tree DIR] [--supervisord PATH]
                                       [--log-level info]

Every daemon run (route, connection count) comes right after a supervisord run with the same wrk settings, and its
ratios are taken against that run: on a shared machine the load moves both by +-50 % within a minute, so only
paired ratios mean something. --base-tree DIR: also measure the daemon of another source tree (e.g.
`git archive <commit> | tar -x -C DIR`) in each round, before this tree's. The report gives each round and the
medians over rounds (of the numbers and of the paired ratios).
Measurement starts once every tenant shows its QR, its standby is up (`standbyPid`) and the workers are done starting
(their CPU time is flat): the 200 standby start-ups right after the QRs are ~10 s of CPU that is no part of serving a
request, and the first runs used to measure them (the /status runs, measured first, came out 2.3x below /qr).

Needs `wrk` (Debian package) and a supervisord executable (default: `supervisord` on PATH, else
/tmp/svd-venv/bin/supervisord; `python3 -m venv /tmp/svd-venv && /tmp/svd-venv/bin/pip install supervisor`).
The daemon logs as in production (JSON, level --log-level, to /dev/null), so log cost is part of the number.
Everything binds 127.0.0.1; each wrk run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import xmlrpc.client
from contextlib import contextmanager
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, daemon, free_port, http, machine, start_tenants, wrk  # noqa: E402
from supervisor.settings import LimitsSettings  # noqa: E402

N = 200
CONNS = (10, 50)
WHATS = ("status", "qr")
RANDOM_GET = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/whatsapp/t%03d/{what}", math.random(0, {n} - 1)))
end
"""
RANDOM_RPC = """
math.randomseed(os.time())
request = function()
  local body = string.format([[<?xml version="1.0"?><methodCall><methodName>supervisor.getProcessInfo</methodName><params><param><value><string>p%03d</string></value></param></params></methodCall>]], math.random(0, {n} - 1))
  return wrk.format("POST", "/RPC2", {{["Content-Type"] = "text/xml"}}, body)
end
"""


def supervisord_conf(tmp: Path, port: int) -> Path:
    lines = ["[supervisord]", f"logfile={tmp}/supervisord.log", f"pidfile={tmp}/supervisord.pid", "nodaemon=true",
             "loglevel=warn", "", "[inet_http_server]", f"port=127.0.0.1:{port}", "",
             "[rpcinterface:supervisor]",
             "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", ""]
    for i in range(N):
        lines += [f"[program:p{i:03d}]", "command=sleep infinity", "autostart=true", "startsecs=0",
                  f"stdout_logfile={tmp}/p{i:03d}.log", "stdout_logfile_maxbytes=0", "redirect_stderr=true", ""]
    conf = tmp / "supervisord.conf"
    conf.write_text("\n".join(lines))
    return conf


@contextmanager
def supervisord(exe: str, tmp: Path):
    """supervisord with 200 programs, up for the whole invocation; yields measure(c, duration) -> wrk result."""
    port = free_port()
    conf = supervisord_conf(tmp, port)
    # PyPI's supervisor and this project are both the top-level package `supervisor`: keep our PYTHONPATH out of
    # supervisord (and never install it into the project venv).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")
        deadline = time.monotonic() + 60
        while True:
            try:
                infos = rpc.supervisor.getAllProcessInfo()
                if len(infos) == N and all(i["statename"] == "RUNNING" for i in infos):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("supervisord did not start its 200 programs")
            time.sleep(0.2)
        assert rpc.supervisor.getProcessInfo("p007")["name"] == "p007"
        script = tmp / "rpc.lua"
        script.write_text(RANDOM_RPC.format(n=N))

        def measure(c: int, duration: int) -> dict:
            wrk(f"http://127.0.0.1:{port}", connections=c, duration=1, script=script)  # warm-up
            return wrk(f"http://127.0.0.1:{port}", connections=c, duration=duration, script=script)

        yield measure
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_settled(url: str, marker: str, timeout: float = 180.0, want: int | None = None) -> None:
    """Until every standby the limits allow is spawned (at the QR, through the spawn slots) and the workers' start-up is
    over: their summed CPU time grows by < 5 % of a core over a second. Without this the first runs measured the
    interpreters of 200 standbys starting (~10 s of CPU on 2 cores), not the API."""
    t0 = time.monotonic()
    # at most limits.max_standbys standbys exist at once (the default: the bench's daemon sets no limits)
    want = min(N, LimitsSettings().max_standbys) if want is None else want
    while sum(bool(s.get("standbyPid")) for s in http("GET", url + "/whatsapp")["tenants"]) < want:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"standbys not all up after {timeout}s")
        time.sleep(0.5)

    def cpu() -> float:
        total = 0.0
        for p in psutil.process_iter(["cmdline", "cpu_times"]):
            if marker in (p.info["cmdline"] or []) and p.info["cpu_times"] is not None:
                total += p.info["cpu_times"].user + p.info["cpu_times"].system
        return total

    last = cpu()
    while time.monotonic() - t0 < timeout:
        time.sleep(1)
        now = cpu()
        if now - last < 0.05:
            return
        last = now
    raise RuntimeError(f"workers still busy after {timeout}s")


def run_daemon_load(tmp: Path, duration: int, log_level: str, tree: Path, svd) -> tuple[dict, float]:
    """Each daemon run right after a supervisord run with the same connection count: a pair sees the same machine
    load (other work on a shared machine moves both by +-50 % within a minute)."""
    storage = tmp / "storage"
    storage.mkdir()
    tenants = [f"t{i:03d}" for i in range(N)]
    out: dict = {}
    marker = f"bsup-bench-{os.getpid()}"
    with daemon(storage, marker=marker, log_level=log_level, tree=tree) as (url, _proc):
        boot = start_tenants(url, tenants, "qr")
        wait_settled(url, marker)
        for what in WHATS:
            script = tmp / f"{what}.lua"
            script.write_text(RANDOM_GET.replace("{what}", what).replace("{n}", str(N)))
            with urllib.request.urlopen(f"{url}/whatsapp/t007/{what}") as r:
                assert r.status == 200
            for c in CONNS:
                base = svd(c, duration)
                wrk(url, connections=c, duration=1, script=script)  # warm-up
                out[(what, c)] = (wrk(url, connections=c, duration=duration, script=script), base)
    return out, boot


def row(name: str, r: dict) -> str:
    bad = f"  non-2xx {r['non2xx']} errors {r['errors']}" if r["non2xx"] or r["errors"] else ""
    return f"{name:<38} {r['rps']:>9,.0f} req/s   p50 {r['p50']:6.2f} ms   p99 {r['p99']:6.2f} ms{bad}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--base-tree", type=Path, help="another source tree whose daemon is measured alongside")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--supervisord", default=shutil.which("supervisord") or "/tmp/svd-venv/bin/supervisord")
    args = ap.parse_args()
    trees = [("base", args.base_tree.resolve())] if args.base_tree else []
    trees.append(("daemon", ROOT))
    runs: list[dict] = []  # per round: {name: ({(what, c): (ours, supervisord)}, boot)}
    with tempfile.TemporaryDirectory() as t, supervisord(args.supervisord, Path(t)) as svd:
        for i in range(args.rounds):
            run = {}
            for name, tree in trees:
                work = Path(t) / f"r{i}-{name}"
                work.mkdir()
                run[name] = run_daemon_load(work, args.duration, args.log_level, tree, svd)
            runs.append(run)
            report([run], trees, f"round {i + 1}")
    if args.rounds > 1:
        report(runs, trees, f"median of {args.rounds} rounds")
    print(f"# bench/api_load.py  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  wrk -t2 -d{args.duration}s, random tenant; "
          f"{machine()}; log level {args.log_level}; trees: " + ", ".join(f"{n}={p}" for n, p in trees))
    print("goal: status req/s ratio >= 1.5 and p99 ratio <= 1.00 at both connection counts (ratios: each run against "
          "the supervisord run just before it, median over rounds)")


def report(runs: list[dict], trees: list[tuple[str, Path]], title: str) -> None:
    """Medians over `runs` of each number, and of the ratios to the paired supervisord run."""
    med = statistics.median
    keys = ("rps", "p50", "p99")
    print(f"## {title}")
    for c in CONNS:
        svds = [r[name][0][(what, c)][1] for r in runs for name, _ in trees for what in WHATS]
        print(row(f"supervisord getProcessInfo  c={c}", {**{k: med(x[k] for x in svds) for k in keys},
                                                          "non2xx": 0, "errors": 0}))
        for name, _tree in trees:
            for what in WHATS:
                pairs = [r[name][0][(what, c)] for r in runs]
                m = {k: med(ours[k] for ours, _ in pairs) for k in keys}
                rr = med(ours["rps"] / b["rps"] for ours, b in pairs)
                pr = med(ours["p99"] / b["p99"] for ours, b in pairs)
                bad = {"non2xx": sum(o["non2xx"] for o, _ in pairs), "errors": sum(o["errors"] for o, _ in pairs)}
                print(row(f"{name} GET /{what:<6}  c={c}", {**m, **bad}) + f"   ratio req/s {rr:.2f}x, p99 {pr:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
