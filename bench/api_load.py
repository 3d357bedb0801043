"""Benchmark: the control API under load from a separate process (wrk), 200 tenants registered (fake workers idle
in `qr`), GET /whatsapp/{t}/status and /qr at 10 and 50 connections, random tenant per request. Baseline in the
same run with the same wrk settings: supervisord (PyPI `supervisor`) with 200 programs (`sleep infinity`) answering
XML-RPC supervisor.getProcessInfo(<random program>) on loopback.

    .venv/bin/python bench/api_load.py [--duration 10] [--supervisord PATH] [--log-level info]

Needs `wrk` (Debian package) and a supervisord executable (default: `supervisord` on PATH, else
/tmp/svd-venv/bin/supervisord; `python3 -m venv /tmp/svd-venv && /tmp/svd-venv/bin/pip install supervisor`).
The daemon logs as in production (JSON, level --log-level, to /dev/null): every API request is an `api.request`
info event, so its cost is part of the number. Everything binds 127.0.0.1; each wrk run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import xmlrpc.client
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import daemon, free_port, machine, start_tenants, wrk  # noqa: E402

N = 200
CONNS = (10, 50)
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


def run_supervisord(exe: str, tmp: Path, duration: int) -> dict:
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
        out = {}
        for c in CONNS:
            wrk(f"http://127.0.0.1:{port}", connections=c, duration=2, script=script)  # warm-up
            out[c] = wrk(f"http://127.0.0.1:{port}", connections=c, duration=duration, script=script)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_daemon_load(tmp: Path, duration: int, log_level: str) -> tuple[dict, float]:
    storage = tmp / "storage"
    storage.mkdir()
    tenants = [f"t{i:03d}" for i in range(N)]
    out: dict = {}
    with daemon(storage, marker=f"bsup-bench-{os.getpid()}", log_level=log_level) as (url, _proc):
        boot = start_tenants(url, tenants, "qr")
        for what in ("status", "qr"):
            script = tmp / f"{what}.lua"
            script.write_text(RANDOM_GET.replace("{what}", what).replace("{n}", str(N)))
            with urllib.request.urlopen(f"{url}/whatsapp/t007/{what}") as r:
                assert r.status == 200
            for c in CONNS:
                wrk(url, connections=c, duration=2, script=script)  # warm-up
                out[(what, c)] = wrk(url, connections=c, duration=duration, script=script)
    return out, boot


def row(name: str, r: dict) -> str:
    bad = f"  non-2xx {r['non2xx']} errors {r['errors']}" if r["non2xx"] or r["errors"] else ""
    return f"{name:<38} {r['rps']:>9,.0f} req/s   p50 {r['p50']:6.2f} ms   p99 {r['p99']:6.2f} ms{bad}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--supervisord", default=shutil.which("supervisord") or "/tmp/svd-venv/bin/supervisord")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "svd").mkdir()
        base = run_supervisord(args.supervisord, tmp / "svd", args.duration)
        ours, boot = run_daemon_load(tmp, args.duration, args.log_level)
    print(f"# bench/api_load.py  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  wrk -t2 -d{args.duration}s, random tenant")
    print(f"# {machine()}; daemon log level {args.log_level}; 200 tenants started in {boot:.1f}s")
    for c in CONNS:
        b = base[c]
        print(row(f"supervisord getProcessInfo  c={c}", b))
        for what in ("status", "qr"):
            r = ours[(what, c)]
            print(row(f"daemon GET /{what:<6}              c={c}", r)
                  + f"   ratio req/s {r['rps'] / b['rps']:.2f}x, p99 {r['p99'] / b['p99']:.2f}x")
    print("goal: status req/s ratio >= 1.00 and p99 ratio <= 1.00 at both connection counts")


if __name__ == "__main__":
    main()
