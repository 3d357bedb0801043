"""The server itself: a PostgreSQL restart drops every node lock at once (every node fences, re-acquires, and each
tenant ends with exactly one owner), and scale: 3 nodes x 10,000 tenants on default server settings
(max_locks_per_transaction 64) with locks and connections per node independent of the tenant count."""

from __future__ import annotations

import asyncio
import time

import psycopg

from supervisor.cluster.ownership import PgOwnership
from tests.cluster.test_ownership import wait_for


def check_one_owner(nodes, dsn, n_tenants):
    seen: dict[str, str] = {}
    for n in nodes:
        for t in n.owned:
            assert t not in seen, f"{t} owned by {seen[t]} and {n.node_id}"
            seen[t] = n.node_id
    with psycopg.connect(dsn) as c:
        store = dict(c.execute("SELECT tenant_id, owner FROM tenant_owner").fetchall())
    assert len(seen) == n_tenants and store == seen
    return seen


async def test_postgres_restart_every_tenant_one_owner(pg_server, cluster_settings, pg_dsn):
    fences: list[str] = []
    nodes = [PgOwnership(cluster_settings(n), on_fence=lambda r, n=n: fences.append(f"{n}:{r}")) for n in "abc"]
    for n in nodes:
        await n.start()
    try:
        await nodes[0].want_many([f"t{i}" for i in range(60)])
        assert await wait_for(lambda: _total(nodes, 60), 30)
        before = {t: e for n in nodes for t, e in n.owned.items()}
        await asyncio.to_thread(pg_server.restart)
        # every node notices its lock session is gone (no need to wait out the lease) and kills its workers
        assert await wait_for(lambda: _all_fenced(fences), 30), fences
        assert await wait_for(lambda: _total(nodes, 60), 60)
        owner = check_one_owner(nodes, pg_dsn, 60)
        after = {t: e for n in nodes for t, e in n.owned.items()}
        assert all(after[t] > before[t] for t in owner)  # every tenant re-claimed with a bump
    finally:
        for n in nodes:
            await n.close(drain=False)


async def _total(nodes, k):
    return sum(len(n.owned) for n in nodes) == k and all(n.fence.valid() for n in nodes)


async def _all_fenced(fences):
    return {f.split(":")[0] for f in fences} == set("abc")


async def test_scale_10000_tenants_three_nodes_default_server_settings(cluster_settings, pg_dsn):
    with psycopg.connect(pg_dsn) as c:
        assert c.execute("SHOW max_locks_per_transaction").fetchone()[0] == "64"  # the default
    nodes = [PgOwnership(cluster_settings(n, max_tenants=4000, claim_interval=0.5)) for n in "abc"]
    for n in nodes:
        await n.start()
    try:
        t0 = time.monotonic()
        await nodes[0].want_many([f"t{i:05d}" for i in range(10_000)])
        assert await wait_for(lambda: _total(nodes, 10_000), 240, step=0.2)
        print(f"\n10,000 tenants claimed by 3 nodes in {time.monotonic() - t0:.1f} s: "
              f"{[len(n.owned) for n in nodes]}")
        check_one_owner(nodes, pg_dsn, 10_000)
        with psycopg.connect(pg_dsn) as c:
            locks = c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]
            conns = dict(c.execute("SELECT application_name, count(*) FROM pg_stat_activity "
                                   "WHERE application_name LIKE 'bsup:%' GROUP BY 1").fetchall())
        assert locks == 3, locks  # one liveness lock per node, none per tenant
        assert sorted(conns) == sorted(f"bsup:{n}:{r}" for n in "abc" for r in ("lock", "data"))
        assert all(v == 1 for v in conns.values()), conns
    finally:
        for n in nodes:
            await n.close(drain=False)
