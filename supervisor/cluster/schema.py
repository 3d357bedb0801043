"""Versioned schema of the postgres backend. The daemon applies missing migrations at start (`upgrade()`, under a
transaction-scoped advisory lock so several daemons starting at once apply each one once); `python -m
supervisor.cluster db upgrade --config FILE` does the same by hand. A database newer than this code is refused.

Version 1 is ownership plus the generic fenced key/value store (creds, Signal keys); version 2 the webhook spool
(cluster/spool.py). The decrypt journal and the outbox are later versions (docs/cluster.md "Not done yet"); every such table carries `tenant_id` and is
written only through `ownership.fenced()`, which checks the writer's epoch on `tenant_owner` in the same transaction.
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
    # The webhook spool (cluster/spool.py): the SQLite spool's tables, shared by the nodes. Self-contained: renumber
    # freely when merging with other migrations.
    (2, """
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
