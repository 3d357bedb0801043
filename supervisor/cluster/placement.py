"""Where a tenant should live: rendezvous (highest random weight) hashing over the live, non-draining nodes, with a
per-node cap. Pure functions, so every node computes the same answer from the same view without talking to the
others; a node then claims only the tenants placed on itself (docs/cluster.md "Placement")."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeView:
    node_id: str
    lock_key: int
    alive: bool  # its liveness lock is held
    draining: bool
    max_tenants: int
    owned: int  # tenants it owns now
    advertise_url: str | None = None


def weight(node_id: str, tenant_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{node_id}\x00{tenant_id}".encode(), digest_size=8).digest(), "big")


def ranking(tenant_id: str, node_ids: list[str]) -> list[str]:
    """Nodes in preference order for this tenant (stable: adding a node moves only the tenants it now wins)."""
    return sorted(node_ids, key=lambda n: (-weight(n, tenant_id), n))


def place(tenants: list[str], nodes: list[NodeView]) -> dict[str, str]:
    """tenant -> node for unowned tenants: the highest-ranked live, non-draining node that still has room, counting
    the tenants placed so far in this call. Tenants that fit nowhere are left out (they wait for room)."""
    room = {n.node_id: n.max_tenants - n.owned for n in nodes if n.alive and not n.draining}
    ids = list(room)
    out: dict[str, str] = {}
    for t in sorted(tenants):
        for n in ranking(t, ids):
            if room[n] > 0:
                room[n] -= 1
                out[t] = n
                break
    return out


def surplus(me: str, mine: list[str], nodes: list[NodeView], total: int, limit: int) -> list[str]:
    """Tenants this node should hand off so a node that joined gets its share: only while `me` holds more than a fair
    share (ceil(total / live nodes)), only tenants whose first choice is another live node with room, `limit` at a
    time so hand-offs trickle instead of storming."""
    live = [n for n in nodes if n.alive and not n.draining]
    if len(live) < 2 or limit <= 0:
        return []
    fair = -(-total // len(live))
    excess = len(mine) - fair
    if excess <= 0:
        return []
    room = {n.node_id: n.max_tenants - n.owned for n in live if n.node_id != me}
    ids = [n.node_id for n in live]
    out: list[str] = []
    for t in sorted(mine):
        first = ranking(t, ids)[0]
        if first != me and room.get(first, 0) > 0:
            room[first] -= 1
            out.append(t)
            if len(out) >= min(excess, limit):
                break
    return out
