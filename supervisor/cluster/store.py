"""Fenced tenant state in PostgreSQL: the one epoch check (`fenced_tx`) and the key/value table (creds.json, Signal
keys: one row per file of the stock multi-file auth layout). Later versions add the decrypt journal, the outbox and
the webhook spool here, every write inside `fenced_tx` (docs/cluster.md "Not done yet")."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any


class Fenced(Exception):
    """This node does not own the tenant at that epoch (taken over, released, or our lease lapsed)."""


@contextlib.asynccontextmanager
async def fenced_tx(conn: Any, tid: str, node_id: str, epoch: int) -> AsyncIterator[Any]:
    """The one epoch check, for any connection (the daemon's, or later a worker's own): a transaction holding FOR
    SHARE on the owner row at `epoch`, so a concurrent bump (FOR UPDATE) waits for our commit and a write after the
    bump finds no row. Raises Fenced (the transaction rolls back)."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("SELECT 1 FROM tenant_owner WHERE tenant_id = %s AND owner = %s AND epoch = %s FOR SHARE",
                          (tid, node_id, epoch))
        if await cur.fetchone() is None:
            raise Fenced(tid)
        yield cur


async def put_kv(cur: Any, tid: str, epoch: int, items: dict[str, bytes | None]) -> None:
    """Inside a fenced_tx: upsert (or delete, for None) several keys at once: atomic with the epoch check."""
    for k, v in items.items():
        if v is None:
            await cur.execute("DELETE FROM tenant_kv WHERE tenant_id = %s AND k = %s", (tid, k))
        else:
            await cur.execute("INSERT INTO tenant_kv (tenant_id, k, v, epoch) VALUES (%s, %s, %s, %s) "
                              "ON CONFLICT (tenant_id, k) DO UPDATE SET v = EXCLUDED.v, epoch = EXCLUDED.epoch, "
                              "updated_at = clock_timestamp()", (tid, k, v, epoch))
