"""A tenant's auth directory on disk: archiving it after a logout and summarising it for the status.

Split out of tenant.py (the state machine) because these are plain filesystem helpers: they know the layout of
docs/design.md "Storage layout" and nothing about workers or states.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from supervisor.errors import StorageError

log = structlog.get_logger("supervisor.tenant")


def make_private_dir(path: Path, *, tighten: int = 1) -> None:
    """`mkdir -p path` where every directory created gets mode 0700 whatever the umask (mkdir's `mode` is masked by
    it, and `parents=True` ignores it for the parents: storage/whatsapp came out 0755). The last `tighten` components
    are ours (e.g. 2: whatsapp/<tenant>) and are set to 0700 also when they already exist, as an older version left
    them; an existing directory above them (e.g. /var/lib/...) is the operator's and is left alone. Raises OSError."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent mkdir: tightened below like any existing one
            os.mkdir(d, 0o700)
    for d in [path, *path.parents][:max(tighten, len(missing))]:
        _chmod_private(d)
    if not path.is_dir():  # e.g. a dangling symlink or a file in its place (as Path.mkdir(exist_ok=True) says)
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))


def _chmod_private(d: Path) -> None:
    # O_NOFOLLOW: a symlink in our place (e.g. auth moved to another disk) is not followed to chmod its target.
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def create_private_file(path: Path) -> None:
    """Create `path` (if missing) with mode 0600 whatever the umask, never through a symlink; an existing file of
    ours is set to 0600. For files another library then opens by name (SQLite: its -wal and -shm copy this mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def archive_auth(tenant: str, tenant_dir: Path, auth_dir: Path) -> Path | None:
    """Move `auth` aside to `auth.logged-out-<UTC>` (never deleted: the operator may still need it). Returns the
    archive, or None when there was no auth. Raises StorageError when the filesystem refuses the rename."""
    if not auth_dir.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = tenant_dir / f"auth.logged-out-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = tenant_dir / f"auth.logged-out-{stamp}-{n}"
    try:
        auth_dir.rename(target)
    except OSError as exc:
        raise StorageError.from_os(tenant, "archive the auth directory", exc) from None
    log.warning("tenant.auth_archived", tenant=tenant, archive=target.name)
    return target


# auth dir -> (its st_mtime_ns, file count). A paired tenant holds ~816 files; counting them with a stat per file
# for every status made `GET /whatsapp` with 200 tenants take seconds (bench/real_fleet.py). The directory's mtime
# changes whenever a file is created, renamed in (the worker's atomic writes) or removed, so one stat per status
# tells whether the last count still holds.
_file_counts: dict[Path, tuple[int, int]] = {}


def count_files(auth_dir: Path) -> int:
    """Regular files in `auth_dir` (0 when it is missing or unreadable), cached on the directory's mtime."""
    try:
        mtime = auth_dir.stat().st_mtime_ns
    except OSError:
        _file_counts.pop(auth_dir, None)
        return 0
    cached = _file_counts.get(auth_dir)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    # A directory changed within the last second may change again within the same (coarse) timestamp tick:
    # count it, but only cache settled directories.
    settled = time.time_ns() - mtime > 1_000_000_000
    try:
        with os.scandir(auth_dir) as entries:  # d_type from readdir: no stat per file
            files = sum(1 for e in entries if e.is_file(follow_symlinks=False))
    except OSError:
        return 0
    if settled:
        _file_counts[auth_dir] = (mtime, files)
    return files


def creds_linked(creds: Any) -> bool:
    """Whether saved Baileys creds are a linked device, the same test as the worker's `isRegistered`. Only
    pair-success (QR or code) adds `account`; `registered` is no help: Baileys sets it in the pairing-code flow only,
    so a QR-linked creds.json says `"registered": false`."""
    if not isinstance(creds, dict):
        return False
    me = creds.get("me")
    return bool(creds.get("account") and isinstance(me, dict) and me.get("id"))


def read_creds_linked(auth_dir: Path) -> bool:
    """`creds_linked` of `auth_dir/creds.json`; False when it is missing or unreadable. Never raises."""
    with contextlib.suppress(OSError, ValueError):
        return creds_linked(json.loads((auth_dir / "creds.json").read_text("utf-8")))
    return False


def auth_info(auth_dir: Path, registered: bool | None) -> dict[str, Any]:
    """`status.auth`: whether the creds are linked (the worker's last `creds` event, else creds.json) and how many
    files the auth directory holds. Never raises: a status must answer even on broken storage."""
    files = count_files(auth_dir)
    if registered is None and files:
        registered = read_creds_linked(auth_dir)
    return {"registered": bool(registered), "files": files}
