"""Benchmark: the daemon's RSS and idle CPU with 200 tenants connected (fake workers scripted hello, open, then
heartbeating every worker.heartbeat_interval = 5 s, the shipped default). Goals (issue 6): RSS <= 80 MB, idle CPU
<= 1 % of one core.

    .venv/bin/python bench/daemon_idle.py [--tenants 200] [--window 30]

The daemon runs in its own process (tests/hostile/daemon_host.py: run_daemon with the API and JSON logging at info
to /dev/null); RSS and CPU time come from psutil on that pid. CPU is measured over --window seconds after every
tenant is connected and a settle period; nothing calls the API meanwhile. Baseline in the same run: the same daemon
with 0 tenants (what Python + aiohttp + the idle loop cost by themselves).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import daemon, machine, start_tenants  # noqa: E402

SCRIPT = [{"hello": {}}, {"emit": {"type": "connecting"}}, {"open": "bench@s.whatsapp.net"}, {"wait": True}]


def measure(n: int, window: float, settle: float) -> dict:
    with tempfile.TemporaryDirectory() as t:
        storage = Path(t)
        with daemon(storage, script=SCRIPT, marker=f"bsup-bench-{os.getpid()}", heartbeat_interval=5.0) as (url, proc):
            boot = start_tenants(url, [f"t{i:03d}" for i in range(n)], "connected") if n else 0.0
            ps = psutil.Process(proc.pid)
            time.sleep(settle)
            c0, w0, x0 = ps.cpu_times(), time.monotonic(), ps.num_ctx_switches().voluntary
            peak = 0
            while time.monotonic() - w0 < window:
                peak = max(peak, ps.memory_info().rss)
                time.sleep(0.5)
            c1, w1, x1 = ps.cpu_times(), time.monotonic(), ps.num_ctx_switches().voluntary
            cpu = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0)
            # Voluntary context switches ~ event-loop wake-ups (one thread): idle CPU is mostly a cost per wake-up.
            wakeups = (x1 - x0) / (w1 - w0)
            mem = ps.memory_full_info()
            return {"rss": ps.memory_info().rss, "peak": peak, "uss": mem.uss, "cpu": cpu, "boot": boot,
                    "wakeups": wakeups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=5.0)
    args = ap.parse_args()
    base = measure(0, args.window, args.settle)
    res = measure(args.tenants, args.window, args.settle)
    mib = 2**20
    print(f"# bench/daemon_idle.py  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  window {args.window:.0f}s")
    print(f"# {machine()}")
    for name, r in (("baseline: daemon, 0 tenants", base), (f"daemon, {args.tenants} tenants connected", res)):
        print(f"{name:<34} RSS {r['rss'] / mib:6.1f} MiB (peak {r['peak'] / mib:6.1f}, USS {r['uss'] / mib:6.1f})"
              f"   idle CPU {max(0.0, r['cpu']) * 100:5.2f} % of a core, {r['wakeups']:5.1f} wake-ups/s")
    print(f"{args.tenants} tenants connected in {res['boot']:.1f}s; per tenant: "
          f"{(res['rss'] - base['rss']) / args.tenants / 1024:.0f} KiB RSS, "
          f"{(res['cpu'] - base['cpu']) * 100 / args.tenants * 1000:.1f} m% CPU")
    print(f"ratio to baseline: RSS {res['rss'] / base['rss']:.2f}x;  goals: RSS <= 80 MB "
          f"({'ok' if res['rss'] <= 80e6 else 'MISSED'}), idle CPU <= 1 % ({'ok' if res['cpu'] <= 0.01 else 'MISSED'})")


if __name__ == "__main__":
    main()
