"""Fenced tenant state in PostgreSQL: the one epoch check (`fenced_tx`) and the key/value table (creds.json, Signal
keys: one row per file of the stock multi-file auth layout). The webhook spool (cluster/spool.py) uses the same check
(`OWNER_ROW_SQL`) on its sync connection, and so does the outbox (cluster/outbox.py); the decrypt journal and the
sent store are keys of the key/value table (docs/cluster.md)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any


# The one epoch check: the owner row at our epoch, held FOR SHARE until commit (a bump needs FOR UPDATE).
OWNER_ROW_SQL = "SELECT 1 FROM tenant_owner WHERE tenant_id = %s AND owner = %s AND epoch = %s FOR SHARE"


class Fenced(Exception):
    """This node does not own the tenant at that epoch (taken over, released, or our lease lapsed)."""


@contextlib.asynccontextmanager
async def fenced_tx(conn: Any, tid: str, node_id: str, epoch: int) -> AsyncIterator[Any]:
    """The one epoch check, for any connection (the daemon's, or later a worker's own): a transaction holding FOR
    SHARE on the owner row at `epoch`, so a concurrent bump (FOR UPDATE) waits for our commit and a write after the
    bump finds no row. Raises Fenced (the transaction rolls back)."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(OWNER_ROW_SQL, (tid, node_id, epoch))
        if await cur.fetchone() is None:
            raise Fenced(tid)
        yield cur


async def put_kv(cur: Any, tid: str, epoch: int, items: dict[str, bytes | None]) -> None:
    """Inside a fenced_tx: upsert (or delete, for None) several keys at once: atomic with the epoch check. One
    statement per kind (executemany is pipelined): the 812 pre-keys of a first login are one round trip, not 812."""
    gone = [k for k, v in items.items() if v is None]
    rows = [(tid, k, v, epoch) for k, v in items.items() if v is not None]
    if gone:
        await cur.execute("DELETE FROM tenant_kv WHERE tenant_id = %s AND k = ANY(%s)", (tid, gone))
    if rows:
        await cur.executemany("INSERT INTO tenant_kv (tenant_id, k, v, epoch) VALUES (%s, %s, %s, %s) "
                              "ON CONFLICT (tenant_id, k) DO UPDATE SET v = EXCLUDED.v, epoch = EXCLUDED.epoch, "
                              "updated_at = clock_timestamp()", rows)


async def get_kv(cur: Any, tid: str, keys: list[str] | None = None) -> dict[str, bytes]:
    """Inside a fenced_tx: the tenant's keys (all, or `keys`)."""
    if keys is None:
        await cur.execute("SELECT k, v FROM tenant_kv WHERE tenant_id = %s", (tid,))
    else:
        await cur.execute("SELECT k, v FROM tenant_kv WHERE tenant_id = %s AND k = ANY(%s)", (tid, keys))
    return {k: bytes(v) for k, v in await cur.fetchall()}


async def clear_kv(cur: Any, tid: str) -> int:
    """Inside a fenced_tx: drop every key of the tenant (after a logout: its auth was archived on the owner's host)."""
    await cur.execute("DELETE FROM tenant_kv WHERE tenant_id = %s", (tid,))
    return int(cur.rowcount or 0)
