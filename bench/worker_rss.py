"""RSS of real, connected workers under different node flags / environments / worker variants (issue 6: median
RSS of an idle connected worker <= 70 MB).

Simulator + `baileys-supervisor run` + real workers. N tenants are paired once (shipped command), then for each
variant a daemon boots all N with saved creds (worker.command / worker.env = the variant) and, after --settle s
with nothing calling the API, every worker is measured: RSS (psutil), and from /proc/PID/smaps_rollup the
anonymous part (V8 heap, malloc, stacks: private to the worker) vs the file-backed part (mostly /usr/bin/node's
text and rodata, shared by every worker on the machine), plus PSS and USS. CPU seconds each worker used from
spawn to connected (median), and daemon start -> all connected. Then --fresh tenants are paired one by one under
the same variant: start -> QR and scan -> connected (a lone worker), and their RSS after --settle s.

    .venv/bin/python bench/worker_rss.py --tenants 20 --variants shipped,noopt --tmpdir /dev/shm
    .venv/bin/python bench/worker_rss.py --list

Every process is stopped at the end (daemon SIGTERM stops its workers; leftovers found by a marker are killed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, teardown  # noqa: E402
from e2e_harness import TRUST_PRELOAD, WORKER, Daemon, Simulator  # noqa: E402
from real_fleet import Fleet, load, pctl  # noqa: E402

MIB = 2**20
NW = ROOT / "node_worker"
SHIPPED = ["--max-semi-space-size=1", "--v8-pool-size=1"]  # the base every variant adds to (the command until 2026-11-25)
LEAN = ["--no-opt", "--no-sparkplug", "--no-wasm-tier-up"]
GC = ["--expose-gc", "--import", str(NW / "bench" / "gc-after-open-preload.mjs")]
DEEP = NW / "bench" / ".worker-deep-import.mjs"  # written by node_worker/bench/make-deep-import-worker.mjs

# name -> (node flags after the shipped ones, extra env, worker script)
VARIANTS: dict[str, tuple[list[str], dict[str, str], Path]] = {
    "shipped": ([], {}, WORKER),
    "old64": (["--max-old-space-size=64"], {}, WORKER),
    "optsize": (["--optimize-for-size"], {}, WORKER),
    "noopt": (["--no-opt"], {}, WORKER),
    "lean": (LEAN, {}, WORKER),
    "stgc": (["--single-threaded-gc"], {}, WORKER),
    "maxlazy": (["--max-lazy"], {}, WORKER),
    "arena1": ([], {"MALLOC_ARENA_MAX": "1"}, WORKER),
    "malloc": ([], {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_MMAP_THRESHOLD_": "131072"},
               WORKER),
    "uv1": ([], {"UV_THREADPOOL_SIZE": "1"}, WORKER),
    "gc": (GC, {}, WORKER),
    "deep": ([], {}, DEEP),
    "lean+gc": (LEAN + GC, {}, WORKER),
    "lean+gc+deep": (LEAN + GC, {}, DEEP),
    "all": (LEAN + GC + ["--optimize-for-size", "--max-lazy", "--single-threaded-gc", "--max-old-space-size=64"],
            {"MALLOC_ARENA_MAX": "1", "UV_THREADPOOL_SIZE": "1"}, DEEP),
    # The daemon applies supervisor.settings.WORKER_MALLOC_ENV to every worker (unless worker.env sets the key), so
    # every variant here runs with it. "current" = the shipped command since 2026-11-25 (WORKER_NODE_FLAGS, the
    # worker's own gc() after open); "previous" = the command before (SHIPPED) with glibc's default arena count
    # (8 x cores; the fixed trim/mmap thresholds stay: glibc cannot be told "unset" through the environment).
    "current": (["--optimize-for-size", "--expose-gc"], {}, WORKER),
    "previous": ([], {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))}, WORKER),
    "cheap": (["--optimize-for-size", *GC],
              {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_MMAP_THRESHOLD_": "131072"}, WORKER),
}
# Not listed: --jitless and --lite-mode (which implies it) turn WebAssembly off ("ReferenceError: WebAssembly is
# not defined" at `import('@whiskeysockets/baileys')`: whatsapp-rust-bridge is wasm), so the worker cannot start.


def smaps(pid: int) -> dict[str, float]:
    """MiB: rss, anon, file (= rss - anon), pss, uss (Private_Clean + Private_Dirty), from smaps_rollup."""
    kb: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                kb[parts[0].rstrip(":")] = int(parts[1])
    m = {k: v / 1024 for k, v in kb.items()}
    return {"rss": m["Rss"], "anon": m["Anonymous"], "file": m["Rss"] - m["Anonymous"], "pss": m["Pss"],
            "uss": m["Private_Clean"] + m["Private_Dirty"]}


def measure(pids: list[int]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for pid in pids:
        try:
            s = smaps(pid)
        except OSError:
            continue
        for k, v in s.items():
            out.setdefault(k, []).append(v)
    return out


def api_pids(d: Daemon, tids: list[str]) -> list[int]:
    """The connected worker of each tenant, from GET /whatsapp/{t}/status (the daemon's log also has standby
    workers' spawn/exit lines; one status call per tenant at measurement time is cheap enough)."""
    out = []
    for t in tids:
        st = d.status(t)
        if st.get("connected") and st.get("pid"):
            out.append(st["pid"])
    return out


def med(xs: list[float]) -> str:
    return f"{pctl(xs, 50):.1f}" if xs else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--fresh", type=int, default=2, help="tenants paired one by one per variant (start -> QR)")
    ap.add_argument("--variants", default="previous,current")
    ap.add_argument("--settle", type=float, default=20.0)
    ap.add_argument("--spawns", type=int, default=4)
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--boot-timeout", type=float, default=180.0)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for k, (f, e, w) in VARIANTS.items():
            print(f"{k:14} {' '.join(SHIPPED + f)} {' '.join(f'{a}={b}' for a, b in e.items())} {w.name}")
        return 0
    names = [v for v in args.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v}; --list")
    if any(VARIANTS[v][2] == DEEP for v in names):
        subprocess.run(["node", str(NW / "bench" / "make-deep-import-worker.mjs")], check=True, capture_output=True)
    marker = f"bsup-wrss-{os.getpid()}"
    n = args.tenants
    if psutil.virtual_memory().available < (n + args.fresh) * 120 * MIB + 3 * 2**30:
        raise SystemExit("not enough memory available for that many workers")
    tids = [f"w{i:03d}" for i in range(n)]
    rows: list[str] = []

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    head = (f"{'variant':14} {'n':>3} {'RSS':>6} {'p5':>5} {'p95':>5} {'anon':>5} {'file':>5} {'PSS':>5} {'USS':>5}"
            f" {'boot s':>6} {'cpu s':>5} | {'fresh':>5} {'RSS':>5} {'QR s':>5} {'scan s':>6}")
    with tempfile.TemporaryDirectory(prefix="bsup-wrss-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        sim = Simulator()
        fleet = Fleet(work, sim, marker)
        base_cmd = ["node", "--import", str(TRUST_PRELOAD), *SHIPPED, str(WORKER), marker]
        daemons: list[Daemon] = []
        try:
            fleet.command = base_cmd
            d = fleet.daemon([], spawns=args.spawns)
            daemons.append(d)
            d.start()
            fleet.pair(d, tids)
            d.stop(60)
            say(f"paired {n} ({load()})")

            for v in names:
                flags, env, script = VARIANTS[v]
                fleet.command = ["node", "--import", str(TRUST_PRELOAD), *SHIPPED, *flags, str(script), marker]
                time.sleep(3)
                d = fleet.daemon(tids, spawns=args.spawns)
                d.config["worker"]["env"] = env
                d.config_path.write_text(json.dumps(d.config, indent=1))
                daemons.append(d)
                l0 = load()
                t0 = time.monotonic()
                d.start(120)
                try:
                    fleet.wait_all(d, tids, lambda s: s["connected"], args.boot_timeout, f"boot {v}", 0.2)
                except RuntimeError as exc:
                    say(f"{v}: {exc}")
                    rows.append(f"{v:14} FAILED: {str(exc)[:150]}")
                    d.stop(60)
                    continue
                boot = time.monotonic() - t0
                pids = api_pids(d, tids)
                cpu = []
                for pid in pids:
                    try:
                        c = psutil.Process(pid).cpu_times()
                        cpu.append(c.user + c.system)
                    except psutil.Error:
                        pass
                time.sleep(args.settle)
                m = measure(api_pids(d, tids))
                # fresh pairings under this variant, one at a time
                qr_t, scan_t, fresh_pids = [], [], []
                for i in range(args.fresh):
                    ft = f"x{len(daemons):02d}{i}"
                    t1 = time.monotonic()
                    d.start_tenant(ft)
                    fleet.wait_all(d, [ft], lambda s: s["state"] == "qr", 120, f"{v} fresh qr", 0.05)
                    t2 = time.monotonic()
                    res = sim.scan(d.qr(ft)["qr"])
                    assert res.get("ok"), res
                    fleet.wait_all(d, [ft], lambda s: s["connected"], 120, f"{v} fresh connected", 0.05)
                    t3 = time.monotonic()
                    qr_t.append(t2 - t1)
                    scan_t.append(t3 - t2)
                    fresh_pids.append(ft)
                fm: dict[str, list[float]] = {}
                if fresh_pids:
                    time.sleep(args.settle)
                    fm = measure(api_pids(d, fresh_pids))
                rss = m.get("rss", [])
                row = (f"{v:14} {len(rss):3d} {med(rss):>6} {pctl(rss, 5):5.1f} {pctl(rss, 95):5.1f} "
                       f"{med(m.get('anon', [])):>5} {med(m.get('file', [])):>5} {med(m.get('pss', [])):>5} "
                       f"{med(m.get('uss', [])):>5} {boot:6.1f} {pctl(cpu, 50):5.2f} | {len(fm.get('rss', [])):5d} "
                       f"{med(fm.get('rss', [])):>5} {med(qr_t):>5} {med(scan_t):>6}   ({l0} before)")
                rows.append(row)
                say(head)
                say(row)
                d.stop(60)
        finally:
            left = teardown(daemons, sim, marker, 60)
            if left:
                rows.append(f"# WARNING: {left} leftover workers killed")
            DEEP.unlink(missing_ok=True)  # generated above; not part of the tree
    print(f"# bench/worker_rss.py {' '.join(sys.argv[1:])}  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"# {machine()}")
    print("# MiB; RSS/anon/file/PSS/USS = medians over connected workers booted with saved creds after --settle s;")
    print("# boot s = daemon start -> all connected; cpu s = median worker CPU from spawn to connected;")
    print("# fresh = workers paired one by one under the variant: RSS after --settle s, start->QR, scan->connected")
    print(head)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
