"""The daemon side of cluster mode (docs/cluster.md "The daemon in cluster mode"): `ClusterNode` binds the
Supervisor to the ownership layer (supervisor/cluster/). Imported only when the config has a `cluster:` section, so
the single-host mode never imports psycopg.

- `on_gain(t)` schedules the tenant's local start; `on_lose(t)` stops it and waits (a hand-off or a stop from
  another node); `on_fence(reason)` SIGKILLs every worker and standby group synchronously, before any other task
  runs.
- The fenced gate: `may_spawn(t)` is true only while the lease is valid and this node owns `t` at some epoch. Every
  Tenant checks it before each spawn and after each worker's end, so a killed worker is not a crash to restart: the
  tenant rests in `stopped` (reason `not_owner`) until a new claim calls `on_gain` again.
- Operator intent lives in the store: start/stop from any node set `tenant_owner.wanted` (a started tenant stays
  started across node deaths); the owner acts on it. A request for another node's tenant is forwarded there by
  supervisor/api_forward.py (`forward_target`); one that cannot be (no advertiseUrl, already forwarded) and needs
  the live worker (restart, logout, pairing-code) answers 409 `not_owner` with `owner` and `advertiseUrl`.
- Any node answers status/list for any tenant from a snapshot of `tenant_owner` refreshed every `claim_interval`
  on a connection of its own (constant per node, like the lock and data connections).
- The worker lease: every worker and standby gets `lease {validUntil}` (the node's lease end, epoch ms) at each
  renewal, and its first one at spawn (supervisor/spawn_fence.py, which also makes it die with the daemon); it exits
  (code 3) when that passes without a newer one, so a SIGSTOPped daemon cannot keep a worker connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING, Any

from . import spawn_fence
from .cluster import make_ownership
from .cluster import pg
from .cluster.metrics import OwnershipCollector
from .cluster_state import StateStore
from .errors import SupervisorError, UnknownTenant
from .events import get_logger

if TYPE_CHECKING:
    from .daemon import Supervisor
    from .settings import Settings

log = get_logger()


class NotOwner(SupervisorError):
    """The command needs the tenant's live worker, which runs on another node (or on none right now)."""

    code = "not_owner"
    status = 409


class ClusterUnavailable(SupervisorError):
    """The daemon cannot join the cluster at start (database unreachable, schema newer than this code, node_id held
    by another live daemon): one clear line and a non-zero exit instead of a traceback."""

    code = "cluster_unavailable"
    status = 503


