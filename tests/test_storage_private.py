"""Private files and directories whatever the umask: a tenant's directories (0700), the files the daemon writes
there (0600), and the webhook spool with its -wal and -shm (0600: it holds message bodies)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from supervisor.daemon import Supervisor
from supervisor.spool import Spool


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)  # the common default, which made storage/whatsapp 0755 and the spool 0644
    yield
    os.umask(old)


async def test_tenant_storage_is_private_under_umask_022(make_settings, storage, umask_022):
    sup = Supervisor(make_settings([{"hello": {}}, {"qr": "q"}, {"wait": True}]))
    try:
        await sup.start_tenant("t")
        tdir = storage / "whatsapp" / "t"
        assert {p.name: oct(mode(p)) for p in (storage / "whatsapp", tdir, tdir / "auth")} == \
            dict.fromkeys(("whatsapp", "t", "auth"), "0o700")
        assert mode(tdir / "auth.lock") == 0o600 and mode(tdir / "worker.pid") == 0o600
    finally:
        await sup.shutdown()


async def test_directories_an_older_version_left_open_are_tightened(make_settings, storage, umask_022):
    tdir = storage / "whatsapp" / "t"
    tdir.mkdir(parents=True, mode=0o755)
    (tdir / "auth.lock").touch(mode=0o644)
    os.chmod(storage / "whatsapp", 0o755)
    sup = Supervisor(make_settings([{"hello": {}}, {"qr": "q"}, {"wait": True}]))
    try:
        await sup.start_tenant("t")
        assert mode(storage / "whatsapp") == mode(tdir) == 0o700 and mode(tdir / "auth.lock") == 0o600
        assert mode(storage) == 0o755  # the storage root is the operator's: left alone
    finally:
        await sup.shutdown()


def test_the_webhook_spool_and_its_wal_and_shm_are_private_under_umask_022(tmp_path, umask_022):
    path = tmp_path / "new-root" / "webhook-spool.sqlite3"
    spool = Spool(path)
    spool.open()
    try:
        spool.put("t", '{"text": "a message body"}', 0.0)
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")]
        assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
        assert mode(path.parent) == 0o700  # created by the spool
    finally:
        spool.close()


def test_a_spool_an_older_version_left_world_readable_is_fixed_on_open(tmp_path, umask_022):
    path = tmp_path / "webhook-spool.sqlite3"
    spool = Spool(path)
    spool.open()
    spool.put("t", "{}", 0.0)
    spool.close()
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if f.exists():
            os.chmod(f, 0o644)
    spool = Spool(path)
    spool.open()
    try:
        spool.put("t", "{}", 1.0)
        assert [oct(mode(f)) for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))] == ["0o600"] * 3
    finally:
        spool.close()
