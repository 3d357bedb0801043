"""SQLite spool behind the durable webhook (docs/webhook.md).

Interface (synchronous on purpose: `webhook.WebhookForwarder` calls it from ONE dedicated thread, so the event
loop never waits on fsync; sqlite3's default `check_same_thread=True` enforces that single-thread rule):

    spool = Spool(path, max_items=100_000, max_bytes=None)
    spool.open()                                   # SpoolLocked if another process owns the file
    item, depth = spool.put(tenant, body_json, now, event_id=None, gated=True)   # durable when it returns;
                                                   # SpoolFull at the bound; a pending row with the same event_id is
                                                   # returned as is
    spool.unblock(tenant)                          # after a SpoolFull of a gated put with an event_id (a message),
                                                   # that tenant's such puts are refused until this
    spool.tenants()                                # tenants with pending rows, oldest first
    spool.next_items(tenant, after_seq, limit)     # pending rows of one tenant, in submit order
    depth = spool.delete(seq)                      # delivered
    depth = spool.dead_letter(item, status, attempts, now)   # rejected: moved, never dropped
    spool.dead_letters(tenant=None, limit=100, after=0)   # oldest first by seq (`after`: the paging cursor)
    spool.requeue(key)                             # a dead letter back at the tail of its tenant's queue (idempotent)
    spool.depth, spool.bytes                       # pending rows and their payload bytes
    spool.close()

Durability: WAL + `synchronous=FULL`. In WAL mode NORMAL already survives a SIGKILL of the daemon (the WAL is
written before commit returns), but may lose the last commits on power loss or a kernel crash; a put is our ack
that the message is safe, and message rates are human-scale, so one fsync per put is the right price.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SupervisorError
from .private_db import PrivateDb

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a seq is never reused, even after deletes
    tenant     TEXT NOT NULL,
    key        TEXT NOT NULL UNIQUE,               -- row id for transport (uuid); the Idempotency-Key without event_id
    body       TEXT NOT NULL,                      -- the payload as JSON text (the worker's message event)
    size       INTEGER NOT NULL,                   -- UTF-8 bytes of body, for max_bytes
    created_at REAL NOT NULL                       -- wall clock (time.time()) at put
);
CREATE INDEX IF NOT EXISTS pending_by_tenant ON pending (tenant, seq);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq        INTEGER PRIMARY KEY,
    tenant     TEXT NOT NULL,
    key        TEXT NOT NULL,
    body       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at REAL NOT NULL,
    status     INTEGER,                            -- the HTTP status that rejected it
    attempts   INTEGER NOT NULL,
    dead_at    REAL NOT NULL
);
"""
# Added after the first release: the stable event id of a message (docs/webhook.md), the Idempotency-Key when set.
MIGRATIONS = ("pending", "dead_letter")
EVENT_INDEX = "CREATE INDEX IF NOT EXISTS pending_by_event ON pending (event_id)"
DEAD_KEY_INDEX = "CREATE INDEX IF NOT EXISTS dead_letter_by_key ON dead_letter (key)"  # requeue by id
DEAD_COLS = ("seq", "tenant", "key", "body", "created_at", "status", "attempts", "dead_at", "event_id", "size")


class SpoolError(SupervisorError):
    code = "spool_error"
    status = 500


class SpoolFull(SpoolError):
    """The bound is reached: the new item was NOT stored (we refuse new rather than drop old, see docs)."""

    code = "spool_full"
    status = 503


def check_room(spool: Any, tenant: str, size: int, *, gated: bool) -> None:
    """The one admission rule of both spools (this one and cluster/spool.py's PgSpool): refuse a new item (never drop an
    old one) at max_items/max_bytes; once a gated tenant was refused, its later messages are refused too until
    `unblock` (its worker replays them in order). Raises SpoolFull; stores nothing."""
    if ((gated and tenant in spool.refused_tenants) or spool.depth >= spool.max_items
            or (spool.max_bytes is not None and spool.bytes + size > spool.max_bytes)):
        if gated:
            spool.refused_tenants.add(tenant)
        raise SpoolFull(
            f"webhook spool full ({spool.depth} items, {spool.bytes} bytes): message of tenant {tenant} refused",
            depth=spool.depth, bytes=spool.bytes, max_items=spool.max_items, max_bytes=spool.max_bytes,
        )


