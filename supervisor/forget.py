"""Forgetting a tenant that was never linked (`DELETE /whatsapp/<tenant>`): what may be removed from its directory.

Only what the daemon and an unlinked worker put there goes: `auth/` (creds that no phone ever linked: nothing of a
user's account is in them), `auth.lock` and `worker.pid`; then the directory itself if that left it empty. Logged-out
archives (`auth.logged-out-*`, never deleted: docs/design.md) and anything the operator put there stay, and are
named in the answer. The caller (`Supervisor.forget_tenant`) has stopped the tenant, holds its lock and has checked
`is_linked` under it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from supervisor.errors import StorageError
from supervisor.storage import count_files, read_creds_linked

OURS = ("auth.lock", "worker.pid")


# Files Baileys writes only once a device is linked (Signal sessions, app-state keys): their presence is enough.
LINKED_ONLY = ("session-", "app-state-sync-key-")


def is_linked(auth_dir: Path, registered: bool | None) -> bool:
    """Whether the tenant's creds may be a linked device: the worker's last `creds` event, creds.json, or files only a
    linked device has. When it cannot tell (creds.json unreadable or corrupt) it says yes: deleting is the one
    mistake that cannot be undone."""
    if registered or read_creds_linked(auth_dir):
        return True
    try:
        json.loads((auth_dir / "creds.json").read_text("utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return True
    try:
        with os.scandir(auth_dir) as entries:
            return any(e.name.startswith(LINKED_ONLY) for e in entries)
    except FileNotFoundError:
        return False
    except OSError:
        return True


def remove_tenant_files(tenant_dir: Path) -> list[str]:
    """Remove an unlinked tenant's files (see above); returns the names left in its directory (sorted). Raises
    StorageError (507) when the filesystem refuses a removal."""
    tenant = tenant_dir.name
    auth = tenant_dir / "auth"
    try:
        if auth.is_symlink() or (auth.exists() and not auth.is_dir()):
            auth.unlink()  # a symlink (auth moved elsewhere by an operator): the link goes, never its target
        elif auth.is_dir():
            shutil.rmtree(auth)  # fd-based on Linux: a symlink inside is removed, never followed
        for name in OURS:
            with contextlib.suppress(FileNotFoundError):
                (tenant_dir / name).unlink()
    except OSError as exc:
        raise StorageError.from_os(tenant, "remove the tenant's files", exc) from None
    count_files(auth)  # drops its cached file count (the directory is gone)
    try:
        tenant_dir.rmdir()
        return []
    except FileNotFoundError:
        return []
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise StorageError.from_os(tenant, "remove the tenant directory", exc) from None
    with contextlib.suppress(OSError):
        return sorted(os.listdir(tenant_dir))
    return []
