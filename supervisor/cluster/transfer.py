"""Moving tenant auth between a single-host storage and the postgres store (`baileys-supervisor db import|export`,
docs/cluster.md "Import and export").

The unit is one file of the stock `useMultiFileAuthState` layout = one `tenant_kv` row whose key is the file name
exactly as it is on disk (`creds.json`, `pre-key-12.json`, `session-4915...0.json`: Baileys' `fixFileName` escaping,
'/' -> '__', ':' -> '-', is already applied), value = the file's bytes. Only top-level regular `*.json` files are
auth state; temp files of an interrupted atomic write (`.<name>.tmp-...`) and symlinks are not imported (counted
as `skippedFiles`, as are the subdirectories). The decrypt journal's unacked entries and the sent store go along as
`journal/<hash>.json` and `sent/<waId>.json` rows (supervisor/cluster_journal.py); an export writes them back into
`journal/` (the legacy per-file layout, which the worker migrates and re-emits at open) and `sent/`.

Fencing of an import (one transaction per tenant): the owner row is locked `FOR UPDATE`; a row owned by a node
whose liveness lock is held is refused (stop the tenant first); otherwise the epoch is bumped with owner NULL and
`tenant_epoch` records it (owner `import`, reason `import`), and the rows are written at that new epoch. The bump
fences any writer of an older epoch (`fenced_tx` checks the epoch), a claim waits for the row lock, and a node
whose lock is free but comes back mid-import cannot: the import holds that node's lock for the transaction, as a
takeover does. `wanted` is left as it is (a new row is not wanted: start the tenant through the API or
`tenants.boot`).

On this host, a tenant whose `auth.lock` is held (a single-host daemon or its worker runs it: the directory may be
changing) is refused (`tenant_running`); the lock is held by the import while it reads and writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..cluster_journal import import_rows
from ..cluster_state import valid_key  # the same rule as a worker's writes
from ..ids import is_tenant_id
from .schema import LOCK_NS

IMPORT_OWNER = "import"  # tenant_epoch.owner of an import's bump (not a node: no cluster_node row)


class TransferError(Exception):
    """One tenant could not be transferred; `code` is the JSON report's status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def auth_files(auth_dir: Path) -> tuple[dict[str, bytes], int]:
    """The auth state files of a directory (name -> bytes) and how many entries were not auth state."""
    files: dict[str, bytes] = {}
    skipped = 0
    with os.scandir(auth_dir) as entries:
        for e in entries:
            if e.name.startswith(".") or not e.name.endswith(".json") or not e.is_file(follow_symlinks=False):
                skipped += 1
                continue
            with open(e.path, "rb") as f:
                files[e.name] = f.read()
    return files, skipped


def check_creds(files: dict[str, bytes]) -> None:
    """A directory without a parsable creds.json is not a tenant's auth (Baileys would start a new pairing)."""
    raw = files.get("creds.json")
    if raw is None:
        raise TransferError("no_creds", "creds.json is missing")
    try:
        creds = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TransferError("creds_corrupt", f"creds.json does not parse: {type(exc).__name__}") from None
    if not isinstance(creds, dict):
        raise TransferError("creds_corrupt", "creds.json is not a JSON object")


def tenants_under(storage_root: Path) -> list[str]:
    """Tenant ids with an auth directory under `<storage_root>/whatsapp`, sorted."""
    base = storage_root / "whatsapp"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if is_tenant_id(p.name) and (p / "auth").is_dir())


@contextlib.contextmanager
def _local_lock(tenant_dir: Path) -> Any:
    """The single-host tenant lock (supervisor/locks.py), if the directory has one: held while importing."""
    try:
        fd = os.open(tenant_dir / "auth.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TransferError("tenant_running", f"{tenant_dir.name} is locked by a running daemon or worker on "
                                "this host (auth.lock): stop it first") from None
        yield
    finally:
        os.close(fd)  # drops our flock


def import_tenant(conn: Any, tid: str, auth_dir: Path, *, force: bool = False) -> dict[str, Any]:
    """Load one auth directory into the store (see the module doc for the fencing). Returns the tenant's report;
    raises TransferError for a tenant that is not imported."""
    if not auth_dir.is_dir():
        raise TransferError("no_auth_dir", f"{auth_dir} is not a directory")
    with _local_lock(auth_dir.parent):
        return _import_locked(conn, tid, auth_dir, force)


