"""The durable outbox behind `POST /whatsapp/{tenant}/messages` (README "Sending messages"): one SQLite file beside
the webhook spool, `<storage.root>/outbox.sqlite3` (0600, WAL, synchronous=FULL, flock'ed by one daemon).

Synchronous on purpose, like spool.py: `outbox_dispatch.OutboxDispatcher` calls it from ONE dedicated thread.

    box = Outbox(path); box.open()                       # OutboxLocked if another daemon owns it
    row, created = box.submit(tenant, key, body_hash, to, text, reply_to, now)   # IdempotencyConflict (409)
    box.get(tenant, message_id)                          # Row | None
    box.next_to_send(tenant)                             # oldest queued/sending row not handed to the worker yet
    box.mark_sending(message_id, now); box.mark_written(message_id, status, error, now)
    box.set_status(tenant, wa_id, status, error, now)    # the Row when the status advanced, else None
    box.reopen(tenant)                                   # at `open`: every `sending` row goes out again (same id)
    box.pending_tenants(); box.prune(before); box.close()
    box.hooks_pending(limit); box.hooks_done(upto_seq)  # with hooks=True (webhook on): see below

A row moves queued -> sending -> sent -> delivered -> read, or to failed (with `error`) from queued, sending or sent;
never backwards (`advances`). `written` says the worker's reply came (the stanza left): such a row waits for its
server ack instead of being handed over again, until the next `open` resends whatever is still `sending`.

With `hooks=True` every status change writes, in the same transaction, its webhook item into the `hook` table
(`status_item`, with a stable event id per (message, status)); the dispatcher copies those rows into the webhook spool
and then deletes them, and a start copies whatever a crash left. So a committed status is never without its webhook
item (docs/webhook.md), and a copy repeated after a crash carries the same Idempotency-Key.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SupervisorError
from .private_db import PrivateDb
from .states import iso

RANK = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "read": 4}
STATUSES = (*RANK, "failed")
FINAL = ("read", "failed")  # delivered can still become read

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO per tenant
    tenant     TEXT NOT NULL,
    idem_key   TEXT NOT NULL,                      -- the POST's Idempotency-Key
    message_id TEXT NOT NULL UNIQUE,               -- ours, derived from (tenant, key)
    wa_id      TEXT NOT NULL,                      -- WhatsApp's message id, derived from (tenant, key)
    body_hash  TEXT NOT NULL,                      -- sha256 of the canonical request body: same key + other body = 409
    to_jid     TEXT NOT NULL,
    text       TEXT NOT NULL,
    reply_to   TEXT,                               -- JSON object or NULL
    status     TEXT NOT NULL,
    error      TEXT,
    written    INTEGER NOT NULL DEFAULT 0,         -- the worker replied: the stanza left (this connection)
    attempts   INTEGER NOT NULL DEFAULT 0,         -- sends handed to a worker
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (tenant, idem_key)
);
CREATE INDEX IF NOT EXISTS outbox_by_tenant ON outbox (tenant, status, written, seq);
CREATE INDEX IF NOT EXISTS outbox_by_wa_id ON outbox (tenant, wa_id);
CREATE TABLE IF NOT EXISTS hook (                  -- status webhook items not yet in the spool (hooks=True)
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order = spool order
    tenant     TEXT NOT NULL,
    event_id   TEXT NOT NULL UNIQUE,               -- the Idempotency-Key: one per (message, status)
    body       TEXT NOT NULL                       -- the webhook payload as JSON text
);
"""
_COLS = "seq, tenant, idem_key, message_id, wa_id, body_hash, to_jid, text, reply_to, status, error, written, " \
        "attempts, created_at, updated_at"


class OutboxError(SupervisorError):
    code = "outbox_error"
    status = 500


class OutboxLocked(OutboxError):
    """Another daemon sends from this outbox; two senders would break the order and send twice."""

    code = "outbox_locked"
    status = 409


class IdempotencyConflict(SupervisorError):
    code = "idempotency_conflict"
    status = 409


