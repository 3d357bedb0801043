"""Our processes, provably: the identity of a recorded process (pid + psutil create_time), whether a process is a
tenant's worker (it holds that tenant's auth.lock open, or was started for its auth dir), and stopping a process group
(SIGTERM, grace, SIGKILL) with the event loop's own wait on a pidfd. Used by locks.py for leftovers of a killed daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import psutil

# Two create_time readings of one process agree to within this (psutil derives it from jiffies since boot).
_CREATE_TIME_SLACK = 0.05


def same_process(pid: Any, create_time: Any) -> psutil.Process | None:
    """The live process `pid` if it is the very process that was recorded (same create_time), else None."""
    if not isinstance(pid, int) or not isinstance(create_time, (int, float)) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > _CREATE_TIME_SLACK or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_identity(pid: int) -> float:
    """create_time of `pid`, recorded next to it so the pid can be trusted later."""
    return psutil.Process(pid).create_time()


def holds_file(pid: int, target: os.stat_result) -> bool:
    """Whether process `pid` has an open descriptor on the file `target` (same device and inode): for a worker,
    the auth.lock it inherited. False when that cannot be read (another user's process: not provably ours)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{pid}/fd/{fd}")  # follows the magic link to the open file itself
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                return True
    return False


def env_names_auth_dir(pid: int, auth_dir: Path) -> bool:
    """Whether process `pid` was started as the worker of `auth_dir` (BSUP_AUTH_DIR in its environment)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read().split(b"\0")
    except OSError:
        return False
    return b"BSUP_AUTH_DIR=" + os.fsencode(str(auth_dir.resolve())) in environ


async def kill_group(proc: psutil.Process, grace: float) -> None:
    """SIGTERM the process group led by `proc`, wait up to `grace`, then SIGKILL the group.

    The wait is the loop's own (a pidfd becomes readable when the process exits), not `to_thread(proc.wait)`: the
    default pool has cpu_count + 4 threads, so N hung leftovers of a killed daemon were stopped 6 at a time on 2
    cores, the last after ceil(N/6) x grace. The pidfd also pins the process: a pid reused after our identity check
    is never signalled."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # gone already
        return
    try:
        if not proc.is_running():  # psutil compares create_time: the pid was reused before the pidfd pinned it
            return
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            return
        # Workers lead their own session; anything else gets only a direct signal, never someone else's group.
        group = pgid == proc.pid

        def send(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(pgid, sig)
                else:
                    signal.pidfd_send_signal(pidfd, sig)

        send(signal.SIGTERM)
        if not await _exited(pidfd, grace):
            send(signal.SIGKILL)
            await _exited(pidfd, grace)
    finally:
        os.close(pidfd)


async def _exited(pidfd: int, timeout: float) -> bool:
    """Wait up to `timeout` for the process behind `pidfd` to exit; True if it did."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
