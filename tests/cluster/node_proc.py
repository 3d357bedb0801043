"""One cluster node as its own process, for the fault tests and bench/cluster_claim.py: a PgOwnership with optional
stand-in workers (`sleep` processes, killed with the node via PDEATHSIG) and an optional *zombie writer*.

The zombie writer models the worst worker: it has its own connection, is never killed, and keeps writing with every
epoch this node was ever given. Only the store's epoch check (fenced_tx) stands between it and a stale commit; each
commit inserts a row into `test_writes` in the same transaction, so the test can compare commit timestamps with the
epoch bumps in `tenant_epoch`.

Events go to --events as JSON lines: ready, gain, lose, fence (with the killed worker pids), each with `at` (epoch s).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from supervisor.cluster import pg  # noqa: E402
from supervisor.cluster.ownership import Fenced, PgOwnership, fenced_tx  # noqa: E402
from supervisor.settings import ClusterSettings  # noqa: E402

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a stand-in worker never outlives its node


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.events = open(args.events, "a", buffering=1)
        self.workers: dict[str, subprocess.Popen] = {}
        self.ever: dict[str, set[int]] = {}  # every epoch this node was given per tenant: the zombie uses them all
        cs = ClusterSettings(dsn=args.dsn, node_id=args.node, max_tenants=args.max_tenants)
        self.cs = replace(cs, ping_interval=args.ping_interval, fence_after=args.fence_after,
                          release_after=args.release_after, claim_interval=args.claim_interval)
        self.own = PgOwnership(self.cs, on_gain=self.gain, on_lose=self.lose, on_fence=self.fence)

    def emit(self, ev: str, **kw) -> None:
        self.events.write(json.dumps({"ev": ev, "node": self.args.node, "at": time.time(), **kw}) + "\n")

    async def gain(self, t: str, epoch: int) -> None:
        self.ever.setdefault(t, set()).add(epoch)
        if self.args.workers:
            self.workers[t] = subprocess.Popen(["sleep", "3600"], preexec_fn=_die_with_parent)
        self.emit("gain", tenant=t, epoch=epoch, pid=self.workers[t].pid if t in self.workers else None)

    async def lose(self, t: str, epoch: int) -> None:
        w = self.workers.pop(t, None)
        if w:
            w.kill()
            w.wait()
        self.emit("lose", tenant=t, epoch=epoch)

    def fence(self, reason: str) -> None:
        pids = []
        for w in self.workers.values():
            w.kill()
            pids.append(w.pid)
        for w in self.workers.values():
            w.wait()
        self.workers.clear()
        self.emit("fence", reason=reason, killed=pids)

    async def zombie_writer(self) -> None:
        conn = None
        ok = rejected = 0
        last = 0.0
        while True:
            try:
                if conn is None:
                    conn = await pg.connect(self.cs, "zombie", autocommit=True)
                for t, e in [(t, e) for t, es in list(self.ever.items()) for e in sorted(es)]:
                    try:
                        async with fenced_tx(conn, t, self.args.node, e) as cur:
                            await cur.execute("INSERT INTO test_writes (tenant_id, epoch, node) VALUES (%s, %s, %s)",
                                              (t, e, self.args.node))
                        ok += 1
                    except Fenced:
                        rejected += 1
            except Exception:  # noqa: BLE001 - connection cut: reconnect, keep trying (a zombie)
                conn = None
                await asyncio.sleep(0.2)
            if time.monotonic() - last > 1.0:
                last = time.monotonic()
                self.emit("writes", ok=ok, rejected=rejected)
            await asyncio.sleep(0.02)

    async def run(self) -> None:
        await self.own.start()
        self.emit("ready", lock_pid=self.own._lock_conn.info.backend_pid)
        if self.args.zombie_writer:
            asyncio.ensure_future(self.zombie_writer())
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await self.own.close(drain=True)
        self.emit("drained")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--max-tenants", type=int, default=250)
    ap.add_argument("--ping-interval", type=float, default=0.5)
    ap.add_argument("--fence-after", type=float, default=4.0)
    ap.add_argument("--release-after", type=float, default=10.0)
    ap.add_argument("--claim-interval", type=float, default=0.3)
    ap.add_argument("--workers", action="store_true")
    ap.add_argument("--zombie-writer", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(Node(args).run())


if __name__ == "__main__":
    main()
