"""The fenced gate (supervisor/cluster_node.py, Tenant's `may_spawn`), in process with real fake-worker processes:
a worker that ends while the gate is closed is not restarted (the tenant rests in `stopped`, reason `not_owner`),
and a fenced node (its lock session killed on the server, the lock held by the test meanwhile) kills every worker,
spawns nothing while fenced, and resumes its tenants after re-claiming them with a bumped epoch."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace

import psycopg

from supervisor.cluster import schema
from supervisor.cluster_node import ClusterNode
from supervisor.daemon import Supervisor
from supervisor.states import TenantState
from tests.cluster.conftest import FAST
from tests.conftest import live_workers
from tests.support import fake_config, settings_of, wait_until

S = TenantState


class Gate:
    """The part of ClusterNode a Tenant sees: may_spawn(t)."""

    def __init__(self) -> None:
        self.owned: set[str] = set()

    def may_spawn(self, tid: str) -> bool:
        return tid in self.owned


async def test_worker_killed_while_gate_closed_is_not_restarted(storage, fake_state, marker):
    sup = Supervisor(settings_of(fake_config(storage, fake_state, marker)))
    gate = sup.cluster = Gate()
    try:
        gate.owned.add("g1")
        await sup.start_here("g1")
        tenant = sup.tenants["g1"]
        await wait_until(lambda: tenant.state is S.QR, what="qr")
        gate.owned.clear()
        os.killpg(tenant.worker.pid, signal.SIGKILL)
        await wait_until(lambda: not tenant.running, what="restart loop ended")
        assert (tenant.state, tenant.state_reason, tenant.spawns) == (S.STOPPED, "not_owner", 1)
        assert not live_workers(marker)
        gate.owned.add("g1")  # owned again (a re-claim's on_gain): starts as usual
        await sup.start_here("g1")
        await wait_until(lambda: tenant.state is S.QR, what="qr again")
        assert tenant.spawns == 2
        gate.owned.clear()  # a start refused by the gate spawns nothing
        await sup.stop_here("g1")
        await sup.start_here("g1")
        await wait_until(lambda: not tenant.running, what="gated start ended")
        assert tenant.spawns == 2 and tenant.state is S.STOPPED
    finally:
        await sup.shutdown()


async def test_fenced_node_kills_workers_spawns_nothing_then_resumes(storage, fake_state, marker, cluster_settings,
                                                                     pg_dsn):
    cs = cluster_settings("n1")
    settings = replace(settings_of(fake_config(storage, fake_state, marker)), cluster=cs)
    sup = Supervisor(settings)
    node = sup.cluster = ClusterNode(sup, settings)
    tids = ["f1", "f2", "f3"]
    await node.start()
    try:
        for t in tids:
            await sup.start_tenant(t)
        await wait_until(lambda: all(t in sup.tenants and sup.tenants[t].state is S.QR for t in tids), 60, what="qr")
        before = dict(live_workers(marker))
        assert sorted(before.values()) == tids
        epochs = dict(node.own.owned)
        lock_pid = node.own._lock_conn.info.backend_pid
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            # kill the node's lock session and take its lock ourselves: the node stays fenced until we let go
            c.execute("SELECT pg_terminate_backend(%s)", (lock_pid,))
            c.execute("SELECT pg_advisory_lock(%s, %s)", (schema.LOCK_NS, node.own.lock_key))
            await wait_until(lambda: not node.own.fence.valid(), 30, what="fenced")
            await wait_until(lambda: not live_workers(marker), 30, what="workers killed")
            # every restart loop has ended: no task is left that could spawn while fenced
            await wait_until(lambda: not any(sup.tenants[t].running for t in tids), 30, what="loops ended")
            assert all(sup.tenants[t].state_reason == "not_owner" for t in tids)
            assert not live_workers(marker) and all(sup.tenants[t].spawns == 1 for t in tids)
            c.execute("SELECT pg_advisory_unlock(%s, %s)", (schema.LOCK_NS, node.own.lock_key))
        await wait_until(lambda: all(sup.tenants[t].state is S.QR for t in tids), 60, what="resumed")
        assert {t: e for t, e in node.own.owned.items()} == {t: epochs[t] + 1 for t in tids}  # re-claimed, bumped
        after = live_workers(marker)
        assert sorted(after.values()) == tids and not set(after) & set(before)
        assert node.health()["fence_events"] == 1
    finally:
        await node.close()
        await sup.shutdown()
