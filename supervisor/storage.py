"""A tenant's auth directory on disk: archiving it after a logout and summarising it for the status.

Split out of tenant.py (the state machine) because these are plain filesystem helpers: they know the layout of
docs/design.md "Storage layout" and nothing about workers or states.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from supervisor.errors import StorageError

log = structlog.get_logger("supervisor.tenant")


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


def auth_info(auth_dir: Path, registered: bool | None) -> dict[str, Any]:
    """`status.auth`: whether the creds are linked (the worker's last `creds` event, else creds.json) and how many
    files the auth directory holds. Never raises: a status must answer even on broken storage."""
    try:
        files = sum(1 for e in auth_dir.iterdir() if e.is_file())
    except OSError:
        files = 0
    if registered is None and files:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            registered = bool(json.loads((auth_dir / "creds.json").read_text("utf-8")).get("registered"))
    return {"registered": bool(registered), "files": files}
