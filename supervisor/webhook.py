"""Durable webhook: at-least-once, per-tenant-ordered forwarding of the workers' `message` events (docs/webhook.md).

Interface for the daemon:

    fw = WebhookForwarder(WebhookSettings(url=..., secret=...), storage_root=settings.storage.root,
                          on_depth=gauge.set, on_result=lambda r: counter.labels(r).inc())
    await fw.start(hold=False)          # opens <storage>/webhook-spool.sqlite3, resumes pending rows in order
    ok = await fw.submit(tenant, event, event_id=None)  # True once the item is durably spooled (the ack); False
                                        # when disabled (url None); raises SpoolFull at the bound (already logged
                                        # as webhook.spool_full and reported via on_result("spool_full")).
                                        # event_id: the Idempotency-Key; one pending row per event id; after a
                                        # SpoolFull the tenant's event-id puts are refused until unblock()
                                        # (gated=False: not these, not that one; the outbox's status items)
    fw.has_room()                       # the bound is not reached; await fw.room(): the same, counters re-read
    await fw.unblock(tenant)            # accept that tenant's messages again (queued after its pending puts)
    fw.depth                            # pending items
    await fw.dead_letters(tenant=None, limit=100, after=0)  # rejected (4xx) items, kept for operators
    await fw.requeue(key)               # a dead letter back at its tenant's tail (POST .../dead-letters/{id}/retry)
    await fw.stats()                    # {"enabled", "queued", "deadLetters", "refused"}: GET /webhook
    await fw.aclose()                   # stops delivery, keeps undelivered rows; call after the workers stopped
    fw.resume(t); await fw.pause(t)     # cluster mode (spool=PgSpool, owns=): deliver a gained / stop a lost tenant
                                        # (owned=: every RESCAN s, owned tenants with rows another node requeued)

Delivery: POST {"tenantId": tenant, "payload": event} with Content-Type, Idempotency-Key (the event id, else a uuid
stored with the row; identical on every retry and after a restart) and X-Internal-Secret (when set). 2xx -> deleted; 4xx other than
408/429 -> dead letter; anything else (5xx, 3xx, 408, 429, timeout, connection error) -> retry with backoff while
that tenant's queue waits. One task per tenant with pending items: tenants never wait for each other.
Payloads, response bodies and the secret are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import structlog

from . import backoff
from .settings import WebhookSettings
from .spool import Item, Spool, SpoolError, SpoolFull, SpoolLocked

__all__ = ["WebhookForwarder", "WebhookClosed", "SpoolFull", "SpoolLocked", "backoff_delay"]

log = structlog.get_logger()
SPOOL_FILENAME = "webhook-spool.sqlite3"
BATCH = 100  # rows fetched per spool read while draining a tenant
RESCAN = 2.0  # s: cluster mode, how soon an owner delivers a dead letter that another node requeued


class WebhookClosed(SpoolError):
    code = "webhook_closed"
    status = 503


def backoff_delay(attempt: int, s: WebhookSettings, rng: Callable[[], float] = random.random) -> float:
    """Delay after the `attempt`-th failed try (1-based): the restart policy's formula (backoff.delay)."""
    return backoff.delay(attempt, s, rng())


