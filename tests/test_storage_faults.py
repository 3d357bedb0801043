"""Storage faults under the real Supervisor with real fake workers and real filesystems: a read-only storage root
(a read-only bind mount: we run as root, so chmod 0500 would not stop anything), an immutable tenant directory
(chattr +i, which stops root too) and a full disk (a tiny tmpfs filled to ENOSPC). Expected: a clear error or
state (never a bare OSError / 500 "internal"), no crash loop, no worker left running without a daemon reading it,
and no half-written files (temporary or truncated worker.pid) left behind.

These need CAP_SYS_ADMIN for mount(8) and an ext2/3/4-like filesystem for chattr; each test skips with the reason
when the machine does not allow it (docs/benchmarks.md, "Storage faults", records what works where)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from conftest import live_workers, spawn_records, wait_until
from supervisor.daemon import Supervisor
from supervisor.errors import SupervisorError

pytestmark = pytest.mark.slow  # fault injection (mounts, chattr); still run in CI

READY = [{"hello": {}}, {"qr": "q"}, {"wait": True}]


def sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


@contextlib.contextmanager
def readonly_bind(path: Path):
    """Make `path` read-only in place (bind mount onto itself, remount ro); undone on exit."""
    if sh("mount", "--bind", str(path), str(path)).returncode != 0:
        pytest.skip("mount --bind not permitted here")
    try:
        r = sh("mount", "-o", "remount,bind,ro", str(path))
        if r.returncode != 0:
            pytest.skip(f"read-only remount not permitted: {r.stderr.strip()}")
        yield
    finally:
        sh("umount", "-l", str(path))


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "256k"):
    r = sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    if r.returncode != 0:
        pytest.skip(f"tmpfs mount not permitted: {r.stderr.strip()}")
    try:
        yield
    finally:
        sh("umount", "-l", str(path))


def fill(path: Path) -> None:
    """Fill the filesystem holding `path` until ENOSPC."""
    with open(path / "filler", "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)


def leftovers(root: Path) -> list[str]:
    """Half-written files: temporaries of atomic writes, and worker.pid files that are not valid JSON."""
    bad = []
    for p in root.rglob("*"):
        if p.is_file() and (p.name.endswith(".tmp") or p.name.startswith(".")):
            bad.append(str(p.relative_to(root)))
        elif p.is_file() and p.name == "worker.pid":
            try:
                json.loads(p.read_text())
            except ValueError:
                bad.append(f"{p.relative_to(root)} (not JSON)")
    return bad


async def settle_without_crash_loop(sup: Supervisor, tid: str, fake_state: Path, marker: str,
                                    killed: int | None = None) -> dict:
    """Wait until the tenant rests (failed/stopped) or runs a worker (not `killed`, whose death the daemon may not
    have seen yet) that showed its QR, then check bounded spawns
    and that every live worker is the one the status names. An event, not a time window (a fixed 1.5 s window
    was too short at load 30): READY workers never exit on their own, so a crash loop never settles and fails by
    the wait's bound; a supervise task that died fails at once."""
    tenant = sup.tenants[tid]

    def settled() -> dict | None:
        if tenant._task is not None and tenant._task.done() and not tenant._task.cancelled():
            exc = tenant._task.exception()
            assert exc is None, f"the tenant's supervise task died with {exc!r}; status says {sup.status(tid)}"
        st = sup.status(tid)
        running = st["state"] == "qr" and st["pid"] not in (None, killed)
        return st if st["state"] in ("failed", "stopped") or running else None

    st = await wait_until(settled, what=f"{tid} resting or running (a crash loop never settles)")
    n = len(spawn_records(fake_state))
    assert n <= 4, f"{n} spawns before {tid} settled: a crash loop on broken storage"
    live = set(live_workers(marker))
    assert live <= ({st["pid"]} - {None}), f"workers nobody reads: {live}, status {st}"
    return st


def clear_error_or_state(exc: BaseException | None, st: dict | None) -> None:
    if exc is not None:
        assert isinstance(exc, SupervisorError), f"{type(exc).__name__}: {exc} (the API would answer 500 internal)"
        assert exc.code != "internal"
    else:
        assert st is not None and st["state"] in ("failed", "backoff", "stopped"), st
        assert st["stateReason"], st


async def test_start_on_readonly_storage_root(make_settings, storage, fake_state, marker):
    sup = Supervisor(make_settings(READY))
    with readonly_bind(storage):
        exc = st = None
        try:
            st = await sup.start_tenant("t1")
        except BaseException as e:  # noqa: BLE001 - the type is what is under test
            exc = e
        try:
            clear_error_or_state(exc, st)
            assert spawn_records(fake_state) == [] and live_workers(marker) == {}
        finally:
            await sup.shutdown()
    assert list(storage.iterdir()) == []


