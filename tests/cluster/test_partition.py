"""Partition: node A in its own network namespace, node B beside the server; both directions blackholed. A must
fence itself (kill its workers) before B claims anything of A's; after the heal A's zombie writer commits nothing
outside its epochs and A rejoins (its node lock again, every tenant one owner)."""

from __future__ import annotations

import time

import psutil
import psycopg

from tests.cluster.procs import NodeProc, create_test_writes, live_workers, owners, settled, stale_commits, want
from tests.cluster.test_node_faults import wait_until

TIMING = ("--fence-after", "3", "--release-after", "6", "--ping-interval", "0.5")


def test_partitioned_node_fences_before_takeover(netns, pg_on_veth, tmp_path):
    dsn = pg_on_veth.create_db()
    create_test_writes(dsn)
    a = NodeProc(pg_on_veth.dsn(dsn.rsplit("=", 1)[1], host=netns.host_ip), "a", tmp_path, "--workers",
                 "--zombie-writer", *TIMING, prefix=netns.exec_prefix())
    a.wait_event("ready", 60)
    b = None
    try:
        tids = [f"t{i}" for i in range(10)]
        want(dsn, tids)
        wait_until(lambda: len(a.events("gain")) == 10, 60)  # A alone: it owns all ten
        b = NodeProc(dsn, "b", tmp_path, "--workers", *TIMING)
        b.wait_event("ready", 60)
        time.sleep(1.0)  # B's first rounds: hand-offs from A (rebalance) start
        wait_until(lambda: settled(dsn, [a, b]), 30)
        a_workers = list(live_workers(a).values())
        assert a_workers
        cut_at = time.time()
        netns.partition()
        fence = a.wait_event("fence", 20, lambda e: e["at"] > cut_at)
        took_over = b.wait_event("gain", 40, lambda e: e["at"] > cut_at)
        print(f"\npartition -> A fenced in {fence['at'] - cut_at:.2f} s, B's first takeover at "
              f"{took_over['at'] - cut_at:.2f} s")
        assert fence["at"] < took_over["at"]  # fenced (workers dead) before anyone else could claim
        assert sorted(fence["killed"]) == sorted(a_workers)
        assert not [p for p in a_workers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        wait_until(lambda: all(o == "b" for o, _ in owners(dsn).values()), 30)
        netns.heal()
        # A gets its lock back (a fresh session) and rejoins; every tenant keeps exactly one owner
        def a_alive():
            with psycopg.connect(dsn) as c:
                return c.execute("SELECT count(*) FROM pg_locks l JOIN cluster_node n ON l.objid = n.lock_key::oid "
                                 "AND l.locktype = 'advisory' AND l.objsubid = 2 WHERE n.node_id = 'a'").fetchone()[0]
        wait_until(a_alive, 40)
        time.sleep(2.0)  # the zombie retries A's old epochs after the heal
        total, late, foreign = stale_commits(dsn)
        assert total > 0 and late == 0 and foreign == 0, (total, late, foreign)
        assert all(o in ("a", "b") for o, _ in owners(dsn).values())
    finally:
        a.stop()
        if b:
            b.stop()
