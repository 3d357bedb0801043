"""Reading the cluster's state: the nodes with their liveness (is their lock held?) and tenant counts, for placement
and for `GET /cluster`."""

from __future__ import annotations

from typing import Any

from .placement import NodeView
from .schema import LOCK_NS

# A node is alive while its lock session holds its node lock (the one definition of liveness).
_ALIVE = """EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = %(ns)s
               AND l.objid = n.lock_key::oid AND l.objsubid = 2 AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"""
_NODES_SQL = f"""
SELECT n.node_id, n.lock_key, n.draining, n.max_tenants, n.advertise_url, {_ALIVE} AS alive,
       (SELECT count(*) FROM tenant_owner o WHERE o.owner = n.node_id) AS owned
FROM cluster_node n"""


async def read_nodes(conn: Any) -> list[NodeView]:
    cur = await conn.execute(_NODES_SQL, {"ns": LOCK_NS})
    return [NodeView(node_id=r[0], lock_key=r[1], draining=r[2], max_tenants=r[3], advertise_url=r[4],
                     alive=r[5], owned=r[6]) for r in await cur.fetchall()]


async def owners_now(conn: Any, tenants: list[str]) -> dict[str, tuple[str, int, str | None, bool]]:
    """The tenants' owners as the store holds them now: tenant -> (owner, epoch, its advertise_url, alive); a tenant
    nobody owns is left out. One query (a primary-key probe per tenant)."""
    cur = await conn.execute(f"SELECT o.tenant_id, o.owner, o.epoch, n.advertise_url, {_ALIVE} FROM tenant_owner o "
                             "JOIN cluster_node n ON n.node_id = o.owner WHERE o.tenant_id = ANY(%(t)s)",
                             {"ns": LOCK_NS, "t": tenants})
    return {r[0]: (r[1], r[2], r[3], bool(r[4])) for r in await cur.fetchall()}


async def cluster_view(conn: Any, me: str) -> dict[str, Any]:
    """Nodes (alive, draining, advertised URL, cap) with their tenants and epochs; wanted tenants nobody owns."""
    nodes = await read_nodes(conn)
    cur = await conn.execute("SELECT tenant_id, owner, epoch, wanted FROM tenant_owner ORDER BY 1")
    by_node: dict[str | None, dict[str, int]] = {}
    for t, owner, epoch, wanted in await cur.fetchall():
        if wanted or owner:
            by_node.setdefault(owner, {})[t] = epoch
    return {"node": me, "backend": "postgres", "nodes": [
        {"nodeId": n.node_id, "alive": n.alive, "draining": n.draining, "advertiseUrl": n.advertise_url,
         "maxTenants": n.max_tenants, "tenants": by_node.get(n.node_id, {})} for n in nodes],
        "unowned": sorted(by_node.get(None, {}))}
