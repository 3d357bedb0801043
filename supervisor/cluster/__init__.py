"""Tenant ownership backends (docs/cluster.md). The daemon uses one object with this interface:

    own = make_ownership(settings, on_gain=..., on_lose=..., on_fence=...)
    await own.start()                     # postgres: migrate, register, take the node lock, claim in the background
    await own.want(tid) / want(tid, False) # start / stop a tenant from any node; the owner acts on it
    own.owned                             # {tenant: epoch} this node owns now
    own.fence.valid(), own.fence.valid_until()   # the lease; valid_until (epoch s) goes to workers
    async with own.fenced(tid) as cur: ...      # a transaction that commits only at our epoch (Fenced otherwise)
    await own.view()                      # GET /cluster
    own.health()                          # lease state and counters (epoch_bumps, fence_events, lost, handoffs)
    await own.close(drain=True)           # SIGTERM: stop workers, hand tenants off

`cluster` absent from the config = `LocalOwnership`: today's single-host mode (flock in supervisor/locks.py does the
real work), nothing imported from psycopg. `backend: postgres` = `ownership.PgOwnership`, imported only then.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..settings import Settings


class _AlwaysValid:
    """The single host needs no lease: the flock is released by the kernel when its holder dies."""

    trips = 0
    tripped = False

    def valid(self) -> bool:
        return True

    def valid_until(self) -> float:
        return math.inf


class LocalOwnership:
    """Single host: this daemon owns every tenant it starts (the flock decides, supervisor/locks.py); epoch 0."""

    backend = "local"

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self.owned: dict[str, int] = {}
        self.fence = _AlwaysValid()

    async def start(self) -> None:
        return None

    async def close(self, *, drain: bool = True) -> None:
        return None

    async def want(self, tid: str, wanted: bool = True) -> None:
        if wanted:
            self.owned[tid] = 0
        else:
            self.owned.pop(tid, None)

    @contextlib.asynccontextmanager
    async def fenced(self, tid: str, epoch: int | None = None) -> AsyncIterator[None]:
        yield None

    def health(self) -> dict[str, Any]:
        return {"backend": "local", "node": self.node_id, "fenced": False, "owned": len(self.owned)}

    async def view(self) -> dict[str, Any]:
        return {"node": self.node_id, "backend": "local",
                "nodes": [{"nodeId": self.node_id, "alive": True, "draining": False, "tenants": dict(self.owned)}]}


def make_ownership(settings: Settings, *, on_gain: Callable[[str, int], Awaitable[None]] | None = None,
                   on_lose: Callable[[str, int], Awaitable[None]] | None = None,
                   on_fence: Callable[[str], None] | None = None) -> Any:
    cs = settings.cluster
    if cs is None:
        return LocalOwnership()
    from .ownership import PgOwnership  # psycopg is imported here and only here

    kw: dict[str, Any] = {}
    if on_gain is not None:
        kw["on_gain"] = on_gain
    if on_lose is not None:
        kw["on_lose"] = on_lose
    if on_fence is not None:
        kw["on_fence"] = on_fence
    return PgOwnership(cs, **kw)
