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


def sleeper() -> tuple[subprocess.Popen, float]:
    """An unrelated live process of ours (not a worker: no lock fd, no BSUP_AUTH_DIR) and its create_time."""
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    return p, psutil.Process(p.pid).create_time()


async def test_a_forged_worker_pid_naming_an_unrelated_process_is_never_signalled(tmp_path):
    """worker.pid is writable by anyone who can write the tenant directory: pid + create_time only prove the named
    process still runs. A forged record (matching create_time, a dead daemon) must not make us signal it."""
    tdir = tmp_path / "t"
    tdir.mkdir()
    victim, ct = sleeper()
    try:
        record(tdir, victim.pid, ct, dead_pid(), 0.0)
        lock = TenantLock("t", tdir, stop_grace=0.3)
        await lock.acquire()  # the lock was free: the record is checked as a possible duplicate
        lock.release()
        # ...and while the lock is held by a real leftover nobody recorded: still not the victim
        h = holder(tdir / "auth.lock")
        try:
            record(tdir, victim.pid, ct, dead_pid(), 0.0)
            with pytest.raises(TenantLocked):
                await TenantLock("t", tdir, stop_grace=0.3).acquire()
        finally:
            h.kill()
            h.wait()
            h.stdout.close()
        assert victim.poll() is None  # never got SIGTERM (sleep dies of it; kill_group waits for the exit)
    finally:
        victim.kill()
        victim.wait()


async def test_a_symlink_planted_as_auth_lock_is_refused_and_its_target_untouched(tmp_path):
    from supervisor.errors import StorageError

    tdir = tmp_path / "t"
    tdir.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tdir / "auth.lock").symlink_to(target)
    with pytest.raises(StorageError) as info:
        await TenantLock("t", tdir).acquire()
    assert info.value.status == 507 and "auth.lock is a symbolic link" in str(info.value)
    assert target.read_text() == "keep me"


def test_the_pid_file_is_written_through_a_fresh_private_temporary_never_a_planted_one(tmp_path):
    tdir = tmp_path / "t"
    tdir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in (f".worker.pid.{os.getpid()}.tmp", ".worker.pid.tmp"):  # the old predictable name, and a guess
        (tdir / name).symlink_to(victim)
    lock = TenantLock("t", tdir)
    assert lock.write_pidfile(os.getpid(), time.time())
    assert victim.read_text() == "keep me"
    assert read_json(tdir / "worker.pid")["pid"] == os.getpid()
    assert not (tdir / "worker.pid").is_symlink() and (tdir / "worker.pid").stat().st_mode & 0o777 == 0o600


HUNG = 'trap "" TERM; exec sleep 120'  # SIG_IGN survives exec: a leftover that ignores SIGTERM


async def test_hung_leftovers_of_a_killed_daemon_are_stopped_in_parallel(tmp_path):
    """24 hung workers of a SIGKILLed daemon, each holding its tenant's flock. They used to be waited for with
    to_thread(proc.wait) on the default pool (cpu_count + 4 threads: 6 on the 2-core machine of the report, set here
    so the test means the same on any machine), so the last was stopped after ceil(N/6) x grace."""
    import asyncio
    import fcntl as _fcntl
    from concurrent.futures import ThreadPoolExecutor

    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(6))
    grace, n = 1.0, 24
    procs = []
    try:
        for i in range(n):
            tdir = tmp_path / f"t{i}"
            tdir.mkdir()
            fd = os.open(tdir / "auth.lock", os.O_RDWR | os.O_CREAT, 0o600)
            _fcntl.flock(fd, _fcntl.LOCK_EX)
            p = subprocess.Popen(["sh", "-c", HUNG], pass_fds=(fd,), start_new_session=True)
            os.close(fd)  # the leftover's inherited copy is the only holder now
            procs.append(p)
        deadline = time.monotonic() + 30
        while not all(psutil.Process(p.pid).name() == "sleep" for p in procs):  # trap set, exec done (same pid)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for i, p in enumerate(procs):
            record(tmp_path / f"t{i}", p.pid, psutil.Process(p.pid).create_time(), dead_pid(), 0.0)
        locks = [TenantLock(f"t{i}", tmp_path / f"t{i}", stop_grace=grace) for i in range(n)]
        t0 = time.monotonic()
        await asyncio.gather(*(lock.acquire() for lock in locks))
        elapsed = time.monotonic() - t0
        assert all(lock.held for lock in locks) and all(p.wait(5) == -9 for p in procs)
        assert elapsed < 3 * grace, elapsed  # ~1 grace; the pool made it ~4
        for lock in locks:
            lock.release()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
