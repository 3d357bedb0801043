"""Asking the store about a tenant's owner after a failed forward (supervisor/api_forward.py `_owner_down`; docs/
cluster.md "Forwarding"): is the owner alive, and later, who took the tenant over. Every request that waits
registers its tenant; one task reads the owner rows of all registered tenants in one query per POLL and wakes the
waiters. So a burst of requests for a dead node's tenants costs one small query per POLL, not one per request: they
share the ownership's data connection (and its lock) with the claim round that takes those tenants over, which they
must not slow down."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any, Callable, TypeVar

from ..events import get_logger

log = get_logger()
POLL = 0.1  # s between two reads of the waiting tenants' owner rows
Row = tuple[str, int, str | None, bool]  # (owner, epoch, advertise_url, alive): views.owners_now
T = TypeVar("T")


class OwnerPoll:
    def __init__(self, own: Any) -> None:
        self.own = own
        self.rows: dict[str, Row] = {}  # the last read: waiting tenant -> its owner row (absent: nobody owns it)
        self.read_no = 0  # the number of the read `rows` came from (0: none, or it failed)
        self._next_no = 1  # the number the next read will have
        self._want: Counter[str] = Counter()
        self._tick = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def wait(self, tid: str, check: Callable[[Row | None], T | None], timeout: float,
                   fresh: bool = False) -> T | None:
        """The first non-None `check(row)` over the reads from now on (also called once at once with None: a
        check may look at more than the row), or None after `timeout`. fresh: only reads that started after this
        call and succeeded count (no call at once): the answer is about the store after the caller's failure."""
        self._want[tid] += 1
        need = self._next_no if fresh else 0
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="forward-owner-poll")
        try:
            async with asyncio.timeout(timeout), self._tick:
                while (found := check(self.rows.get(tid)) if self.read_no >= need else None) is None:
                    await self._tick.wait()
                return found
        except TimeoutError:
            return None
        finally:
            self._want[tid] -= 1
            if self._want[tid] <= 0:
                del self._want[tid]

    async def _run(self) -> None:
        while self._want:
            no, self._next_no = self._next_no, self._next_no + 1
            try:
                rows = await asyncio.wait_for(self.own.owners_now(list(self._want)), 10.0)
            except Exception as exc:  # noqa: BLE001 - store away or slow: nobody known this round
                log.warning("api.owner_poll_failed", error=type(exc).__name__)
                rows, no = {}, 0
            async with self._tick:
                self.rows, self.read_no = rows, no
                self._tick.notify_all()
            await asyncio.sleep(POLL)
        self.rows, self.read_no = {}, 0

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
