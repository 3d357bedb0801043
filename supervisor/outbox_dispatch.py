"""The daemon's side of sending (README "Sending messages"): the outbox (supervisor/outbox.py) on one thread, and one
dispatch task per tenant that hands its messages to the tenant's worker in order, one at a time, within its rate.

    box = OutboxDispatcher(settings.outbox, path, sup, on_status=publish, forwarder=fw)
    await box.start()                    # opens the file (after fw.start()); tenants with waiting messages resume at
                                         # their next `open`; status webhook items a crash left are spooled
    sup.observers.add(box)               # on_state (connected -> dispatch) and on_message_status (worker events)
    answer, created = await box.submit(tenant, key, body)   # body already validated (api_messages.py)
    await box.get(tenant, message_id)    # the status dict, or None
    await box.aclose()

A message goes to a worker only while its tenant is `connected`; otherwise it waits (queued, or sending if it was
handed over once). Each status change calls `on_status(tenant, status_dict)` (SSE, wired by the runner). With a
webhook forwarder, the outbox writes each change's webhook item in the change's own transaction (outbox.py `hook`), and
one task copies those items into the spool in commit order, then deletes them: a crash in between copies them again
at the next start, under the same Idempotency-Key. In cluster mode the outbox is PostgreSQL's (supervisor/cluster/
outbox.py): its dispatch-side writes raise `Fenced` once another node owns the tenant, which ends that tenant's
dispatch here; `gained(t)` (cluster_node.py, on each claim) resumes the tenant's messages on its new owner.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from .cluster.store import Fenced  # no psycopg: store.py imports none
from .errors import NotRunning, WorkerCommandFailed, WorkerTimeout
from .observer import TenantObserver
from .outbox import Outbox, Row, status_dict
from .settings import OutboxSettings
from .states import TenantState

log = structlog.get_logger("supervisor.outbox")
OUTBOX_FILENAME = "outbox.sqlite3"
CLOSE_WAIT = 10.0  # shutdown: at most this long for status updates still being written
RETRY_DELAY = 2.0  # after a send the worker could not do (error, timeout): wait, then the same message again
HOOK_RETRY = 1.0  # a status webhook item the spool refused (full, a disk error): tried again after this, with room


def body_hash(body: dict[str, Any]) -> str:
    """The canonical request: a retried POST with the same key must carry the same body (key order aside)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())\
        .hexdigest()


