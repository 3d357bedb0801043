"""The webhook spool in PostgreSQL (cluster mode; docs/webhook.md "Cluster mode", docs/cluster.md "Webhook spool").

Same interface and semantics as the SQLite `supervisor.spool.Spool` (per-tenant FIFO by `seq`, SpoolFull at the bound,
one pending row per event id, dead letters, gated puts and `unblock`), so `WebhookForwarder` drives either one from
its single spool thread. Differences:

- The rows live in `webhook_pending` / `webhook_dead_letter` (schema.py), shared by every node: a node that dies with
  undelivered items leaves them to the tenant's next owner, which delivers them when it gains the tenant.
- `put` commits only at this node's current epoch for the tenant (the owner row held FOR SHARE in the same
  transaction, the check of `store.fenced_tx`): a put from a node that lost the tenant (or whose lease lapsed)
  raises `SpoolFenced` and commits nothing, so the worker gets no `ack` for that message.
- `requeue` (an operator's retry of a dead letter, from any node) is not fenced either: the row goes back into
  `webhook_pending` at the tenant's current epoch; its owner finds it with `pending_among` (the forwarder's rescan).
- Deletes and dead-lettering are not fenced: they only ever remove a row someone delivered (or the target refused),
  so a late one from a former owner is harmless, and at-least-once never depends on who deletes.
- `depth`/`bytes` count the whole cluster's pending rows: read from the table at open and again at most every
  `REFRESH` s on a spool call, kept up to date locally in between (other nodes' changes show up within that).
- One sync psycopg connection (`pg.conninfo_kwargs`, role `spool`), opened on and used from the forwarder's thread
  only: connections stay constant per node. A broken connection is reopened on the next call; psycopg errors become
  `SpoolError`, which the forwarder retries with backoff like a disk error.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from ..settings import ClusterSettings
from ..spool import DEAD_COLS, AlreadyPending, DeadLetterNotFound, Item, SpoolError, check_room, requeue_answer
from .pg import conninfo_kwargs

# The dead-letter lookups (the API's list and retry), here so the schema test EXPLAINs the very statements: both are
# index scans from schema version 4 on (webhook_dead_letter_by_key, _by_tenant), not a scan of the whole table.
DEAD_BY_KEY_SQL = ("SELECT seq, tenant_id, body, size, created_at, event_id FROM webhook_dead_letter"
                   " WHERE key = %s FOR UPDATE")


def dead_letters_sql(by_tenant: bool) -> str:
    """Params: after, [tenant,] limit."""
    cols = ", ".join("tenant_id" if c == "tenant" else c for c in DEAD_COLS)
    return (f"SELECT {cols} FROM webhook_dead_letter WHERE seq > %s" + (" AND tenant_id = %s" if by_tenant else "")
            + " ORDER BY seq LIMIT %s")
from .store import OWNER_ROW_SQL

REFRESH = 1.0  # s: how stale the cluster-wide depth may get between two spool calls that read it
COLS = "seq, tenant_id, key, body, created_at, event_id"


class SpoolFenced(SpoolError):
    """Not the tenant's owner at the current epoch (taken over, released, lease lapsed): nothing was committed."""

    code = "not_owner"
    status = 409


def _db_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self: PgSpool, *args: Any, **kw: Any) -> Any:
        try:
            return fn(self, *args, **kw)
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn = None  # reopened by the next call
            raise SpoolError(f"webhook spool (postgres): {type(exc).__name__}") from exc
    return wrapper