async def test_immutable_tenant_dir(make_settings, storage, fake_state, marker):
    sup = Supervisor(make_settings(READY))
    await sup.start_tenant("t1")
    await sup.stop_tenant("t1")
    tdir = storage / "whatsapp" / "t1"
    if sh("chattr", "+i", str(tdir)).returncode != 0 or sh("chattr", "+i", str(tdir / "auth.lock")).returncode != 0:
        pytest.skip("chattr +i not supported on this filesystem")
    n0 = len(spawn_records(fake_state))
    try:
        exc = st = None
        try:
            st = await sup.start_tenant("t1")
        except BaseException as e:  # noqa: BLE001
            exc = e
        clear_error_or_state(exc, st)
        if exc is None:
            await settle_without_crash_loop(sup, "t1", fake_state, marker)
        assert leftovers(storage) == []
    finally:
        await sup.shutdown()
        sh("chattr", "-i", str(tdir / "auth.lock"))
        sh("chattr", "-i", str(tdir))
    assert len(spawn_records(fake_state)) - n0 <= 1


async def test_storage_turns_readonly_while_the_worker_runs(make_settings, storage, fake_state, marker):
    """The worker dies (crash) after the storage went read-only: the daemon cannot clear worker.pid. It must not
    lose track of the tenant (state says what happened, no stale `qr` with no pid) nor leak the lock or a worker."""
    sup = Supervisor(make_settings(READY, restart={"initial_delay": 0.2, "max_delay": 0.5}))
    st = await sup.start_tenant("t1")
    await wait_until(lambda: sup.status("t1")["hasQR"])
    pid = st["pid"]
    try:
        with readonly_bind(storage):
            psutil.Process(pid).kill()
            st = await settle_without_crash_loop(sup, "t1", fake_state, marker, killed=pid)
            assert not (st["state"] == "qr" and st["pid"] is None), f"stale status after the worker died: {st}"
            assert st["state"] in ("failed", "backoff", "starting", "qr"), st
    finally:
        await sup.shutdown()
    # After shutdown every lock fd is closed: a fresh daemon can take the tenant at once.
    sup2 = Supervisor(make_settings(READY))
    try:
        st2 = await sup2.start_tenant("t1")
        assert st2["pid"]
    finally:
        await sup2.shutdown()


async def test_full_disk(make_settings, storage, fake_state, marker):
    """ENOSPC for the daemon's own small writes (worker.pid, lock owner record): a clear error or state, bounded
    spawns, and no temporary or truncated files left behind."""
    with tiny_tmpfs(storage):
        sup = Supervisor(make_settings(READY))
        (storage / "whatsapp" / "t1").mkdir(parents=True)  # the dirs exist (inodes are free): only data is short
        fill(storage)
        exc = st = None
        try:
            try:
                st = await sup.start_tenant("t1")
            except BaseException as e:  # noqa: BLE001
                exc = e
            if exc is not None:
                clear_error_or_state(exc, None)
            else:  # it may run (the worker needs no disk here); then it must run cleanly and be tracked
                st = await settle_without_crash_loop(sup, "t1", fake_state, marker)
            assert leftovers(storage) == [], "half-written files on a full disk"
        finally:
            await sup.shutdown()


async def test_full_disk_between_lock_and_pidfile(make_settings, storage, fake_state, marker):
    """Exactly one free page: the lock's owner record fits, worker.pid does not. The worker has already been
    spawned when the pid file write fails: it must not be orphaned (alive, unread, holding the inherited flock),
    the status must not freeze in `starting`, and the failed atomic write must not leave its temporary behind."""
    with tiny_tmpfs(storage):
        sup = Supervisor(make_settings(READY))
        (storage / "whatsapp" / "t1").mkdir(parents=True)
        spare = storage / "spare"
        spare.write_bytes(b"x" * 4096)
        fill(storage)
        spare.unlink()  # one page free again
        try:
            exc = st = None
            try:
                st = await sup.start_tenant("t1")
            except BaseException as e:  # noqa: BLE001
                exc = e
            if exc is not None:
                clear_error_or_state(exc, None)
            else:
                st = await settle_without_crash_loop(sup, "t1", fake_state, marker)
                assert not (st["state"] == "starting" and st["pid"] is None), f"frozen status: {st}"
            assert leftovers(storage) == [], "half-written files on a full disk"
        finally:
            await sup.shutdown()
