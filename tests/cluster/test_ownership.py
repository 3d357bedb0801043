"""Ownership on a real PostgreSQL, several node objects in one loop (no worker): placement, exactly one owner,
fenced writes, stop/start intent, drain hand-off, a node's death (its lock session killed by the server)."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from supervisor.cluster.ownership import Fenced, PgOwnership
from supervisor.cluster.placement import ranking


async def wait_for(pred, timeout: float, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await pred():
            return True
        await asyncio.sleep(step)
    return False


def owners(dsn: str) -> dict[str, str | None]:
    with psycopg.connect(dsn) as c:
        return dict(c.execute("SELECT tenant_id, owner FROM tenant_owner").fetchall())


async def start_nodes(cluster_settings, names, **kw):
    nodes = [PgOwnership(cluster_settings(n, **kw)) for n in names]
    for n in nodes:
        await n.start()
    return nodes


async def test_three_nodes_one_owner_each(cluster_settings, pg_dsn):
    nodes = await start_nodes(cluster_settings, ["a", "b", "c"], max_tenants=60)
    try:
        tids = [f"t{i}" for i in range(90)]
        await nodes[0].want_many(tids[:45])
        for t in tids[45:]:
            await nodes[2].want(t)

        async def settled():
            return sum(len(n.owned) for n in nodes) == 90
        assert await wait_for(settled, 30)
        seen: dict[str, str] = {}
        for n in nodes:
            for t in n.owned:
                assert t not in seen, f"{t} owned by {seen[t]} and {n.node_id}"
                seen[t] = n.node_id
        assert owners(pg_dsn) == seen  # the store agrees with each node's view
        assert all(len(n.owned) <= 60 for n in nodes)
        assert min(len(n.owned) for n in nodes) > 0  # placement spreads (rendezvous + rebalance)
    finally:
        for n in nodes:
            await n.close(drain=False)


async def test_fenced_write_commits_only_at_current_epoch(cluster_settings, pg_dsn):
    a, b = await start_nodes(cluster_settings, ["a", "b"])
    try:
        await a.want("t1")
        assert await wait_for(lambda: _owned_any([a, b], "t1"), 20)
        owner = a if "t1" in a.owned else b
        other = b if owner is a else a
        epoch = owner.owned["t1"]
        await owner.write_kv("t1", {"creds.json": b"v1", "pre-key-1": b"k"})
        assert owner.health()["writes"] == 1 and owner.health()["write_seconds"] > 0  # the latency metric
        # a stale epoch, and a node that does not own the tenant, are refused by the store itself
        with pytest.raises(Fenced):
            await owner.write_kv("t1", {"creds.json": b"stale"}, epoch=epoch - 1)
        with pytest.raises(Fenced):
            await other.write_kv("t1", {"creds.json": b"intruder"}, epoch=epoch)
        with psycopg.connect(pg_dsn) as c:
            assert c.execute("SELECT v, epoch FROM tenant_kv WHERE k = 'creds.json'").fetchone() == (b"v1", epoch)
    finally:
        await a.close(drain=False)
        await b.close(drain=False)


async def _owned_any(nodes, t):
    return any(t in n.owned for n in nodes)


async def test_stop_from_any_node_and_drain_hands_off(cluster_settings, pg_dsn):
    lost: list[str] = []

    async def on_lose(t, e):
        lost.append(t)

    a = PgOwnership(cluster_settings("a"), on_lose=on_lose)
    await a.start()
    b = None
    try:
        await a.want_many(["t1", "t2", "t3"])
        assert await wait_for(lambda: _count(a, 3), 20)
        b, = await start_nodes(cluster_settings, ["b"])
        await b.want("t2", False)  # stop, asked on another node: the owner stops its worker, releases the row
        assert await wait_for(lambda: _count(a, 2), 20) and "t2" in lost
        assert await wait_for(lambda: _released(pg_dsn, "t2"), 10)  # after the worker stopped: the row
        await a.close(drain=True)  # SIGTERM: a hands its tenants to b at once, without waiting for a lease
        assert await wait_for(lambda: _count(b, 2), 20)
        with psycopg.connect(pg_dsn) as c:
            reasons = c.execute("SELECT tenant_id, owner, reason FROM tenant_epoch ORDER BY tenant_id, epoch").fetchall()
        assert ("t1", "b", "claim") in reasons and ("t3", "b", "claim") in reasons
    finally:
        await a.close(drain=False)
        if b:
            await b.close(drain=False)


async def _released(dsn, t):
    return owners(dsn)[t] is None


async def _count(n, k):
    return len(n.owned) == k


async def test_join_hands_off_without_two_live_workers(cluster_settings, pg_dsn):
    live: dict[str, str] = {}  # tenant -> node whose "worker" runs: a second start while one runs is a violation
    violations: list[str] = []

    def node(name):
        async def gain(t, e):
            if t in live:
                violations.append(f"{t}: {name} started while {live[t]} runs")
            live[t] = name

        async def lose(t, e):
            await asyncio.sleep(0.6)  # longer than a claim round: the hand-off must wait for the stop
            live.pop(t, None)
        return PgOwnership(cluster_settings(name, max_tenants=100), on_gain=gain, on_lose=lose)

    a = node("a")
    await a.start()
    b = None
    try:
        await a.want_many([f"t{i}" for i in range(40)])
        assert await wait_for(lambda: _count(a, 40), 20)
        b = node("b")
        await b.start()  # joins: a hands off the tenants whose first choice is b, a few per round
        prefer_b = [t for t in a.owned if ranking(t, ["a", "b"])[0] == "b"]
        assert 10 < len(prefer_b) <= 20  # (~half: fair share is 20)
        assert await wait_for(lambda: _count(b, len(prefer_b)), 60)
        assert await wait_for(lambda: _total_is([a, b], 40), 20)
        assert not violations, violations
        assert sorted(live) == sorted([*a.owned, *b.owned])
        view = await b.view()
        assert {n["nodeId"]: len(n["tenants"]) for n in view["nodes"]} == {"a": len(a.owned), "b": len(b.owned)}
        assert all(n["alive"] for n in view["nodes"]) and view["unowned"] == []
        h = a.health()
        assert not h["fenced"] and h["handoffs"] == len(prefer_b) and 0 < h["leaseRemaining"] <= 4.0
    finally:
        await a.close(drain=False)
        if b:
            await b.close(drain=False)


async def _total_is(nodes, k):
    return sum(len(n.owned) for n in nodes) == k


async def test_duplicate_node_id_is_refused(cluster_settings):
    from supervisor.cluster.ownership import NodeIdInUse

    a = PgOwnership(cluster_settings("same"))
    await a.start()
    try:
        twin = PgOwnership(cluster_settings("same"))
        t0 = time.monotonic()
        with pytest.raises(NodeIdInUse):
            await twin.start(acquire_timeout=1.0)
        assert time.monotonic() - t0 < 30
        assert a.fence.valid()  # the live one keeps its lock
    finally:
        await a.close(drain=False)


async def test_tenants_placed_on_a_stuck_node_are_claimed_by_another(cluster_settings):
    a, b = await start_nodes(cluster_settings, ["a", "b"])
    try:
        b._tasks[1].cancel()  # b keeps its lock (alive) but never claims: a hung claim loop
        tids = [f"t{i}" for i in range(20)]
        assert any(ranking(t, ["a", "b"])[0] == "b" for t in tids)
        await a.want_many(tids)
        # a takes its own share at once and b's after 5 claim rounds without a taker
        assert await wait_for(lambda: _count(a, 20), 30)
        assert b.owned == {}
    finally:
        await a.close(drain=False)
        await b.close(drain=False)


async def test_lost_data_connection_is_reopened_without_a_fence(cluster_settings, pg_dsn):
    a, = await start_nodes(cluster_settings, ["a"])
    try:
        await a.want("t1")
        assert await wait_for(lambda: _count(a, 1), 20)
        a._tasks[1].cancel()  # no claim round to notice it: the write path itself must reopen the connection
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bsup:a:data'")

        async def write_ok():
            try:
                await a.write_kv("t1", {"creds.json": b"x"})
                return True
            except psycopg.OperationalError:
                return False
        assert await wait_for(write_ok, 20)
        assert a.fence.valid() and a.health()["fence_events"] == 0 and "t1" in a.owned  # the lease was never at risk
    finally:
        await a.close(drain=False)
