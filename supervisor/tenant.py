"""One tenant: the state machine (one `change_state()`), its worker's life cycle and the restart loop.

The worker posts events (`_on_event`), the tenant reacts; when a worker ends, `backoff.RestartPolicy` decides what
happens next and `_supervise()` (the one task per tenant, owned here) applies it. Clock and sleep are injected so
the restart schedule is testable with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from supervisor import protocol
from supervisor.backoff import Action, Decision, Ending, RestartPolicy
from supervisor.errors import (AlreadyLinked, NotReady, NotRunning, StorageError, SupervisorError,
                               WorkerCommandFailed)
from supervisor.locks import TenantLock
from supervisor.storage import archive_auth, auth_info
from supervisor.settings import Settings
from supervisor.slots import SpawnSlots
from supervisor.standby import Standby
from supervisor.states import ACTIVE_STATES, TenantState, reason_name
from supervisor.tenant_events import REST_ON_FATAL, WorkerEvents
from supervisor.tenant_standby import StandbyHandling
from supervisor.transitions import TRANSITIONS, InvalidTransition, iso
from supervisor.worker import ExitInfo, WorkerProcess

log = structlog.get_logger("supervisor.tenant")
S = TenantState

LOGOUT_TIMEOUT = 10.0  # a live worker gets this long to log out on the server before it is stopped
MessageHook = Callable[[str, dict[str, Any]], None]
# on_event(tenant, kind, data): kind "state" {from, to, reason}, "qr" {qr}, "open" {serverTime, receivedAt}.
# Called synchronously from the transition/event path; the daemon uses it for SSE, notify STATUS= and doctor.
EventHook = Callable[["Tenant", str, dict[str, Any]], None]


class Tenant(WorkerEvents, StandbyHandling):
    def __init__(self, tid: str, settings: Settings, *, spawn_slots: SpawnSlots,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random, on_message: MessageHook | None = None,
                 metrics: Any = None, on_event: EventHook | None = None) -> None:
        self.id = tid
        self.on_event = on_event
        self.metrics = metrics  # supervisor.metrics.Metrics or None; every hook is cheap and never raises
        self.settings = settings
        self.dir = settings.storage.root / "whatsapp" / tid
        self.auth_dir = self.dir / "auth"
        self.lock = TenantLock(tid, self.dir, stop_grace=settings.worker.stop_grace)
        self.policy = RestartPolicy(settings.restart, rand=rand)
        self.clock, self._sleep, self._spawn_slots, self.on_message = clock, sleep, spawn_slots, on_message
        self.state, self.state_reason, self.since = S.STOPPED, None, clock()
        self.worker: WorkerProcess | None = None
        self.standby: Standby | None = None  # the next worker, pre-started while a QR is shown (standby.py)
        self.qr: str | None = None
        self.push_name: str | None = None
        self.me: dict[str, Any] | None = None
        self.registered: bool | None = None
        self.restarts = 0  # automatic restarts since the last explicit start
        self.spawns = 0  # workers spawned by this daemon, ever (diagnostics and tests)
        self.last_disconnect: dict[str, Any] | None = None
        self.next_retry_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._sleeping = False
        self._waiting_slot = False  # queued for a spawn slot: nothing spawned yet, safe to cancel
        self._want_stop = False
        self._logout_requested = False
        self._spawned = asyncio.Event()
        self._hello = asyncio.Event()
        self._close: tuple[protocol.Event, TenantState] | None = None
        self._fatal: str | None = None
        self._spawn_t0 = time.monotonic()

    # -- the one transition function -------------------------------------------------------------------------
    def change_state(self, new: TenantState, reason: str | None = None) -> None:
        old = self.state
        if new is old:
            self.state_reason = reason if reason is not None else self.state_reason
            return
        if new not in TRANSITIONS[old]:
            raise InvalidTransition(f"{self.id}: {old.value} -> {new.value}")
        self.state, self.state_reason, self.since = new, reason, self.clock()
        if new is not S.QR:
            self.qr = None  # a QR is only valid while we are waiting for a scan
        log.info("tenant.state", tenant=self.id, from_state=old.value, to_state=new.value, reason=reason)
        if self.metrics is not None:
            self.metrics.on_state(self.id, old, new)
        self._emit("state", {"from": old.value, "to": new.value, "reason": reason})

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(self, kind, data)
        except Exception as exc:  # an observer's bug must never break a transition
            log.error("tenant.event_hook_failed", tenant=self.id, kind=kind, error=type(exc).__name__)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- operator actions ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Idempotent: a running (or backing-off) tenant is left alone. Raises TenantLocked."""
        if self.running:
            return
        await self.lock.acquire()
        self.policy.reset()
        self.restarts, self._want_stop, self._logout_requested, self._fatal = 0, False, False, None
        self.change_state(S.STARTING, "start")
        self._spawned.clear()
        self._task = asyncio.create_task(self._supervise(), name=f"tenant:{self.id}")
        await self._spawned.wait()  # answer with the pid (or the spawn failure) in the status

    async def stop(self, reason: str = "stop", *, force: bool = False) -> None:
        task = self._task
        if task is None or task.done():
            if self.state is not S.STOPPED and self.state in ACTIVE_STATES | {S.BACKOFF}:
                self.change_state(S.STOPPED, reason)
            return
        self._want_stop = True
        if self._sleeping or self._waiting_slot:
            # Only ever cancelled in the backoff sleep or while queued for a spawn slot, never half-way through a
            # spawn. The queue matters at shutdown: 200 boot tenants waiting for 2 slots must not spawn one by one
            # just to be stopped again.
            task.cancel()
        elif self.worker is not None and self.worker.alive:
            self.change_state(S.STOPPING, reason)
            grace = 0.0 if force else None
            # The standby goes down alongside, so a stop stays bounded by one grace, and a forced stop kills both.
            await asyncio.gather(self.worker.stop(grace), self._stop_standby(grace))
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None
        if self.state in ACTIVE_STATES | {S.BACKOFF}:
            self.change_state(S.STOPPED, reason)

    async def logout(self) -> None:
        """Log the device out (server side when a worker is live) and archive auth; the tenant rests in logged_out."""
        worker = self.worker
        if self.running and worker is not None and worker.alive and self._task is not None:
            self._logout_requested = True
            with contextlib.suppress(NotRunning):
                worker.notify("logout")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._task), LOGOUT_TIMEOUT)
        if self.state is S.LOGGED_OUT and not self.running:
            return
        await self.stop("logout")
        await self.lock.acquire()  # never move auth that another daemon's worker is using
        try:
            self._archive_auth()  # StorageError (507) if the rename is refused: the state stays as it is
        finally:
            self.lock.release()
        self.change_state(S.LOGGED_OUT, "logout")

    async def pairing_code(self, phone: str, timeout: float = 30.0) -> str:
        if self.worker is None or not self.worker.alive:
            raise NotRunning(f"tenant {self.id} has no live worker")
        try:
            result = await self.worker.request("pairing_code", timeout, phone=phone)
        except WorkerCommandFailed as exc:
            # The tenant's state, not a fault of the worker: a 409 the caller can act on, not a 502.
            if exc.details.get("worker_error") == "already_registered":
                raise AlreadyLinked(f"tenant {self.id} is already linked; logout first to link another phone") from None
            if exc.details.get("worker_error") == "not_ready":
                raise NotReady(f"tenant {self.id} is not showing a QR yet: {exc.message}") from None
            raise
        return str(result.get("code", ""))

    # -- the supervise loop -----------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        try:
            while not self._want_stop:
                storage_error: OSError | None = None
                try:
                    ending, info = await self._run_once()
                except OSError as exc:  # _run_once has already made sure no worker of its own is left
                    storage_error, ending, info = exc, Ending.SPAWN, None
                    self._spawned.set()  # a waiting start() answers with the backoff state below
                if self._want_stop:
                    break
                decision = self._decide(ending)
                if storage_error is not None:
                    # Disk full / read-only / EIO: back off like a crash (growing delay, max_attempts -> failed)
                    # rather than rest: such faults are usually fixed from outside, and then the tenant comes back.
                    decision = dataclasses.replace(decision, reason="storage_error")
                    log.error("tenant.storage_error", tenant=self.id,
                              error=storage_error.strerror or type(storage_error).__name__)
                self._log_decision(ending, info, decision)
                if decision.action is Action.REST:
                    await self._reap_standby()  # a resting tenant has no process at all once its state says so
                    if decision.next_state is S.LOGGED_OUT:
                        try:
                            self._archive_auth()
                        except StorageError as exc:  # the logged-out creds could not be moved aside
                            log.error("tenant.storage_error", tenant=self.id, error=exc.message)
                            self.change_state(S.FAILED, "storage_error")
                            return
                    self.change_state(decision.next_state, decision.reason)
                    return
                self.restarts += 1
                if self.metrics is not None:
                    self.metrics.on_restart(decision.reason)
                if decision.action is Action.BACKOFF:
                    self.next_retry_at = self.clock() + decision.delay
                    self.change_state(S.BACKOFF, decision.reason)
                    self._sleeping = True
                    try:
                        await self._sleep(decision.delay)
                    finally:
                        self._sleeping, self.next_retry_at = False, None
                self.change_state(S.STARTING, decision.reason)
        except Exception as exc:  # a bug: say so in the state instead of freezing in `starting` with no worker
            log.error("tenant.supervise_failed", tenant=self.id, error=type(exc).__name__, message=str(exc)[:300],
                      exc_info=True)
            with contextlib.suppress(InvalidTransition):
                self.change_state(S.FAILED, "internal")
        finally:
            await self._reap_standby()  # before the lock goes: a standby holds an inherited copy of it
            self._spawned.set()
            self.worker = None
            if self.metrics is not None:
                self.metrics.on_rss(self.id, None)
            self.lock.clear_pidfile()  # never raises
            self.lock.release()

    async def _run_once(self) -> tuple[Ending, ExitInfo | None]:
        """Spawn one worker and return how it ended. Once spawned, the worker is read by its run() task from the
        very next statement on, and whatever happens here (an error, a cancellation) ends with that task awaited:
        no path leaves a live worker that nobody reads (it would hold the inherited flock forever)."""
        assert self.lock.fd is not None
        self._close, self._hello = None, asyncio.Event()
        standby = await self._take_standby()
        if standby is not None:
            return await self._run_promoted(standby)
        worker = self.worker = WorkerProcess(self.id, self.settings.worker, self.auth_dir, self.lock.fd,
                                             self._on_event, on_invalid_line=self._on_invalid_line)
        self._spawn_t0 = time.monotonic()
        async with self._spawn_slot():
            if self._want_stop:  # stopped while queued: spawn nothing
                return Ending.SPAWN, None
            try:
                pid = await worker.spawn()
            except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in argv/env from the config
                log.error("worker.spawn_failed", tenant=self.id, error=str(exc))
                self._spawned.set()
                return Ending.SPAWN, None
            run = asyncio.create_task(worker.run(), name=f"worker:{self.id}:{pid}")
            try:
                self.spawns += 1
                self.lock.write_pidfile(pid, self.clock())  # best effort: logged, never raises OSError
                self._spawned.set()
                if self._want_stop:
                    await worker.stop()
                # Hold the spawn slot until the worker said hello (or died): booting many tenants stays gentle.
                hello = asyncio.create_task(self._hello.wait())
                try:
                    await asyncio.wait({run, hello}, timeout=self.settings.worker.heartbeat_timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    hello.cancel()
                    await asyncio.gather(hello, return_exceptions=True)
            except BaseException:
                # worker.run() kills the child when cancelled and is awaited here, so the lock goes with it.
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                raise
        info = await run
        return self._ending(info)

    def _ending(self, info: ExitInfo) -> tuple[Ending, ExitInfo]:
        self.lock.clear_pidfile()
        if info.heartbeat_timeout:
            return Ending.HEARTBEAT, info
        if self._close is not None:
            return Ending.CLOSE, info
        return (Ending.EXIT if info.returncode == 0 else Ending.CRASH), info

    @contextlib.asynccontextmanager
    async def _spawn_slot(self):
        """One of the daemon's `max_concurrent_spawns` slots; while queued for it, `stop()` may cancel us."""
        self._waiting_slot = True
        try:
            await self._spawn_slots.acquire()
        finally:
            self._waiting_slot = False
        try:
            yield
        finally:
            self._spawn_slots.release()

    def _decide(self, ending: Ending) -> Decision:
        attempt = self.policy.failures
        if self._logout_requested:
            return Decision(Action.REST, 0.0, S.LOGGED_OUT, "logout", attempt)
        if self._fatal is not None:
            return Decision(Action.REST, 0.0, S.FAILED, self._fatal, attempt)
        code, state = None, self.state
        if self._close is not None:
            event, state = self._close
            code = event.get("code")
        return self.policy.decide(code, state, ending, self.clock())

    def _log_decision(self, ending: Ending, info: ExitInfo | None, d: Decision) -> None:
        code = self._close[0].get("code") if self._close else None
        log.info("tenant.decision", tenant=self.id, ending=ending.value, code=code, reason_name=reason_name(code),
                 returncode=info.returncode if info else None, action=d.action.value, reason=d.reason,
                 attempt=d.attempt, delay=round(d.delay, 3), next_state=d.next_state.value)

    # -- storage (supervisor/storage.py) ------------------------------------------------------------------------
    def _archive_auth(self) -> None:
        archive_auth(self.id, self.dir, self.auth_dir)
        self.registered, self.me, self.push_name = False, None, None

    def auth_info(self) -> dict[str, Any]:
        return auth_info(self.auth_dir, self.registered)

    def status(self) -> dict[str, Any]:
        w = self.worker
        return {
            "tenant": self.id, "state": self.state.value, "connected": self.state is S.CONNECTED,
            "hasQR": self.qr is not None, "pushName": self.push_name, "me": self.me,
            "pid": w.pid if w is not None and w.alive else None,
            "standbyPid": self.standby.pid if self.standby is not None else None, "restarts": self.restarts,
            "lastDisconnect": self.last_disconnect, "nextRetryAt": iso(self.next_retry_at),
            "stateReason": self.state_reason, "since": iso(self.since), "auth": self.auth_info(),
        }


__all__ = ["Tenant", "TRANSITIONS", "InvalidTransition", "REST_ON_FATAL", "SupervisorError", "iso"]
