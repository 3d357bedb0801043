"""systemd notify protocol (sd_notify) spoken by the daemon itself: no libsystemd, no extra package.

Interface (everything is a no-op returning False when $NOTIFY_SOCKET is unset, e.g. outside systemd or in tests):

    notifier = Notifier.from_env(unset=True)   # once, at daemon start-up, before any worker is spawned
    notifier.enabled -> bool                   # True when there is a socket to talk to
    notifier.watchdog_interval -> float | None # WatchdogSec in seconds, when the watchdog is on *for this pid*
    notifier.ready(status=None) -> bool        # READY=1 (+ STATUS=): after the API listens and boot tenants started,
                                               # and again after a reload finished
    notifier.status(text) -> bool              # STATUS=<one line>  (shown by `systemctl status`)
    notifier.reloading(status=None) -> bool    # RELOADING=1 + MONOTONIC_USEC=: at the start of a SIGHUP reload
    notifier.stopping(status=None) -> bool     # STOPPING=1: as soon as shutdown begins
    notifier.watchdog() -> bool                # WATCHDOG=1 (use run_watchdog instead of calling this by hand)
    notifier.close() -> None

    watchdog_interval(environ=None) -> float | None   # from WATCHDOG_USEC / WATCHDOG_PID
    status_summary(states) -> str              # e.g. "3 tenants: 2 connected, 1 qr" for STATUS=
    await run_watchdog(notifier, stop_event, interval=None)   # pings at interval/2 until stop_event is set

The watchdog pings are sent by a coroutine on the daemon's own event loop, on purpose: if the loop is blocked (a
synchronous call that hangs, a CPU-bound bug), the pings stop and systemd kills and restarts the daemon. A thread
would keep pinging for a wedged daemon.

Send failures never raise: systemd going away must not take the daemon down. They return False and are kept in
`notifier.last_error` for the caller to log.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping

# Env variables systemd hands to the main process. `unset=True` removes them so the node workers (which inherit the
# daemon's environment) never see them: with NotifyAccess=main systemd would ignore their messages anyway, and a
# worker that pinged the watchdog would hide a wedged daemon.
_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

# Longest a single notification may block the event loop. A datagram send only blocks when the receiver's queue is
# full (systemd busy); dropping one STATUS/WATCHDOG after this is better than a stalled loop.
_SEND_TIMEOUT = 0.5


def _socket_address(value: str | None) -> str | None:
    """$NOTIFY_SOCKET -> an AF_UNIX address; '@name' is Linux's abstract namespace (leading NUL byte)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd 254+ may also hand out `vsock:` addresses (VMs); a daemon in a VM guest is not our use case.
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """WatchdogSec in seconds when systemd expects pings from *this* process, else None.

    WATCHDOG_PID (when set) names the process that must ping; an inherited environment in a child does not count.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return value / 1_000_000


def _one_line(text: str) -> str:
    # The protocol is newline-separated KEY=VALUE pairs: a newline inside STATUS would start a bogus assignment.
    return " ".join(str(text).split())


class Notifier:
    """Sends sd_notify datagrams to one socket address (None = disabled, every call a no-op)."""

    def __init__(self, address: str | None, watchdog_interval: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_interval if address else None
        self.last_error: OSError | None = None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """Read NOTIFY_SOCKET / WATCHDOG_*; with `unset=True`, remove them from `environ` (default os.environ)."""
        env = os.environ if environ is None else environ
        notifier = cls(_socket_address(env.get("NOTIFY_SOCKET")), watchdog_interval(env))
        if unset:
            for key in _ENV_KEYS:
                env.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send KEY=VALUE assignments as one datagram. True when it was handed to the kernel."""
        if self.address is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                # SOCK_CLOEXEC: the socket must not leak into the node workers.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(_SEND_TIMEOUT)
            self._sock.sendto(data, self.address)
        except OSError as exc:  # ENOENT/ECONNREFUSED (systemd restarted), timeout, ...
            self.last_error = exc
            self._drop_socket()
            return False
        self.last_error = None
        return True

    def ready(self, status: str | None = None) -> bool:
        parts = ["READY=1"]
        if status is not None:
            parts.append("STATUS=" + _one_line(status))
        return self.send(*parts)

    def status(self, text: str) -> bool:
        return self.send("STATUS=" + _one_line(text))

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) match this RELOADING=1 to the reload it asked for;
        # older versions ignore the field. Follow with ready() when the reload is done.
        parts = ["RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"]
        if status is not None:
            parts.append("STATUS=" + _one_line(status))
        return self.send(*parts)

    def stopping(self, status: str | None = None) -> bool:
        parts = ["STOPPING=1"]
        if status is not None:
            parts.append("STATUS=" + _one_line(status))
        return self.send(*parts)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        self._drop_socket()

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_summary(states: Iterable[str]) -> str:
    """One STATUS= line from tenant state values: "3 tenants: 2 connected, 1 qr" (busiest state first)."""
    counts = Counter(str(getattr(s, "value", s)) for s in states)
    total = sum(counts.values())
    head = f"{total} tenant" + ("" if total == 1 else "s")
    if not total:
        return head
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{head}: {parts}"


async def run_watchdog(notifier: Notifier, stop_event: asyncio.Event, interval: float | None = None) -> None:
    """Ping WATCHDOG=1 every interval/2 (interval defaults to the notifier's WatchdogSec) until stop_event is set.

    Returns at once when the watchdog is off. Half the interval is what sd_watchdog_enabled(3) recommends: one late
    ping does not trip the watchdog, a loop blocked for the whole interval does.
    """
    period = interval if interval is not None else notifier.watchdog_interval
    if not notifier.enabled or not period or period <= 0:
        return
    half = period / 2
    while not stop_event.is_set():
        notifier.watchdog()
        try:
            await asyncio.wait_for(stop_event.wait(), timeout=half)
        except asyncio.TimeoutError:
            pass
