"""End-to-end latencies with the real parts (simulator + `baileys-supervisor run` + real worker + real Baileys),
measured from outside through the daemon's HTTP API, as the web app sees them:

  start -> QR        POST /start until GET /status says hasQR (worker spawn + Baileys import + Noise + pair-device)
  scan -> connected  simulator POST /scan until status connected (pair-success, 515, daemon respawns, login, open)
  428 re-login       simulator tcp_drop (Baileys 428) until connected again (backoff delay + spawn + login)

    .venv/bin/python bench/e2e_latency.py [--pairings 20] [--initial-delay 0.2]

Each pairing uses a fresh tenant, which is stopped after its measurements so only one worker runs at a time.
Status is polled every 10 ms, so every number carries up to ~10 ms of polling granularity.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e_harness import Daemon, Simulator, daemon_config, free_port, percentile, wait_for  # noqa: E402


def row(name: str, xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return (f"{name:<20} n={len(ms):<3} p50={percentile(ms, 50):7.0f} ms  p95={percentile(ms, 95):7.0f} ms  "
            f"min={min(ms):7.0f} ms  max={max(ms):7.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairings", type=int, default=20)
    ap.add_argument("--initial-delay", type=float, default=0.2, help="restart.initial_delay (the 428 backoff)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bsup-bench-") as tmp:
        work = Path(tmp)
        sim = Simulator()
        cfg = daemon_config(work / "storage", free_port(), sim.ws_url,
                            restart={"initial_delay": args.initial_delay, "jitter": 0.0})
        d = Daemon(work, cfg)
        d.start()
        start_qr, scan_open, relogin = [], [], []
        try:
            for i in range(args.pairings):
                tid = f"b{i}"
                t0 = time.monotonic()
                d.start_tenant(tid)
                wait_for(lambda: d.status(tid)["hasQR"], 30, "qr", interval=0.01)
                start_qr.append(time.monotonic() - t0)
                qr = d.qr(tid)["qr"]
                t1 = time.monotonic()
                res = sim.scan(qr)
                assert res["ok"], res
                st = wait_for(lambda: (s := d.status(tid))["connected"] and s, 60, "connected", interval=0.01)
                scan_open.append(time.monotonic() - t1)
                restarts = st["restarts"]
                t2 = time.monotonic()
                assert sim.kill(res["jid"], "tcp_drop")["ok"]
                wait_for(lambda: (s := d.status(tid))["connected"] and s["restarts"] > restarts, 60, "re-login",
                         interval=0.01)
                relogin.append(time.monotonic() - t2)
                assert d.status(tid)["lastDisconnect"]["code"] == 428
                d.call("POST", f"/whatsapp/{tid}/stop")
                print(f"pairing {i + 1}/{args.pairings}: start->qr {start_qr[-1]*1000:.0f} ms, "
                      f"scan->connected {scan_open[-1]*1000:.0f} ms, 428 re-login {relogin[-1]*1000:.0f} ms",
                      file=sys.stderr)
            c = sim.counters()
            assert c["registrations"] == args.pairings and c["conflicts"] == 0, c
        finally:
            d.stop()
            sim.stop()
    print(row("start -> QR", start_qr))
    print(row("scan -> connected", scan_open))
    print(row(f"428 re-login (backoff {args.initial_delay:g} s)", relogin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