@dataclass(frozen=True)
class Row:
    seq: int
    tenant: str
    idem_key: str
    message_id: str
    wa_id: str
    body_hash: str
    to_jid: str
    text: str
    reply_to: str | None
    status: str
    error: str | None
    written: int
    attempts: int
    created_at: float
    updated_at: float


def derive_ids(tenant: str, key: str) -> tuple[str, str]:
    """(messageId, WhatsApp id) from (tenant, Idempotency-Key): a resend after any crash, and a retried POST, use the
    same ids. The WhatsApp id has the shape of Baileys' own (`3EB0` + 18 uppercase hex)."""
    h = hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()
    return "msg_" + h[:24], "3EB0" + h[32:50].upper()  # 24 hex: logs scrub runs of 32+


def status_dict(row: Row) -> dict[str, Any]:
    """GET /whatsapp/{tenant}/messages/{messageId}, SSE `message_status` and the webhook's status item."""
    return {"messageId": row.message_id, "waMessageId": row.wa_id, "tenant": row.tenant, "to": row.to_jid,
            "status": row.status, "error": row.error, "attempts": row.attempts, "createdAt": iso(row.created_at),
            "updatedAt": iso(row.updated_at)}


def status_event_id(tenant: str, message_id: str, status: str) -> str:
    """A status reaches each message at most once (`advances`), so (message, status) names one webhook item."""
    return hashlib.sha256(f"{tenant}|{message_id}|status:{status}".encode()).hexdigest()


def status_item(row: Row) -> dict[str, Any]:
    """The webhook payload of the row's current status (docs/webhook.md)."""
    return {"type": "message_status", "eventId": status_event_id(row.tenant, row.message_id, row.status),
            **status_dict(row)}


def advances(old: str, new: str) -> bool:
    """Whether a row in `old` may move to `new`: forward only; failed only before delivery; read, failed final."""
    if old in FINAL or new not in STATUSES:
        return False
    if new == "failed":
        return RANK[old] <= RANK["sent"]
    return RANK[new] > RANK[old]


