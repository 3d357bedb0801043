"""`Supervisor`: tenant registry, single-flight start, boot, shutdown (the daemon's process, signals and API are
supervisor/runner.py's)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from operator import attrgetter
from typing import Any

import structlog

from supervisor.capacity import ProcessBudget
from supervisor.errors import ShuttingDown, StorageError, TenantLinked, TooManyTenants, UnknownTenant
from supervisor.eventbus import EventBus
from supervisor.forget import forget_in_store, is_linked, remove_tenant_files
from supervisor.ids import is_tenant_id, validate_tenant_id
from supervisor.metrics import Metrics
from supervisor.observer import Observers, TenantObserver
from supervisor.settings import Settings
from supervisor.slots import SpawnSlots
from supervisor.states import ACTIVE_STATES, TenantState
from supervisor.tenant import Tenant

log = structlog.get_logger("supervisor.daemon")
MessageHook = Callable[[str, dict[str, Any]], None]
_STATE = attrgetter("state")


class _SupervisorHooks(TenantObserver):
    """Tenant events -> the live event bus (SSE), notify's STATUS= wake-up, the clock check and the webhook."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def on_state(self, tenant: str, old: TenantState, new: TenantState, reason: str | None) -> None:
        self.sup.events.publish(tenant, "state", {"from": old.value, "state": new.value, "reason": reason})
        self.sup.state_changed.set()

    def on_qr(self, tenant: str, qr: str) -> None:
        self.sup.events.publish(tenant, "qr", {"qr": qr})

    def on_open(self, tenant: str, server_time: Any, received_at: float) -> None:
        self.sup.server_clock[tenant] = {"serverTime": server_time, "receivedAt": received_at}

    def on_message(self, tenant: str, payload: dict[str, Any]) -> None:
        if self.sup.on_message is not None:  # set by the runner when webhook forwarding is on; it acks after spooling
            self.sup.on_message(tenant, payload)
        elif payload.get("type") == "message" and isinstance(payload.get("ref"), str):
            # No webhook: nothing to store, so the worker's journal need not keep it (docs/webhook.md).
            self.sup.worker_command(tenant, "ack", refs=[payload["ref"]])


