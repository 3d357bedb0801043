"""`Supervisor` (tenant registry, single-flight start, boot, shutdown) and `run_daemon()` (signals, API, ordered
shutdown). Signal handlers only set events (uvicorn style); `run_daemon` is the one owner that awaits everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from supervisor.errors import ConfigError, InvalidTenantId, ShuttingDown, UnknownTenant
from supervisor.settings import Settings
from supervisor.states import ACTIVE_STATES, TenantState
from supervisor.tenant import MessageHook, Tenant

log = structlog.get_logger("supervisor.daemon")

TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def validate_tenant_id(tid: object) -> str:
    """Checked before any path is built from it: the id becomes a directory name."""
    if not isinstance(tid, str) or not TENANT_ID_RE.fullmatch(tid):
        raise InvalidTenantId("tenant id must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", tenant=str(tid)[:80])
    return tid


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
        self._spawn_slots = asyncio.Semaphore(settings.worker.max_concurrent_spawns)
        self._op_locks: dict[str, asyncio.Lock] = {}
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self.metrics = _make_metrics()  # GET /metrics is served when this is not None

    @property
    def root(self):
        return self.settings.storage.root / "whatsapp"

    def _tenant(self, tid: str, *, create: bool) -> Tenant:
        tid = validate_tenant_id(tid)
        tenant = self.tenants.get(tid)
        if tenant is None:
            if not create and not (self.root / tid / "auth").is_dir():
                raise UnknownTenant(f"unknown tenant {tid}", tenant=tid)
            tenant = Tenant(tid, self.settings, spawn_slots=self._spawn_slots, clock=self.clock, sleep=self._sleep,
                            rand=self._rand, on_message=self._forward_message, metrics=self.metrics)
            self.tenants[tid] = tenant
        return tenant

    def _forward_message(self, tid: str, payload: dict[str, Any]) -> None:
        if self.on_message is not None:
            self.on_message(tid, payload)

    def _op_lock(self, tid: str) -> asyncio.Lock:
        return self._op_locks.setdefault(tid, asyncio.Lock())

    # -- operations ---------------------------------------------------------------------------------------------
    async def start_tenant(self, tid: str) -> dict[str, Any]:
        """Idempotent and single-flight: concurrent callers share one start and get the very same answer."""
        tid = validate_tenant_id(tid)
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
        async with self._op_lock(tid):
            if self.shutting_down:
                raise ShuttingDown("the daemon is shutting down")
            tenant = self._tenant(tid, create=True)
            await tenant.start()
            return tenant.status()

    async def stop_tenant(self, tid: str) -> dict[str, Any]:
        tenant = self._tenant(tid, create=False)
        async with self._op_lock(tid):
            await tenant.stop("stop")
            return tenant.status()

    async def restart_tenant(self, tid: str) -> dict[str, Any]:
        tenant = self._tenant(tid, create=True)
        if self.shutting_down:
            raise ShuttingDown("the daemon is shutting down")
        async with self._op_lock(tid):
            await tenant.stop("restart")
            await tenant.start()
            return tenant.status()

    async def logout_tenant(self, tid: str) -> dict[str, Any]:
        tenant = self._tenant(tid, create=False)
        async with self._op_lock(tid):
            await tenant.logout()
            return tenant.status()

    async def pairing_code(self, tid: str, phone: str) -> str:
        return await self._tenant(tid, create=False).pairing_code(phone)

    def status(self, tid: str) -> dict[str, Any]:
        return self._tenant(tid, create=False).status()

    def statuses(self) -> list[dict[str, Any]]:
        with contextlib.suppress(OSError):
            for entry in self.root.iterdir():  # tenants with auth on disk are known even before a start
                if entry.name not in self.tenants and TENANT_ID_RE.fullmatch(entry.name) and (entry / "auth").is_dir():
                    self._tenant(entry.name, create=True)
        return [self.tenants[t].status() for t in sorted(self.tenants)]

    def qr(self, tid: str) -> str | None:
        return self._tenant(tid, create=False).qr

    def health(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for t in self.tenants.values():
            counts[t.state.value] = counts.get(t.state.value, 0) + 1
        return {"ok": not self.shutting_down, "pid": os.getpid(), "uptime": round(self.clock() - self.started_at, 3),
                "tenants": len(self.tenants), "states": counts, "shuttingDown": self.shutting_down}

    # -- life cycle ---------------------------------------------------------------------------------------------
    async def boot(self) -> None:
        """Start the configured tenants; a locked or broken tenant is logged, never fatal for the others."""
        async def one(tid: str) -> None:
            try:
                await self.start_tenant(tid)
            except Exception as exc:  # noqa: BLE001 - every failure is reported per tenant
                log.error("daemon.boot_failed", tenant=tid, error=getattr(exc, "code", type(exc).__name__),
                          message=str(exc))

        await asyncio.gather(*(one(t) for t in self.settings.tenants.boot))

    async def shutdown(self, *, force: asyncio.Event | None = None) -> None:
        """Stop every worker in parallel, each bounded by the stop grace; `force` (a second signal) kills at once."""
        self.shutting_down = True
        for task in list(self._inflight.values()):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task  # a start in flight finishes first, so its worker is stopped below, not leaked
        tenants = [t for t in self.tenants.values() if t.running or t.state in ACTIVE_STATES | {TenantState.BACKOFF}]
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
        for t in self.tenants.values():
            t.lock.release()


def _make_metrics() -> Any:
    try:
        from supervisor.metrics import Metrics  # optional: prometheus_client may be absent in a slim install
    except ImportError:
        return None
    return Metrics()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


async def run_daemon(settings: Settings, *, shutdown_event: asyncio.Event | None = None,
                     supervisor: Supervisor | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `shutdown_event`); a second signal forces the workers down at once.
    Order on the way out: stop accepting API requests, stop all workers in parallel, release locks."""
    if settings.api.secret is None and not _is_loopback(settings.api.host):
        raise ConfigError(f"refusing to bind {settings.api.host} without an API secret")
    loop = asyncio.get_running_loop()
    stop = shutdown_event or asyncio.Event()
    force = asyncio.Event()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            force.set()
        stop.set()
        log.info("daemon.signal", signal=signame, forced=force.is_set())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    sup = supervisor or Supervisor(settings)
    runner = None
    try:
        runner = await _start_api(sup)
        log.info("daemon.started", pid=os.getpid(), host=settings.api.host, port=settings.api.port,
                 api=runner is not None, storage=str(settings.storage.root))
        boot = asyncio.create_task(sup.boot())
        await stop.wait()
        log.info("daemon.stopping", tenants=len(sup.tenants))
        boot.cancel()  # starts still in flight are awaited by shutdown()
        await asyncio.gather(boot, return_exceptions=True)
    finally:
        if runner is not None:
            await runner.cleanup()  # stop accepting first: no start can race the shutdown
        await sup.shutdown(force=force)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("daemon.stopped", pid=os.getpid())


async def _start_api(sup: Supervisor):
    try:
        from supervisor.api import make_app  # lazy: the API module is optional for library users and tests
    except ModuleNotFoundError as exc:
        if exc.name != "supervisor.api":
            raise
        log.warning("daemon.api_unavailable")
        return None
    from aiohttp import web

    runner = web.AppRunner(make_app(sup), shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, sup.settings.api.host, sup.settings.api.port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
