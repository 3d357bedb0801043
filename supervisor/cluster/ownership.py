"""Tenant ownership in PostgreSQL: one liveness lock per NODE, one owner row per tenant with an epoch.

- A node is alive while its lock session holds `pg_advisory_lock(LOCK_NS, lock_key)`; server locks and connections
  per node are constant (2 connections: `lock` for the lease, `data` for claims and fenced writes).
- Every claim bumps the tenant's epoch (and records it in `tenant_epoch`) in one transaction that first checks that
  our own lock session still holds our node lock. Taking over a dead node's tenants also takes that node's lock for
  the transaction (`pg_try_advisory_xact_lock`), so a node coming back cannot re-acquire its lock mid-takeover.
- A write for a tenant commits only if `SELECT ... FOR SHARE` finds our owner row at our epoch in the same
  transaction (`fenced()`): a bump and a write serialise on that row lock, so nothing commits outside its epoch.
- The lease (fence.py) is kept by pinging the lock session; when it lapses the node kills its workers at once
  (`on_fence`), forgets its tenants, drops both connections and re-acquires; its rows are then re-claimed with a bump.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..events import get_logger
from ..settings import ClusterSettings
from . import pg, schema
from .fence import Fence, keep_alive
from .placement import NodeView, place, surplus
from .views import cluster_view, owners_now, read_nodes
from .store import Fenced, fenced_tx, put_kv

__all__ = ["PgOwnership", "Fenced", "NodeIdInUse", "fenced_tx"]

log = get_logger()
Callback = Callable[[str, int], Awaitable[None]]
# tenant_epoch rows kept per tenant (the newest epochs): history for operators and the tests' stale-commit checks.
# Fencing never reads them (fenced_tx checks tenant_owner, whose epoch only grows), so older rows can go.
EPOCH_HISTORY = 50

class NodeIdInUse(RuntimeError):
    pass


async def _noop(tid: str, epoch: int) -> None:
    return None


class PgOwnership:
    def __init__(self, cs: ClusterSettings, *, on_gain: Callback = _noop, on_lose: Callback = _noop,
                 on_fence: Callable[[str], None] = lambda reason: None) -> None:
        self.cs, self.node_id = cs, cs.node_id
        # on_gain(t, epoch): schedule its worker's start (quick: called once per tenant of a batch). on_lose(t, epoch): stop it and wait (awaited before a release).
        # on_fence(reason): synchronous, kill every worker NOW (SIGKILL), before anything else runs.
        self.on_gain, self.on_lose, self.on_fence = on_gain, on_lose, on_fence
        self.fence = Fence(cs.fence_after)
        self.owned: dict[str, int] = {}
        self.lock_key = 0
        self.stats: dict[str, float] = {"epoch_bumps": 0, "fence_events": 0, "claims": 0, "lost": 0, "handoffs": 0,
                                        "writes": 0, "write_seconds": 0.0}
        self._lock_conn: Any = None
        self._data: Any = None
        self._dlock = asyncio.Lock()  # one transaction at a time on the data connection
        self._draining = False
        self._tasks: list[asyncio.Task] = []
        self._waiting: dict[str, float] = {}  # unowned tenant -> first seen: any node claims it after a while
        self._wake = asyncio.Event()  # nudge(): the next claim round now, not after claim_interval
        self.rounds = 0  # claim rounds finished (waiters on a nudge count them)

    # -- life ----------------------------------------------------------------------------------------------------
    async def start(self, acquire_timeout: float | None = None) -> None:
        """Migrate, register, take the node lock (waits while a previous incarnation's session still holds it, at
        most `acquire_timeout`, default 3 x release_after: then another live daemon has this node_id), then claim
        in the background."""
        try:
            await self._start(acquire_timeout if acquire_timeout is not None else 3 * self.cs.release_after)
        except BaseException:
            await self._drop(("_lock_conn", "_data"))
            raise

    async def _start(self, acquire_timeout: float) -> None:
        self._data = await pg.connect(self.cs, "data")
        await schema.upgrade(self._data)
        async with self._data.cursor() as cur:
            await cur.execute(
                "INSERT INTO cluster_node (node_id, advertise_url, max_tenants) VALUES (%s, %s, %s) "
                "ON CONFLICT (node_id) DO UPDATE SET advertise_url = EXCLUDED.advertise_url, "
                "max_tenants = EXCLUDED.max_tenants, draining = false RETURNING lock_key",
                (self.node_id, self.cs.advertise_url, self.cs.max_tenants))
            self.lock_key = (await cur.fetchone())[0]
        try:
            await asyncio.wait_for(self._acquire(), acquire_timeout)
        except asyncio.TimeoutError:
            raise NodeIdInUse(f"cluster: node_id {self.node_id!r} is held by another live daemon") from None
        self._tasks = [asyncio.create_task(self._lease_loop()), asyncio.create_task(self._claim_loop())]

    async def _acquire(self) -> None:
        busy = False
        while True:
            try:
                if self._lock_conn is None:
                    self._lock_conn = await pg.connect(self.cs, "lock")
                sent = self.fence.clock()
                cur = await self._lock_conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                                    (schema.LOCK_NS, self.lock_key))
                if (await cur.fetchone())[0]:
                    self.fence.reset(sent)
                    log.info("cluster.lock_acquired", node=self.node_id)
                    return
                if not busy:  # a previous incarnation's session the server has not dropped yet, or a duplicate node_id
                    busy = True
                    log.warning("cluster.node_lock_busy", node=self.node_id)
            except Exception as exc:  # noqa: BLE001 - server down or restarting: retry until it is back
                log.warning("cluster.lock_retry", node=self.node_id, error=type(exc).__name__)
                await self._drop(("_lock_conn",))
            await asyncio.sleep(self.cs.ping_interval)

    async def _lease_loop(self) -> None:
        while True:
            conn = self._lock_conn
            await keep_alive(self.fence, lambda: conn.execute("SELECT 1"), self.cs.ping_interval, self._lapsed)
            await self._drop(("_lock_conn", "_data"))  # closing the lock session is what releases the node lock
            await self._acquire()

    def _lapsed(self, reason: str) -> None:
        """Synchronous on purpose: the workers die before any other task of this loop can run."""
        self.fence.trip()
        self.stats["fence_events"] += 1
        lost, self.owned = self.owned, {}
        log.warning("cluster.fenced", node=self.node_id, reason=reason, tenants=len(lost))
        self.on_fence(reason)

    async def _drop(self, names: tuple[str, ...]) -> None:
        for name in names:
            conn, _ = getattr(self, name), setattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=1.0)

    async def close(self, *, drain: bool = True) -> None:
        """Drain (SIGTERM): stop placing here, stop each worker (`on_lose`), release its row so another node claims
        it at once. drain=False just drops the connections (the server releases the lock; others take over)."""
        if drain and self.fence.valid():
            self._draining = True
            with contextlib.suppress(Exception):
                async with self._dlock:
                    await self._data.execute("UPDATE cluster_node SET draining = true WHERE node_id = %s",
                                             (self.node_id,))
                await self.release(list(self.owned), reason="drain")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drop(("_lock_conn", "_data"))

    # -- operator intent -----------------------------------------------------------------------------------------
    async def want(self, tid: str, wanted: bool = True) -> None:
        """start (wanted) / stop (not wanted), from any node: the owner acts on it in its next round."""
        async with self._dlock, self._tx() as cur:
            await cur.execute("INSERT INTO tenant_owner (tenant_id, wanted) VALUES (%s, %s) ON CONFLICT (tenant_id) "
                              "DO UPDATE SET wanted = EXCLUDED.wanted, updated_at = now()", (tid, wanted))

    async def want_many(self, tids: list[str]) -> None:
        async with self._dlock, self._tx() as cur:
            await cur.execute("INSERT INTO tenant_owner (tenant_id) SELECT unnest(%s::text[]) ON CONFLICT (tenant_id) "
                              "DO UPDATE SET wanted = true, updated_at = now()", (tids,))

    async def release(self, tids: list[str], reason: str = "release") -> None:
        """Stop the workers (awaited), then give the rows up without a bump (the next claimer bumps)."""
        if not tids:
            return
        await asyncio.gather(*(self.on_lose(t, self.owned[t]) for t in tids if t in self.owned))
        for t in tids:
            self.owned.pop(t, None)
        async with self._dlock, self._tx() as cur:
            await cur.execute("UPDATE tenant_owner SET owner = NULL, updated_at = now() "
                              "WHERE owner = %s AND tenant_id = ANY(%s)", (self.node_id, tids))
        log.info("cluster.released", node=self.node_id, tenants=len(tids), reason=reason)

    # -- claiming ------------------------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while True:
            full = False
            self._wake.clear()  # a nudge from here on gets a round of its own (this one may have read the nodes)
            try:
                full = len(await self.claim_round()) >= self.cs.claim_batch  # more waiting: next batch at once
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round retries on a fresh connection
                log.warning("cluster.claim_failed", node=self.node_id, error=f"{type(exc).__name__}: {exc}"[:200])
                await self._drop(("_data",))
            self.rounds += 1
            if not full:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.cs.claim_interval)

    def nudge(self) -> None:
        """Run the next claim round now (a request found a tenant's owner dead: supervisor/api_forward.py). Only
        earlier, never different: the round places and takes over exactly as a timed one would."""
        self._wake.set()

    async def owners_now(self, tids: list[str]) -> dict[str, tuple[str, int, str | None, bool]]:
        """The tenants' owners in the store now (views.owners_now), not the snapshot."""
        async with self._dlock, self._tx() as cur:
            return await owners_now(cur, tids)

    async def claim_round(self) -> list[str]:
        """One round: notice lost/stopped tenants, hand off surplus, claim what placement gives us. Returns the
        tenants gained."""
        if not self.fence.valid() or self._lock_conn is None:
            return []
        await self._data_conn()
        async with self._dlock:
            nodes = await self._nodes()
            cur = await self._data.execute("SELECT tenant_id, epoch, wanted FROM tenant_owner WHERE owner = %s",
                                           (self.node_id,))
            rows = await cur.fetchall()
            dead = [n.node_id for n in nodes if not n.alive]
            cur = await self._data.execute(
                "SELECT tenant_id FROM tenant_owner WHERE wanted AND (owner IS NULL OR owner = ANY(%s))", (dead,))
            free = [r[0] for r in await cur.fetchall()]
        mine = {t: (e, w) for t, e, w in rows}
        for t in [t for t, e in self.owned.items() if mine.get(t, (None,))[0] != e]:
            epoch = self.owned.pop(t)
            self.stats["lost"] += 1
            log.warning("cluster.tenant_lost", node=self.node_id, tenant=t)
            await self.on_lose(t, epoch)
        await self.release([t for t, (e, w) in mine.items() if not w], reason="stopped")
        if not self.fence.valid():
            return []
        # rows that say we own them but we do not (after a fence or a restart): re-claimed with a bump
        free += [t for t, (e, w) in mine.items() if w and t not in self.owned]
        total = sum(n.owned for n in nodes) + len(free)
        if not self._draining:
            handoff = surplus(self.node_id, list(self.owned), nodes, total, max(1, self.cs.max_tenants // 50))
            if handoff:
                self.stats["handoffs"] += len(handoff)
                await self.release(handoff, reason="rebalance")
        if self._draining or not free:
            return []
        now = time.monotonic()
        self._waiting = {t: self._waiting.get(t, now) for t in free}
        placed = place([t for t in free if t not in mine], nodes)
        room = self.cs.max_tenants - len(self.owned)
        # our own rows first; then what placement gives us; then anything nobody took for 5 rounds (placed on a
        # node that holds its lock but does not claim: a hung loop must not strand tenants)
        stale = now - 5 * self.cs.claim_interval
        pick = [t for t in free if t in mine] + [t for t, n in placed.items() if n == self.node_id]
        pick += [t for t in free if t not in mine and self._waiting[t] < stale]
        pick = list(dict.fromkeys(pick))[:max(0, min(room, self.cs.claim_batch))]
        return await self._claim(pick, dead) if pick else []

    async def _nodes(self) -> list[NodeView]:
        return await read_nodes(self._data)

    async def _claim(self, ids: list[str], dead: list[str]) -> list[str]:
        async with self._dlock, self._tx() as cur:
            await cur.execute(schema.OWN_LOCK_SQL, (schema.LOCK_NS, self.lock_key, self._lock_conn.info.backend_pid))
            if await cur.fetchone() is None:
                return []  # our lock session is gone: the lease loop fences us
            taken = []
            if dead:
                # OFFSET 0 keeps the planner from trying the lock on rows before the node_id filter
                await cur.execute("SELECT node_id FROM (SELECT node_id, lock_key FROM cluster_node "
                                  "WHERE node_id = ANY(%s) OFFSET 0) d WHERE pg_try_advisory_xact_lock(%s, lock_key)",
                                  (dead, schema.LOCK_NS))
                taken = [r[0] for r in await cur.fetchall()]
            await cur.execute(schema.CLAIM_SQL, {"me": self.node_id, "ids": ids, "from": [*taken, self.node_id]})
            got = {t: e for t, e in await cur.fetchall()}
            if got:  # prune the claimed tenants' history in the same transaction (PK index range per tenant)
                await cur.execute("DELETE FROM tenant_epoch e USING tenant_owner o WHERE o.tenant_id = e.tenant_id"
                                  " AND e.tenant_id = ANY(%s) AND e.epoch <= o.epoch - %s", (list(got), EPOCH_HISTORY))
        if not got or not self.fence.valid():
            return []  # committed but fenced meanwhile: the rows are ours and get re-claimed after re-acquisition
        self.owned.update(got)
        self.stats["epoch_bumps"] += len(got)
        self.stats["claims"] += 1
        for t in got:
            self._waiting.pop(t, None)
        log.info("cluster.claimed", node=self.node_id, tenants=len(got))
        for t, e in got.items():  # on_gain only schedules a start; the lease is re-checked before each one
            if not self.fence.valid():
                break  # e.g. SIGSTOPped mid-batch: the watchdog fences us next, nothing more may start
            await self.on_gain(t, e)
        return list(got)

    # -- fenced writes -------------------------------------------------------------------------------------------
    async def _data_conn(self) -> Any:
        """The data connection, reopened if it is gone or broken (a server restart)."""
        if self._data is None or self._data.closed or self._data.broken:
            self._data = await pg.connect(self.cs, "data")
        return self._data

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Any]:
        conn = await self._data_conn()
        async with conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextlib.asynccontextmanager
    async def fenced(self, tid: str, epoch: int | None = None) -> AsyncIterator[Any]:
        """A transaction that commits only if we own `tid` at `epoch` (default: our current one). Raises Fenced."""
        epoch = self.owned.get(tid) if epoch is None else epoch
        if epoch is None or not self.fence.valid():
            raise Fenced(tid)
        async with self._dlock:
            async with fenced_tx(await self._data_conn(), tid, self.node_id, epoch) as cur:
                yield cur

    async def write_kv(self, tid: str, items: dict[str, bytes | None], epoch: int | None = None) -> None:
        """Several keys of a tenant's state (creds, Signal keys) in one fenced transaction; None deletes."""
        t0 = time.perf_counter()
        async with self.fenced(tid, epoch) as cur:
            await put_kv(cur, tid, self.owned.get(tid) if epoch is None else epoch, items)
        self.stats["writes"] += 1
        self.stats["write_seconds"] += time.perf_counter() - t0

    def health(self) -> dict[str, Any]:
        """For /health and metrics: is the lease valid, how long is left, what this node did so far."""
        return {"backend": "postgres", "node": self.node_id, "fenced": not self.fence.valid(),
                "leaseRemaining": round(max(0.0, self.fence.remaining()), 3), "owned": len(self.owned),
                "draining": self._draining, **self.stats}

    async def view(self) -> dict[str, Any]:
        """GET /cluster: the nodes, whether alive, and each one's tenants with their epochs."""
        async with self._dlock, self._tx():
            return await cluster_view(self._data, self.node_id)
