"""One tenant: the one `change_state()`, its worker's life cycle and the restart loop (`_supervise()`, the one task
per tenant, owned here).

What a worker event or a worker's end *means* is decided by the pure functions in lifecycle.py; this class executes
their actions (state changes, observers, the standby, the worker) and owns everything that awaits. Clock, sleep and
randomness are injected so the restart schedule is testable with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from supervisor import lifecycle, protocol
from supervisor.backoff import Action, Decision, Ending
from supervisor.backoff_wait import BackoffWait
from supervisor.capacity import Place, ProcessBudget, unlimited
from supervisor.errors import AlreadyLinked, NotReady, NotRunning, StorageError, WorkerCommandFailed
from supervisor.lifecycle import (ArchiveAuth, Closed, Creds, DismissStandby, Enter, Forward, Hello, MessageStatus,
                                  Opened, PairingCode, Prewarm, ProtocolMismatch, ReapStandby, Restarting, Rss,
                                  ShowQR, StopWorker, WorkerError)
from supervisor.locks import TenantLock
from supervisor.observer import Observers, TenantObserver
from supervisor.settings import Settings
from supervisor.slots import SpawnSlots
from supervisor.standby import StandbySlot
from supervisor.states import RESTING_STATES, TRANSITIONS, InvalidTransition, TenantState, iso, reason_name
from supervisor.storage import archive_auth, auth_info
from supervisor.worker import ExitInfo, WorkerProcess
from supervisor.worker_run import WorkerRun

log = structlog.get_logger("supervisor.tenant")
S = TenantState

LOGOUT_TIMEOUT = 10.0  # a live worker gets this long to log out on the server before it is stopped


class Tenant:
    def __init__(self, tid: str, settings: Settings, *, spawn_slots: SpawnSlots,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random, observer: TenantObserver | None = None,
                 budget: ProcessBudget | None = None, may_spawn: Callable[[str], bool] | None = None,
                 state_hooks: Callable[[], Any] | None = None) -> None:
        self.id = tid
        # Cluster mode: the auth state in the fenced store (supervisor/cluster_state.py): rebuilt before a spawn,
        # written through on `state` events, reconciled at a worker's end. None in single-host mode.
        self._state_hooks = state_hooks
        # The fenced gate (cluster mode, supervisor/cluster_node.py): no spawn unless it says yes; a worker that ends
        # while it says no is not restarted, the tenant rests in `stopped` (not_owner) until started again.
        self._may_spawn = may_spawn
        # Always a guarded fan-out: an observer's bug never breaks a transition (observer.py).
        self.observer = observer if isinstance(observer, Observers) else Observers(*filter(None, [observer]))
        self.settings = settings  # replaced by a reload; read at each spawn and each decision
        self.dir = settings.storage.root / "whatsapp" / tid
        self.auth_dir = self.dir / "auth"
        self.lock = TenantLock(tid, self.dir, stop_grace=settings.worker.stop_grace)
        self.clock, self._sleep, self._rand, self._spawn_slots = clock, sleep, rand, spawn_slots
        self.life = lifecycle.Life()  # what the decisions depend on; its `state` changes only in change_state()
        self.state_reason: str | None = None
        self.since = clock()
        self.worker: WorkerProcess | None = None
        self.standby = StandbySlot(tid, spawn_slots)  # the next worker, pre-started while a QR is shown
        self.budget = budget if budget is not None else unlimited()  # the daemon's limits.max_processes/standbys
        self._place: Place | None = None  # held from start() until the restart loop ends
        self._standby_place: Place | None = None  # held by the current standby until it is promoted or gone
        self.qr: str | None = None
        self.push_name: str | None = None
        self.me: dict[str, Any] | None = None
        self.registered: bool | None = None
        self.restarts = 0  # automatic restarts since the last explicit start
        self.spawns = 0  # workers spawned by this daemon, ever (diagnostics and tests)
        self.last_disconnect: dict[str, Any] | None = None
        self.backoff = BackoffWait(tid, clock, sleep)  # the backoff sleep, which an explicit start may cut short
        self._task: asyncio.Task[None] | None = None
        self._attempt_at: float | None = None  # when the current/last worker was started (the retry floor)
        self._run: WorkerRun | None = None  # the current worker's run (supervisor/worker_run.py)
        self._want_stop = False
        self._spawned = asyncio.Event()
        self._hello = asyncio.Event()
        self._spawn_t0 = time.monotonic()

    @property
    def state(self) -> TenantState:
        return self.life.state

    @property
    def next_retry_at(self) -> float | None:
        return self.backoff.next_retry_at

    # -- the one transition function -------------------------------------------------------------------------
    def change_state(self, new: TenantState, reason: str | None = None) -> None:
        old = self.state
        if new is old:
            self.state_reason = reason if reason is not None else self.state_reason
            return
        if new not in TRANSITIONS[old]:
            raise InvalidTransition(f"{self.id}: {old.value} -> {new.value}")
        self.life = dataclasses.replace(self.life, state=new)
        self.state_reason, self.since = reason, self.clock()
        if new is not S.QR:
            self.qr = None  # a QR is only valid while we are waiting for a scan
        log.info("tenant.state", tenant=self.id, from_state=old.value, to_state=new.value, reason=reason)
        self.observer.on_state(self.id, old, new, reason)

    # -- worker events: lifecycle.on_event decides, _do executes ----------------------------------------------
    def _on_event(self, event: protocol.Event) -> None:
        if event.type == "state":  # cluster mode's write-through (never sent by a worker without BSUP_STATE_SYNC)
            hooks = self._hooks()
            if hooks is not None:
                hooks.on_event(self.id, self.worker, event)
            return
        life, actions = lifecycle.on_event(self.life, event, now=self.clock())
        self._apply(life, actions)

    def _apply(self, life: lifecycle.Life, actions: Iterable[Any]) -> None:
        if life is not self.life:  # heartbeats, nearly all an idle daemon reads, change nothing: no copy for them
            self.life = dataclasses.replace(life, state=self.state)  # the state moves only via Enter -> change_state
        for action in actions:
            self._do(action)

    def _on_invalid_line(self, n: int) -> None:
        self.observer.on_invalid_line(self.id, n)

    def _do(self, action: Any) -> None:  # noqa: C901 - one flat dispatch over the action types
        match action:
            case Rss(rss):  # first: every heartbeat
                self.observer.on_rss(self.id, rss)
            case Enter(state, reason):
                self.change_state(state, reason)
            case Hello(fields):
                self._hello.set()
                self.observer.on_spawn(self.id, time.monotonic() - self._spawn_t0)
                log.info("worker.hello", tenant=self.id, protocol=fields.get("protocol"), worker=fields.get("worker"),
                         baileys=fields.get("baileys"), wa_version=fields.get("waVersion"))
            case ProtocolMismatch(got):
                log.error("worker.protocol_mismatch", tenant=self.id, expected=protocol.PROTOCOL_VERSION, got=got)
            case StopWorker():
                if self.worker is not None:
                    self.worker.request_stop()
            case Prewarm():
                self._prewarm()
            case DismissStandby():
                self.standby.dismiss()
            case ShowQR(qr):
                self.qr = qr  # never logged
                log.info("tenant.qr", tenant=self.id)
                self.observer.on_qr(self.id, qr)
            case Opened(me, push_name, server_time, success_at):
                self.me, self.push_name = me, push_name
                # the worker runs on this host: its clock at the <success> node is ours, minus the login's work
                ok = isinstance(success_at, (int, float)) and not isinstance(success_at, bool) and success_at > 0
                at = success_at / 1000 if ok else self.clock()
                self.observer.on_open(self.id, server_time, at)
                log.info("tenant.open", tenant=self.id, me=(me or {}).get("id"))
            case Closed(close):
                self.observer.on_close(self.id, close.code)
                self.last_disconnect = {"code": close.code, "reason": close.reason or reason_name(close.code),
                                        "message": close.message[:500], "at": iso(self.clock())}
                log.info("tenant.close", tenant=self.id, code=close.code, reason_name=self.last_disconnect["reason"],
                         message=self.last_disconnect["message"], state=close.state.value)
            case Creds(registered):
                self.registered = registered
                log.info("tenant.creds", tenant=self.id, registered=registered)
            case Forward(payload):
                self.observer.on_message(self.id, payload)
            case MessageStatus(fields):
                self.observer.on_message_status(self.id, fields)
            case WorkerError(fields):
                log.warning("worker.error", tenant=self.id, code=fields.get("code"), message=fields.get("message"),
                            fatal=fields.get("fatal", False))
            case PairingCode():
                log.info("tenant.pairing_code", tenant=self.id)  # the code itself is a credential: not logged
            case Restarting(reason):
                self.restarts += 1
                self.observer.on_restart(self.id, reason)
            case _:
                raise TypeError(f"no executor for {action!r}")  # a bug: a new action type without one

    def worker_command(self, cmd: str, **fields: Any) -> bool:
        """Fire-and-forget command to the live worker (`ack`, `replay`: docs/protocol.md); False when there is none
        (the next worker re-emits what was not acked, so nothing is lost)."""
        worker = self.worker
        if worker is None or not worker.alive:
            return False
        try:
            worker.notify(cmd, **fields)
        except (NotRunning, ConnectionError, RuntimeError):
            return False
        return True

    def _prewarm(self) -> None:
        """Pre-start the standby while this tenant's worker lives and shows a QR (lifecycle: not at hello, where
        no scan may ever come; and two Baileys imports at once would delay the first QR, +210 ms on 2 CPUs)."""
        if not (self.running and not self._want_stop and self._gate() and self.lock.fd is not None
                and self.worker is not None and self.worker.alive and self.settings.worker.prewarm
                and self.standby.current is None):
            return
        self._standby_place = self.budget.prewarm(self.standby, self.settings.worker, self.auth_dir, self.lock.fd)
        if self._standby_place is None:  # limits.max_standbys / max_processes: this scan takes ~0.9 s longer
            log.info("standby.skipped", tenant=self.id, reason="capacity")

    def _hooks(self) -> Any:
        return self._state_hooks() if self._state_hooks is not None else None

    def _gate(self) -> bool:
        return self._may_spawn is None or self._may_spawn(self.id)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- operator actions ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Idempotent: a running tenant keeps its worker; one in a backoff retries now (BackoffWait.retry). Raises
        AtCapacity (no place in limits.max_processes) and TenantLocked."""
        if self.running:
            # During a backoff: retry now (or after the floor; the streak is kept: backoff_wait.py), and answer with
            # the new worker's pid as a start does.
            self._spawned.clear()
            if not self.backoff.retry(self._attempt_at):
                self._spawned.set()
            await self._spawned.wait()
            return
        place = self.budget.tenant()  # AtCapacity (503) before anything is touched
        try:
            await self.lock.acquire()
        except BaseException:
            place.release()
            raise
        self._place = place
        self.life = lifecycle.started(self.life)
        self.restarts, self._want_stop = 0, False
        self.change_state(S.STARTING, "start")
        self._spawned.clear()
        self._task = asyncio.create_task(self._supervise(), name=f"tenant:{self.id}")
        await self._spawned.wait()  # answer with the pid (or the spawn failure) in the status

    async def stop(self, reason: str = "stop", *, force: bool = False) -> None:
        task = self._task
        if task is None or task.done():
            if self.state not in RESTING_STATES:
                self.change_state(S.STOPPED, reason)
            return
        self._want_stop = True
        if self.backoff.sleeping or self._waiting_slot:
            # Only ever cancelled in the backoff sleep or while queued for a spawn slot, never half-way through a
            # spawn. The queue matters at shutdown: 200 boot tenants waiting for 2 slots must not spawn one by one
            # just to be stopped again.
            task.cancel()
        elif self.worker is not None and self.worker.alive:
            self.change_state(S.STOPPING, reason)
            grace = 0.0 if force else None
            # The standby goes down alongside, so a stop stays bounded by one grace, and a forced stop kills both.
            await asyncio.gather(self.worker.stop(grace), self.standby.reap(grace))
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None
        if self.state not in RESTING_STATES:
            self.change_state(S.STOPPED, reason)

    async def logout(self) -> None:
        """Log the device out (server side when a worker is live) and archive auth; the tenant rests in logged_out."""
        worker = self.worker
        if self.running and worker is not None and worker.alive and self._task is not None:
            self.life = dataclasses.replace(self.life, logout_requested=True)
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
            while not self._want_stop and self._gate():
                storage_error: OSError | None = None
                try:
                    ending, info = await self._run_once()
                except OSError as exc:  # _run_once has already made sure no worker of its own is left
                    storage_error, ending, info = exc, Ending.SPAWN, None
                    self._spawned.set()  # a waiting start() answers with the backoff state below
                if self._want_stop or not self._gate():
                    break
                if storage_error is not None:
                    log.error("tenant.storage_error", tenant=self.id,
                              error=storage_error.strerror or type(storage_error).__name__)
                life, decision, actions = lifecycle.on_exit(self.life, ending, self.settings.restart, now=self.clock(),
                                                            draw=self._rand(), storage_error=storage_error is not None)
                self._log_decision(ending, info, decision)
                if decision.action is Action.BACKOFF:
                    self.backoff.next_retry_at = self.clock() + decision.delay  # before the state says backoff
                await self._apply_exit(life, actions)
                if decision.action is Action.REST:
                    return
                if decision.action is Action.BACKOFF:
                    await self.backoff.sleep(decision.delay)
                    self._apply(*lifecycle.after_backoff(self.life, decision))
            if not self._want_stop and self.state not in RESTING_STATES:  # the gate closed (fenced, handed off)
                self.change_state(S.STOPPED, "not_owner")
        except Exception as exc:  # a bug: say so in the state instead of freezing in `starting` with no worker
            log.error("tenant.supervise_failed", tenant=self.id, error=type(exc).__name__, message=str(exc)[:300],
                      exc_info=True)
            with contextlib.suppress(InvalidTransition):
                self.change_state(S.FAILED, "internal")
        finally:
            await self.standby.reap()  # before the lock goes: a standby holds an inherited copy of it
            self._spawned.set()
            self.worker = None
            self.observer.on_rss(self.id, None)
            self.lock.clear_pidfile()  # never raises
            self.lock.release()
            if self._place is not None:  # the worker and the standby are gone: the place is free again
                self._place.release()
                self._place = None

    async def _run_once(self) -> tuple[Ending, ExitInfo | None]:
        """One worker, spawned or promoted from the standby, until its end (supervisor/worker_run.py: no path leaves
        a live worker that nobody reads)."""
        assert self.lock.fd is not None
        self.life, self._hello = lifecycle.spawning(self.life), asyncio.Event()
        self._attempt_at = self.clock()
        run = self._run = WorkerRun(self.id, self.lock, self._spawn_slots, clock=self.clock, spawned=self._spawned,
                                    hello=self._hello, stop_requested=lambda: self._want_stop or not self._gate(),
                                    on_started=self._count_spawn)
        standby = await self.standby.take(self.settings.worker.heartbeat_timeout)
        if standby is not None:
            if self._standby_place is not None:  # the tenant's own place covers it from now on
                self._standby_place.release()
            self.worker = standby.worker
            info = await run.promote(standby, self._on_event, self._on_invalid_line)
        else:
            hooks = self._hooks()
            if hooks is not None:  # rebuilt from the store (OSError: backoff, like any storage error)
                await hooks.before_spawn(self.id, self.auth_dir)
            self.worker = run.new_worker(self.settings.worker, self.auth_dir, self._on_event, self._on_invalid_line)
            self._spawn_t0 = time.monotonic()
            # Before a flood of new, unlinked starts: a real user's connection, or the login right after a scan (515).
            urgent = self.life.streak.immediate > 0 or self.auth_info()["registered"]
            info = await run.spawn(self.worker, self.settings.worker.heartbeat_timeout, urgent=urgent)
        hooks = self._hooks()
        if hooks is not None:  # what the worker wrote is committed (or it was fenced) before anything decides
            await hooks.after_exit(self.id, self.auth_dir)
        if info is None:  # nothing ran: stopped while queued, or the command could not be executed
            return Ending.SPAWN, None
        self.lock.clear_pidfile()
        return lifecycle.ending(self.life, heartbeat_timeout=info.heartbeat_timeout, returncode=info.returncode), info

    def _count_spawn(self) -> None:
        self.spawns += 1

    @property
    def _waiting_slot(self) -> bool:
        """Queued for a spawn slot: nothing spawned yet, safe to cancel."""
        return self._run is not None and self._run.waiting_slot

    async def _apply_exit(self, life: lifecycle.Life, actions: Iterable[Any]) -> None:
        """`_apply` for lifecycle.on_exit's actions, some of which await."""
        self.life = dataclasses.replace(life, state=self.state)
        for action in actions:
            if isinstance(action, ReapStandby):
                await self.standby.reap()  # a resting tenant has no process at all once its state says so
            elif isinstance(action, ArchiveAuth):
                try:
                    self._archive_auth()
                except StorageError as exc:  # the logged-out creds could not be moved aside: an operator must look
                    log.error("tenant.storage_error", tenant=self.id, error=exc.message)
                    self.change_state(S.FAILED, "storage_error")
                    return
            else:
                self._do(action)

    def _log_decision(self, ending: Ending, info: ExitInfo | None, d: Decision) -> None:
        close = self.life.close
        code = close.code if close else None
        # warning once a streak is long (lifecycle.decision_level), with the worker's own words: an offline loop
        # must not stay at info with its cause (getaddrinfo ENOTFOUND ...) only in the status.
        getattr(log, lifecycle.decision_level(d))(
            "tenant.decision", tenant=self.id, ending=ending.value, code=code, reason_name=reason_name(code),
            message=close.message[:300] if close and close.message else None,
            returncode=info.returncode if info else None, action=d.action.value, reason=d.reason,
            attempt=d.attempt, delay=round(d.delay, 3), next_state=d.next_state.value)

    # -- storage (supervisor/storage.py) ------------------------------------------------------------------------
    def _archive_auth(self) -> None:
        archive_auth(self.id, self.dir, self.auth_dir)
        hooks = self._hooks()
        if hooks is not None:
            hooks.on_archived(self.id)
        self.registered, self.me, self.push_name = False, None, None

    def auth_info(self) -> dict[str, Any]:
        return auth_info(self.auth_dir, self.registered)

    def status(self) -> dict[str, Any]:
        w = self.worker
        return {
            "tenant": self.id, "state": self.state.value, "connected": self.state is S.CONNECTED,
            "hasQR": self.qr is not None, "pushName": self.push_name, "me": self.me,
            "pid": w.pid if w is not None and w.alive else None,
            "standbyPid": self.standby.pid, "restarts": self.restarts,
            "lastDisconnect": self.last_disconnect, "nextRetryAt": iso(self.next_retry_at),
            "stateReason": self.state_reason, "since": iso(self.since), "auth": self.auth_info(),
        }