class Outbox:
    def __init__(self, path: str | os.PathLike[str], *, hooks: bool = False) -> None:
        self.path = Path(path)
        self.hooks = hooks  # record each status change's webhook item with it (the webhook is on)
        # Message texts; a 202 promises the message is kept: private, flock'ed, WAL + fsync per commit (private_db.py)
        self._file = PrivateDb(self.path, "outbox", error=OutboxError, locked=OutboxLocked)

    def open(self) -> None:
        self._file.open(SCHEMA)

    def close(self) -> None:
        self._file.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._file.conn is None:
            raise OutboxError("outbox is not open")
        return self._file.conn

    def _one(self, where: str, args: tuple[Any, ...]) -> Row | None:
        r = self.db.execute(f"SELECT {_COLS} FROM outbox WHERE {where}", args).fetchone()
        return Row(*r) if r is not None else None

    def _tx(self, change: Callable[[], Row | None], before: str | None) -> Row | None:
        """One transaction: `change` (UPDATE/INSERT, returns the row after it) and, when the row's status differs
        from `before`, its webhook item. Both are committed together or not at all."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = change()
            if self.hooks and row is not None and row.status != before:
                db.execute("INSERT OR IGNORE INTO hook (tenant, event_id, body) VALUES (?, ?, ?)",
                           (row.tenant, status_event_id(row.tenant, row.message_id, row.status),
                            json.dumps(status_item(row), separators=(",", ":"))))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row

    def submit(self, tenant: str, key: str, body_hash: str, to: str, text: str, reply_to: str | None,
               now: float) -> tuple[Row, bool]:
        message_id, wa_id = derive_ids(tenant, key)
        created = False

        def change() -> Row | None:
            nonlocal created
            created = self.db.execute(
                "INSERT OR IGNORE INTO outbox (tenant, idem_key, message_id, wa_id, body_hash, to_jid, text, reply_to,"
                " status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (tenant, key, message_id, wa_id, body_hash, to, text, reply_to, now, now)).rowcount == 1
            return self._one("tenant = ? AND idem_key = ?", (tenant, key))

        row = self._tx(change, None)
        assert row is not None
        if not created and row.body_hash != body_hash:
            raise IdempotencyConflict("this Idempotency-Key was used with another body", messageId=row.message_id)
        return row, created

    def get(self, tenant: str, message_id: str) -> Row | None:
        return self._one("tenant = ? AND message_id = ?", (tenant, message_id))

    def next_to_send(self, tenant: str) -> Row | None:
        return self._one("tenant = ? AND status IN ('queued', 'sending') AND written = 0 ORDER BY seq LIMIT 1",
                         (tenant,))

    def _update(self, message_id: str, sql: str, args: tuple[Any, ...]) -> tuple[Row, Row]:
        """(row before, row after) of one UPDATE ... WHERE message_id = ?, with its webhook item."""
        before = self._one("message_id = ?", (message_id,))
        assert before is not None

        def change() -> Row | None:
            self.db.execute(sql + " WHERE message_id = ?", (*args, message_id))
            return self._one("message_id = ?", (message_id,))

        after = self._tx(change, before.status)
        assert after is not None
        return before, after

    def mark_sending(self, message_id: str, now: float) -> Row:
        return self._update(message_id, "UPDATE outbox SET status = CASE status WHEN 'queued' THEN 'sending' ELSE"
                            " status END, attempts = attempts + 1, updated_at = ?", (now,))[1]

    def mark_written(self, message_id: str, status: str, error: str | None, now: float) -> tuple[Row, bool]:
        """The worker replied. Returns the row and whether its status advanced (the reply may say `failed`, or
        `sent` when the server's ack came first)."""
        row = self._one("message_id = ?", (message_id,))
        assert row is not None
        moved = advances(row.status, status)
        _, after = self._update(message_id, "UPDATE outbox SET written = 1, status = ?, error = ?, updated_at = ?",
                                (status if moved else row.status, error if moved else row.error, now))
        return after, moved

    def requeue(self, message_id: str, now: float, *, fail: str | None = None) -> Row:
        """The send did not happen (worker gone, not connected, an error): hand it over again later, or give up."""
        if fail is not None:
            return self._update(message_id, "UPDATE outbox SET status = CASE WHEN status IN ('queued', 'sending')"
                                " THEN 'failed' ELSE status END, error = CASE WHEN status IN ('queued', 'sending')"
                                " THEN ? ELSE error END, updated_at = ?", (fail, now))[1]
        return self._update(message_id, "UPDATE outbox SET written = 0, updated_at = ?", (now,))[1]

    def set_status(self, tenant: str, wa_id: str, status: str, error: str | None, now: float) -> Row | None:
        row = self._one("tenant = ? AND wa_id = ?", (tenant, wa_id))
        if row is None or not advances(row.status, status):
            return None
        return self._update(row.message_id, "UPDATE outbox SET status = ?, error = ?, updated_at = ?",
                            (status, error if status == "failed" else row.error, now))[1]

    def reopen(self, tenant: str) -> int:
        """A new connection: nothing is known to have left on the old one unless acked, so every `sending` row is
        handed to the worker again, with the same WhatsApp id."""
        return self.db.execute("UPDATE outbox SET written = 0 WHERE tenant = ? AND status = 'sending' AND written = 1",
                               (tenant,)).rowcount

    def pending_tenants(self) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT tenant FROM outbox WHERE status IN ('queued', 'sending')")
        return [r[0] for r in rows]

    def prune(self, before: float) -> int:
        """Finished rows older than `before` (their keys may then be reused)."""
        return self.db.execute("DELETE FROM outbox WHERE status IN ('delivered', 'read', 'failed') AND updated_at < ?",
                               (before,)).rowcount

    def hooks_pending(self, limit: int = 100) -> list[tuple[int, str, str, str]]:
        """(seq, tenant, event_id, body) of webhook items not yet in the spool, in commit order."""
        return self.db.execute("SELECT seq, tenant, event_id, body FROM hook ORDER BY seq LIMIT ?", (limit,)).fetchall()

    def hooks_done(self, upto_seq: int) -> int:
        """The items up to `upto_seq` are in the spool (a crash before this copies them again: same event ids)."""
        return self.db.execute("DELETE FROM hook WHERE seq <= ?", (upto_seq,)).rowcount