class Supervisor:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random, on_message: MessageHook | None = None) -> None:
        self.settings = settings
        self.clock, self._sleep, self._rand = clock, sleep, rand
        self.on_message = on_message  # set before tenants start to forward `message` events (webhook)
        self.tenants: dict[str, Tenant] = {}
        self.shutting_down = False
        self.started_at = clock()
        self.spawn_slots = SpawnSlots(settings.worker.max_concurrent_spawns)  # a reload resizes it
        # tenant -> [its operations' lock, how many hold or wait for it]: dropped when unused by a tenant that is not
        # (or no longer) known, so refused and forgotten ids leave nothing behind.
        self._op_locks: dict[str, list[Any]] = {}
        self.budget = ProcessBudget(lambda: self.settings.limits)  # read live: a reload applies new limits at once
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self.metrics = Metrics()  # GET /metrics (prometheus-client is a hard dependency)
        self.metrics.watch_spawn_slots(self.spawn_slots)
        self.metrics.watch_capacity(self.budget, lambda: len(self.tenants), lambda: self.settings.limits)
        self.events = EventBus()  # live state/QR events for GET /events (SSE)
        self.state_changed = asyncio.Event()  # set on every transition; the notify STATUS= task clears it
        self.server_clock: dict[str, dict[str, Any]] = {}  # tenant -> the last `open` event's serverTime
        # What every tenant reports to: metrics, then the live events / notify / clock / webhook glue below.
        self.observers = Observers(self.metrics, _SupervisorHooks(self))
        self.cluster: Any = None  # cluster mode: a ClusterNode (supervisor/cluster_node.py), set by the runner

    def _state_hooks(self) -> Any:
        """Cluster mode: the fenced auth state (supervisor/cluster_state.py); None on a single host."""
        return getattr(self.cluster, "state", None)  # a test's stand-in gate may have none

    def _may_spawn(self, tid: str) -> bool:
        """The fenced gate: in cluster mode a worker may only be spawned for a tenant owned under a valid lease."""
        return self.cluster is None or self.cluster.may_spawn(tid)

    @property
    def root(self):
        return self.settings.storage.root / "whatsapp"

    def _tenant(self, tid: str, *, create: bool) -> Tenant:
        tid = validate_tenant_id(tid)
        tenant = self.tenants.get(tid)
        if tenant is None:
            on_disk = (self.root / tid / "auth").is_dir()  # known even before a start
            if not create and not on_disk:
                raise UnknownTenant(f"unknown tenant {tid}", tenant=tid)
            if not on_disk:
                self._admit(tid)
            tenant = Tenant(tid, self.settings, spawn_slots=self.spawn_slots, clock=self.clock, sleep=self._sleep,
                            rand=self._rand, observer=self.observers, budget=self.budget, may_spawn=self._may_spawn,
                            state_hooks=self._state_hooks)
            self.tenants[tid] = tenant
        return tenant

    def _admit(self, tid: str) -> None:
        """TooManyTenants (429) when a new id would exceed `limits.max_tenants`. Tenants with auth on disk count,
        so they are loaded first; but only below the limit: once it is reached, a flood of new ids is refused
        without a directory scan each."""
        limit = self.settings.limits.max_tenants
        if len(self.tenants) < limit:
            self._load_disk_tenants()
        if len(self.tenants) >= limit:
            raise TooManyTenants(f"{len(self.tenants)} known tenants, the limit is {limit} (limits.max_tenants); "
                                 "forget a tenant that was never linked (DELETE /whatsapp/<tenant>) or raise the "
                                 "limit", tenant=tid, limit=limit)

    def _load_disk_tenants(self) -> None:
        with contextlib.suppress(OSError):
            for entry in self.root.iterdir():  # tenants with auth on disk are known even before a start
                if entry.name not in self.tenants and is_tenant_id(entry.name) and (entry / "auth").is_dir():
                    self.tenants[entry.name] = Tenant(
                        entry.name, self.settings, spawn_slots=self.spawn_slots, clock=self.clock,
                        sleep=self._sleep, rand=self._rand, observer=self.observers, budget=self.budget,
                        may_spawn=self._may_spawn, state_hooks=self._state_hooks)

    def worker_command(self, tid: str, cmd: str, **fields: Any) -> bool:
        """A command for a tenant's live worker (the webhook's `ack`/`replay`); False when it has none."""
        tenant = self.tenants.get(tid)
        return tenant.worker_command(cmd, **fields) if tenant is not None else False

    def clock_info(self, tid: str) -> dict[str, Any] | None:
        """Clock skew at the last login: our receive time minus the server time WhatsApp sent (ms; positive = our
        clock is ahead). None when the worker never reported `serverTime`."""
        info = self.server_clock.get(tid)
        server = info.get("serverTime") if info else None
        if not isinstance(server, (int, float)) or isinstance(server, bool):
            return None
        received = float(info["receivedAt"])
        return {"serverTime": server, "receivedAt": received * 1000, "skewMs": round(received * 1000 - server)}

    def _status(self, tenant: Tenant) -> dict[str, Any]:
        return {**tenant.status(), "clock": self.clock_info(tenant.id)}

    @contextlib.asynccontextmanager
    async def _op(self, tid: str):
        """One operation at a time per tenant (start, stop, restart, logout, forget). Resolve the Tenant *inside*
        it: a tenant forgotten while an operation waited is gone (or a fresh one) by then."""
        entry = self._op_locks.setdefault(tid, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0 and tid not in self.tenants:
                self._op_locks.pop(tid, None)

    # -- operations ---------------------------------------------------------------------------------------------
    async def start_tenant(self, tid: str) -> dict[str, Any]:
        """Idempotent and single-flight: concurrent callers share one start and get the very same answer. Cluster
        mode: the intent goes to the store and the owner starts it (supervisor/cluster_node.py)."""
        tid = validate_tenant_id(tid)
        if self.cluster is not None:
            return await self.cluster.start_tenant(tid)
        return await self.start_here(tid)

    async def start_here(self, tid: str) -> dict[str, Any]:
        """Start the tenant's worker on this host (cluster mode: only for a tenant this node owns)."""
        if self.shutting_down:
            raise ShuttingDown("the daemon is shutting down")
        task = self._inflight.get(tid)
        if task is None:
            task = asyncio.create_task(self._do_start(tid), name=f"start:{tid}")
            self._inflight[tid] = task
            task.add_done_callback(lambda _t: self._inflight.pop(tid, None))
        # shield: one impatient caller (a dropped HTTP request) must not cancel the start for all the others.
        return await asyncio.shield(task)

    async def _do_start(self, tid: str) -> dict[str, Any]:
        async with self._op(tid):
            if self.shutting_down:
                raise ShuttingDown("the daemon is shutting down")
            self._check_auth_path(tid)
            tenant = self._startable(tid)
            await tenant.start()
            return self._status(tenant)

    def _check_auth_path(self, tid: str) -> None:
        """An `auth` that is a file, a dangling symlink or a symlink loop can never become the auth directory: every
        spawn's mkdir failed (200, then `spawn_failed` backoff forever). Refused as the documented 507 instead. A
        symlink to a directory stays allowed (auth kept on another disk)."""
        auth = self.root / tid / "auth"
        if os.path.lexists(auth) and not auth.is_dir():
            raise StorageError.from_os(tid, "use the auth directory", OSError(
                errno.ENOTDIR, "auth exists but is not a directory (a file or a dangling symlink): move it aside"))

    def _startable(self, tid: str) -> Tenant:
        """The tenant to start; for one that is not running, its place is checked (AtCapacity, 503) before a new
        id gets an object (TooManyTenants, 429): a refused id leaves no object, directory or metric series."""
        tenant = self.tenants.get(tid)
        if tenant is None or not tenant.running:
            self.budget.check()
        return self._tenant(tid, create=True)

    async def stop_tenant(self, tid: str) -> dict[str, Any]:
        if self.cluster is not None:
            return await self.cluster.stop_tenant(validate_tenant_id(tid))
        return await self.stop_here(tid)

    async def stop_here(self, tid: str, reason: str = "stop") -> dict[str, Any]:
        self._tenant(tid, create=False)  # UnknownTenant before any lock is made
        async with self._op(tid):
            tenant = self._tenant(tid, create=False)
            await tenant.stop(reason)
            return self._status(tenant)

    async def restart_tenant(self, tid: str) -> dict[str, Any]:
        tid = validate_tenant_id(tid)
        if self.shutting_down:
            raise ShuttingDown("the daemon is shutting down")
        self._check_auth_path(tid)  # before the stop: a restart that cannot start leaves the tenant as it is
        if self.cluster is not None:
            self.cluster.require_owner(tid)  # NotOwner (409) with the owner's advertiseUrl
        async with self._op(tid):
            tenant = self.tenants.get(tid)
            if tenant is not None:
                await tenant.stop("restart")  # its place is free again: the start below takes one anew
            tenant = self._startable(tid)
            await tenant.start()
            return self._status(tenant)

    async def logout_tenant(self, tid: str) -> dict[str, Any]:
        if self.cluster is not None:
            self.cluster.require_owner(validate_tenant_id(tid))
        self._tenant(tid, create=False)
        async with self._op(tid):
            tenant = self._tenant(tid, create=False)
            await tenant.logout()
            return self._status(tenant)

    async def forget_tenant(self, tid: str) -> dict[str, Any]:
        """Stop a tenant that was never linked and remove it: its object, metric series, unlinked auth, lock and pid
        files, and its directory when nothing else is left in it (logged-out archives are never deleted: they are
        listed as `kept`). A linked tenant is refused (409 `linked`: logout first); TenantLocked if another daemon
        owns it. Cluster mode: its rows in the store go too, from any node (supervisor/forget.py forget_in_store);
        409 `owned_elsewhere` while another node owns it."""
        if self.cluster is None or tid in self.tenants:
            self._tenant(tid, create=False)
        else:
            tid = validate_tenant_id(tid)
        if self.shutting_down:
            raise ShuttingDown("the daemon is shutting down")
        async with self._op(tid):
            if self.cluster is not None and tid not in self.tenants:  # never ran here: only its rows in the store
                if not await forget_in_store(self.cluster, tid):
                    raise UnknownTenant(f"unknown tenant {tid}", tenant=tid)
                log.info("tenant.forgotten", tenant=tid, kept=0)
                return {"ok": True, "tenant": tid, "forgotten": True, "kept": []}
            tenant = self._tenant(tid, create=False)
            self._refuse_linked(tenant)
            await tenant.stop("forget")
            await tenant.lock.acquire()  # never remove files another daemon's worker is using
            try:
                self._refuse_linked(tenant)  # linked by a scan that completed just before the stop
                if self.cluster is not None:  # the store first: it may refuse (owned elsewhere, linked there)
                    await forget_in_store(self.cluster, tid)
                kept = remove_tenant_files(tenant.dir)
            finally:
                tenant.lock.release()
            del self.tenants[tid]
            self.metrics.forget(tid)
            self.server_clock.pop(tid, None)
        log.info("tenant.forgotten", tenant=tid, kept=len(kept))
        return {"ok": True, "tenant": tid, "forgotten": True, "kept": kept}

    @staticmethod
    def _refuse_linked(tenant: Tenant) -> None:
        if is_linked(tenant.auth_dir, tenant.registered):
            raise TenantLinked(f"tenant {tenant.id} is linked to a phone (or its creds cannot be read); its creds are "
                               "never deleted: logout first", tenant=tenant.id)

    async def pairing_code(self, tid: str, phone: str) -> str:
        if self.cluster is not None:
            self.cluster.require_owner(validate_tenant_id(tid))
        return await self._tenant(tid, create=False).pairing_code(phone)

    def status(self, tid: str) -> dict[str, Any]:
        if self.cluster is not None:  # any node answers for any tenant (owner, epoch from the shared state)
            tid = validate_tenant_id(tid)
            local = self.tenants.get(tid)
            return self.cluster.status(tid, self._status(local) if local is not None else None)
        return self._status(self._tenant(tid, create=False))

    def statuses(self) -> list[dict[str, Any]]:
        self._load_disk_tenants()
        if self.cluster is not None:
            return [self.status(t) for t in sorted(self.cluster.tenant_ids() | set(self.tenants))]
        return [self._status(self.tenants[t]) for t in sorted(self.tenants)]

    def qr(self, tid: str) -> str | None:
        return self._tenant(tid, create=False).qr

    def health(self) -> dict[str, Any]:
        # Counter in C over the members: the Python loop reading `.value` (an enum property) twice per tenant was
        # ~120 us per GET /healthz at 200 tenants; this is ~20. Same order: first occurrence.
        counts = {s.value: n for s, n in Counter(map(_STATE, self.tenants.values())).items()}
        return {"ok": not self.shutting_down, "pid": os.getpid(), "uptime": round(self.clock() - self.started_at, 3),
                "tenants": len(self.tenants), "states": counts, "shuttingDown": self.shutting_down,
                **({"cluster": self.cluster.health()} if self.cluster is not None else {})}

    # -- life cycle ---------------------------------------------------------------------------------------------
    async def boot(self) -> None:
        """Start the configured tenants; a locked or broken tenant is logged, never fatal for the others. Cluster
        mode: ClusterNode.start() made them wanted; placement starts each one on its node."""
        if self.cluster is not None:
            return
        async def one(tid: str) -> None:
            try:
                await self.start_tenant(tid)
            except Exception as exc:  # noqa: BLE001 - every failure is reported per tenant
                log.error("daemon.boot_failed", tenant=tid, error=getattr(exc, "code", type(exc).__name__),
                          message=str(exc))

        await asyncio.gather(*(one(t) for t in self.settings.tenants.boot))

    async def shutdown(self, *, force: asyncio.Event | None = None) -> None:
        """Stop every worker in parallel, each bounded by the stop grace; `force` (a second signal) kills at once.

        Tenants first, in-flight starts second: a start queued for a spawn slot is cancelled by its tenant's stop
        instead of spawning a worker only to stop it (with 200 boot tenants and 2 slots that took minutes). A start
        that was already past its checks finishes, and the second pass stops whatever it spawned."""
        self.shutting_down = True
        inflight = list(self._inflight.values())
        await self._stop_all(force)
        await asyncio.gather(*inflight, return_exceptions=True)
        await self._stop_all(force)
        for t in self.tenants.values():
            t.lock.release()

    async def _stop_all(self, force: asyncio.Event | None) -> None:
        tenants = [t for t in self.tenants.values() if t.running or t.state in ACTIVE_STATES | {TenantState.BACKOFF}]
        if not tenants:
            return
        stops = asyncio.gather(*(t.stop("shutdown") for t in tenants), return_exceptions=True)
        if force is not None:
            forced = asyncio.create_task(force.wait())
            done, _ = await asyncio.wait({stops, forced}, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            await asyncio.gather(forced, return_exceptions=True)
            if stops not in done:
                log.warning("daemon.force_stop", tenants=len(tenants))
                await asyncio.gather(*(t.stop("shutdown", force=True) for t in tenants), return_exceptions=True)
        for result in await stops:
            if isinstance(result, BaseException):
                log.error("daemon.stop_failed", error=type(result).__name__, message=str(result))

