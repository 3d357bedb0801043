"""TenantLock with real flocks and real processes: contention, pid-reuse safety, live-owner 409, leftover stop,
and that releasing the daemon's fd never drops the flock a worker inherited."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from supervisor.errors import TenantLocked
from supervisor.locks import TenantLock, read_json

# A process that takes the flock on argv[1] in its own session, says "locked", then sleeps (optionally ignoring TERM).
HOLDER = """
import fcntl, os, signal, sys, time
if sys.argv[2] == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def holder(path: Path, ignore_term: bool = False) -> subprocess.Popen:
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "1" if ignore_term else "0"],
                            stdout=subprocess.PIPE, start_new_session=True, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def record(tdir: Path, pid: int, create_time: float, daemon_pid: int, daemon_ct: float) -> None:
    (tdir / "worker.pid").write_text(json.dumps({"pid": pid, "create_time": create_time, "daemon_pid": daemon_pid,
                                                 "daemon_create_time": daemon_ct, "started_at": time.time()}))


def can_flock(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


async def test_acquire_release_and_owner_record(tmp_path):
    lock = TenantLock("t", tmp_path / "t")
    await lock.acquire()
    assert lock.held and not can_flock(lock.path)
    assert read_json(lock.path)["daemon_pid"] == os.getpid()
    with pytest.raises(TenantLocked):
        await TenantLock("t", tmp_path / "t").acquire()  # a second open file description contends, even in-process
    lock.release()
    assert can_flock(lock.path) and lock.path.exists()  # the path stays: no unlink race between holders


async def test_reused_pid_is_never_signalled(tmp_path):
    tdir = tmp_path / "t"
    h = holder(tdir / "auth.lock")
    innocent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        # The record names the innocent pid with another process's start time: pid reuse, must not be touched.
        ct = psutil.Process(innocent.pid).create_time()
        record(tdir, innocent.pid, ct - 1000, dead_pid(), 0.0)
        with pytest.raises(TenantLocked):
            await TenantLock("t", tdir, stop_grace=0.2).acquire()
        assert innocent.poll() is None and h.poll() is None
    finally:
        for p in (h, innocent):
            p.kill()
            p.wait()


async def test_worker_of_live_daemon_gives_409_with_owner(tmp_path):
    tdir = tmp_path / "t"
    h = holder(tdir / "auth.lock")
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record(tdir, h.pid, psutil.Process(h.pid).create_time(), daemon.pid, psutil.Process(daemon.pid).create_time())
        with pytest.raises(TenantLocked) as info:
            await TenantLock("t", tdir, stop_grace=0.2).acquire()
        assert info.value.status == 409
        assert info.value.details == {"tenant": "t", "owner_pid": h.pid, "daemon_pid": daemon.pid}
        assert h.poll() is None
    finally:
        for p in (h, daemon):
            p.kill()
            p.wait()


@pytest.mark.parametrize("ignore_term", [False, True], ids=["term", "kill"])
async def test_leftover_of_dead_daemon_is_stopped_then_locked(tmp_path, ignore_term):
    tdir = tmp_path / "t"
    h = holder(tdir / "auth.lock", ignore_term=ignore_term)
    try:
        record(tdir, h.pid, psutil.Process(h.pid).create_time(), dead_pid(), 0.0)
        lock = TenantLock("t", tdir, stop_grace=0.3)
        t0 = time.monotonic()
        await lock.acquire()
        elapsed = time.monotonic() - t0
        # (kill_group's psutil wait reaps our own child first, so Popen cannot tell the signal: timing can)
        assert lock.held and h.wait(5) is not None and not psutil.pid_exists(h.pid)
        assert (0.3 <= elapsed < 3) if ignore_term else elapsed < 0.3
        lock.release()
    finally:
        if h.poll() is None:
            h.kill()
            h.wait()


async def test_release_keeps_the_inherited_copy_locked(tmp_path):
    """Daemon death in miniature: the child inherited the fd; closing ours must leave the flock with the child."""
    lock = TenantLock("t", tmp_path / "t")
    await lock.acquire()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             pass_fds=(lock.fd,))
    try:
        lock.release()
        assert not can_flock(lock.path)  # still held through the child's copy
        child.stdin.close()  # EOF -> the child exits -> the last copy closes -> the flock is gone
        child.wait(5)
        assert can_flock(lock.path)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


async def test_unrecorded_worker_of_dead_daemon_is_waited_for_not_409(tmp_path):
    """A daemon killed between spawning a worker and writing worker.pid leaves a holder nobody recorded; it exits on
    stdin EOF within ~1 s. The next daemon waits for it instead of answering 409 (a boot start does not retry)."""
    tdir = tmp_path / "whatsapp" / "t1"
    proc = holder(tdir / "auth.lock")
    # The owner record names a daemon that is gone (a pid that exited: its create_time can never match again).
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    gone_ct = psutil.Process(gone.pid).create_time()
    gone.wait()
    (tdir / "auth.lock").write_text(json.dumps({"daemon_pid": gone.pid, "daemon_create_time": gone_ct}))
    # The unrecorded worker lets go a moment later, as a real one does on stdin EOF.
    subprocess.Popen([sys.executable, "-c", f"import os,signal,time; time.sleep(0.5); os.kill({proc.pid}, signal.SIGKILL)"])
    lock = TenantLock("t1", tdir, stop_grace=2.0)
    try:
        await lock.acquire()
        assert lock.held
    finally:
        lock.release()
        proc.kill()
        proc.wait()
        proc.stdout.close()
