"""A tenant's backoff sleep, which an explicit start may cut short: `BackoffWait` (backoff.py decides the delay).

Why cut short: `start` of a tenant in a 60 s backoff used to answer ok and leave it waiting for `nextRetryAt`; an
operator who fixed the network wants the retry now. Why not always at once: `start` is idempotent and clients call it
freely (a web page polling it), so the retry comes no sooner than `floor` after the previous attempt (Node + Baileys
cost ~1 s of CPU per spawn): a poller cannot turn a backoff into a spawn loop. Clock and sleep are injected (the
tenant's), so a fake clock drives it in tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger("supervisor.tenant")
RETRY_FLOOR = 5.0  # seconds between the previous attempt and a retry an explicit start asks for


class BackoffWait:
    def __init__(self, tenant: str, clock: Callable[[], float], sleep: Callable[[float], Awaitable[Any]]) -> None:
        self.tenant, self.clock, self._sleep = tenant, clock, sleep
        self.floor = RETRY_FLOOR
        self.sleeping = False
        self.next_retry_at: float | None = None  # set by the tenant before its state says backoff
        self._wake = asyncio.Event()

    async def sleep(self, delay: float) -> None:
        """Sleep `delay`, or less if `retry()` moved `next_retry_at` earlier meanwhile."""
        self.sleeping = True
        try:
            while delay > 0:
                self._wake.clear()
                sleep = asyncio.ensure_future(self._sleep(delay))
                wake = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({sleep, wake}, return_when=asyncio.FIRST_COMPLETED)
                    woken = wake.done()
                finally:
                    sleep.cancel()
                    wake.cancel()
                    await asyncio.gather(sleep, wake, return_exceptions=True)
                if not woken or self.next_retry_at is None:
                    return
                delay = self.next_retry_at - self.clock()
        finally:
            self.sleeping, self.next_retry_at = False, None

    def retry(self, attempt_at: float | None) -> bool:
        """An explicit start during the sleep: the next attempt now, or `floor` after the previous one (`attempt_at`)
        if that is later. True if the retry is immediate (the caller then waits for the spawn)."""
        now = self.clock()
        at = max(now, (attempt_at if attempt_at is not None else now) + self.floor)
        if not self.sleeping or (self.next_retry_at is not None and at >= self.next_retry_at):
            return False  # the backoff ends sooner anyway
        self.next_retry_at = at
        self._wake.set()
        log.info("tenant.retry_requested", tenant=self.tenant, delay=round(at - now, 3))
        return at <= now
