"""Cluster ownership numbers (docs/benchmarks.md, docs/cluster.md) on a throwaway, durable PostgreSQL (tests/pg.py,
fsync on): claim of 1,000 and 10,000 tenants (1 and 3 nodes), SIGKILL of a node -> its tenants re-owned, server
locks and connections per node, a fenced auth write vs a file write, and (--partition, root) a blackholed node ->
fenced and -> re-owned with the shipped timings (fence_after 4 s, release_after 10 s).

    python bench/cluster_claim.py [--tenants 1000,10000] [--kills 3] [--partition]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import pct  # noqa: E402
from supervisor.cluster.ownership import PgOwnership  # noqa: E402
from supervisor.settings import ClusterSettings  # noqa: E402
from tests.cluster.procs import NodeProc, owners, want  # noqa: E402
from tests.pg import PgServer  # noqa: E402


def cs(dsn: str, node: str, **kw) -> ClusterSettings:
    return replace(ClusterSettings(dsn=dsn, node_id=node), **kw)


async def claim(server: PgServer, n: int, k: int) -> str:
    dsn = server.create_db()
    nodes = [PgOwnership(cs(dsn, f"n{i}", max_tenants=n)) for i in range(k)]
    for node in nodes:
        await node.start()
    t0 = time.monotonic()
    await nodes[0].want_many([f"t{i:05d}" for i in range(n)])
    while sum(len(x.owned) for x in nodes) < n:
        await asyncio.sleep(0.01)
    took = time.monotonic() - t0
    with psycopg.connect(dsn) as c:
        locks = c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]
        conns = c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'bsup:%'").fetchone()[0]
    idle = []
    nodes[0]._tasks[1].cancel()  # its own claim loop off: time rounds on a settled cluster
    for _ in range(20):
        t1 = time.perf_counter()
        await nodes[0].claim_round()
        idle.append((time.perf_counter() - t1) * 1000)
    split = "/".join(str(len(x.owned)) for x in nodes)
    for node in nodes:
        await node.close(drain=False)
    return (f"| claim {n:,} tenants, {k} node{'s' if k > 1 else ''} | {took * 1000:.0f} ms | split {split}; "
            f"advisory locks {locks} ({locks / k:.0f}/node), connections {conns} ({conns / k:.0f}/node); an idle claim "
            f"round of a node owning {len(nodes[0].owned)}: p50 {pct(idle, 50):.1f} ms |")


def kill_run(server: PgServer, n: int, tmp: Path) -> tuple[float, int]:
    dsn = server.create_db()
    tmp = Path(tempfile.mkdtemp(dir=tmp))  # event files of this run only
    procs = [NodeProc(dsn, f"n{i}", tmp, "--max-tenants", str(n)) for i in range(3)]
    try:
        for p in procs:
            p.wait_event("ready", 60)
        want(dsn, [f"t{i:05d}" for i in range(n)])
        while sum(1 for o, _ in owners(dsn).values() if o) < n:
            time.sleep(0.05)
        time.sleep(1.0)
        own = owners(dsn)
        victim = max(procs, key=lambda p: sum(1 for o, _ in own.values() if o == p.node))
        theirs = [t for t, (o, _) in own.items() if o == victim.node]
        t0 = time.monotonic()
        victim.proc.kill()
        while True:
            now = owners(dsn)
            if all(now[t][0] not in (None, victim.node) for t in theirs):
                return time.monotonic() - t0, len(theirs)
            time.sleep(0.005)
    finally:
        for p in procs:
            p.stop()


async def write_latency(server: PgServer, tmp: Path, reps: int) -> list[str]:
    dsn = server.create_db()
    node = PgOwnership(cs(dsn, "w"))
    await node.start()
    await node.want("t1")
    while "t1" not in node.owned:
        await asyncio.sleep(0.01)
    blob = os.urandom(2048)
    pg_ms = []
    for i in range(reps):
        t0 = time.perf_counter()
        await node.write_kv("t1", {f"pre-key-{i % 50}.json": blob, "creds.json": blob})
        pg_ms.append((time.perf_counter() - t0) * 1000)
    await node.close(drain=False)
    file_ms, fsync_ms = [], []
    for i in range(reps):  # what useMultiFileAuthState does per key: writeFile (no fsync), twice for two keys
        t0 = time.perf_counter()
        for name in (f"pre-key-{i % 50}.json", "creds.json"):
            (tmp / name).write_bytes(blob)
        file_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        for name in (f"pre-key-{i % 50}.json", "creds.json"):
            fd = os.open(tmp / f"{name}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, blob)
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp / f"{name}.tmp", tmp / name)
        fsync_ms.append((time.perf_counter() - t0) * 1000)
    row = lambda what, v: f"| {what} | p50 {pct(v, 50):.2f} ms, p99 {pct(v, 99):.2f} ms |"
    return [row("2 keys x 2 KiB, postgres: one fenced transaction (fsync on)", pg_ms),
            row("2 keys x 2 KiB, files: writeFile each (stock auth state, no fsync)", file_ms),
            row("2 keys x 2 KiB, files: write + fsync + rename each", fsync_ms)]


def partition_run(tmp: Path, n: int) -> str:
    from tests.cluster.netns import NetNs

    ns = NetNs()
    tmp = Path(tempfile.mkdtemp(dir=tmp))
    server = PgServer(extra_listen=(ns.host_ip,), trust_from=(f"{ns.ns_ip}/32",), durable=True)
    try:
        server.start()
        dsn = server.create_db()
        db = dsn.rsplit("=", 1)[1]
        a = NodeProc(server.dsn(db, host=ns.host_ip), "a", tmp, "--max-tenants", str(n), "--fence-after", "4",
                     "--release-after", "10", "--ping-interval", "1", prefix=ns.exec_prefix())
        a.wait_event("ready", 60)
        want(dsn, [f"t{i:05d}" for i in range(n)])
        while sum(1 for o, _ in owners(dsn).values() if o == "a") < n:
            time.sleep(0.05)
        b = NodeProc(dsn, "b", tmp, "--max-tenants", str(n), "--fence-after", "4", "--release-after", "10")
        b.wait_event("ready", 60)
        time.sleep(2.0)
        theirs = [t for t, (o, _) in owners(dsn).items() if o == "a"]
        cut = time.time()
        ns.partition()
        fence = a.wait_event("fence", 30, lambda e: e["at"] > cut)
        while not all(o == "b" for t, (o, _) in owners(dsn).items() if t in theirs):
            time.sleep(0.02)
        reowned = time.time() - cut
        a.stop()
        b.stop()
        return (f"| partition (both directions), {len(theirs)} tenants on the cut node | fenced {fence['at'] - cut:.2f} s,"
                f" re-owned by the other node {reowned:.2f} s |")
    finally:
        server.destroy()
        ns.delete()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", default="1000,10000")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--writes", type=int, default=300)
    ap.add_argument("--partition", action="store_true")
    args = ap.parse_args()
    server = PgServer(durable=True)
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="bsup-bench-"))
    rows = []
    try:
        for n in [int(x) for x in args.tenants.split(",")]:
            for k in (1, 3):
                rows.append(asyncio.run(claim(server, n, k)))
                print(rows[-1], flush=True)
        kills = [kill_run(server, 1000, tmp) for _ in range(args.kills)]
        rows.append(f"| SIGKILL of 1 of 3 nodes (1,000 tenants) -> its tenants re-owned | "
                    f"{', '.join(f'{s * 1000:.0f} ms ({c})' for s, c in kills)}; median "
                    f"{statistics.median(s for s, _ in kills) * 1000:.0f} ms |")
        print(rows[-1], flush=True)
        rows += asyncio.run(write_latency(server, tmp, args.writes))
        if args.partition:
            rows.append(partition_run(tmp, 1000))
    finally:
        server.destroy()
    print(f"\nload {os.getloadavg()[0]:.1f}\n| what | result |\n|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