class DeadLetterNotFound(SpoolError):
    code = "dead_letter_not_found"
    status = 404


class AlreadyPending(SpoolError):
    """The dead letter's event id is pending again (its worker re-emitted the message): requeuing it would send the
    same message twice in one queue. The dead letter stays."""

    code = "already_pending"
    status = 409


def requeue_answer(tenant: str, key: str, seq: int, moved: bool) -> dict:
    """The answer of both spools' `requeue`: `requeued` False = it was already back in the queue (a repeated call)."""
    return {"id": key, "tenant": tenant, "seq": seq, "requeued": moved}


class SpoolLocked(SpoolError):
    """Another process delivers from this spool; two deliverers would break per-tenant order."""

    code = "spool_locked"
    status = 409


@dataclass(frozen=True)
class Item:
    seq: int
    tenant: str
    key: str
    body: str
    created_at: float
    event_id: str | None = None

    @property
    def idempotency_key(self) -> str:
        return self.event_id or self.key


class Spool:
    def __init__(self, path: str | os.PathLike[str], *, max_items: int = 100_000, max_bytes: int | None = None):
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.path = Path(path)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.depth = 0  # pending rows; mirrored in memory so put() needs no COUNT(*)
        self.bytes = 0
        # The message bodies' file: private, flock'ed, WAL + synchronous=FULL (private_db.py)
        self._file = PrivateDb(self.path, "webhook spool", error=SpoolError, locked=SpoolLocked)
        # Tenants refused since their last unblock(): later puts are refused too, so a refused message is never
        # overtaken by a later one that found room after a delivery (the worker replays them in order).
        self.refused_tenants: set[str] = set()

    def open(self) -> None:
        db = self._file.open(SCHEMA)
        try:
            for table in MIGRATIONS:
                if "event_id" not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN event_id TEXT")
            db.execute(EVENT_INDEX)
            db.execute(DEAD_KEY_INDEX)
            self.depth, self.bytes = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM pending").fetchone()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._file.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._file.conn is None:
            raise SpoolError("webhook spool is not open")
        return self._file.conn

    def has_room(self) -> bool:
        return self.depth < self.max_items and (self.max_bytes is None or self.bytes < self.max_bytes)

    def unblock(self, tenant: str) -> None:
        self.refused_tenants.discard(tenant)

    def put(self, tenant: str, body: str, now: float, event_id: str | None = None,
            gated: bool = True) -> tuple[Item, int]:
        if event_id is not None:
            row = self.db.execute("SELECT seq, tenant, key, body, created_at, event_id FROM pending"
                                  " WHERE event_id = ? AND tenant = ?", (event_id, tenant)).fetchone()
            if row is not None:  # the same message again (a replay, a lost ack): already safe, one row
                return Item(*row), self.depth
        size = len(body.encode())
        # A message: its worker replays refused ones in order (docs/webhook.md). Not gated: the outbox's status items,
        # which the outbox keeps and retries itself.
        check_room(self, tenant, size, gated=gated and event_id is not None)
        key = str(uuid.uuid4())  # not "<tenant>:<seq>": a recreated spool file would reuse seqs the target saw
        cur = self.db.execute(
            "INSERT INTO pending (tenant, key, body, size, created_at, event_id) VALUES (?, ?, ?, ?, ?, ?)",
            (tenant, key, body, size, now, event_id),
        )
        self.depth += 1
        self.bytes += size
        return Item(cur.lastrowid, tenant, key, body, now, event_id), self.depth

    def tenants(self) -> list[str]:
        rows = self.db.execute("SELECT tenant, MIN(seq) AS first FROM pending GROUP BY tenant ORDER BY first")
        return [r[0] for r in rows]

    def next_items(self, tenant: str, after_seq: int = 0, limit: int = 100) -> list[Item]:
        rows = self.db.execute(
            "SELECT seq, tenant, key, body, created_at, event_id FROM pending WHERE tenant = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (tenant, after_seq, limit),
        )
        return [Item(*r) for r in rows]

    def delete(self, seq: int) -> int:
        row = self.db.execute("DELETE FROM pending WHERE seq = ? RETURNING size", (seq,)).fetchone()
        if row is not None:
            self.depth -= 1
            self.bytes -= row[0]
        return self.depth

    def dead_letter(self, item: Item, status: int | None, attempts: int, now: float) -> int:
        db = self.db
        db.execute("BEGIN IMMEDIATE")  # copy + delete in one transaction: the row is in exactly one table
        try:
            n = db.execute(
                "INSERT OR REPLACE INTO dead_letter (seq, tenant, key, body, size, created_at, status, attempts, dead_at,"
                " event_id) SELECT seq, tenant, key, body, size, created_at, ?, ?, ?, event_id FROM pending WHERE seq = ?",
                (status, attempts, now, item.seq),
            ).rowcount
            row = db.execute("DELETE FROM pending WHERE seq = ? RETURNING size", (item.seq,)).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if n and row is not None:
            self.depth -= 1
            self.bytes -= row[0]
        return self.depth

    def dead_letters(self, tenant: str | None = None, limit: int = 100, after: int = 0) -> list[dict]:
        sql = f"SELECT {', '.join(DEAD_COLS)} FROM dead_letter WHERE seq > ?"
        args: tuple = (after,)
        if tenant is not None:
            sql, args = sql + " AND tenant = ?", (*args, tenant)
        rows = self.db.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit))
        return [dict(zip(DEAD_COLS, r)) for r in rows]

    def requeue(self, key: str) -> dict:
        """Move the dead letter `key` (its transport uuid: the API's id) back into `pending` at the tail of its
        tenant's queue (a new seq), keeping its key, event id and created_at, so the target sees the same
        Idempotency-Key. Again for a key already pending: the same row, requeued False. Raises DeadLetterNotFound,
        AlreadyPending (its event id is pending again), SpoolFull (the bound holds for operators too)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")  # move in one transaction: the row is in exactly one table
        try:
            out = self._requeue(db, key)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    def _requeue(self, db: sqlite3.Connection, key: str) -> dict:
        row = db.execute("SELECT seq, tenant, body, size, created_at, event_id FROM dead_letter WHERE key = ?",
                         (key,)).fetchone()
        if row is None:
            again = db.execute("SELECT tenant, seq FROM pending WHERE key = ?", (key,)).fetchone()
            if again is None:
                raise DeadLetterNotFound(f"no dead letter {key}", id=key)
            return requeue_answer(again[0], key, again[1], False)
        dead_seq, tenant, body, size, created_at, event_id = row
        if event_id is not None and db.execute("SELECT 1 FROM pending WHERE event_id = ? AND tenant = ?",
                                               (event_id, tenant)).fetchone():
            raise AlreadyPending(f"dead letter {key}: its event is pending again", id=key, tenant=tenant)
        check_room(self, tenant, size, gated=False)
        seq = db.execute("INSERT INTO pending (tenant, key, body, size, created_at, event_id)"
                         " VALUES (?, ?, ?, ?, ?, ?)", (tenant, key, body, size, created_at, event_id)).lastrowid
        db.execute("DELETE FROM dead_letter WHERE seq = ?", (dead_seq,))
        self.depth += 1
        self.bytes += size
        return requeue_answer(tenant, key, seq, True)

    def dead_letter_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