class TokenBucket:
    """`rate` tokens per second up to `burst`; `wait()` is how long until the next token (0: take it now)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, float(burst), now

    def take(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class OutboxDispatcher(TenantObserver):
    def __init__(self, settings: OutboxSettings, path: Path, sup: Any, *,
                 on_status: Callable[[str, dict[str, Any]], None] = lambda _t, _s: None, forwarder: Any = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, box: Any = None) -> None:
        self.settings, self.sup, self.on_status = settings, sup, on_status
        self.clock, self.monotonic, self._sleep = clock, monotonic, sleep
        self.forwarder = forwarder
        self.box = box if box is not None else Outbox(path, hooks=forwarder is not None)
        self._hooks: asyncio.Task[None] | None = None  # copies status webhook items into the spool
        self._hooks_dirty = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outbox")  # one connection, one thread
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._buckets: dict[str, TokenBucket] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed = False
        self._poller: asyncio.Task[None] | None = None

    async def _db(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kw))

    async def start(self) -> None:
        await self._db(self.box.open)
        pruned = await self._db(self.box.prune, self.clock() - self.settings.keep_days * 86400)
        waiting = await self._db(self.box.pending_tenants)
        if self.forwarder is None:  # webhook off: items a webhook-on run left would be stale news for nobody
            await self._db(self.box.hooks_done, 2**62)
        log.info("outbox.started", path=str(self.box.path), tenants_waiting=len(waiting), pruned=pruned)
        if self.forwarder is not None:  # what a crash left between a status commit and its spool write (or after
            await self._copy_hooks(wait_room=False)  # it): copied while the forwarder holds delivery (runner)
            self.forwarder.release()
            self._kick_hooks()  # the rows a full spool refused
        if getattr(self.box, "poll_every", None):
            self._poller = asyncio.get_running_loop().create_task(self._poll(self.box.poll_every), name="outbox:poll")

    async def _poll(self, every: float) -> None:
        """Cluster mode: a message another node queued for one of our tenants (its snapshot was stale, or nobody
        owned the tenant then) is sent within `every` s, not at the tenant's next POST here or reconnect."""
        while True:
            await asyncio.sleep(every)
            try:
                for tenant in await self._db(self.box.pending_tenants):
                    if self._connected_worker(tenant) is not None:
                        self._kick(tenant)
            except Exception as exc:  # noqa: BLE001 - the server away: the next round tries again
                log.warning("outbox.poll_failed", error=type(exc).__name__)

    async def aclose(self) -> None:
        """After the workers stopped: dispatch ends (a row in flight stays `sending`: resent at the next start), the
        status updates and webhook submits already scheduled finish (bounded), the file closes."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._hooks is not None:
            self._background.add(self._hooks)  # bounded like the rest: what it does not copy, the next start does
        if self._background:
            _done, late = await asyncio.wait(list(self._background), timeout=CLOSE_WAIT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self.forwarder is not None:  # the statuses of the last moments: into the spool now, not at the next start
            try:
                await asyncio.wait_for(self._copy_hooks(), CLOSE_WAIT)
            except asyncio.TimeoutError:
                pass  # they stay in the outbox: the next start copies them
        self._closed = True
        await self._db(self.box.close)  # also after a failed start: close() undoes whatever open() got to
        self._executor.shutdown(wait=True)

    # -- the API ------------------------------------------------------------------------------------------------
    async def submit(self, tenant: str, key: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Durable when it returns. The answer is the same for a retried POST (same key, same body)."""
        reply_to = json.dumps(body["replyTo"], sort_keys=True) if body.get("replyTo") is not None else None
        row, created = await self._db(self.box.submit, tenant, key, body_hash(body), body["to"], body["text"],
                                      reply_to, self.clock())
        if created:
            log.info("outbox.queued", tenant=tenant, message_id=row.message_id)
            self.on_status(tenant, status_dict(row))
            self._kick_hooks()
            self._kick(tenant)
        return {"messageId": row.message_id, "waMessageId": row.wa_id, "status": "queued"}, created

    async def get(self, tenant: str, message_id: str) -> dict[str, Any] | None:
        row = await self._db(self.box.get, tenant, message_id)
        return status_dict(row) if row is not None else None

    # -- what tenants report (TenantObserver: synchronous, so the work is scheduled) ----------------------------
    def on_state(self, tenant: str, old: TenantState, new: TenantState, reason: str | None) -> None:
        if new is TenantState.CONNECTED:
            self._spawn(self._opened(tenant))

    def on_message_status(self, tenant: str, fields: dict[str, Any]) -> None:
        wa_id, status = fields.get("waMessageId"), fields.get("status")
        if isinstance(wa_id, str) and isinstance(status, str):
            error = fields.get("error") if isinstance(fields.get("error"), str) else None
            self._spawn(self._status(tenant, wa_id, status, error))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        if self._closed:  # a worker's line after the file closed (shutdown): nothing can be recorded any more
            coro.close()  # type: ignore[attr-defined]
            return
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def gained(self, tenant: str) -> None:
        """This node now owns `tenant` (cluster mode): resend what the old owner had handed over, then dispatch; the
        status webhook items the old owner had not spooled are ours to spool now."""
        if not self._closing:
            self._spawn(self._opened(tenant))
            self._kick_hooks()

    async def _opened(self, tenant: str) -> None:
        try:
            n = await self._db(self.box.reopen, tenant)
        except Fenced:
            log.info("outbox.fenced", tenant=tenant)  # not ours (any more): its owner resends
            return
        if n:
            log.info("outbox.resend", tenant=tenant, messages=n)
        self._kick(tenant)

    async def _status(self, tenant: str, wa_id: str, status: str, error: str | None) -> None:
        try:
            row = await self._db(self.box.set_status, tenant, wa_id, status, error, self.clock())
        except Fenced:
            log.info("outbox.fenced", tenant=tenant)  # its new owner's worker gets the receipts too
            return
        if row is not None:
            self._changed(row)

    def _changed(self, row: Row) -> None:
        log.info("outbox.status", tenant=row.tenant, message_id=row.message_id, status=row.status,
                 error=row.error[:200] if row.error else None)
        self.on_status(row.tenant, status_dict(row))
        self._kick_hooks()

    # -- status webhook items: outbox `hook` rows -> the spool, in commit order --------------------------------
    def _kick_hooks(self) -> None:
        if self.forwarder is None or self._closing:
            return
        if self._hooks is not None:
            self._hooks_dirty = True
        else:
            self._hooks = asyncio.get_running_loop().create_task(self._copy_hooks(), name="outbox:hooks")

    async def _copy_hooks(self, wait_room: bool = True) -> None:
        try:
            while True:
                self._hooks_dirty = False
                rows = await self._db(self.box.hooks_pending, 100)
                if not rows:
                    if self._hooks_dirty:
                        continue
                    return  # no await between the check and the finally: a later kick starts a new task
                done, refused = await self._spool_hooks(rows)
                if done is not None:
                    await self._db(self.box.hooks_done, done)
                while refused:  # refused once (logged by the forwarder), not once per retry: wait for room first
                    if self._closing or not wait_room:
                        return  # the rows stay in the outbox: the next start copies them
                    await self._sleep(HOOK_RETRY)
                    refused = not self.forwarder.has_room()
        except Exception as exc:  # the outbox file failed: the rows stay; the next status change or start tries again
            log.error("outbox.webhook_copy_failed", error=type(exc).__name__, message=str(exc)[:200])
        finally:
            self._hooks = None

    async def _spool_hooks(self, rows: list[tuple[int, str, str, str]]) -> tuple[int | None, bool]:
        """Spools rows in order; returns the last seq spooled and whether one was refused (the rest waits)."""
        done = None
        for seq, tenant, eid, body in rows:
            try:
                # gated=False: a refused status is retried from here; it must not hold back the tenant's messages
                await self.forwarder.submit(tenant, json.loads(body), event_id=eid, gated=False)
            except Exception as exc:  # noqa: BLE001 - SpoolFull (logged by the forwarder), a disk error, closed
                log.warning("outbox.webhook_retry", tenant=tenant, error=type(exc).__name__)
                return done, True
            done = seq
        return done, False

    # -- dispatch: one task per tenant, one message in flight -------------------------------------------------
    def _connected_worker(self, tenant: str) -> Any:
        t = self.sup.tenants.get(tenant)
        if t is None or t.state is not TenantState.CONNECTED or t.worker is None or not t.worker.alive:
            return None
        return t.worker

    def _kick(self, tenant: str) -> None:
        if self._closing:
            return
        if tenant in self._tasks:
            self._dirty.add(tenant)
        else:
            self._tasks[tenant] = asyncio.get_running_loop().create_task(self._run(tenant), name=f"outbox:{tenant}")

    async def _run(self, tenant: str) -> None:
        try:
            while True:
                self._dirty.discard(tenant)
                if self._connected_worker(tenant) is None:
                    return  # the next `connected` kicks us again
                row = await self._db(self.box.next_to_send, tenant)
                if row is None:
                    if tenant in self._dirty:
                        continue
                    return
                bucket = self._buckets.setdefault(tenant, TokenBucket(self.settings.rate, self.settings.burst,
                                                                      self.monotonic()))
                delay = bucket.take(self.monotonic())
                while delay > 0:
                    await self._sleep(delay)
                    delay = bucket.take(self.monotonic())
                await self._send(tenant, row)
        except Fenced:  # another node owns the tenant now: it sends the rest, nothing more commits from here
            log.info("outbox.fenced", tenant=tenant)
        except Exception as exc:  # a disk error, a bug: logged; the tenant's next `connected` or POST starts over
            log.error("outbox.dispatch_failed", tenant=tenant, error=type(exc).__name__, message=str(exc)[:200])
        finally:
            if self._tasks.get(tenant) is asyncio.current_task():
                del self._tasks[tenant]

    async def _send(self, tenant: str, row: Row) -> None:
        worker = self._connected_worker(tenant)
        if worker is None:
            return
        # Recorded while the command goes out, not before it: after a crash a `queued` row is handed over again with
        # the same WhatsApp id exactly like a `sending` one, so waiting for this fsync would only add latency. Its
        # status event comes from the future's callback, which runs before any later status of this message (the
        # one outbox thread finishes writes in order).
        mark = asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(self.box.mark_sending, row.message_id, self.clock()))
        mark.add_done_callback(lambda f: None if f.cancelled() or f.exception() or f.result().status == row.status
                               else self._changed(f.result()))
        if getattr(self.box, "fenced", False):
            await mark  # cluster mode: nothing reaches a worker unless our epoch's commit did (else Fenced)
        fields: dict[str, Any] = {"to": row.to_jid, "text": row.text, "waId": row.wa_id}
        if row.reply_to is not None:
            fields["replyTo"] = json.loads(row.reply_to)
        try:
            result = await worker.request("send", self.settings.send_timeout, **fields)
        except NotRunning:
            return  # the worker is gone: the row stays `sending`, handed over again at the next `open`
        except (WorkerCommandFailed, WorkerTimeout) as exc:
            await self._send_failed(tenant, await mark, exc)
            return
        status = result.get("status") if result.get("status") in ("sending", "sent", "failed") else "sending"
        error = result.get("error") if isinstance(result.get("error"), str) else None
        row2, moved = await self._db(self.box.mark_written, row.message_id, status, error, self.clock())
        if moved:
            self._changed(row2)

    async def _send_failed(self, tenant: str, row: Row, exc: Exception) -> None:
        reason = getattr(exc, "details", {}).get("worker_error") or exc.code  # type: ignore[attr-defined]
        if reason == "not_ready":  # the socket is closing while our state still says connected: the close follows
            await self._sleep(RETRY_DELAY)
            return
        log.warning("outbox.send_failed", tenant=tenant, message_id=row.message_id, attempt=row.attempts,
                    error=reason)
        fail = f"{reason}: {str(exc)[:200]}" if row.attempts >= self.settings.max_attempts else None
        row2 = await self._db(self.box.requeue, row.message_id, self.clock(), fail=fail)
        if fail is not None:
            self._changed(row2)
        else:
            await self._sleep(RETRY_DELAY)


def make_outbox(settings: Any, sup: Any, forwarder: Any = None) -> OutboxDispatcher:
    """The daemon's outbox (supervisor/runner.py): status changes go to the live events (SSE `message_status`) and,
    with the webhook on, into its spool as `{"type": "message_status", ...}` items (outbox.py `status_item`)."""
    path = settings.outbox.path or settings.storage.root / OUTBOX_FILENAME
    box, cluster = None, getattr(sup, "cluster", None)
    if getattr(settings, "cluster", None) is not None and cluster is not None:  # one for all nodes, fenced
        from .cluster.outbox import PgOutbox  # psycopg: cluster mode only

        own = cluster.own
        box = PgOutbox(settings.cluster, hooks=forwarder is not None, epoch_of=lambda t: own.owned.get(t),
                       valid=lambda: own.fence.valid())

    def on_status(tenant: str, status: dict[str, Any]) -> None:
        sup.events.publish(tenant, "message_status", {k: v for k, v in status.items() if k != "tenant"})

    disp = OutboxDispatcher(settings.outbox, path, sup, on_status=on_status, forwarder=forwarder, box=box)
    if box is not None:
        cluster.outbox = disp  # its on_gain calls disp.gained
    return disp