def _import_locked(conn: Any, tid: str, auth_dir: Path, force: bool) -> dict[str, Any]:
    files, skipped = auth_files(auth_dir)
    check_creds(files)
    files.update(import_rows(auth_dir))
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("INSERT INTO tenant_owner (tenant_id, wanted) VALUES (%s, false) ON CONFLICT DO NOTHING", (tid,))
        cur.execute("SELECT owner, epoch FROM tenant_owner WHERE tenant_id = %s FOR UPDATE", (tid,))
        owner, epoch = cur.fetchone()
        if owner is not None:
            cur.execute("SELECT pg_try_advisory_xact_lock(%s, lock_key) FROM cluster_node WHERE node_id = %s",
                        (LOCK_NS, owner))
            row = cur.fetchone()
            if row is not None and not row[0]:
                raise TransferError("owned_by_live_node", f"tenant {tid} is owned by live node {owner!r} (epoch "
                                    f"{epoch}): stop it first (POST /whatsapp/{tid}/stop) and wait for the release")
        cur.execute("SELECT count(*) FROM tenant_kv WHERE tenant_id = %s", (tid,))
        existing = cur.fetchone()[0]
        if existing and not force:
            raise TransferError("has_state", f"tenant {tid} already has {existing} rows in the store (--force "
                                "replaces them)")
        cur.execute("UPDATE tenant_owner SET owner = NULL, epoch = epoch + 1, updated_at = now() "
                    "WHERE tenant_id = %s RETURNING epoch", (tid,))
        new_epoch = cur.fetchone()[0]
        cur.execute("INSERT INTO tenant_epoch (tenant_id, epoch, owner, reason) VALUES (%s, %s, %s, 'import')",
                    (tid, new_epoch, IMPORT_OWNER))
        cur.execute("DELETE FROM tenant_kv WHERE tenant_id = %s", (tid,))
        cur.executemany("INSERT INTO tenant_kv (tenant_id, k, v, epoch) VALUES (%s, %s, %s, %s)",
                        [(tid, k, v, new_epoch) for k, v in sorted(files.items())])
    return {"tenant": tid, "status": "imported", "files": len(files), "bytes": sum(map(len, files.values())),
            "skippedFiles": skipped, "replaced": existing, "epoch": new_epoch, "previousOwner": owner}


def import_many(conn: Any, storage_root: Path, tenants: Iterable[str] | None = None, *,
                force: bool = False) -> list[dict[str, Any]]:
    """Import each tenant (default: every one under the root); one report per tenant, failures included."""
    out = []
    for tid in (tenants_under(storage_root) if tenants is None else tenants):
        try:
            if not is_tenant_id(tid):
                raise TransferError("invalid_tenant", f"invalid tenant id {tid[:80]!r}")
            out.append(import_tenant(conn, tid, storage_root / "whatsapp" / tid / "auth", force=force))
        except TransferError as exc:
            out.append({"tenant": tid, "status": exc.code, "message": str(exc)})
    return out


def export_tenant(conn: Any, tid: str, target: Path) -> dict[str, Any]:
    """Write the tenant's rows as files of a new directory stock Baileys can load (dir 0700, files 0600, each
    fsynced, then the directory). Refuses a target that exists and is not empty. One consistent snapshot."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TransferError("target_not_empty", f"{target} exists and is not an empty directory")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur.execute("SELECT k, v FROM tenant_kv WHERE tenant_id = %s ORDER BY k", (tid,))
        rows = [(k, bytes(v)) for k, v in cur.fetchall()]
        cur.execute("SELECT epoch FROM tenant_owner WHERE tenant_id = %s", (tid,))
        epoch = (cur.fetchone() or [None])[0]
    if not rows:
        raise TransferError("no_state", f"tenant {tid} has no rows in the store")
    bad = [k for k, _ in rows if not valid_key(k)]
    if bad:
        raise TransferError("bad_key", f"{len(bad)} keys are not plain file names, e.g. {bad[0][:80]!r}")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target, 0o700)  # whatever the umask or an existing empty dir's mode: it holds private keys
    subs = sorted({k.split("/", 1)[0] for k, _ in rows if "/" in k})
    for sub in subs:
        (target / sub).mkdir(mode=0o700)
    for k, v in rows:
        fd = os.open(target / k, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(v)
            while view:  # a regular file may take less than asked
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    for d in [*(target / sub for sub in subs), target]:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return {"tenant": tid, "status": "exported", "files": len(rows), "bytes": sum(len(v) for _, v in rows),
            "epoch": epoch, "to": str(target)}


def export_many(conn: Any, storage_root: Path, tenants: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Each tenant (default: every one with rows) into `<storage_root>/whatsapp/<t>/auth`, the single-host layout;
    one report per tenant, failures included."""
    if tenants is None:
        tenants = [r[0] for r in conn.execute("SELECT DISTINCT tenant_id FROM tenant_kv ORDER BY 1").fetchall()]
    out = []
    for tid in tenants:
        try:
            if not is_tenant_id(tid):
                raise TransferError("invalid_tenant", f"invalid tenant id {tid[:80]!r}")
            out.append(export_tenant(conn, tid, storage_root / "whatsapp" / tid / "auth"))
        except TransferError as exc:
            out.append({"tenant": tid, "status": exc.code, "message": str(exc)})
    return out
