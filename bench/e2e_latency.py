"""End-to-end latencies with the real parts (simulator + `baileys-supervisor run` + real worker + real Baileys),
measured from outside through the daemon's HTTP API, as the web app sees them:

  start -> QR        POST /start until GET /status says hasQR (worker spawn + Baileys import + Noise + pair-device)
  scan -> connected  simulator POST /scan until status connected (pair-success, 515, the worker's new socket in the
                     same process -- or, with BSUP_RESTART_IN_PROCESS=off, a standby/respawn --, login, open)
  428 re-login       simulator tcp_drop (Baileys 428) until connected again (backoff delay + spawn + login)

    .venv/bin/python bench/e2e_latency.py [--pairings 50] [--initial-delay 0.2] [--floor 20]
        [--worker-command '["node", "...", "worker.mjs"]'] [--variant 'LABEL=["node", ...]'] [--no-relogin]
        [--scan-delay 0 [--scan-delay 2 ...]] [--base-tree DIR]

--scan-delay S (repeatable): seconds between the QR shown and the scan; with several, every variant is measured at
each delay, interleaved in the same run (e.g. `--scan-delay 0 --scan-delay 2`: the instant scan and a person's).
--variant 'old515={"env": {"BSUP_RESTART_IN_PROCESS": "off"}}': the worker exits at the scan's 515 (the path
before the in-process reconnect: a standby promoted, or a respawn).

--base-tree DIR: also measure another source tree (e.g. `git archive <commit> | tar -x -C DIR`, with
DIR/node_worker/node_modules a symlink to this tree's): its daemon (PYTHONPATH=DIR) and its worker.mjs, as variant
`base`, interleaved pairing by pairing with the others.

Each pairing uses a fresh tenant, which is stopped after its measurements so only one worker runs at a time.
Status is polled every 10 ms, so every number carries up to ~10 ms of polling granularity.

Baseline (the floor for start -> QR), in the same invocation: `--floor N` runs of a bare `node` (no flags, no
preload) that imports Baileys, opens a socket with in-memory creds against the same simulator and prints its first
QR; measured from spawn to that line.

Breakdown of scan -> connected: the daemon's JSON log (`ts` of tenant.close / worker.exited / worker.spawned /
worker.hello / tenant.state connecting / tenant.open) and the simulator's events (`t` of connection / login /
prekeys_uploaded), all wall-clock on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e_harness import (WORKER_NODE_FLAGS, TRUST_PRELOAD, WORKER, Daemon, Simulator, daemon_config, free_port,  # noqa: E402
                         percentile, wait_for)

# The shipped default flags (supervisor/settings.py) plus the simulator's test-root preload.
DEFAULT_COMMAND = ["node", "--import", str(TRUST_PRELOAD), *WORKER_NODE_FLAGS, str(WORKER)]

FLOOR_JS = r"""
const t0 = Date.now();
const b = await import('@whiskeysockets/baileys');
const tImport = Date.now();
const { default: makeWASocket, initAuthCreds } = b;
const creds = initAuthCreds();
const keys = { get: async () => ({}), set: async () => {} };
const pino = (await import('module')).createRequire(import.meta.resolve('@whiskeysockets/baileys'))('pino');
const sock = makeWASocket({ auth: { creds, keys }, waWebSocketUrl: process.env.WA_URL,
                            logger: pino({ level: 'silent' }) });
