"""Versioned schema of the postgres backend. The daemon applies missing migrations at start (`upgrade()`, under a
transaction-scoped advisory lock so several daemons starting at once apply each one once); `baileys-supervisor
db upgrade --config FILE` does the same by hand. A database newer than this code is refused.

Version 1 is ownership plus the generic fenced key/value store (creds, Signal keys); version 2 the outbox; version 3
the webhook spool (cluster/spool.py); version 4 the dead letters' indexes. The decrypt journal and the sent store are
`tenant_kv` keys (`journal/...`, `sent/...`: no table of their own). Every such table carries `tenant_id` and its writes check the writer's epoch on
`tenant_owner` in the same transaction (`store.fenced_tx`; the outbox's and the spool's sync twins; the outbox's
submit is the documented exception).
"""

from __future__ import annotations

from typing import Any

# Advisory lock namespace (the first int4 of the two-int form) for everything this package locks; key 0 = migrations,
# keys >= 1 = the per-node liveness locks (cluster_node.lock_key).
LOCK_NS = 0x62737570 & 0x7FFFFFFF  # "bsup"

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE SEQUENCE cluster_node_lock_key START 1;
CREATE TABLE cluster_node (
    node_id       text PRIMARY KEY,
    -- the node is alive while a session holds pg_advisory_lock(LOCK_NS, lock_key): one lock per node, not per tenant
    lock_key      integer NOT NULL UNIQUE DEFAULT nextval('cluster_node_lock_key'),
    advertise_url text,
    max_tenants   integer NOT NULL,
    draining      boolean NOT NULL DEFAULT false,
    started_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tenant_owner (
    tenant_id  text PRIMARY KEY,
    wanted     boolean NOT NULL DEFAULT true,  -- started by an operator: stays started across node deaths
    owner      text REFERENCES cluster_node (node_id),  -- NULL: unowned, claimable while wanted
    epoch      bigint NOT NULL DEFAULT 0,      -- bumped by every claim; writes commit only at the current epoch
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenant_owner_owner ON tenant_owner (owner);
CREATE TABLE tenant_epoch (                    -- who held which epoch, written in the claim's transaction
    tenant_id  text NOT NULL,
    epoch      bigint NOT NULL,
    owner      text NOT NULL,
    reason     text NOT NULL,                  -- claim | takeover | reclaim
    claimed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, epoch)
);
CREATE TABLE tenant_kv (                       -- fenced tenant state (creds.json, Signal keys): one row per file
    tenant_id  text NOT NULL,
    k          text NOT NULL,
    v          bytea NOT NULL,
    epoch      bigint NOT NULL,                -- the writer's epoch (what a new owner inherits, and from whom)
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, k)
);
"""),
    # The outbox (supervisor/cluster/outbox.py): the same columns as the SQLite one (supervisor/outbox.py), shared by
    # every node, so a message queued through any node is sent by whichever node owns the tenant. Self-contained: it
    # references no other table, so migrations of other features may be ordered around it.
    (2, """
CREATE TABLE outbox_msg (
    seq        bigserial PRIMARY KEY,               -- FIFO per tenant
    tenant_id  text NOT NULL,
    idem_key   text NOT NULL,                       -- the POST's Idempotency-Key
    message_id text NOT NULL UNIQUE,                -- ours, derived from (tenant, key)
    wa_id      text NOT NULL,                       -- WhatsApp's message id, derived from (tenant, key)
    body_hash  text NOT NULL,                       -- same key + other body = 409
    to_jid     text NOT NULL,
    text       text NOT NULL,
    reply_to   text,                                -- JSON object or NULL
    status     text NOT NULL,
    error      text,
    written    integer NOT NULL DEFAULT 0,          -- the worker replied: the stanza left (that connection)
    attempts   integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,           -- epoch seconds, as in the SQLite outbox
    updated_at double precision NOT NULL,
    epoch      bigint,                              -- the epoch of the last dispatch-side write (NULL: only submitted)
    UNIQUE (tenant_id, idem_key)
);
CREATE INDEX outbox_msg_next ON outbox_msg (tenant_id, status, written, seq);
CREATE INDEX outbox_msg_wa ON outbox_msg (tenant_id, wa_id);
CREATE TABLE outbox_hook (                      -- status webhook items not yet in the owner's spool
    seq        bigserial PRIMARY KEY,
    tenant_id  text NOT NULL,
    event_id   text NOT NULL UNIQUE,
    body       text NOT NULL
);
CREATE INDEX outbox_hook_tenant ON outbox_hook (tenant_id, seq);
"""),
    # The webhook spool (cluster/spool.py): the SQLite spool's tables, shared by the nodes. Self-contained: renumber
    # freely when merging with other migrations.
    (3, """
