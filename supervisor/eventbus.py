"""In-memory live event stream for `GET /events` (SSE): numbered events, a bounded replay buffer, fan-out queues.

    bus = EventBus(buffer=1000)
    bus.publish(tenant, "state", {...})        # sync, cheap: from a TenantObserver, on the transition path
    sub = bus.subscribe(tenant=None, last_id=None)   # replay from last_id (or a `reset` first) + live events
    async for ev in sub: ...                   # ends on bus.close() or when the subscriber fell too far behind
    bus.gained(tenant)                         # cluster mode: this node (again) owns the tenant; what happened
                                               # elsewhere meanwhile is not in our buffer
    bus.close()                                # daemon shutdown: every stream ends, handlers return

Ids are unique per daemon run: the run's first id is `base` + 1, base = a random 20-bit run tag above 32 bits of
counter (16 digits, exact as a JavaScript number), so an id of another run or another node is told from ours (docs/events.md
"Resuming"): before, node b read node a's id 300 as its own 300 and replayed the wrong events. `0` means "from
this run's start". An id this run did not give out (another run or node, or newer than ours), one older than the
buffer, or one from before the tenant last came to this node (`gained`) cannot be resumed exactly: the subscriber
gets one `reset` event first (the SSE handler follows it with a `snapshot`). A subscriber whose queue overflows (a
stalled client) is ended; it reconnects with its Last-Event-ID and resumes from the buffer, so a slow UI never makes
the daemon's memory grow.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

_CLOSED = object()


@dataclass(frozen=True)
class Event:
    id: int | None  # None: not resumable (reset, snapshot)
    type: str  # state | qr | reset | snapshot
    tenant: str | None
    data: dict[str, Any] = field(default_factory=dict)


class Subscription:
    def __init__(self, bus: EventBus, tenant: str | None, backlog: list[Event], maxsize: int) -> None:
        self.bus, self.tenant = bus, tenant
        self.reset = bool(backlog) and backlog[0].type == "reset"  # not resumed: the handler sends a snapshot next
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.maxsize = maxsize
        self.overflowed = False
        for ev in backlog:
            self.queue.put_nowait(ev)

    def offer(self, ev: Event) -> None:
        if self.tenant is not None and ev.tenant != self.tenant:
            return
        if self.queue.qsize() >= self.maxsize:
            self.overflowed = True
            self.close()
            return
        self.queue.put_nowait(ev)

    def close(self) -> None:
        self.bus._subs.discard(self)
        self.queue.put_nowait(_CLOSED)

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None when the stream ended. Raises TimeoutError after `timeout` (heartbeat time)."""
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if item is _CLOSED:
            self.queue.put_nowait(_CLOSED)  # idempotent end
            return None
        return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        ev = await self.get()
        if ev is None:
            raise StopAsyncIteration
        return ev


class EventBus:
    def __init__(self, buffer: int = 1000, queue_size: int = 1000, base: int | None = None) -> None:
        self.buffer: deque[Event] = deque(maxlen=buffer)
        self.queue_size = queue_size
        # this run's ids are > base: a random 20-bit run tag above 32 bits of counter. Not the start time: two nodes
        # started 50 ms apart would share ids after 50,000 events. 16 digits, below 2**53 (exact in JavaScript).
        self.base = ((1 << 20) | secrets.randbits(20)) << 32 if base is None else base
        self.last_id = self.base
        self._gained: dict[str, int] = {}  # tenant -> last_id when this node (again) became its owner
        self.closed = False
        self._subs: set[Subscription] = set()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, tenant: str, type_: str, data: dict[str, Any]) -> Event:
        self.last_id += 1
        ev = Event(self.last_id, type_, tenant, {"tenant": tenant, **data, "at": round(time.time(), 3)})
        self.buffer.append(ev)
        for sub in list(self._subs):
            sub.offer(ev)
        return ev

    def gained(self, tenant: str) -> None:
        """Cluster mode, on gain: a Last-Event-ID from before now lacks what the tenant did on another node."""
        self._gained[tenant] = self.last_id

    def subscribe(self, tenant: str | None = None, last_id: int | None = None) -> Subscription:
        backlog: list[Event] = []
        if last_id is not None:
            reason = self._unresumable(tenant, self.base if last_id == 0 else last_id)
            if reason is not None:
                backlog.append(Event(None, "reset", tenant, {"reason": reason, "lastEventId": self.last_id}))
            else:
                backlog.extend(e for e in self.buffer if e.id is not None and e.id > last_id
                               and (tenant is None or e.tenant == tenant))
        sub = Subscription(self, tenant, backlog, self.queue_size)
        if self.closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def _unresumable(self, tenant: str | None, last_id: int) -> str | None:
        if last_id < self.base or last_id > self.last_id:
            return "unknown_id"  # another run's or another node's (the tenant moved), or one we never gave out
        oldest = self.buffer[0].id if self.buffer else self.last_id + 1
        if last_id < (oldest or 0) - 1:
            return "buffer_overflow"
        moved = self._gained.values() if tenant is None else [self._gained.get(tenant, -1)]
        if any(last_id <= g for g in moved):  # at the gain itself too: what came before it was elsewhere
            return "moved"  # our id, but from before the tenant came (back) to this node
        return None

    def close(self) -> None:
        self.closed = True
        for sub in list(self._subs):
            sub.close()
