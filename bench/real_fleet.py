"""Fleet benchmarks with the real parts (simulator + `baileys-supervisor run` + real worker + real Baileys):

  pair      N tenants paired once through the daemon API (batches of --batch, each batch connected at once);
            while the first batch (default 50) is connected and idle: RSS of every worker (median = issue 6 #5).
  boot      the daemon restarted with all N tenants in tenants.boot (saved creds, each its own device), for each
            worker.max_concurrent_spawns in --spawns: daemon start -> every tenant connected. Compared with the
            CPU floor = N x (median CPU time of one worker from spawn to connected) / cores.
  idle      after the last boot: the daemon's RSS and idle CPU over --window s with N real workers connected
            (heartbeat_interval 5 s, the shipped default), and the RSS of every connected worker.
  recovery  --recovery tenants connected, `kill -9` of the daemon, a new daemon with the same tenants.boot:
            time until all are connected again; the simulator's GET /state maxConcurrentAnyDevice must stay 1.

    .venv/bin/python bench/real_fleet.py [--tenants 200] [--batch 50] [--spawns 2,4,8] [--recovery 100]
                                         [--window 30]

Memory guard: before a phase that connects k workers, k x 100 MiB + 3 GiB must be available (psutil), else
N is lowered and the output says so. Every process is stopped at the end (daemon SIGTERM stops its workers; the
leftover check is `pgrep -f <marker>`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, teardown  # noqa: E402
from e2e_harness import WORKER_NODE_FLAGS, TRUST_PRELOAD, WORKER, Daemon, Simulator, daemon_config, free_port, wait_for  # noqa: E402

MIB = 2**20


def pctl(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))] if s else float("nan")


def spread(xs: list[float], scale: float = 1.0, unit: str = "") -> str:
    return (f"median {pctl(xs, 50) * scale:.1f}{unit}  p5 {pctl(xs, 5) * scale:.1f}  p95 {pctl(xs, 95) * scale:.1f}"
            f"  min {min(xs) * scale:.1f}  max {max(xs) * scale:.1f}  (n={len(xs)})")


def load() -> str:
    a = os.getloadavg()
    return f"load {a[0]:.2f}/{a[1]:.2f}/{a[2]:.2f}"


class Fleet:
    def __init__(self, work: Path, sim: Simulator, marker: str) -> None:
        self.work, self.sim, self.marker = work, sim, marker
        self.storage = work / "storage"
        self.command = ["node", "--import", str(TRUST_PRELOAD), *WORKER_NODE_FLAGS, str(WORKER), marker]
        self.n = 0

    def daemon(self, boot: list[str], spawns: int = 8) -> Daemon:
        self.n += 1
        wd = self.work / f"d{self.n}"
        wd.mkdir()
        cfg = daemon_config(self.storage, free_port(), self.sim.ws_url, boot=boot,
                            worker={"command": self.command, "heartbeat_interval": 5.0, "heartbeat_timeout": 30.0,
                                    "stop_grace": 5.0, "max_concurrent_spawns": spawns},
                            restart={"initial_delay": 1.0, "max_delay": 10.0, "jitter": 0.2})
        return Daemon(wd, cfg)

    @staticmethod
    def states(d: Daemon) -> dict[str, dict]:
        """Per tenant {state, pid} from the daemon's own JSON log (tenant.state / worker.spawned / worker.exited),
        read incrementally. Not from GET /whatsapp: every status computes `auth.files` with one stat() per file of
        the auth dir (~816 after a pairing), so polling the list of 200 paired tenants costs the daemon seconds of
        CPU per request and would slow down exactly what is measured (see docs/benchmarks.md)."""
        cache = d.__dict__.setdefault("_fleet_log", {"run": None, "off": 0, "st": {}})
        if cache["run"] != d.runs:
            cache.update(run=d.runs, off=0, st={})
        path = d.workdir / f"daemon-{d.runs}.log"
        with open(path, "rb") as fh:
            fh.seek(cache["off"])
            data = fh.read()
        end = data.rfind(b"\n") + 1
        cache["off"] += end
        st = cache["st"]
        for line in data[:end].splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            t = e.get("tenant")
            if not t:
                continue
            cur = st.setdefault(t, {"state": None, "pid": None, "connected": False})
            if e["event"] == "tenant.state":
                cur["state"] = e.get("to_state")
                cur["connected"] = cur["state"] == "connected"
            elif e["event"] == "worker.spawned":
                cur["pid"] = e.get("worker_pid")
            elif e["event"] == "worker.exited":
                cur["pid"] = None
        return st

    def pair(self, d: Daemon, tids: list[str]) -> None:
        """Start `tids` on `d`, scan each one's QR with the simulator's phone, wait until all are connected."""
        for t in tids:
            d.start_tenant(t)
        self.wait_all(d, tids, lambda s: s["state"] == "qr", 300, "qr")
        for t in tids:
            for _ in range(3):  # a QR can rotate between GET /qr and the scan under load
                res = self.sim.scan(d.qr(t)["qr"])
                if res.get("ok") or res.get("error") not in ("qr_not_current", "qr_expired"):
                    break
                time.sleep(0.5)
            assert res.get("ok"), res
        self.wait_all(d, tids, lambda s: s["connected"], 300, "paired+connected", 0.5)

    def wait_all(self, d: Daemon, tids: list[str], pred, timeout: float, what: str, interval: float = 0.1) -> float:
        t0 = time.monotonic()
        last: dict = {}

        def check() -> bool:
            nonlocal last
            last = self.states(d)
            return all(t in last and pred(last[t]) for t in tids)

        try:
            wait_for(check, timeout, what, interval=interval)
        except TimeoutError:
            bad = {t: (last.get(t) or {}).get("state") for t in tids if not (t in last and pred(last[t]))}
            raise RuntimeError(f"{what}: {len(bad)} not there: {dict(list(bad.items())[:10])}") from None
        return time.monotonic() - t0


def worker_rss(statuses: dict[str, dict]) -> tuple[list[float], list[float]]:
    rss, cpu = [], []
    for s in statuses.values():
        try:
            p = psutil.Process(s["pid"])
            rss.append(p.memory_info().rss / MIB)
            c = p.cpu_times()
            cpu.append(c.user + c.system)
        except (psutil.Error, TypeError):
            pass
    return rss, cpu


def mem_ok(k: int) -> bool:
    return psutil.virtual_memory().available > k * 100 * MIB + 3 * 2**30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--spawns", default="2,4,8")
    ap.add_argument("--recovery", type=int, default=100)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--tmpdir", default=None, help="where storage lives (default: $TMPDIR or /tmp)")
    args = ap.parse_args()
    spawns = [int(x) for x in args.spawns.split(",") if x]
    marker = f"bsup-fleet-{os.getpid()}"
    out: list[str] = [f"# bench/real_fleet.py {' '.join(sys.argv[1:])}  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
                      f"# {machine()}",
                      f"# start: {load()}"]

    def say(line: str) -> None:
        out.append(line)
        print(line, file=sys.stderr, flush=True)

    n = args.tenants
    if not mem_ok(n):
        n2 = n
        while n2 > 10 and not mem_ok(n2):
            n2 -= 10
        say(f"# memory guard: {n} workers do not fit safely, using {n2}")
        n = n2
    tids = [f"f{i:03d}" for i in range(n)]
    # --tmpdir /dev/shm: this VM's / is ext4 mounted with `discard`, so removing the ~160,000 auth files of 200
    # paired tenants afterwards takes ~10 min of synchronous discards (~280 unlinks/s).
    with tempfile.TemporaryDirectory(prefix="bsup-fleet-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        sim = Simulator()
        fleet = Fleet(work, sim, marker)
        daemons: list[Daemon] = []
        try:
            # ---- pair ------------------------------------------------------------------------------------
            d = fleet.daemon([])
            daemons.append(d)
            d.start()
            t_pair = time.monotonic()
            first_rss = None
            for b0 in range(0, n, args.batch):
                batch = tids[b0:b0 + args.batch]
                fleet.pair(d, batch)
                if first_rss is None:
                    time.sleep(args.settle)
                    rss, _ = worker_rss({t: s for t, s in fleet.states(d).items() if t in batch})
                    first_rss = rss
                    say(f"idle connected worker RSS, {len(batch)} fresh pairings connected at once "
                        f"({load()}): {spread(rss, unit=' MiB')}   goal <= 70 MB ({pctl(rss, 50) * MIB / 1e6:.1f} MB)")
                for t in batch:
                    d.call("POST", f"/whatsapp/{t}/stop")
                fleet.wait_all(d, batch, lambda s: s["state"] == "stopped" and s["pid"] is None, 60, "stopped", 0.5)
                say(f"paired {b0 + len(batch)}/{n} ({time.monotonic() - t_pair:.0f} s, {load()})")
            d.stop(60)
            c = sim.counters()
            say(f"pairing done: {c['pairings']} pairings, conflicts {c['conflicts']}")

            # ---- boot ------------------------------------------------------------------------------------
            cores = os.cpu_count() or 1
            last = None
            for k in spawns:
                time.sleep(5)
                d = fleet.daemon(tids, spawns=k)
                daemons.append(d)
                l0 = load()
                t0 = time.monotonic()
                d.start(120)
                t_up = time.monotonic() - t0
                dt = fleet.wait_all(d, tids, lambda s: s["connected"], 900, f"boot spawns={k}", 0.2) + t_up
                sts = fleet.states(d)
                rss, cpu = worker_rss(sts)
                floor = n * pctl(cpu, 50) / cores
                say(f"boot {n} tenants, max_concurrent_spawns={k}: daemon start -> all connected {dt:6.1f} s "
                    f"(API up after {t_up:.1f} s; {l0} before)   CPU floor {floor:5.1f} s "
                    f"(= {n} x {pctl(cpu, 50):.2f} s median worker CPU at connected / {cores} cores)   "
                    f"ratio {dt / floor:.2f}x")
                last = d
                if k != spawns[-1]:
                    d.stop(120)

            # ---- idle --------------------------------------------------------------------------------------
            d = last
            time.sleep(args.settle)
            ps = psutil.Process(d.proc.pid)
            c0, w0 = ps.cpu_times(), time.monotonic()
            peak = 0
            while time.monotonic() - w0 < args.window:
                peak = max(peak, ps.memory_info().rss)
                time.sleep(0.5)
            c1, w1 = ps.cpu_times(), time.monotonic()
            cpu_frac = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0)
            rss_d = ps.memory_info().rss
            sts = fleet.states(d)
            connected = sum(1 for s in sts.values() if s["connected"])
            rss, _ = worker_rss(sts)
            say(f"daemon with {connected} real workers connected ({load()}): RSS {rss_d / MIB:.1f} MiB "
                f"(peak {peak / MIB:.1f}; {rss_d / 1e6:.1f} MB, goal <= 80 MB), idle CPU {cpu_frac * 100:.2f} % of a "
                f"core over {args.window:.0f} s (goal <= 1 %)")
            say(f"worker RSS after boot with saved creds, all {len(rss)} connected: {spread(rss, unit=' MiB')}; "
                f"total {sum(rss) / 1024:.1f} GiB")
            d.stop(120)

            # ---- recovery ----------------------------------------------------------------------------------
            m = min(args.recovery, n)
            rt = tids[:m]
            time.sleep(5)
            d = fleet.daemon(rt, spawns=spawns[-1])
            daemons.append(d)
            d.start(120)
            fleet.wait_all(d, rt, lambda s: s["connected"], 600, "recovery: first boot", 0.2)
            time.sleep(5)
            before = sim.state()
            old_pids = {t: s["pid"] for t, s in fleet.states(d).items()}
            l0 = load()
            t0 = time.monotonic()
            d.kill9()
            d2 = fleet.daemon(rt, spawns=spawns[-1])
            daemons.append(d2)
            d2.start(120)
            t_up = time.monotonic() - t0
            dt = fleet.wait_all(d2, rt, lambda s: s["connected"], 600, "recovery", 0.2) + t_up
            sts = fleet.states(d2)
            reused = sum(1 for t, s in sts.items() if s["pid"] == old_pids.get(t))
            st = sim.state()
            alive_old = sum(1 for p in old_pids.values() if p and psutil.pid_exists(p)
                            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE)
            say(f"recovery: kill -9 of the daemon with {m} connected -> all {m} connected under a new daemon in "
                f"{dt:.1f} s (new daemon's API up after {t_up:.1f} s; {l0} before; spawns={spawns[-1]}); "
                f"simulator maxConcurrentAnyDevice {st['maxConcurrentAnyDevice']} (goal 1), conflicts "
                f"{before['counters']['conflicts']} -> {st['counters']['conflicts']}, logins "
                f"{before['counters']['logins']} -> {st['counters']['logins']}; old worker pids reused {reused}, "
                f"old workers still alive {alive_old}")
            d2.stop(120)
        finally:
            left = teardown(daemons, sim, marker, 120)
            if left:
                out.append(f"# WARNING: {left} leftover workers killed")
    out.append(f"# end: {load()}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
