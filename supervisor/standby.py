"""A standby worker: the tenant's next worker, started while a QR is shown and promoted after the scan.

Why: right after a successful scan WhatsApp closes the socket with 515 restartRequired, and a worker owns one socket
per process lifetime (docs/protocol.md), so the login needs a new process. Node start-up plus the Baileys import is
~0.9 s of the ~2 s from scan to connected (docs/benchmarks.md). A standby pays that while the user is still
scanning: it runs up to `hello` and waits for `go` without reading auth or opening a socket. When the QR worker
has exited (its auth flushed to disk), the tenant sends `go` and the standby logs in with the fresh creds.

Invariants kept: the standby inherits the tenant's locked fd like any worker (the flock stays held by whichever
worker lives, also if the daemon dies: a standby exits on stdin EOF); there is never more than one socket, since
the standby connects only after `go`, and `go` is sent only once the previous worker has been reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import structlog

from supervisor import protocol
from supervisor.errors import NotRunning
from supervisor.settings import WorkerSettings
from supervisor.slots import SpawnSlots
from supervisor.worker import ExitInfo, WorkerProcess

log = structlog.get_logger("supervisor.standby")
EventHook = Callable[[protocol.Event], None]
InvalidLineHook = Callable[[int], None]


class Standby:
    """Owns one standby WorkerProcess and the task that spawns and reads it (`task`: its ExitInfo, or None when
    the spawn failed). Until `take()`, its events only tell whether it is ready; afterwards the tenant owns it."""

    def __init__(self, tenant: str, settings: WorkerSettings, auth_dir: Path, lock_fd: int,
                 spawn_slots: SpawnSlots) -> None:
        self.tenant = tenant
        self.worker = WorkerProcess(tenant, settings, auth_dir, lock_fd, self._on_event, standby=True)
        self._slots = spawn_slots
        self._ready = False
        self._dismissed = False
        self._taken = False
        self._settled = asyncio.Event()  # ready (hello) or gone: what a tenant waiting to promote it needs to know
        self.task: asyncio.Task[ExitInfo | None] = asyncio.create_task(self._main(), name=f"standby:{tenant}")

    @property
    def pid(self) -> int | None:
        return self.worker.pid if self.worker.alive else None

    @property
    def ready(self) -> bool:
        return self._ready and self.worker.alive and not self._dismissed and not self._taken

    async def _main(self) -> ExitInfo | None:
        try:
            return await self._spawn_and_run()
        finally:
            self._settled.set()

    async def _spawn_and_run(self) -> ExitInfo | None:
        async with self._slots:  # a standby is a spawn like any other: booting many tenants stays gentle
            if self._dismissed:
                return None
            try:
                pid = await self.worker.spawn()
            except (OSError, ValueError) as exc:  # logged; the tenant simply spawns the usual way later
                log.warning("standby.spawn_failed", tenant=self.tenant, error=str(exc))
                return None
        log.info("standby.spawned", tenant=self.tenant, worker_pid=pid)
        run = asyncio.create_task(self.worker.run(), name=f"standby-run:{self.tenant}:{pid}")
        try:
            if self._dismissed:  # dismissed while spawning
                await self.worker.stop()
            return await run
        finally:
            run.cancel()  # a no-op once it finished; on cancellation run() kills the child
            await asyncio.gather(run, return_exceptions=True)

    def _on_event(self, event: protocol.Event) -> None:
        if event.type == "hello":
            if event.get("protocol") != protocol.PROTOCOL_VERSION:
                log.error("standby.protocol_mismatch", tenant=self.tenant, got=event.get("protocol"))
                self.dismiss()
                return
            self._ready = True
            self._settled.set()
            log.info("standby.ready", tenant=self.tenant, worker_pid=self.worker.pid)
        elif event.type == "error" and event.get("fatal"):
            log.warning("standby.error", tenant=self.tenant, code=event.get("code"), message=event.get("message"))

    async def wait_ready(self, timeout: float) -> bool:
        """Until it said hello or is gone (at most `timeout`); True if it is ready."""
        if not self._dismissed and not self._taken:
            try:
                await asyncio.wait_for(self._settled.wait(), timeout)
            except TimeoutError:
                log.warning("standby.not_ready", tenant=self.tenant, timeout=timeout)
        return self.ready

    def take(self) -> WorkerProcess | None:
        """The ready standby, now the tenant's to promote (it must send `go` and await `task`), or None."""
        if not self.ready:
            return None
        self._taken = True
        return self.worker

    def dismiss(self) -> None:
        """Synchronous (callable from an event handler): ask an unneeded standby to exit. `reap()` awaits it."""
        if self._taken or self._dismissed:
            return
        self._dismissed = True
        self._settled.set()
        if self.worker.alive:
            log.info("standby.dismissed", tenant=self.tenant, worker_pid=self.worker.pid)
            self.worker.request_stop()

    async def reap(self, grace: float | None = None) -> None:
        """Dismiss (unless taken) and wait until its process is gone, escalating to SIGKILL after the grace (the
        worker's stop_grace by default; 0 kills at once)."""
        self.dismiss()
        if not self._taken and self.worker.proc is None:
            # Still queued for a spawn slot (a big boot holds them all) or inside the spawn call: nothing to stop
            # gracefully, and waiting for a slot could hold a shutdown up. asyncio kills a child whose spawn is
            # cancelled half-way.
            self.task.cancel()
        elif not self._taken and self.worker.alive:
            with contextlib.suppress(NotRunning):
                await self.worker.stop(grace)
        await asyncio.gather(self.task, return_exceptions=True)


