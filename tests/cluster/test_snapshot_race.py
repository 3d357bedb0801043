"""A start answered 200 is never followed by a 404 for the same tenant on the same node: a snapshot refresh whose
query ran before the start committed must not drop the row the start wrote (found by test_partition_workers.py:
`POST start` 200, then `GET status` 404 unknown_tenant until the next refresh). Real PostgreSQL; the refresh is held
between its query and its assignment so the race is deterministic."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from supervisor.cluster_node import ClusterNode
from supervisor.daemon import Supervisor
from tests.support import fake_config, settings_of


class HeldConn:
    """The snapshot connection, with each query's result held until `go` is set (the query itself has run)."""

    def __init__(self, real) -> None:
        self.real, self.ran, self.go = real, asyncio.Event(), asyncio.Event()
        self.closed = self.broken = False

    async def execute(self, *args):
        cur = await self.real.execute(*args)
        self.ran.set()
        await self.go.wait()
        return cur


async def test_refresh_older_than_a_start_keeps_the_started_row(storage, fake_state, marker, cluster_settings):
    # no claim rounds and no polls during the test (claim_interval): nothing but the held refresh touches the snapshot
    settings = replace(settings_of(fake_config(storage, fake_state, marker)),
                       cluster=cluster_settings("n1", claim_interval=60.0))
    sup = Supervisor(settings)
    node = sup.cluster = ClusterNode(sup, settings)
    await node.start()
    real = node._conn
    try:
        node._conn = held = HeldConn(real)
        refresh = asyncio.create_task(node.refresh())
        await asyncio.wait_for(held.ran.wait(), 30)  # its query ran: it does not see s1
        started = await node.start_tenant("s1")
        assert started["state"] == "starting"
        held.go.set()
        await asyncio.wait_for(refresh, 30)
        st = node.status("s1", None)  # was: UnknownTenant (404) until the next refresh
        assert st["state"] == "starting" and st["wanted"] is True, st
        # a stop answered after an older query's snapshot: the stale row does not bring `wanted` back
        held.ran.clear()
        held.go.clear()
        refresh = asyncio.create_task(node.refresh())
        await asyncio.wait_for(held.ran.wait(), 30)  # its query sees s1 still wanted
        await node.stop_tenant("s1")
        held.go.set()
        await asyncio.wait_for(refresh, 30)
        st = node.status("s1", None)
        assert st["state"] == "stopped" and st["wanted"] is False, st
    finally:
        node._conn = real
        await node.close()
        await sup.shutdown()
