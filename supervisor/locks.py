"""Tenant lock: an flock on `<tenant>/auth.lock` held by the daemon's fd and by the worker's inherited copy.

flock belongs to the open file description, so the lock lives while either the daemon or the worker keeps it:
a SIGKILLed daemon leaves the lock with its worker until that worker exits. `worker.pid` lets the next daemon find
such a leftover; psutil's create_time makes sure a reused pid is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import structlog
from filelock import lock_descriptor

from supervisor.errors import StorageError, TenantLocked
from supervisor.procs import same_process, env_names_auth_dir, holds_file, kill_group, process_identity
from supervisor.storage import make_private_dir

log = structlog.get_logger("supervisor.locks")

_LOCK_POLL = 0.05  # flock offers no async wake-up: bounded polling while a killed leftover lets go


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    # mkstemp: a fresh name, O_EXCL (a planted file or symlink at a guessable name is never opened, let alone
    # truncated) and mode 0600 whatever the umask.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # readers see the old or the new file, never half of one (a symlink there is replaced)
    except BaseException:
        # ENOSPC/EIO (or anything) half-way: the temporary must not stay behind as a half-written file.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _is_path_of(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (same device and inode)."""
    try:
        st, mine = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class TenantLock:
    def __init__(self, tenant: str, tenant_dir: Path, *, stop_grace: float = 5.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.tenant = tenant
        self.dir = tenant_dir
        self.path = tenant_dir / "auth.lock"
        self.pid_path = tenant_dir / "worker.pid"
        self.stop_grace = stop_grace
        self._sleep = sleep
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    async def acquire(self) -> None:
        """Take the lock or raise TenantLocked; stops a leftover worker of a dead daemon first."""
        if self.fd is not None:
            return
        try:
            make_private_dir(self.dir, tighten=2)  # <root>/whatsapp/<tenant>: ours, 0700 whatever the umask
        except OSError as exc:
            raise self._storage_error("create the tenant directory", exc) from None
        try:
            # O_CLOEXEC: only the tenant's own worker may inherit it (explicitly, via pass_fds), never its siblings.
            # O_NOFOLLOW: a symlink planted as auth.lock is refused, not followed (its target would be truncated).
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                exc = OSError(exc.errno, "auth.lock is a symbolic link (refused: it could point at any file)")
            raise self._storage_error("open the lock file", exc) from None
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)  # an older version's file may be 0644
        try:
            try:
                locked = lock_descriptor(fd, blocking=False)
            except OSError as exc:  # e.g. ENOLCK; EAGAIN/EWOULDBLOCK are "held", answered with False
                raise self._storage_error("lock the lock file", exc) from None
            if not locked:
                await self._take_over(fd)
            if not _is_path_of(fd, self.path):
                # Forgotten (auth.lock unlinked, DELETE /whatsapp/<t>) by another daemon between our open and our
                # lock: this inode guards nothing any more, and a third process may lock the new file.
                raise TenantLocked(f"tenant {self.tenant} was removed while it was being locked: retry",
                                   tenant=self.tenant)
            # The lock is ours; a worker recorded here that still runs without holding it would be a duplicate.
            await self._stop_leftover(read_json(self.pid_path), fd, require_dead_daemon=False)
            self._write_owner(fd)
        except BaseException:
            # Closing our only copy drops the flock: a failed acquire never leaves the tenant locked.
            os.close(fd)
            raise
        self.fd = fd
        log.info("lock.acquired", tenant=self.tenant)

    def _storage_error(self, what: str, exc: OSError) -> StorageError:
        log.error("lock.storage_error", tenant=self.tenant, op=what, error=exc.strerror or type(exc).__name__)
        return StorageError.from_os(self.tenant, what, exc)

    def _write_owner(self, fd: int) -> None:
        """Record the owning daemon in the lock file itself, so a 409 can name it even while no worker runs."""
        me = os.getpid()
        data = json.dumps({"daemon_pid": me, "daemon_create_time": process_identity(me),
                           "locked_at": time.time()}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as exc:  # ENOSPC/EROFS/EIO: a storage that cannot take 100 bytes cannot host a worker either
            raise self._storage_error("write the lock owner record", exc) from None

    async def _take_over(self, fd: int) -> None:
        record = read_json(self.pid_path)
        owner = read_json(self.path) or {}
        stopped = await self._stop_leftover(record, fd, require_dead_daemon=True)
        # The owning daemon is dead but no recorded worker was stopped: the holder is its worker, killed with the
        # daemon before `worker.pid` was written (or one finishing its exit). It exits on stdin EOF within ~1 s, so
        # wait for it like for a stopped leftover instead of answering 409 (a boot start would not retry).
        orphaned = bool(owner) and same_process(owner.get("daemon_pid"), owner.get("daemon_create_time")) is None
        if stopped or orphaned:
            deadline = time.monotonic() + self.stop_grace + 1.0
            while time.monotonic() < deadline:
                if lock_descriptor(fd, blocking=False):
                    return
                await self._sleep(_LOCK_POLL)
        elif lock_descriptor(fd, blocking=False):  # the holder went away meanwhile
            return
        details: dict[str, Any] = {"tenant": self.tenant}
        if record and same_process(record.get("pid"), record.get("create_time")):
            details.update(owner_pid=record.get("pid"), daemon_pid=record.get("daemon_pid"))
        elif same_process(owner.get("daemon_pid"), owner.get("daemon_create_time")):
            details.update(owner_pid=owner.get("daemon_pid"), daemon_pid=owner.get("daemon_pid"))
        log.warning("lock.busy", **details)
        raise TenantLocked(f"tenant {self.tenant} is owned by another process", **details)

    async def _stop_leftover(self, record: dict[str, Any] | None, fd: int, *, require_dead_daemon: bool) -> bool:
        """Stop the worker recorded in `record` if it still runs, no live daemon owns it, and it provably is this
        tenant's worker. True if one was stopped."""
        if not record:
            return False
        proc = same_process(record.get("pid"), record.get("create_time"))
        if proc is None:
            return False
        daemon_pid = record.get("daemon_pid")
        if daemon_pid == os.getpid():
            return False  # one of ours (the caller guarantees it is not a live tenant of this daemon)
        if require_dead_daemon and same_process(daemon_pid, record.get("daemon_create_time")):
            return False  # a live daemon owns it: 409, never kill another daemon's worker
        # worker.pid is a file anyone with access to the tenant directory can write: pid + create_time only prove
        # that the recorded process still runs, not that it is a worker. A forged record could name any process of
        # ours; only one that holds this tenant's auth.lock (inherited) or was started for its auth directory is.
        if not (holds_file(proc.pid, os.fstat(fd)) or env_names_auth_dir(proc.pid, self.dir / "auth")):
            log.warning("lock.leftover_unproven", tenant=self.tenant, recorded_pid=proc.pid)
            return False
        log.warning("lock.leftover_stopping", tenant=self.tenant, leftover_pid=proc.pid, daemon_pid=daemon_pid)
        await kill_group(proc, self.stop_grace)
        log.info("lock.leftover_stopped", tenant=self.tenant, leftover_pid=proc.pid)
        return True

    def write_pidfile(self, pid: int, started_at: float) -> bool:
        """Best effort (False when it could not be written, logged): the flock, which the worker inherited, is what
        guarantees one worker; worker.pid only lets a later daemon find and stop a leftover of a dead one. Failing
        the start over it would mean stopping a worker that was already spawned, for nothing."""
        me = os.getpid()
        try:
            write_json_atomic(self.pid_path, {"pid": pid, "create_time": process_identity(pid), "daemon_pid": me,
                                              "daemon_create_time": process_identity(me), "started_at": started_at})
        except (OSError, psutil.Error) as exc:  # psutil: the worker already exited; its reader reports that
            log.error("lock.pidfile_failed", tenant=self.tenant, worker_pid=pid,
                      error=getattr(exc, "strerror", None) or type(exc).__name__)
            return False
        return True

    def clear_pidfile(self) -> None:
        """Never raises: it runs on the way to release(), which must always be reached."""
        try:
            self.pid_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # EROFS etc.: a stale record is harmless, its create_time no longer matches
            log.warning("lock.pidfile_clear_failed", tenant=self.tenant, error=exc.strerror or type(exc).__name__)

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        # Close, never unlock: an explicit unlock would drop the flock of the whole open file description, i.e.
        # also the copy a still-living worker inherited. The kernel releases it when the last copy closes.
        os.close(fd)
        log.info("lock.released", tenant=self.tenant)
