"""Schema version 4 (supervisor/cluster/schema.py): the dead letters' lookups by key (a retry) and by tenant (a list)
are index scans, not scans of the whole table. A real PostgreSQL database at version 3 with 3,000 dead letters is
upgraded once by `baileys-supervisor db upgrade` (the command) and once by the daemon's `schema.upgrade` (at start);
the planner is asked (EXPLAIN) about the very statements the spool runs (cluster/spool.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg

from supervisor.cluster import schema
from supervisor.cluster.spool import DEAD_BY_KEY_SQL, dead_letters_sql

ROWS = 3000  # "a few thousand": enough that the planner prefers an index when there is one


def at_version_3(dsn: str) -> str:
    """The database as a daemon of schema version 3 left it, with ROWS dead letters over 50 tenants (one rare);
    returns the key of one in the middle."""
    with psycopg.connect(dsn, autocommit=True) as c, c.transaction():
        c.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, "
                  "applied_at timestamptz NOT NULL DEFAULT now())")
        for version, sql in schema.MIGRATIONS:
            if version <= 3:
                c.execute(sql)
                c.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        c.execute("INSERT INTO webhook_dead_letter (seq, tenant_id, key, body, size, created_at, event_id, status,"
                  " attempts, dead_at) SELECT g, CASE WHEN g %% 1000 = 0 THEN 'rare' ELSE 't' || (g %% 50) END,"
                  " md5(g::text), repeat('x', 400), 400, 0, 'ev' || g, 422, 1, 0 FROM generate_series(1, %s) g",
                  (ROWS,))
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("ANALYZE webhook_dead_letter")
        return c.execute("SELECT key FROM webhook_dead_letter WHERE seq = %s", (ROWS // 2,)).fetchone()[0]


def plans(dsn: str, key: str) -> tuple[str, str]:
    """(the retry's plan, the list-by-tenant's plan) as EXPLAIN prints them."""
    with psycopg.connect(dsn) as c:
        by_key = c.execute("EXPLAIN " + DEAD_BY_KEY_SQL, (key,)).fetchall()
        by_tenant = c.execute("EXPLAIN " + dead_letters_sql(True), (0, "rare", 100)).fetchall()
    return "\n".join(r[0] for r in by_key), "\n".join(r[0] for r in by_tenant)


def assert_indexed(dsn: str, key: str) -> None:
    by_key, by_tenant = plans(dsn, key)
    assert "webhook_dead_letter_by_key" in by_key and "Seq Scan" not in by_key, by_key
    assert "webhook_dead_letter_by_tenant" in by_tenant and "Seq Scan" not in by_tenant, by_tenant


def test_db_upgrade_adds_the_dead_letter_indexes(tmp_path, pg_dsn):
    key = at_version_3(pg_dsn)
    before = plans(pg_dsn, key)
    assert all("Seq Scan on webhook_dead_letter" in p for p in before), before  # what version 4 is for
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cluster: {{backend: postgres, dsn: '{pg_dsn}', node_id: n1}}\n")
    up = subprocess.run([sys.executable, "-m", "supervisor", "db", "upgrade", "--config", str(cfg), "--json"],
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stdout + up.stderr
    out = json.loads(up.stdout)
    assert out["applied"] == [v for v, _ in schema.MIGRATIONS if v > 3] and 4 in out["applied"], out
    assert out["schemaVersion"] == schema.LATEST
    assert_indexed(pg_dsn, key)
    with psycopg.connect(pg_dsn) as c:  # the rows are kept: an index, not a rebuilt table
        assert c.execute("SELECT count(*) FROM webhook_dead_letter").fetchone()[0] == ROWS


async def test_the_daemons_upgrade_adds_them_too(pg_dsn):
    key = at_version_3(pg_dsn)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as c:
        applied = await schema.upgrade(c)
    assert 4 in applied and applied == [v for v, _ in schema.MIGRATIONS if v > 3]
    assert_indexed(pg_dsn, key)
