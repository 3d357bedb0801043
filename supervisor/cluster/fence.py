"""Self-fencing: a node's right to act for its tenants is a lease kept alive by pinging its node-lock session.

The server drops a silent session (releasing the node lock, after which another node may bump the epochs and take
over) no earlier than `release_after` s after it last heard from us. Every ping renews the lease from the moment it
was *sent* (the server heard from us no earlier than that), so the lease runs out `fence_after` s after that send,
at least `release_after - fence_after` s before any other node can claim (docs/cluster.md "The fence margin").

Validity is computed from the monotonic clock on every call, not kept by a timer: after a SIGSTOP/SIGCONT the first
check already answers False, whichever task runs first; and a lapsed lease is never renewed by a later ping: only a
new lock acquisition (`reset`) ends a fence. The watchdog task only turns the lapse into action (kill the workers).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


class Fence:
    def __init__(self, fence_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.fence_after = fence_after
        self.clock = clock
        self._ok_at: float | None = None  # send time of the last successful ping; None = no lock held
        self.tripped = True  # until the first acquisition
        self.trips = 0  # fence events (metrics)
        # Called after each renewal (cluster_node.py: each worker gets the new end as its `lease`); must not raise.
        self.on_renew: Callable[[], None] | None = None

    def reset(self, sent_at: float) -> None:
        """The node lock was (re)acquired by a statement sent at `sent_at`."""
        self._ok_at, self.tripped = sent_at, False

    def renewed(self, sent_at: float) -> bool:
        """A ping sent at `sent_at` succeeded. Refused (False) once the lease has lapsed."""
        if not self.valid():
            return False
        self._ok_at = max(self._ok_at or sent_at, sent_at)
        if self.on_renew is not None:
            self.on_renew()
        return True

    def remaining(self) -> float:
        if self.tripped or self._ok_at is None:
            return 0.0
        return self._ok_at + self.fence_after - self.clock()

    def valid(self) -> bool:
        return self.remaining() > 0

    def valid_until(self) -> float:
        """The lease's end as wall-clock epoch seconds (what a worker is told: it exits when this passes)."""
        return time.time() + max(0.0, self.remaining())

    def valid_until_ms(self) -> int:
        """The same in whole epoch milliseconds, rounded down (the `lease` command's validUntil)."""
        return int(self.valid_until() * 1000)

    def trip(self) -> bool:
        """Mark fenced; True only for the transition (the caller kills its workers once)."""
        if self.tripped:
            return False
        self.tripped, self._ok_at = True, None
        self.trips += 1
        return True


async def keep_alive(fence: Fence, ping: Callable[[], Awaitable[object]], interval: float,
                     on_lapse: Callable[[str], None]) -> None:
    """Ping every `interval` s and watch the deadline; call `on_lapse(reason)` once and return when the lease is gone
    (deadline passed, or the session is provably lost). A ping that hangs does not delay the watchdog."""

    async def pinger() -> None:
        while True:
            sent = fence.clock()
            try:
                await asyncio.wait_for(ping(), timeout=fence.fence_after)
            except asyncio.TimeoutError:
                pass
            except Exception:  # noqa: BLE001 - the session is gone (server restart, RST): no need to wait out the lease
                raise _Lost() from None
            else:
                fence.renewed(sent)
            await asyncio.sleep(interval)

    task = asyncio.ensure_future(pinger())
    try:
        while True:
            left = fence.remaining()
            if left <= 0:
                on_lapse("ping_deadline")
                return
            done, _ = await asyncio.wait({task}, timeout=min(left, interval / 2))
            if done:
                task.exception()  # retrieved: _Lost
                on_lapse("lock_session_lost")
                return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _Lost(Exception):
    pass