sock.ev.on('connection.update', (u) => {
  if (u.qr) {
    process.stdout.write(JSON.stringify({ qr: true, importMs: tImport - t0, qrMs: Date.now() - t0 }) + '\n');
    process.exit(0);
  }
});
"""


def row(name: str, xs: list[float], unit: float = 1000) -> str:
    ms = [x * unit for x in xs]
    if not ms:
        return f"{name:<34} n=0"
    return (f"{name:<34} n={len(ms):<3} p50={percentile(ms, 50):7.0f} ms  p95={percentile(ms, 95):7.0f} ms  "
            f"min={min(ms):7.0f} ms  max={max(ms):7.0f} ms")


def floor_run(ws_url: str) -> float:
    t0 = time.monotonic()
    p = subprocess.run(["node", "--input-type=module", "-e", FLOOR_JS], cwd=ROOT / "node_worker",
                       env={**os.environ, "WA_URL": ws_url}, capture_output=True, text=True, timeout=60)
    dt = time.monotonic() - t0
    if not p.stdout.startswith('{"qr":true'):
        raise RuntimeError(f"floor run failed: {p.stdout[-500:]} {p.stderr[-2000:]}")
    return dt


def ts(e: dict) -> float:
    return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()


def breakdown(events: list[dict], sim_events: list[dict], tid: str, t_scan: float, t_seen: float,
              jid: str) -> dict[str, float] | None:
    """Phases of one scan -> connected, in seconds, from the daemon log and the simulator's events."""
    mine = [e for e in events if e.get("tenant") == tid and ts(e) >= t_scan - 0.001]

    def first(pred) -> float | None:
        for e in mine:
            if pred(e):
                return ts(e)
        return None

    close = first(lambda e: e["event"] == "tenant.close" and e.get("code") == 515)
    standby_pids = {e.get("worker_pid") for e in mine if e["event"] == "worker.spawned" and e.get("standby")}
    exited = first(lambda e: e["event"] == "worker.exited" and e.get("worker_pid") not in standby_pids)
    spawned = first(lambda e: e["event"] == "worker.spawned")
    hello = first(lambda e: e["event"] == "worker.hello")
    promoted = first(lambda e: e["event"] == "standby.promoted")  # worker.prewarm: no spawn after the scan
    connecting = first(lambda e: e["event"] == "tenant.state" and e.get("to_state") == "connecting")
    opened = first(lambda e: e["event"] == "tenant.open")
    sims = [e for e in sim_events if e["t"] / 1000 >= t_scan - 0.001]
    paired = next((e["t"] / 1000 for e in sims if e["type"] == "paired"), None)
    login = next((e["t"] / 1000 for e in sims if e["type"] == "login" and e.get("jid") == jid), None)
    login_conn = next((e["conn"] for e in sims if e["type"] == "login" and e.get("jid") == jid), None)
    conn = next((e["t"] / 1000 for e in sims if e["type"] == "connection" and e.get("conn") == login_conn), None)
    pk = next((e["t"] / 1000 for e in sims if e["type"] == "prekeys_uploaded" and e.get("jid") == jid), None)
    if any(v is None for v in (paired, connecting, opened, login, conn, pk)):
        return None

    def d(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    everything = [e for e in events if e.get("tenant") == tid]
    qr_at = next((ts(e) for e in everything if e["event"] == "tenant.qr"), None)
    ready_at = next((ts(e) for e in everything if e["event"] == "standby.ready"), None)
    # A worker that reconnects in-process has no exit/spawn/go phases (None): pair-success -> connecting covers it.
    return {
        "(first QR -> standby ready)": d(qr_at, ready_at),
        "(scan - standby ready)": d(ready_at, t_scan),
        "scan -> pair-success sent": paired - t_scan,
        "pair-success -> close 515 (daemon)": d(paired, close),
        "close -> worker exited": d(close, exited),
        "exited -> standby promoted (go)": d(exited, promoted),
        "go -> connecting": d(promoted, connecting),
        "exited -> next worker spawned": d(exited, spawned),
        "spawned -> hello (node+Baileys)": d(spawned, hello),
        "hello -> connecting": d(hello, connecting),
        "pair-success -> connecting": connecting - paired,
        "connecting -> ws connection (sim)": conn - connecting,
        "ws connection -> login (handshake)": login - conn,
        "login -> pre-keys uploaded": pk - login,
        "pre-keys uploaded -> open (daemon)": opened - pk,
        "open -> status connected (poll)": t_seen - opened,
    }


def pairing(d: Daemon, sim: Simulator, tid: str, res_: dict, relogin: bool, scan_delay: float = 0.0) -> None:
    t0 = time.monotonic()
    d.start_tenant(tid)
    wait_for(lambda: d.status(tid)["hasQR"], 30, "qr", interval=0.01)
    res_["start_qr"].append(time.monotonic() - t0)
    qr = d.qr(tid)["qr"]
    time.sleep(scan_delay)  # a person takes seconds to scan; the worker may use that idle time
    seq = sim.state()["lastEventSeq"]
    t1, w1 = time.monotonic(), time.time()
    res = sim.scan(qr)
    assert res["ok"], res
    st = wait_for(lambda: (s := d.status(tid))["connected"] and s, 60, "connected", interval=0.01)
    res_["scan_open"].append(time.monotonic() - t1)
    w_seen = time.time()
    b = breakdown(d.log_events(), sim.events(seq), tid, w1, w_seen, res["jid"])
    if b:
        res_["phases"].append(b)
    restarts = st["restarts"]
    if relogin:
        t2 = time.monotonic()
        assert sim.kill(res["jid"], "tcp_drop")["ok"]
        wait_for(lambda: (s := d.status(tid))["connected"] and s["restarts"] > restarts, 60, "re-login",
                 interval=0.01)
        res_["relogin"].append(time.monotonic() - t2)
        assert d.status(tid)["lastDisconnect"]["code"] == 428
    d.call("POST", f"/whatsapp/{tid}/stop")


def report(name: str, r: dict, floor: list[float], initial_delay: float) -> None:
    w = r["worker"]
    extra = {k: v for k, v in w.items() if k != "command"}
    print(f"## {name}: worker.command = {' '.join(Path(a).name if '/' in a else a for a in w['command'])}"
          + (f"  worker settings {json.dumps(extra)}" if extra else "  (worker.prewarm: shipped default, on)"))
    print(row("start -> QR", r["start_qr"]))
    if floor:
        print(f"{'':<34} ratio start->QR / floor: p50 {percentile(r['start_qr'], 50) / percentile(floor, 50):.2f}x, "
              f"p95 {percentile(r['start_qr'], 95) / percentile(floor, 95):.2f}x")
    print(row("scan -> connected", r["scan_open"]))
    if r["relogin"]:
        print(row(f"428 re-login (backoff {initial_delay:g} s)", r["relogin"]))
    ph = r["phases"]
    if ph:
        print(f"breakdown of scan -> connected (n={len(ph)}, per phase):")
        for k in ph[0]:
            xs = [p[k] for p in ph if p[k] is not None]
            if xs:
                print("  " + row(k, xs))


def start_daemon(d: Daemon, tree: Path) -> None:
    """Daemon.start() with the daemon's Python code taken from `tree` (it passes os.environ on to the child)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        d.start()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairings", type=int, default=50)
    ap.add_argument("--initial-delay", type=float, default=0.2, help="restart.initial_delay (the 428 backoff)")
    ap.add_argument("--floor", type=int, default=20, help="bare-node start->QR baseline runs (interleaved)")
    ap.add_argument("--worker-command", default=None, help="JSON argv for worker.command of the main run")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=JSON",
                    help="an extra variant measured interleaved with the main one (own daemon, same simulator), "
                         "pairing by pairing, so load changes hit every variant alike. JSON: a worker.command argv, "
                         'or an object of worker settings, e.g. \'no_prewarm={"prewarm": false}\'')
    ap.add_argument("--no-relogin", action="store_true")
    ap.add_argument("--scan-delay", type=float, action="append", default=None,
                    help="seconds between QR shown and the scan; repeat it to measure several delays in one run")
    ap.add_argument("--label", default="")
    ap.add_argument("--base-tree", type=Path, default=None)
    args = ap.parse_args()
    command = json.loads(args.worker_command) if args.worker_command else DEFAULT_COMMAND
    variants = [("main", {"command": command})]
    for v in args.variant:
        label, spec = v.split("=", 1)
        value = json.loads(spec)
        variants.append((label, {"command": command, **value} if isinstance(value, dict) else {"command": value}))
    trees = {}
    if args.base_tree:
        base = args.base_tree.resolve()
        variants.append(("base", {"command": [str(base / WORKER.relative_to(ROOT)) if a == str(WORKER) else a
                                              for a in command]}))
        trees["base"] = base
    delays = args.scan_delay or [0.0]
    # one measured series per (variant, scan delay); the variant's daemon serves all its delays
    series = [(f"{name} scan+{d:g}s" if len(delays) > 1 else name, name, d) for name, _ in variants for d in delays]
    workers = dict(variants)
    load0 = os.getloadavg()
    results = {label: {"worker": workers[name], "start_qr": [], "scan_open": [], "relogin": [], "phases": []}
               for label, name, _ in series}
    floor: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bsup-bench-") as tmp:
        work = Path(tmp)
        sim = Simulator()
        daemons: dict[str, Daemon] = {}
        try:
            for name, worker in variants:
                wd = work / name
                wd.mkdir()
                cfg = daemon_config(wd / "storage", free_port(), sim.ws_url, worker=worker,
                                    restart={"initial_delay": args.initial_delay, "jitter": 0.0})
                daemons[name] = Daemon(wd, cfg)
                start_daemon(daemons[name], trees.get(name, ROOT))
            for i in range(max(args.pairings, args.floor)):
                if i < args.floor:
                    floor.append(floor_run(sim.ws_url))
                if i >= args.pairings:
                    continue
                for k, (label, name, d) in enumerate(series if i % 2 == 0 else series[::-1]):  # none always first
                    pairing(daemons[name], sim, f"b{i}s{k}", results[label], not args.no_relogin, d)
                print(f"pairing {i + 1}/{args.pairings}: " + "; ".join(
                    f"{n}: start->qr {r['start_qr'][-1]*1000:.0f} ms, scan->connected {r['scan_open'][-1]*1000:.0f} ms"
                    for n, r in results.items()), file=sys.stderr)
            c = sim.counters()
            assert c["registrations"] == args.pairings * len(series) + args.floor and c["conflicts"] == 0, c
        finally:
            for d in daemons.values():
                d.stop()
            sim.stop()
    load1 = os.getloadavg()
    print(f"# bench/e2e_latency.py {args.label} {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  "
          f"loadavg before {load0[0]:.2f}/{load0[1]:.2f}, after {load1[0]:.2f}/{load1[1]:.2f}")
    if floor:
        print(row("baseline: bare node -> first QR", floor))
    for label, _, _ in series:
        report(label, results[label], floor, args.initial_delay)
    for d in delays:  # each variant against main at the same scan delay
        at = [label for label, _, dd in series if dd == d]
        m = percentile(results[at[0]]["scan_open"], 50)
        for label in at[1:]:
            v = percentile(results[label]["scan_open"], 50)
            print(f"scan -> connected p50: {label} {v*1000:.0f} ms vs {at[0]} {m*1000:.0f} ms: "
                  f"{(m - v)*1000:+.0f} ms gain, ratio {v / m:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