CREATE TABLE webhook_pending (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- delivery order per tenant; never reused
    tenant_id  text NOT NULL,
    key        text NOT NULL UNIQUE,           -- transport uuid: the Idempotency-Key of an item without event_id
    body       text NOT NULL,                  -- the payload as JSON text
    size       integer NOT NULL,               -- UTF-8 bytes of body, for max_bytes
    created_at double precision NOT NULL,      -- epoch s at put
    event_id   text,                           -- the message's stable id = its Idempotency-Key
    epoch      bigint NOT NULL                 -- the putting owner's epoch (committed only while current)
);
CREATE INDEX webhook_pending_by_tenant ON webhook_pending (tenant_id, seq);
CREATE UNIQUE INDEX webhook_pending_by_event ON webhook_pending (tenant_id, event_id) WHERE event_id IS NOT NULL;
CREATE TABLE webhook_dead_letter (
    seq        bigint PRIMARY KEY,
    tenant_id  text NOT NULL,
    key        text NOT NULL,
    body       text NOT NULL,
    size       integer NOT NULL,
    created_at double precision NOT NULL,
    event_id   text,
    status     integer,                        -- the HTTP status that rejected it
    attempts   integer NOT NULL,
    dead_at    double precision NOT NULL
);
"""),
    # Dead-letter lookups by index (measured: at schema 3 a retry's lookup by key and a list by tenant were sequential
    # scans of the whole table, reading 200 pages at 3,000 rows and 1,334 at 20,000; docs/cluster.md "Webhook spool").
    # Not unique: the SQLite spool's dead_letter_by_key is not either, and a duplicate must not fail a daemon's start.
    # Plain CREATE INDEX in the migration's transaction: writes to the table wait for the build (ms per 10,000 rows).
    (4, """
CREATE INDEX webhook_dead_letter_by_key ON webhook_dead_letter (key);
CREATE INDEX webhook_dead_letter_by_tenant ON webhook_dead_letter (tenant_id, seq);
"""),
]
LATEST = MIGRATIONS[-1][0]

# -- statements of ownership.py on these tables ----------------------------------------------------------------
# Our own lock, held by our lock session: checked inside every claim transaction.
OWN_LOCK_SQL = ("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) AND classid = %s "
                "AND objid = %s AND objsubid = 2 AND granted AND pid = %s")
CLAIM_SQL = """
WITH c AS (
    UPDATE tenant_owner t SET owner = %(me)s, epoch = t.epoch + 1, updated_at = now()
    FROM tenant_owner o
    WHERE o.tenant_id = t.tenant_id AND t.tenant_id = ANY(%(ids)s) AND t.wanted
      AND (t.owner IS NULL OR t.owner = ANY(%(from)s))
    RETURNING t.tenant_id, t.epoch, o.owner AS prev)
INSERT INTO tenant_epoch (tenant_id, epoch, owner, reason)
SELECT tenant_id, epoch, %(me)s,
       CASE WHEN prev IS NULL THEN 'claim' WHEN prev = %(me)s THEN 'reclaim' ELSE 'takeover' END FROM c
RETURNING tenant_id, epoch"""


class SchemaError(RuntimeError):
    pass


def _current(cur: Any) -> int:
    cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    if not cur.fetchone()[0]:
        return 0
    cur.execute("SELECT coalesce(max(version), 0) FROM schema_version")
    return int(cur.fetchone()[0])


def upgrade_sync(conn: Any) -> list[int]:
    """Apply the missing migrations on a psycopg (sync) connection; returns the versions applied."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_NS,))
        cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())")
        have = _current(cur)
        if have > LATEST:
            raise SchemaError(f"database schema version {have} is newer than this daemon's ({LATEST}): upgrade it")
        applied = []
        for version, sql in MIGRATIONS:
            if version > have:
                cur.execute(sql)
                cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                applied.append(version)
        return applied


async def upgrade(conn: Any) -> list[int]:
    """The same on an AsyncConnection (the daemon at start)."""
    async with conn.transaction():
        async with conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_NS,))
            await cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                              "applied_at timestamptz NOT NULL DEFAULT now())")
            await cur.execute("SELECT coalesce(max(version), 0) FROM schema_version")
            have = int((await cur.fetchone())[0])
            if have > LATEST:
                raise SchemaError(f"database schema version {have} is newer than this daemon's ({LATEST})")
            applied = []
            for version, sql in MIGRATIONS:
                if version > have:
                    await cur.execute(sql)
                    await cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                    applied.append(version)
            return applied
