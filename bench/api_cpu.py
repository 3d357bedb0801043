"""Benchmark: the daemon's own CPU time per API request, a number the machine's load barely moves (unlike req/s and
p99 with wrk and the daemon on the same 2 CPUs): psutil's cpu_times of the daemon process (not its workers) before
and after a wrk run of fixed duration, divided by the requests wrk counted.

    .venv/bin/python bench/api_cpu.py [--tenants 50] [--duration 3] [--rounds 3] [--connections 50]
                                      [--routes status,qr,healthz] [--base-tree DIR]

--base-tree DIR: a second daemon from another source tree (e.g. `git archive <commit> | tar -x -C DIR`), measured
alternately with this tree's, run for run, so both see the same machine. Tenants: fake workers idle at the QR, as in
bench/api_load.py (whose set-up this reuses); wrk picks a random tenant per request. Resolution: the kernel's CPU
accounting tick (10 ms) over ~1-3 s of CPU per run, i.e. < 1 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, daemon, machine, start_tenants, wrk  # noqa: E402
from api_load import RANDOM_GET, wait_settled  # noqa: E402
from supervisor.settings import LimitsSettings  # noqa: E402


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--routes", default="status,qr,healthz")
    ap.add_argument("--base-tree", type=Path)
    args = ap.parse_args()
    trees = ([("base", args.base_tree.resolve())] if args.base_tree else []) + [("daemon", ROOT)]
    routes = args.routes.split(",")
    tenants = [f"t{i:03d}" for i in range(args.tenants)]
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as t, ExitStack() as stack:
        tmp = Path(t)
        up: dict[str, tuple[str, psutil.Process]] = {}
        for name, tree in trees:
            storage = tmp / name
            storage.mkdir()
            marker = f"bsup-cpu-{os.getpid()}-{name}"
            url, proc = stack.enter_context(daemon(storage, marker=marker, tree=tree))
            start_tenants(url, tenants, "qr")
            wait_settled(url, marker, want=min(args.tenants, LimitsSettings().max_standbys))
            up[name] = (url, psutil.Process(proc.pid))
        scripts = {}
        for route in routes:
            scripts[route] = tmp / f"{route}.lua"
            if route == "healthz":
                scripts[route].write_text('request = function() return wrk.format("GET", "/healthz") end\n')
            else:
                scripts[route].write_text(RANDOM_GET.replace("{what}", route).replace("{n}", str(args.tenants)))
        for i in range(args.rounds):
            order = trees if i % 2 == 0 else trees[::-1]  # alternate who goes first
            for route in routes:
                for name, _tree in order:
                    url, proc = up[name]
                    wrk(url, connections=args.connections, duration=1, script=scripts[route])  # warm-up
                    c0 = cpu_seconds(proc)
                    r = wrk(url, connections=args.connections, duration=args.duration, script=scripts[route])
                    cpu = cpu_seconds(proc) - c0
                    if r["non2xx"] or r["errors"]:
                        raise SystemExit(f"{name} /{route}: non-2xx {r['non2xx']}, errors {r['errors']}")
                    us = cpu / r["requests"] * 1e6
                    results.setdefault((name, route), []).append(us)
                    print(f"round {i + 1} {name:<6} /{route:<7} {r['requests']:>7} requests  {r['rps']:>8,.0f} req/s  "
                          f"daemon CPU {cpu:5.2f} s = {us:6.1f} us/request   load {load()}", flush=True)
    print(f"## median of {args.rounds} rounds, wrk -c{args.connections} -d{args.duration}s, {args.tenants} tenants")
    for route in routes:
        line = f"/{route:<7}"
        for name, _tree in trees:
            line += f"  {name} {statistics.median(results[(name, route)]):6.1f} us/request"
        if len(trees) == 2:
            ratios = [d / b for b, d in zip(results[("base", route)], results[("daemon", route)])]
            line += f"  daemon/base {statistics.median(ratios):.2f}x"
        print(line)
    print(f"# bench/api_cpu.py {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {machine()}; load {load()}; trees: "
          + ", ".join(f"{n}={p}" for n, p in trees))


if __name__ == "__main__":
    main()
