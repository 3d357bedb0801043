"""In-memory live event stream for `GET /events` (SSE): numbered events, a bounded replay buffer, fan-out queues.

    bus = EventBus(buffer=1000)
    bus.publish(tenant, "state", {...})        # sync, cheap: from a TenantObserver, on the transition path
    sub = bus.subscribe(tenant=None, last_id=None)   # replay from last_id (or a `reset` first) + live events
    async for ev in sub: ...                   # ends on bus.close() or when the subscriber fell too far behind
    bus.close()                                # daemon shutdown: every stream ends, handlers return

Ids are per daemon run (1, 2, ...). A `Last-Event-ID` older than the buffer, or newer than anything this run has
sent (the daemon restarted), cannot be resumed exactly: the subscriber gets one `reset` event and must refetch the
status. A subscriber whose queue overflows (a stalled client) is ended; it reconnects with its Last-Event-ID and
resumes from the buffer, so a slow UI never makes the daemon's memory grow.
"""

from __future__ import annotations

import asyncio
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
    def __init__(self, buffer: int = 1000, queue_size: int = 1000) -> None:
        self.buffer: deque[Event] = deque(maxlen=buffer)
        self.queue_size = queue_size
        self.last_id = 0
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

    def subscribe(self, tenant: str | None = None, last_id: int | None = None) -> Subscription:
        backlog: list[Event] = []
        if last_id is not None:
            oldest = self.buffer[0].id if self.buffer else self.last_id + 1
            if last_id > self.last_id or last_id < (oldest or 0) - 1:
                reason = "unknown_id" if last_id > self.last_id else "buffer_overflow"
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

    def close(self) -> None:
        self.closed = True
        for sub in list(self._subs):
            sub.close()
