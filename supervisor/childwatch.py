"""Cheap idling for hundreds of workers: child exits seen through pidfds, and one liveness timer for all workers.

Child watcher. Python 3.11's default (ThreadedChildWatcher) parks one thread in waitpid() per child: 200 tenants
are 200 threads (stacks, and a thread start per spawn). On Linux >= 5.3 a pidfd becomes readable when the child
exits, so the event loop's own epoll can watch every child. asyncio.PidfdChildWatcher exists in 3.11 but is bound
to the one loop it was attached to; `PidfdWatcher` below is the loop-agnostic version 3.12 ships (each child is
watched by the loop that spawned it), with a per-child thread as fallback if a pidfd cannot be opened (EMFILE).
3.12+ already picks pidfds by itself, so `install_child_watcher()` only acts on 3.11.

Heartbeat watchdog. A timer per worker that re-arms after every wake-up costs ~200/25 wake-ups/s for 200 healthy
workers (heartbeat_timeout 30 s, heartbeat every 5 s). `HeartbeatWatch` keeps one timer per loop, armed for the
earliest deadline of all registered workers; since healthy workers keep pushing their deadlines on, one sweep per
(timeout - interval) seconds finds nothing and re-arms once.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

_installed = False


class PidfdWatcher(asyncio.AbstractChildWatcher):
    def add_child_handler(self, pid: int, callback: Callable[..., Any], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # out of fds, or a kernel without pidfds after all: wait in a thread for this one child
            threading.Thread(target=self._wait_thread, args=(loop, pid, callback, args), daemon=True,
                             name=f"waitpid-{pid}").start()
            return
        loop.add_reader(pidfd, self._do_wait, loop, pid, pidfd, callback, args)

    @staticmethod
    def _reap(pid: int) -> int:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped elsewhere: same convention as asyncio's own watchers
            return 255
        return os.waitstatus_to_exitcode(status)

    def _do_wait(self, loop: asyncio.AbstractEventLoop, pid: int, pidfd: int, callback: Callable[..., Any],
                 args: tuple[Any, ...]) -> None:
        loop.remove_reader(pidfd)
        try:
            returncode = self._reap(pid)  # readable pidfd: the child has exited, waitpid does not block
        finally:
            os.close(pidfd)
        callback(pid, returncode, *args)

    def _wait_thread(self, loop: asyncio.AbstractEventLoop, pid: int, callback: Callable[..., Any],
                     args: tuple[Any, ...]) -> None:
        returncode = self._reap(pid)
        if not loop.is_closed():
            loop.call_soon_threadsafe(callback, pid, returncode, *args)

    def remove_child_handler(self, pid: int) -> bool:
        return False  # asyncio never calls this for its own subprocess transports

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        pass  # loop-agnostic: the running loop of the spawning coroutine is used

    def is_active(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> "PidfdWatcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def install_child_watcher() -> bool:
    """Use pidfds instead of a thread per child (Python 3.11 on Linux >= 5.3). Idempotent; leaves a watcher that
    someone else chose alone. True when PidfdWatcher is in use afterwards."""
    global _installed
    if _installed:
        return True
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # kernel < 5.3, or seccomp forbids it
        return False
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        current = policy.get_child_watcher()
        if type(current) is not asyncio.ThreadedChildWatcher:  # the default: anything else was set on purpose
            return isinstance(current, PidfdWatcher)
        # Children already watched by `current` keep their threads (daemon threads; close() joins none of them).
        policy.set_child_watcher(PidfdWatcher())
    _installed = True
    return True


class HeartbeatWatch:
    """One timer per event loop for the liveness deadlines of all its workers (see the module docstring)."""

    _per_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HeartbeatWatch]" = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # member -> its expiry callback; a member has `deadline()` (time.monotonic() seconds)
        self.members: dict[Any, Callable[[], None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._when = math.inf

    @classmethod
    def for_running_loop(cls) -> "HeartbeatWatch":
        loop = asyncio.get_running_loop()
        watch = cls._per_loop.get(loop)
        if watch is None:
            watch = cls._per_loop[loop] = cls(loop)
        return watch

    def add(self, member: Any, on_expired: Callable[[], None]) -> None:
        self.members[member] = on_expired
        self._arm(member.deadline())

    def discard(self, member: Any) -> None:
        self.members.pop(member, None)
        if not self.members and self._timer is not None:
            self._timer.cancel()
            self._timer, self._when = None, math.inf

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def _arm(self, when: float) -> None:
        if self._timer is not None and self._when <= when:
            return  # an earlier sweep is already due; it re-arms for this deadline if still needed
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        self._timer = self.loop.call_later(max(0.0, when - time.monotonic()), self._sweep)

    def _sweep(self) -> None:
        self._timer, self._when = None, math.inf
        now = time.monotonic()
        earliest = math.inf
        for member, on_expired in list(self.members.items()):
            deadline = member.deadline()
            if deadline <= now:
                del self.members[member]
                on_expired()  # synchronous and cheap: it only wakes the worker's own watchdog task
            else:
                earliest = min(earliest, deadline)
        if earliest < math.inf:
            self._arm(earliest)