class PgSpool:
    def __init__(self, cs: ClusterSettings, epoch_of: Callable[[str], int | None], *, max_items: int = 100_000,
                 max_bytes: int | None = None) -> None:
        """epoch_of(tenant): this node's epoch for the tenant while it owns it with a valid lease, else None."""
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.cs, self.epoch_of = cs, epoch_of
        self.node_id = cs.node_id
        self.path = "postgres:webhook_pending"  # for the forwarder's start log line
        self.max_items, self.max_bytes = max_items, max_bytes
        self.depth = self.bytes = 0
        self.refused_tenants: set[str] = set()  # as in Spool: per node, like the tenants' workers
        self._conn: psycopg.Connection | None = None
        self._counted = 0.0

    # -- connection ---------------------------------------------------------------------------------------------
    @property
    def db(self) -> psycopg.Connection:
        if self._conn is None:
            if not self.cs.dsn:
                raise SpoolError("cluster: no DSN configured for the webhook spool")
            self._conn = psycopg.connect(self.cs.dsn, autocommit=True, **conninfo_kwargs(self.cs, "spool"))
        return self._conn

    def _count(self, force: bool = False) -> None:
        if force or time.monotonic() - self._counted >= REFRESH:
            self.depth, self.bytes = self.db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM webhook_pending").fetchone()
            self._counted = time.monotonic()

    @_db_errors
    def open(self) -> None:
        self._count(force=True)

    @_db_errors
    def refresh(self) -> None:
        """Re-read the cluster-wide counters if stale: `has_room` runs on the event loop and cannot query."""
        self._count()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- the Spool interface ------------------------------------------------------------------------------------
    def has_room(self) -> bool:
        return self.depth < self.max_items and (self.max_bytes is None or self.bytes < self.max_bytes)

    def unblock(self, tenant: str) -> None:
        self.refused_tenants.discard(tenant)

    @_db_errors
    def put(self, tenant: str, body: str, now: float, event_id: str | None = None,
            gated: bool = True) -> tuple[Item, int]:
        epoch = self.epoch_of(tenant)
        if epoch is None:
            raise SpoolFenced(f"tenant {tenant} is not owned by node {self.node_id}: not spooled", tenant=tenant)
        self._count()
        size = len(body.encode())
        with self.db.transaction(), self.db.cursor() as cur:
            cur.execute(OWNER_ROW_SQL, (tenant, self.node_id, epoch))
            if cur.fetchone() is None:  # rolled back: nothing of this put is committed
                raise SpoolFenced(f"tenant {tenant}: epoch {epoch} is not current: not spooled", tenant=tenant)
            if event_id is not None:
                cur.execute(f"SELECT {COLS} FROM webhook_pending WHERE tenant_id = %s AND event_id = %s",
                            (tenant, event_id))
                row = cur.fetchone()
                if row is not None:  # the same message again (a replay, a lost ack, a new owner's re-emit): one row
                    return Item(*row), self.depth
            check_room(self, tenant, size, gated=gated and event_id is not None)
            key = str(uuid.uuid4())
            cur.execute("INSERT INTO webhook_pending (tenant_id, key, body, size, created_at, event_id, epoch)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING seq",
                        (tenant, key, body, size, now, event_id, epoch))
            seq = cur.fetchone()[0]
        self.depth += 1
        self.bytes += size
        return Item(seq, tenant, key, body, now, event_id), self.depth

    @_db_errors
    def tenants(self) -> list[str]:
        """Every tenant with pending rows in the cluster, oldest first (the forwarder delivers only its own)."""
        self._count()
        rows = self.db.execute("SELECT tenant_id FROM webhook_pending GROUP BY tenant_id ORDER BY min(seq)")
        return [r[0] for r in rows.fetchall()]

    @_db_errors
    def next_items(self, tenant: str, after_seq: int = 0, limit: int = 100) -> list[Item]:
        self._count()
        rows = self.db.execute(f"SELECT {COLS} FROM webhook_pending WHERE tenant_id = %s AND seq > %s"
                               " ORDER BY seq LIMIT %s", (tenant, after_seq, limit))
        return [Item(*r) for r in rows.fetchall()]

    @_db_errors
    def delete(self, seq: int) -> int:
        row = self.db.execute("DELETE FROM webhook_pending WHERE seq = %s RETURNING size", (seq,)).fetchone()
        if row is not None:
            self.depth, self.bytes = max(0, self.depth - 1), max(0, self.bytes - row[0])
        return self.depth

    @_db_errors
    def dead_letter(self, item: Item, status: int | None, attempts: int, now: float) -> int:
        # One statement: the row moves (is in exactly one table); a row already gone (delivered by another node)
        # leaves no dead letter.
        row = self.db.execute(
            "WITH d AS (DELETE FROM webhook_pending WHERE seq = %s RETURNING *) INSERT INTO webhook_dead_letter"
            " (seq, tenant_id, key, body, size, created_at, event_id, status, attempts, dead_at)"
            " SELECT seq, tenant_id, key, body, size, created_at, event_id, %s, %s, %s FROM d"
            " ON CONFLICT (seq) DO NOTHING RETURNING size", (item.seq, status, attempts, now)).fetchone()
        if row is not None:
            self.depth, self.bytes = max(0, self.depth - 1), max(0, self.bytes - row[0])
        return self.depth

    @_db_errors
    def dead_letters(self, tenant: str | None = None, limit: int = 100, after: int = 0) -> list[dict]:
        args = (after, limit) if tenant is None else (after, tenant, limit)
        rows = self.db.execute(dead_letters_sql(tenant is not None), args).fetchall()
        return [dict(zip(DEAD_COLS, r)) for r in rows]

    @_db_errors
    def requeue(self, key: str) -> dict:
        """The SQLite Spool.requeue's semantics, from any node. The dead letter is locked FOR UPDATE first: of two
        nodes requeuing one key, the second waits, then finds it gone and answers the first one's row."""
        self._count()
        try:
            with self.db.transaction(), self.db.cursor() as cur:
                cur.execute(DEAD_BY_KEY_SQL, (key,))
                row = cur.fetchone()
                if row is None:
                    cur.execute("SELECT tenant_id, seq FROM webhook_pending WHERE key = %s", (key,))
                    again = cur.fetchone()
                    if again is None:
                        raise DeadLetterNotFound(f"no dead letter {key}", id=key)
                    return requeue_answer(again[0], key, again[1], False)
                dead_seq, tenant, body, size, created_at, event_id = row
                check_room(self, tenant, size, gated=False)
                # The tenant's current epoch: not a fence (any node may requeue), the column's "who put it" only.
                cur.execute("INSERT INTO webhook_pending (tenant_id, key, body, size, created_at, event_id, epoch)"
                            " VALUES (%s, %s, %s, %s, %s, %s, coalesce((SELECT epoch FROM tenant_owner"
                            " WHERE tenant_id = %s), 0)) RETURNING seq",
                            (tenant, key, body, size, created_at, event_id, tenant))
                seq = cur.fetchone()[0]
                cur.execute("DELETE FROM webhook_dead_letter WHERE seq = %s", (dead_seq,))
        except psycopg.errors.UniqueViolation:  # webhook_pending_by_event: the worker re-emitted it meanwhile
            raise AlreadyPending(f"dead letter {key}: its event is pending again", id=key) from None
        self.depth += 1
        self.bytes += size
        return requeue_answer(tenant, key, seq, True)

    @_db_errors
    def pending_among(self, tenants: list[str]) -> list[str]:
        """Which of `tenants` (the ones this node owns) have pending rows: the forwarder's rescan finds rows that
        another node put back (requeue) without a local put to wake their tenant. One index probe per tenant."""
        if not tenants:
            return []
        rows = self.db.execute("SELECT DISTINCT tenant_id FROM webhook_pending WHERE tenant_id = ANY(%s)", (tenants,))
        return [r[0] for r in rows.fetchall()]

    @_db_errors
    def dead_letter_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM webhook_dead_letter").fetchone()[0]
