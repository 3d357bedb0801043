"""Spawn slots: how many worker spawns (and standby spawns) may be in flight at once, `worker.max_concurrent_spawns`.

An asyncio.Semaphore, except that a reload can change its size while tenants hold and wait for slots: a larger limit
lets waiters in at once, a smaller one lets the spawns in flight finish and admits nobody until fewer than the new
limit are left. Waiters are served first come, first served, so a boot of many tenants keeps its order; except that
`acquire(urgent=True)` (a linked tenant's worker, or the restart right after a scan) goes before every other waiter:
a flood of starts of new, unlinked ids (a client bug, a script) must not queue the restarts of real users' connections
behind it (measured: 286 of 560 spawns waited > 30 s).
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class SpawnSlots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._limit = limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._urgent: deque[asyncio.Future[None]] = deque()  # served before _waiters

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"limit must be >= 1, got {value}")
        self._limit = value
        self._wake()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for q in (self._urgent, self._waiters) for f in q)

    async def acquire(self, urgent: bool = False) -> None:
        if self.in_use < self._limit and not self.waiting:
            self.in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._waiters
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            raise
        finally:
            if fut in queue:
                queue.remove(fut)

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError("release() without acquire()")
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        # A slot is handed over (counted as in use) when its waiter is woken, so nobody can overtake a woken waiter.
        while (self._urgent or self._waiters) and self.in_use < self._limit:
            fut = (self._urgent or self._waiters).popleft()
            if not fut.done():
                self.in_use += 1
                fut.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.release()
