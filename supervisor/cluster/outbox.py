"""The outbox in PostgreSQL (cluster mode; docs/cluster.md "The outbox"): the interface and semantics of the SQLite
`supervisor.outbox.Outbox` (same rows, statuses, ids, 409 on another body, FIFO per tenant, `hook` items in the
status change's own transaction), in tables `outbox_msg` / `outbox_hook` (schema.py, version 2) shared by every node.
A message queued through any node is sent by whichever node owns the tenant, also after a takeover.

Synchronous, like the SQLite one: `outbox_dispatch.OutboxDispatcher` calls it from its ONE executor thread, on ONE
connection of its own (`pg.conninfo_kwargs`, role `outbox`): connections stay constant per node.

Fencing. Every dispatch-side write (mark_sending, mark_written, requeue, set_status, reopen) runs in a transaction
that first takes `FOR SHARE` on the tenant's owner row at this node's current epoch (the sync twin of
`store.fenced_tx`); no row (taken over, released, or our lease lapsed) -> `Fenced`, nothing commits. So a node that
lost a tenant cannot move one of its messages after the new owner bumped the epoch.
`submit` is NOT fenced: any node may queue (the owner forwards nothing, a node asked while nobody owns the tenant
queues too); the insert is keyed by (tenant, Idempotency-Key) and carries only what the client sent, so two nodes
inserting the same key agree and the second gets the first one's row. `get`, `next_to_send`, `pending_tenants` and
`prune` (finished rows only) are reads or idempotent deletes.

Webhook items: `hooks_pending` returns the items of tenants this node owns (the owner's host delivers, as before);
`hooks_done(upto)` deletes only the items it returned (seq order is not commit order across nodes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from ..outbox import IdempotencyConflict, OutboxError, Row, advances, derive_ids, status_event_id, status_item
from ..settings import ClusterSettings
from . import pg
from .store import OWNER_ROW_SQL, Fenced

_COLS = "seq, tenant_id, idem_key, message_id, wa_id, body_hash, to_jid, text, reply_to, status, error, written, " \
        "attempts, created_at, updated_at"


class PgOutbox:
    fenced = True  # the dispatcher awaits mark_sending before the send: a fenced node hands nothing to a worker
    poll_every = 2.0  # s: the dispatcher looks for messages other nodes queued for our tenants (pending_tenants)

    def __init__(self, cs: ClusterSettings, *, hooks: bool = False,
                 epoch_of: Callable[[str], int | None] = lambda _t: None,
                 valid: Callable[[], bool] = lambda: True) -> None:
        """`epoch_of(t)`: this node's current epoch for `t` (None: not ours); `valid()`: the node's lease. Both are
        read on the outbox thread (a dict lookup and a clock compare)."""
        self.cs, self.hooks, self.epoch_of, self.valid = cs, hooks, epoch_of, valid
        self.path = "postgres:outbox_msg"  # for the start log line
        self._conn: psycopg.Connection | None = None
        self._returned: list[int] = []  # hook seqs handed out by the last hooks_pending

    def open(self) -> None:
        self.db  # noqa: B018 - connect now: a start against an unreachable server fails here, not at the first POST

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def db(self) -> psycopg.Connection:
        """The connection, reopened when the server dropped it (a restart): the next call works again."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = pg.connect_sync(self.cs, "outbox")
            except psycopg.Error as exc:
                raise OutboxError(f"outbox store unavailable: {type(exc).__name__}") from None
        return self._conn

    def _one(self, cur: Any, where: str, args: tuple[Any, ...]) -> Row | None:
        r = cur.execute(f"SELECT {_COLS} FROM outbox_msg WHERE {where}", args).fetchone()
        return Row(*r) if r is not None else None

    def _hook(self, cur: Any, row: Row | None, before: str | None) -> None:
        if self.hooks and row is not None and row.status != before:
            cur.execute("INSERT INTO outbox_hook (tenant_id, event_id, body) VALUES (%s, %s, %s) "
                        "ON CONFLICT (event_id) DO NOTHING",
                        (row.tenant, status_event_id(row.tenant, row.message_id, row.status),
                         json.dumps(status_item(row), separators=(",", ":"))))

    def _fence(self, cur: Any, tenant: str) -> int:
        """Inside the transaction: our owner row at our epoch, FOR SHARE (a bump waits for our commit), else Fenced."""
        epoch = self.epoch_of(tenant)
        if epoch is None or not self.valid():
            raise Fenced(tenant)
        if cur.execute(OWNER_ROW_SQL, (tenant, self.cs.node_id, epoch)).fetchone() is None:
            raise Fenced(tenant)
        return epoch

    # -- the API side (unfenced) ---------------------------------------------------------------------------------
    def submit(self, tenant: str, key: str, body_hash: str, to: str, text: str, reply_to: str | None,
               now: float) -> tuple[Row, bool]:
        message_id, wa_id = derive_ids(tenant, key)
        db = self.db
        with db.transaction(), db.cursor() as cur:
            created = cur.execute(
                "INSERT INTO outbox_msg (tenant_id, idem_key, message_id, wa_id, body_hash, to_jid, text, reply_to,"
                " status, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'queued', %s, %s)"
                " ON CONFLICT (tenant_id, idem_key) DO NOTHING RETURNING seq",
                (tenant, key, message_id, wa_id, body_hash, to, text, reply_to, now, now)).fetchone() is not None
            row = self._one(cur, "tenant_id = %s AND idem_key = %s", (tenant, key))
            assert row is not None
            if created:
                self._hook(cur, row, None)
        if not created and row.body_hash != body_hash:
            raise IdempotencyConflict("this Idempotency-Key was used with another body", messageId=row.message_id)
        return row, created

    def get(self, tenant: str, message_id: str) -> Row | None:
        with self.db.cursor() as cur:
            return self._one(cur, "tenant_id = %s AND message_id = %s", (tenant, message_id))

    def next_to_send(self, tenant: str) -> Row | None:
        with self.db.cursor() as cur:
            return self._one(cur, "tenant_id = %s AND status IN ('queued', 'sending') AND written = 0 "
                                  "ORDER BY seq LIMIT 1", (tenant,))

    # -- dispatch-side writes (fenced) ---------------------------------------------------------------------------
    def _update(self, tenant: str, message_id: str, change: Callable[[Row], tuple[str, tuple[Any, ...]] | None]
                ) -> tuple[Row, Row]:
        """(before, after) of one fenced UPDATE of a row; `change(before)` gives the SET clause and its args (None:
        leave the row). The webhook item of a status change commits with it."""
        db = self.db
        with db.transaction(), db.cursor() as cur:
            epoch = self._fence(cur, tenant)
            before = self._one(cur, "message_id = %s FOR UPDATE", (message_id,))
            assert before is not None
            sql = change(before)
            if sql is None:
                return before, before
            cur.execute(f"UPDATE outbox_msg SET {sql[0]}, epoch = %s WHERE message_id = %s",
                        (*sql[1], epoch, message_id))
            after = self._one(cur, "message_id = %s", (message_id,))
            assert after is not None
            self._hook(cur, after, before.status)
        return before, after

    def _tenant_of(self, message_id: str) -> str:
        with self.db.cursor() as cur:
            r = cur.execute("SELECT tenant_id FROM outbox_msg WHERE message_id = %s", (message_id,)).fetchone()
        assert r is not None
        return str(r[0])

    def mark_sending(self, message_id: str, now: float) -> Row:
        return self._update(self._tenant_of(message_id), message_id, lambda r: (
            "status = CASE status WHEN 'queued' THEN 'sending' ELSE status END, attempts = attempts + 1, "
            "updated_at = %s", (now,)))[1]

    def mark_written(self, message_id: str, status: str, error: str | None, now: float) -> tuple[Row, bool]:
        moved = False

        def change(row: Row) -> tuple[str, tuple[Any, ...]]:
            nonlocal moved
            moved = advances(row.status, status)
            return ("written = 1, status = %s, error = %s, updated_at = %s",
                    (status if moved else row.status, error if moved else row.error, now))

        return self._update(self._tenant_of(message_id), message_id, change)[1], moved

    def requeue(self, message_id: str, now: float, *, fail: str | None = None) -> Row:
        tenant = self._tenant_of(message_id)
        if fail is not None:
            return self._update(tenant, message_id, lambda r: (
                "status = CASE WHEN status IN ('queued', 'sending') THEN 'failed' ELSE status END, error = CASE WHEN"
                " status IN ('queued', 'sending') THEN %s ELSE error END, updated_at = %s", (fail, now)))[1]
        return self._update(tenant, message_id, lambda r: ("written = 0, updated_at = %s", (now,)))[1]

    def set_status(self, tenant: str, wa_id: str, status: str, error: str | None, now: float) -> Row | None:
        with self.db.cursor() as cur:
            row = self._one(cur, "tenant_id = %s AND wa_id = %s", (tenant, wa_id))
        if row is None:
            return None
        moved = False

        def change(r: Row) -> tuple[str, tuple[Any, ...]] | None:  # decided on the locked row
            nonlocal moved
            moved = advances(r.status, status)
            return ("status = %s, error = %s, updated_at = %s",
                    (status, error if status == "failed" else r.error, now)) if moved else None

        after = self._update(tenant, row.message_id, change)[1]
        return after if moved else None

    def reopen(self, tenant: str) -> int:
        db = self.db
        with db.transaction(), db.cursor() as cur:
            epoch = self._fence(cur, tenant)
            return cur.execute("UPDATE outbox_msg SET written = 0, epoch = %s WHERE tenant_id = %s "
                               "AND status = 'sending' AND written = 1", (epoch, tenant)).rowcount

    # -- housekeeping ------------------------------------------------------------------------------------------
    def pending_tenants(self) -> list[str]:
        """Tenants of THIS node with a message to hand over (the SQLite outbox's are all its own)."""
        with self.db.cursor() as cur:
            return [r[0] for r in cur.execute(
                "SELECT DISTINCT m.tenant_id FROM outbox_msg m JOIN tenant_owner o ON o.tenant_id = m.tenant_id "
                "AND o.owner = %s WHERE m.status IN ('queued', 'sending') AND m.written = 0", (self.cs.node_id,))]

    def prune(self, before: float) -> int:
        db = self.db
        with db.transaction(), db.cursor() as cur:
            return cur.execute("DELETE FROM outbox_msg WHERE status IN ('delivered', 'read', 'failed') "
                               "AND updated_at < %s", (before,)).rowcount

    def hooks_pending(self, limit: int = 100) -> list[tuple[int, str, str, str]]:
        """Items of the tenants this node owns now, oldest first: the owner's host spools and delivers them."""
        with self.db.cursor() as cur:
            rows = cur.execute(
                "SELECT h.seq, h.tenant_id, h.event_id, h.body FROM outbox_hook h JOIN tenant_owner o ON "
                "o.tenant_id = h.tenant_id AND o.owner = %s ORDER BY h.seq LIMIT %s",
                (self.cs.node_id, limit)).fetchall()
        self._returned = [r[0] for r in rows]
        return [(int(s), str(t), str(e), str(b)) for s, t, e, b in rows]

    def hooks_done(self, upto_seq: int) -> int:
        """Deletes the items of the last hooks_pending up to `upto_seq` (never one it did not return: another node's,
        or one committed since with a lower seq)."""
        done = [s for s in self._returned if s <= upto_seq]
        self._returned = [s for s in self._returned if s > upto_seq]
        if not done:
            return 0
        db = self.db
        with db.transaction(), db.cursor() as cur:
            return cur.execute("DELETE FROM outbox_hook WHERE seq = ANY(%s)", (done,)).rowcount