def classify(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    if 400 <= status < 500 and status not in (408, 429):
        return "dead_letter"  # the target says this request will never succeed; retrying would block the tenant
    return "retry"  # 5xx, 408, 429; 1xx/3xx too: redirects are not followed so the secret never leaves the URL


class WebhookForwarder:
    def __init__(
        self,
        settings: WebhookSettings,
        *,
        storage_root: str | Path | None = None,
        session: aiohttp.ClientSession | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_result: Callable[[str], None] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        spool: Spool | None = None,
        owns: Callable[[str], bool] | None = None,
        owned: Callable[[], list[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = settings.url is not None
        path = settings.spool_path or (Path(storage_root) / SPOOL_FILENAME if storage_root is not None else None)
        if self.enabled and path is None and spool is None:
            raise ValueError("webhook: spool_path or storage_root is required when a url is set")
        self.spool_path = path
        self._session, self._own_session = session, session is None
        self._on_depth, self._on_result = on_depth, on_result
        self._sleep, self._clock, self._rng = sleep, clock, rng
        self._spool: Spool | None = None
        self._given_spool = spool  # cluster mode: the PgSpool (same interface); else the SQLite file below
        self._owns = owns or (lambda tenant: True)
        self._owned = owned  # cluster mode: the tenants this node owns, for the rescan
        self._rescan: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # tenant -> its delivery task (at most one)
        self._dirty: set[str] = set()  # tenants that got a put while their task was reading the spool
        self._started = self._closing = False
        self._held: set[str] | None = None  # start(hold=True) until release(): tenants whose delivery waits
        self.depth = 0
        self.refused = 0  # items refused by SpoolFull since start

    # ---- life cycle -------------------------------------------------------------------------------------------
    async def start(self, hold: bool = False) -> None:
        """hold: deliver nothing until release(): the outbox first copies the status items a crash left in both
        its `hook` table and the spool (the copy is deduped against pending rows only: an item delivered before
        the copy would be spooled and delivered again)."""
        if hold:
            self._held = set()
        if not self.enabled:
            log.info("webhook.disabled", spool_exists=bool(self.spool_path and self.spool_path.exists()))
            return
        # One thread, one connection: SQLite calls are serialised in submit order and never block the loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook-spool")
        self._spool = self._given_spool or Spool(self.spool_path,  # type: ignore[arg-type] - set with a url
                                                 max_items=self.settings.max_items, max_bytes=self.settings.max_bytes)
        try:
            await self._db(self._spool.open)
            tenants = await self._db(self._spool.tenants)
        except BaseException:
            self._executor.shutdown(wait=True)
            raise
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        self._started = True
        self._set_depth(self._spool.depth)
        for tenant in tenants:
            self._kick(tenant)
        if self._owned is not None:
            self._rescan = asyncio.get_running_loop().create_task(self._rescan_loop(), name="webhook:rescan")
        log.info("webhook.started", path=str(getattr(self._spool, "path", self.spool_path)), depth=self.depth,
                 tenants=len(tenants))

    async def aclose(self) -> None:
        """Stop delivering; undelivered rows (and an interrupted in-flight POST) stay for the next start()."""
        if self._closing or not self._started:
            self._closing = True
            return
        self._closing = True
        tasks = list(self._tasks.values()) + ([self._rescan] if self._rescan is not None else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
        assert self._spool is not None and self._executor is not None
        await self._db(self._spool.close)  # FIFO: runs after any put still in the thread's queue
        self._executor.shutdown(wait=True)
        log.info("webhook.stopped", depth=self.depth)

    # ---- intake -----------------------------------------------------------------------------------------------
    async def submit(self, tenant: str, payload: object, *, event_id: str | None = None, gated: bool = True) -> bool:
        """Spool one item durably; returns True only after it is committed. Order of calls = delivery order."""
        if not self.enabled:
            return False
        if not self._started or self._closing:
            raise WebhookClosed("webhook forwarder is not running; message not spooled", tenant=tenant)
        assert self._spool is not None
        # Serialised here (not in the thread) so later mutation of the dict by the caller cannot race the write.
        # ensure_ascii: a lone surrogate (JS strings cut mid-emoji) becomes \udXXX, as JSON.stringify does, instead
        # of failing the UTF-8 encode in SQLite.
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        # No await before this line: the executor queue order is exactly the submit() call order.
        fut = asyncio.get_running_loop().run_in_executor(self._executor, self._spool.put, tenant, body, time.time(),
                                                         event_id, gated)
        # Book-keeping in a done-callback, so a put that commits after the caller was cancelled is still delivered.
        fut.add_done_callback(functools.partial(self._put_done, tenant))
        await asyncio.shield(fut)
        return True

    def has_room(self) -> bool:
        return self._spool is not None and self._spool.has_room()

    async def room(self) -> bool:
        """has_room() after re-reading counters that other nodes change (the PgSpool's `refresh`; the SQLite spool's
        are exact and it has none). For the wait of a held tenant."""
        refresh = getattr(self._spool, "refresh", None)
        if refresh is not None and self._started and not self._closing:
            with contextlib.suppress(SpoolError):  # the store away: the old counters answer; the next poll retries
                await self._db(refresh)
        return self.has_room()

    async def unblock(self, tenant: str) -> None:
        if self._spool is not None and self._started and not self._closing:
            await self._db(self._spool.unblock, tenant)

    def _put_done(self, tenant: str, fut: asyncio.Future) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, SpoolFull):
            self.refused += 1
            log.error("webhook.spool_full", tenant=tenant, depth=exc.details["depth"], bytes=exc.details["bytes"],
                      max_items=exc.details["max_items"], max_bytes=exc.details["max_bytes"], refused=self.refused)
            self._result("spool_full")
        elif exc is None:
            self._set_depth(fut.result()[1])
            self._kick(tenant)

    # ---- delivery ---------------------------------------------------------------------------------------------
    def resume(self, tenant: str) -> None:
        """Cluster mode, on gain: deliver what the tenant has pending (left by a dead owner or not)."""
        if self._started:
            self._kick(tenant)

    async def pause(self, tenant: str) -> None:
        """Cluster mode, on lose: stop delivering (an in-flight POST is cut off; the next owner sends it again)."""
        self._dirty.discard(tenant)
        task = self._tasks.get(tenant)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def release(self) -> None:
        """Ends start(hold=True): the held tenants' delivery starts. Idempotent."""
        held, self._held = self._held, None
        for tenant in sorted(held or ()):
            self._kick(tenant)

    def _kick(self, tenant: str) -> None:
        if self._closing or not self._owns(tenant):
            return
        if self._held is not None:
            self._held.add(tenant)
        elif tenant in self._tasks:
            self._dirty.add(tenant)
        else:
            self._tasks[tenant] = asyncio.get_running_loop().create_task(
                self._run_tenant(tenant), name=f"webhook:{tenant}")

    async def _run_tenant(self, tenant: str) -> None:
        assert self._spool is not None
        failures, last = 0, 0
        try:
            while True:
                try:
                    self._dirty.discard(tenant)
                    items = await self._db(self._spool.next_items, tenant, last, BATCH)
                    if not items:
                        if tenant in self._dirty:
                            continue
                        return  # no await between the check and the finally: a later put starts a new task
                    for item in items:
                        if not await self._deliver(item):
                            return  # lost or fenced: its next owner delivers from here
                        last = item.seq
                    failures = 0
                except (SpoolError, sqlite3.Error, OSError) as exc:  # e.g. disk full, I/O error: rows stay, try again later
                    failures += 1
                    delay = backoff_delay(failures, self.settings, self._rng)
                    log.error("webhook.spool_error", tenant=tenant, error=type(exc).__name__, delay=round(delay, 3))
                    await self._sleep(delay)
        finally:
            if self._tasks.get(tenant) is asyncio.current_task():
                del self._tasks[tenant]

    async def _deliver(self, item: Item) -> bool:
        """Returns True once the item is delivered or dead-lettered (until then the tenant's queue waits), False when
        this node stopped owning the tenant (cluster mode; checked before every try)."""
        assert self._spool is not None
        attempt = 0
        while True:
            if not self._owns(item.tenant):
                return False
            attempt += 1
            t0 = self._clock()
            status, error, retry_after = await self._post(item)
            ms = round((self._clock() - t0) * 1000, 1)
            outcome = classify(status) if status is not None else "retry"
            if outcome == "delivered":
                self._set_depth(await self._db(self._spool.delete, item.seq))
                log.info("webhook.delivered", tenant=item.tenant, id=item.idempotency_key, seq=item.seq, attempts=attempt,
                         ms=ms, status=status)
                self._result("delivered")
                return True
            if outcome == "dead_letter":
                self._set_depth(await self._db(self._spool.dead_letter, item, status, attempt, time.time()))
                log.error("webhook.dead_letter", tenant=item.tenant, id=item.idempotency_key, key=item.key, seq=item.seq,
                          status=status, attempts=attempt)
                self._result("dead_letter")
                return True
            delay = backoff_delay(attempt, self.settings, self._rng)
            if retry_after is not None:  # the target asked for a pause (429/503); honour it up to our cap
                delay = max(delay, min(retry_after, self.settings.max_delay))
            log.warning("webhook.retry", tenant=item.tenant, id=item.idempotency_key, seq=item.seq, attempt=attempt,
                        delay=round(delay, 3), status=status, error=error)
            self._result("retry")
            await self._sleep(delay)

    async def _post(self, item: Item) -> tuple[int | None, str | None, float | None]:
        """One POST. Returns (status, None, retry_after) or (None, error summary, None); never raises ClientError."""
        assert self._session is not None and self.settings.url is not None
        # The payload is already JSON text in the spool: splice it in instead of parsing and re-serialising.
        body = ('{"tenantId":%s,"payload":%s}' % (json.dumps(item.tenant), item.body)).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": item.idempotency_key}
        if self.settings.secret:
            headers["X-Internal-Secret"] = self.settings.secret
        try:
            async with self._session.post(
                self.settings.url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            ) as resp:
                await resp.read()  # drained for keep-alive; deliberately never logged (it may echo the payload)
                return resp.status, None, _retry_after(resp.headers.get("Retry-After"))
        except (TimeoutError, asyncio.TimeoutError):
            return None, "timeout", None
        except aiohttp.ClientConnectorError as exc:  # its text is "host:port [os error]", no URL path or query
            return None, f"connect: {exc.os_error}", None
        except (aiohttp.ClientError, OSError) as exc:  # the class name only: some messages embed the full URL
            return None, type(exc).__name__, None

    # ---- helpers ----------------------------------------------------------------------------------------------
    async def dead_letters(self, tenant: str | None = None, limit: int = 100, after: int = 0) -> list[dict]:
        if self._spool is None or not self._started or self._closing:
            return []
        return await self._db(self._spool.dead_letters, tenant, limit, after)

    async def requeue(self, key: str) -> dict:
        """An operator's retry of the dead letter `key` (spool.requeue: idempotent, DeadLetterNotFound, AlreadyPending,
        SpoolFull). Delivered by this node if it owns the tenant, else by its owner's rescan (cluster mode)."""
        if self._spool is None or not self._started or self._closing:
            raise WebhookClosed("webhook forwarder is not running")
        out = await self._db(self._spool.requeue, key)
        self._set_depth(self._spool.depth)
        log.info("webhook.requeued", tenant=out["tenant"], id=key, seq=out["seq"], requeued=out["requeued"])
        self._kick(out["tenant"])
        return out

    async def _rescan_loop(self) -> None:
        assert self._owned is not None and self._spool is not None
        while True:
            await self._sleep(RESCAN)
            idle = [t for t in self._owned() if t not in self._tasks]
            try:
                for tenant in await self._db(self._spool.pending_among, idle):
                    self._kick(tenant)
            except SpoolError as exc:  # the store is away: the next round tries again
                log.warning("webhook.rescan_failed", error=type(exc).__name__)

    async def stats(self) -> dict[str, object]:
        """GET /webhook: is forwarding on, how much waits, how much the target refused for good (dead letters)."""
        running = self._spool is not None and self._started and not self._closing
        dead = await self._db(self._spool.dead_letter_count) if running else None  # type: ignore[union-attr]
        return {"enabled": self.enabled, "queued": self.depth, "deadLetters": dead, "refused": self.refused}

    async def _db(self, fn: Callable, *args: object):  # noqa: ANN202 - returns whatever fn returns
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _set_depth(self, n: int) -> None:
        self.depth = n
        self._hook(self._on_depth, n)

    def _result(self, result: str) -> None:
        self._hook(self._on_result, result)

    @staticmethod
    def _hook(fn: Callable | None, arg: object) -> None:
        if fn is None:
            return
        try:
            fn(arg)
        except Exception:  # a metrics bug must not stop deliveries
            log.exception("webhook.hook_failed", hook=getattr(fn, "__name__", repr(fn)))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None  # HTTP-date form is ignored (rare here)
    except ValueError:
        return None