class ClusterNode:
    def __init__(self, sup: Supervisor, settings: Settings) -> None:
        assert settings.cluster is not None
        self.sup, self.cs = sup, settings.cluster
        self.own = make_ownership(settings, on_gain=self._gain, on_lose=self._lose, on_fence=self._fence)
        self.state = StateStore(self.own)  # the tenants' auth in the fenced store (Tenant's state_hooks)
        self.remote: dict[str, dict[str, Any]] = {}  # tenant -> {owner, epoch, wanted, advertiseUrl}
        self._wrote: dict[str, float] = {}  # tenant -> when this node's start/stop committed `wanted` (monotonic)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poll: asyncio.Task[None] | None = None
        self._conn: Any = None
        self.outbox: Any = None  # the OutboxDispatcher (outbox_dispatch.make_outbox): told of each gained tenant
        self.webhook: Any = None  # the WebhookForwarder (PgSpool) once made: delivers only the tenants we own

    # -- life ----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Migrate, take the node lock, claim in the background; then the boot tenants are wanted (not started here:
        placement decides where each one runs)."""
        # before the first claim can spawn anything: workers die with us and get their first lease at spawn
        spawn_fence.lease_source = self.own.fence.valid_until_ms
        self.own.fence.on_renew = self._send_leases
        try:
            await self.own.start()
        except Exception as exc:  # noqa: BLE001 - psycopg's, NodeIdInUse, SchemaError: never the DSN in the text
            spawn_fence.lease_source = None
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ClusterUnavailable(f"cannot join the cluster as node {self.cs.node_id!r}: "
                                     f"{type(exc).__name__}: {first}") from None
        self.sup.metrics.registry.register(OwnershipCollector(self.own))
        boot = list(self.sup.settings.tenants.boot)
        if boot:
            await self.own.want_many(boot)
        await self.refresh()
        self._poll = asyncio.create_task(self._poll_loop(), name="cluster-snapshot")

    async def close(self) -> None:
        """SIGTERM: hand every tenant off (each worker stopped before its row is released), then let go."""
        if self._poll is not None:
            self._poll.cancel()
            await asyncio.gather(self._poll, return_exceptions=True)
        await self.own.close(drain=True)
        await self.state.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self.own.fence.on_renew = None
        spawn_fence.lease_source = None

    # -- ownership callbacks -------------------------------------------------------------------------------------
    def may_spawn(self, tid: str) -> bool:
        return self.own.fence.valid() and tid in self.own.owned

    def epoch_now(self, tid: str) -> int | None:
        """Our epoch for `tid` while we own it with a valid lease (the webhook spool's fenced puts; any thread)."""
        return self.own.owned.get(tid) if self.own.fence.valid() else None

    async def _gain(self, tid: str, epoch: int) -> None:
        self.sup.events.gained(tid)  # resumes from before now miss what it did elsewhere: a reset (eventbus.py)
        if self.outbox is not None:  # the old owner's queued messages are ours to send now
            self.outbox.gained(tid)
        task = asyncio.create_task(self._start_here(tid), name=f"gain:{tid}")  # on_gain only schedules
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self.webhook is not None:
            self.webhook.resume(tid)  # leftover items, e.g. of a dead owner (before it exists: its start() does)

    async def _start_here(self, tid: str) -> None:
        try:
            await self.sup.start_here(tid)
        except Exception as exc:  # noqa: BLE001 - one tenant's failure is its own, logged like a boot failure
            log.error("cluster.start_failed", tenant=tid, error=getattr(exc, "code", type(exc).__name__),
                      message=str(exc)[:300])

    async def _lose(self, tid: str, epoch: int) -> None:
        if self.webhook is not None:
            await self.webhook.pause(tid)
        if tid in self.sup.tenants:
            await self.sup.stop_here(tid, "not_owner")

    def _fence(self, reason: str) -> None:
        """Synchronous: SIGKILL every worker and standby group now. The tenants' loops then see the closed gate."""
        killed = 0
        for tenant in self.sup.tenants.values():
            for w in (tenant.worker, tenant.standby.current.worker if tenant.standby.current else None):
                if w is not None and w.alive:
                    w._signal_group(signal.SIGKILL)
                    killed += 1
        log.warning("cluster.workers_killed", reason=reason, workers=killed)

    def _send_leases(self) -> None:
        """At each renewal (synchronous, from the ping task): the new lease end to every live worker and standby.
        A pipe write each; a worker that is going away is skipped."""
        until = self.own.fence.valid_until_ms()
        for tenant in self.sup.tenants.values():
            for w in (tenant.worker, tenant.standby.current.worker if tenant.standby.current else None):
                if w is not None and w.alive:
                    with contextlib.suppress(Exception):  # NotRunning, a closing pipe: it is ending anyway
                        w.notify("lease", validUntil=until)

    # -- operations (Supervisor delegates here in cluster mode) -------------------------------------------------
    async def start_tenant(self, tid: str) -> dict[str, Any]:
        """Record the intent in the store; start at once if we own it, else answer with the owner (if any yet)."""
        await self.own.want(tid, True)
        self._wrote[tid] = time.monotonic()
        if tid in self.own.owned:
            return await self.sup.start_here(tid)
        row = self.remote.setdefault(tid, {"owner": None, "epoch": 0, "advertiseUrl": None})
        row["wanted"] = True
        return self.remote_status(tid)

    async def stop_tenant(self, tid: str) -> dict[str, Any]:
        """Not wanted any more, from any node; the owner stops it in its next round (here: at once)."""
        known = tid in self.sup.tenants or tid in self.remote
        if not known:
            raise UnknownTenant(f"unknown tenant {tid}", tenant=tid)
        await self.own.want(tid, False)
        self._wrote[tid] = time.monotonic()
        if tid in self.remote:
            self.remote[tid]["wanted"] = False
        if tid in self.sup.tenants:
            return {**await self.sup.stop_here(tid, "stop"), **self._owner_fields(tid)}
        return self.remote_status(tid)

    def require_owner(self, tid: str) -> None:
        if tid not in self.own.owned:
            row = self.remote.get(tid, {})
            raise NotOwner(f"tenant {tid} is owned by another node: send this to its advertiseUrl", tenant=tid,
                           owner=row.get("owner"), advertiseUrl=row.get("advertiseUrl"))

    def status(self, tid: str, local: dict[str, Any] | None) -> dict[str, Any]:
        """Ours: the live status plus owner and epoch; someone else's (or nobody's yet): from the snapshot."""
        if tid in self.own.owned and local is not None:
            return {**local, **self._owner_fields(tid)}
        if tid in self.remote:
            return self.remote_status(tid)
        if local is not None:
            return {**local, **self._owner_fields(tid)}
        raise UnknownTenant(f"unknown tenant {tid}", tenant=tid)

    def remote_status(self, tid: str) -> dict[str, Any]:
        row = self.remote.get(tid, {})
        # remote: runs on `owner`; stopping: not wanted, its owner has not released it yet; starting: wanted, no
        # owner yet; stopped: neither
        if row.get("owner"):
            state = "remote" if row.get("wanted") else "stopping"
        else:
            state = "starting" if row.get("wanted") else "stopped"
        return {"tenant": tid, "state": state, "connected": None, **self._owner_fields(tid)}

    def _owner_fields(self, tid: str) -> dict[str, Any]:
        if tid in self.own.owned:
            return {"owner": self.own.node_id, "epoch": self.own.owned[tid], "wanted": True,
                    "advertiseUrl": self.cs.advertise_url}
        row = self.remote.get(tid, {})
        return {"owner": row.get("owner"), "epoch": row.get("epoch"), "wanted": row.get("wanted"),
                "advertiseUrl": row.get("advertiseUrl")}

    def forward_target(self, tid: str) -> tuple[str, str | None] | None:
        """(owner, its advertiseUrl) when another node owns `tid` in the snapshot; None when we own it or nobody does
        (supervisor/api_forward.py then answers locally)."""
        if tid in self.own.owned:
            return None
        row = self.remote.get(tid)
        if not row or not row.get("owner") or row["owner"] == self.own.node_id:
            return None
        return row["owner"], row.get("advertiseUrl")

    def tenant_ids(self) -> set[str]:
        return set(self.remote) | set(self.own.owned)

    async def view(self) -> dict[str, Any]:
        return await self.own.view()

    def health(self) -> dict[str, Any]:
        return self.own.health()

    # -- the shared snapshot -------------------------------------------------------------------------------------
    async def refresh(self) -> None:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await pg.connect(self.cs, "read")
        began = time.monotonic()
        cur = await self._conn.execute(
            "SELECT t.tenant_id, t.owner, t.epoch, t.wanted, n.advertise_url FROM tenant_owner t "
            "LEFT JOIN cluster_node n ON n.node_id = t.owner")
        fresh = {r[0]: {"owner": r[1], "epoch": r[2], "wanted": r[3], "advertiseUrl": r[4]}
                 for r in await cur.fetchall()}
        # A start/stop that committed after this query began may be missing from its snapshot: keep what it wrote
        # (else a 200 start is followed by a 404 status, or a stop by `wanted` again, until the next refresh).
        for t, at in list(self._wrote.items()):
            if at < began:  # committed before the query: the snapshot has it
                del self._wrote[t]
            elif t in self.remote:
                fresh[t] = {**fresh.get(t, self.remote[t]), "wanted": self.remote[t]["wanted"]}
        self.remote = fresh

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cs.claim_interval)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - server away: keep the last snapshot, retry next round
                log.warning("cluster.snapshot_failed", error=type(exc).__name__)
                self._conn = None