class StandbySlot:
    """A tenant's one standby, or none: pre-start it, hand it to a restart, dismiss it, reap it. It is given what it
    needs explicitly and knows nothing of the Tenant; the Tenant decides *when* (lifecycle.Prewarm, a restart)."""

    def __init__(self, tenant: str, spawn_slots: SpawnSlots) -> None:
        self.tenant = tenant
        self._slots = spawn_slots
        self.current: Standby | None = None

    @property
    def pid(self) -> int | None:
        return self.current.pid if self.current is not None else None

    def prewarm(self, settings: WorkerSettings, auth_dir: Path, lock_fd: int) -> None:
        """Start the worker that will log in after the scan's 515, unless `worker.prewarm` is off or one is up."""
        if settings.prewarm and self.current is None:
            self.current = Standby(self.tenant, settings, auth_dir, lock_fd, self._slots)

    def dismiss(self) -> None:
        """Synchronous (event path): the standby is not needed (linked without a 515); `reap()` awaits its end."""
        if self.current is not None:
            self.current.dismiss()

    async def take(self, timeout: float) -> Standby | None:
        """The standby, detached from this slot, once ready: one still importing is further along than a fresh
        spawn, so it is waited for (at most `timeout`, like a spawn's hello). A dead or hung one is reaped, and None
        tells the caller to spawn the usual way."""
        standby, self.current = self.current, None
        if standby is None:
            return None
        await standby.wait_ready(timeout)
        if standby.take() is None:
            await standby.reap()
            return None
        return standby

    @staticmethod
    def promote(standby: Standby, on_event: EventHook, on_invalid_line: InvalidLineHook) -> bool:
        """`go` to a taken standby: it loads the auth the previous worker flushed, then opens its one socket; its
        events go to the tenant from now on. False when it died a moment ago (its end is then handled as a crash);
        either way the caller owns `standby.task` and must await it."""
        worker = standby.worker
        worker.on_event, worker.on_invalid_line = on_event, on_invalid_line
        try:
            worker.notify("go")
        except (NotRunning, ConnectionError, RuntimeError):
            log.warning("standby.promote_failed", tenant=standby.tenant, worker_pid=worker.pid)
            return False
        log.info("standby.promoted", tenant=standby.tenant, worker_pid=worker.pid)
        return True

    async def reap(self, grace: float | None = None) -> None:
        """Take the standby down (SIGKILL after `grace`; the worker's stop_grace by default) and wait until it is
        gone. A no-op without one. It stays in the slot until gone, so a second, forced reap (a second signal
        during a graceful stop) still reaches it."""
        standby = self.current
        if standby is None:
            return
        try:
            await standby.reap(grace)
        finally:
            if self.current is standby:
                self.current = None
