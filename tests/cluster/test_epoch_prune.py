"""Pruning `tenant_epoch` (real PostgreSQL, real PgOwnership): every claim appends a row; the claim's transaction
keeps only the newest EPOCH_HISTORY epochs of the claimed tenants, and fencing still holds (it reads tenant_owner,
never the history): a write at a pruned epoch is refused, one at the current epoch commits."""

from __future__ import annotations

import psycopg
import pytest

from supervisor.cluster import ownership
from supervisor.cluster.ownership import Fenced, PgOwnership
from tests.cluster.test_ownership import wait_for

KEEP = 3


async def test_claims_keep_the_newest_epochs_and_fencing_holds(cluster_settings, pg_dsn, monkeypatch):
    monkeypatch.setattr(ownership, "EPOCH_HISTORY", KEEP)
    a = PgOwnership(cluster_settings("a"))
    await a.start()
    try:
        await a.want_many(["t1", "t2"])

        async def both():
            return {"t1", "t2"} <= set(a.owned)
        assert await wait_for(both, 30)
        first = a.owned["t1"]
        await a.write_kv("t1", {"creds.json": b"v0"})
        for _ in range(KEEP + 4):  # re-claims (what a fence or a restart does): a bump and a history row each
            assert await a._claim(["t1"], []) == ["t1"]
        now = a.owned["t1"]
        assert now == first + KEEP + 4
        with psycopg.connect(pg_dsn) as c:
            kept = [r[0] for r in c.execute("SELECT epoch FROM tenant_epoch WHERE tenant_id = 't1' ORDER BY epoch")]
            other = c.execute("SELECT count(*) FROM tenant_epoch WHERE tenant_id = 't2'").fetchone()[0]
        assert kept == list(range(now - KEEP + 1, now + 1))  # the newest KEEP, nothing else
        assert other >= 1  # another tenant's history is not touched by t1's claims
        with pytest.raises(Fenced):  # an epoch whose row is gone is still stale: the owner row decides
            await a.write_kv("t1", {"creds.json": b"stale"}, epoch=first)
        await a.write_kv("t1", {"creds.json": b"v1"})
        with psycopg.connect(pg_dsn) as c:
            assert c.execute("SELECT v, epoch FROM tenant_kv WHERE tenant_id = 't1' AND k = 'creds.json'"
                             ).fetchone() == (b"v1", now)
    finally:
        await a.close(drain=False)
