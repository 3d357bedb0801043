"""One worker of a tenant, from its spawn (or a standby's promotion) to its end: `WorkerRun`.

Split out of tenant.py (which keeps the state machine and the restart loop) with everything it needs passed in: the
worker settings, the tenant's lock (its fd is inherited, worker.pid is written here), the daemon's spawn slots, and
two events it sets for the tenant: `spawned` (the pid is known, or the spawn failed: a waiting start() answers) and
`hello` (the spawn slot can go). Invariant kept from tenant.py: once spawned, a worker is read by its run() task
from the very next statement on, and every path out of here (an error, a cancellation) awaits that task, whose
cancellation kills the child: no path leaves a live worker that nobody reads (it would hold the inherited flock).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import structlog

from supervisor.locks import TenantLock
from supervisor.settings import WorkerSettings
from supervisor.slots import SpawnSlots
from supervisor.standby import EventHook, InvalidLineHook, Standby, StandbySlot
from supervisor.worker import ExitInfo, WorkerProcess

log = structlog.get_logger("supervisor.tenant")


class WorkerRun:
    def __init__(self, tenant: str, lock: TenantLock, slots: SpawnSlots, *, clock: Callable[[], float],
                 spawned: asyncio.Event, hello: asyncio.Event, stop_requested: Callable[[], bool],
                 on_started: Callable[[], None]) -> None:
        """`stop_requested()`: a stop came (spawn nothing more / stop what was just spawned); `on_started()`: a
        process became this tenant's worker (spawned or promoted; the tenant counts them)."""
        self.tenant, self.lock, self.slots, self.clock = tenant, lock, slots, clock
        self.spawned, self.hello, self.stop_requested, self.on_started = spawned, hello, stop_requested, on_started
        self.waiting_slot = False  # queued for a spawn slot: nothing spawned yet, the tenant may cancel us

    def new_worker(self, settings: WorkerSettings, auth_dir: Path, on_event: EventHook,
                   on_invalid_line: InvalidLineHook) -> WorkerProcess:
        assert self.lock.fd is not None
        return WorkerProcess(self.tenant, settings, auth_dir, self.lock.fd, on_event, on_invalid_line=on_invalid_line)

    async def spawn(self, worker: WorkerProcess, hello_timeout: float, *, urgent: bool = False) -> ExitInfo | None:
        """Spawn `worker` within a spawn slot (`urgent`: before the other waiters, slots.py), held until its hello (or
        its end, or `hello_timeout`) so that booting many tenants stays gentle; then await its end. None: nothing ran
        (stopped while queued, or the command could not be executed, logged `worker.spawn_failed`)."""
        async with self._slot(urgent):
            if self.stop_requested():  # stopped while queued: spawn nothing
                return None
            try:
                pid = await worker.spawn()
            except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in argv/env from the config
                log.error("worker.spawn_failed", tenant=self.tenant, error=str(exc))
                self.spawned.set()
                return None
            run = asyncio.create_task(worker.run(), name=f"worker:{self.tenant}:{pid}")
            try:
                self.on_started()
                self.lock.write_pidfile(pid, self.clock())  # best effort: logged, never raises OSError
                self.spawned.set()
                if self.stop_requested():
                    await worker.stop()
                hello = asyncio.create_task(self.hello.wait())
                try:
                    await asyncio.wait({run, hello}, timeout=hello_timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    hello.cancel()
                    await asyncio.gather(hello, return_exceptions=True)
            except BaseException:
                run.cancel()  # worker.run() kills the child when cancelled and is awaited here: the lock goes with it
                await asyncio.gather(run, return_exceptions=True)
                raise
        return await run

    async def promote(self, standby: Standby, on_event: EventHook, on_invalid_line: InvalidLineHook
                      ) -> ExitInfo | None:
        """The taken standby is the tenant's worker from here on, read by the standby's task, which is awaited here
        on every path. None cannot happen once taken (it was spawned and said hello): the caller treats it as a
        failed spawn instead of guessing."""
        worker = standby.worker
        try:
            if StandbySlot.promote(standby, on_event, on_invalid_line):
                self.on_started()
                self.lock.write_pidfile(worker.pid or 0, self.clock())
            self.spawned.set()
            self.hello.set()
            return await standby.task
        except BaseException:
            standby.task.cancel()
            await asyncio.gather(standby.task, return_exceptions=True)
            raise

    @contextlib.asynccontextmanager
    async def _slot(self, urgent: bool):
        """One of the daemon's `max_concurrent_spawns` slots; while queued for it, the tenant's stop may cancel us."""
        self.waiting_slot = True
        try:
            await self.slots.acquire(urgent)
        finally:
            self.waiting_slot = False
        try:
            yield
        finally:
            self.slots.release()
