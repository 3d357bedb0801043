"""Forgetting a tenant that was never linked (`DELETE /whatsapp/<tenant>`): what may be removed from its directory.

Only what the daemon and an unlinked worker put there goes: `auth/` (creds that no phone ever linked: nothing of a
user's account is in them), `auth.lock` and `worker.pid`; then the directory itself if that left it empty. Logged-out
archives (`auth.logged-out-*`, never deleted: docs/design.md) and anything the operator put there stay, and are
named in the answer. The caller (`Supervisor.forget_tenant`) has stopped the tenant, holds its lock and has checked
`is_linked` under it.

Cluster mode (`forget_in_store`): the tenant's rows in the store go too (its state, owner row and epoch history), or
the forgotten id would stay in every node's list and its unlinked creds would be materialized at its next start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from typing import Any

from supervisor.errors import StorageError, SupervisorError, TenantLinked
from supervisor.storage import count_files, creds_linked, read_creds_linked

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


class StoreUnavailable(SupervisorError):
    """Cluster mode: the store did not answer a forget (nothing was deleted: the transaction rolled back)."""

    code = "store_unavailable"
    status = 503


class OwnedElsewhere(SupervisorError):
    """`forget` in cluster mode of a tenant that a node owns (runs there, or is being started or fenced there)."""

    code = "owned_elsewhere"
    status = 409


async def forget_in_store(cluster: Any, tid: str) -> bool:
    """Cluster mode: delete the tenant's rows (`tenant_kv`, `tenant_owner`, `tenant_epoch`) in one transaction that
    holds its owner row FOR UPDATE, so a claim (which bumps that row) waits for it and then finds nothing. Allowed only
    while no node owns the tenant, or this node at its current epoch under a valid lease (the caller stopped the
    worker and its writes were committed at its end): else 409 `owned_elsewhere`, nothing deleted. The store's
    creds.json is checked like the local one (linked, or unreadable: 409 `linked`). Returns whether any row existed.
    The epoch history goes with the row: a later start of the same id claims epoch 1 again, and no writer of the old
    epochs is alive (nobody owned the tenant)."""
    try:
        return await _forget_rows(cluster, tid)
    except SupervisorError:
        raise
    except Exception as exc:  # noqa: BLE001 - psycopg's errors (server away, timeouts): a clear 503, never the DSN
        raise StoreUnavailable(f"tenant {tid}: the state store did not answer ({type(exc).__name__}); nothing was "
                               "deleted", tenant=tid) from None


async def _forget_rows(cluster: Any, tid: str) -> bool:
    own = cluster.own
    async with own._dlock, own._tx() as cur:  # the ownership's data connection: connections stay constant per node
        await cur.execute("SELECT owner, epoch FROM tenant_owner WHERE tenant_id = %s FOR UPDATE", (tid,))
        row = await cur.fetchone()
        if row is not None and row[0] is not None:
            owner, epoch = row
            if not (owner == own.node_id and own.owned.get(tid) == epoch and own.fence.valid()):
                raise OwnedElsewhere(f"tenant {tid} is owned by node {owner}: stop it (from any node), then forget it",
                                     tenant=tid, owner=owner)
        await cur.execute("SELECT v FROM tenant_kv WHERE tenant_id = %s AND k = 'creds.json'", (tid,))
        creds = await cur.fetchone()
        if creds is not None and _store_linked(bytes(creds[0])):
            raise TenantLinked(f"tenant {tid} is linked to a phone (or its stored creds cannot be read); its creds "
                               "are never deleted: logout first", tenant=tid)
        await cur.execute("DELETE FROM tenant_kv WHERE tenant_id = %s", (tid,))
        had_state = bool(cur.rowcount)
        await cur.execute("DELETE FROM tenant_epoch WHERE tenant_id = %s", (tid,))
        await cur.execute("DELETE FROM tenant_owner WHERE tenant_id = %s", (tid,))
        own.owned.pop(tid, None)
    cluster.state.epochs.pop(tid, None)
    cluster.remote.pop(tid, None)
    return row is not None or had_state


def _store_linked(raw: bytes) -> bool:
    try:
        return creds_linked(json.loads(raw))
    except ValueError:
        return True  # cannot tell: deleting is the one mistake that cannot be undone
