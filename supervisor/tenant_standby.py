"""The tenant's side of the standby worker (supervisor/standby.py): when to pre-start it, how a restart promotes it,
and taking it down. A mixin of `Tenant` (split out of tenant.py like tenant_events.py); every attribute it uses is
set in `Tenant.__init__`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from supervisor.backoff import Ending
from supervisor.errors import NotRunning
from supervisor.standby import Standby
from supervisor.worker import ExitInfo

if TYPE_CHECKING:
    from supervisor.tenant import Tenant

log = structlog.get_logger("supervisor.tenant")


class StandbyHandling:
    def _prewarm(self: Tenant) -> None:
        """Start the worker that will log in after the scan's 515, unless one exists or no worker runs. Called at the
        worker's hello when the creds are not linked (a QR and a scan are ahead) and at every QR. Not earlier: two
        Baileys imports at once would delay the first QR (measured +210 ms on 2 CPUs)."""
        if (self.settings.worker.prewarm and self.standby is None and self.running and not self._want_stop
                and self.lock.fd is not None and self.worker is not None and self.worker.alive):
            self.standby = Standby(self.id, self.settings.worker, self.auth_dir, self.lock.fd, self._spawn_slots)

    async def _take_standby(self: Tenant) -> Standby | None:
        """The standby, detached from `self.standby`, once ready: one still importing is further along than a fresh
        spawn, so it is waited for (bounded like a spawn's hello). A dead or hung one is reaped, and the usual spawn
        follows."""
        standby, self.standby = self.standby, None
        if standby is None:
            return None
        await standby.wait_ready(self.settings.worker.heartbeat_timeout)
        if standby.take() is None:
            await standby.reap()
            return None
        return standby

    async def _run_promoted(self: Tenant, standby: Standby) -> tuple[Ending, ExitInfo | None]:
        """`go` to the standby (it loads the auth the previous worker flushed, then opens its one socket); from here
        on it is this tenant's worker, read by the standby's task, which is awaited here on every path."""
        worker = self.worker = standby.worker
        worker.on_event, worker.on_invalid_line = self._on_event, self._on_invalid_line
        try:
            try:
                worker.notify("go")
            except (NotRunning, ConnectionError, RuntimeError):  # it died a moment ago: a crash, handled as such
                log.warning("standby.promote_failed", tenant=self.id, worker_pid=worker.pid)
            else:
                self.spawns += 1
                self.lock.write_pidfile(worker.pid or 0, self.clock())
                log.info("standby.promoted", tenant=self.id, worker_pid=worker.pid)
            self._spawned.set()
            self._hello.set()
            info = await standby.task
        except BaseException:
            standby.task.cancel()  # its run() kills the child: the lock goes with it
            await asyncio.gather(standby.task, return_exceptions=True)
            raise
        if info is None:  # cannot happen once taken (it was spawned and said hello); say so instead of guessing
            return Ending.SPAWN, None
        return self._ending(info)

    async def _stop_standby(self: Tenant, grace: float | None = None) -> None:
        if self.standby is not None:
            await self.standby.reap(grace)

    async def _reap_standby(self: Tenant) -> None:
        standby, self.standby = self.standby, None
        if standby is not None:
            await standby.reap()
