"""Materialize with a big sent store (issue 13; docs/cluster.md "The decrypt journal and the sent store"), on a real
PostgreSQL with a real ownership node: sent rows older than the worker's KEEP_MS (a worker prunes only at its open, so
one that ran for weeks leaves weeks of rows) are deleted in the fenced read, not written as files the next worker
deletes again; the rest are written as before (mtime = `at`); a store left with only such rows is still no import;
the daemon's limit is the worker's."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from supervisor.cluster_journal import SENT_KEEP_S
from supervisor.cluster_state import StateStore
from tests.cluster.test_state_store import kv, sole_owner

ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 86400 * 1000


def sent(at: float) -> bytes:
    return json.dumps({"to": "1@s.whatsapp.net", "at": int(at), "message": {"type": "Buffer", "data": "QUJD"}}).encode()


def test_the_daemons_sent_limit_is_the_workers_keep_ms():
    code = "import('./node_worker/src/send.mjs').then((m) => process.stdout.write(String(m.KEEP_MS)))"
    out = subprocess.run(["node", "--input-type=module", "-e", code], cwd=ROOT, check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert int(out) == SENT_KEEP_S * 1000


async def test_sent_rows_past_keep_ms_are_deleted_fenced_not_written(cluster_settings, pg_dsn, tmp_path):
    async with sole_owner(cluster_settings) as (a, epoch):
        now = time.time() * 1000
        fresh = {f"sent/NEW{i}.json": sent(now - i * DAY_MS) for i in range(4)}  # 0-3 days old
        old = {f"sent/OLD{i}.json": sent(now - (8 + i) * DAY_MS) for i in range(3)}  # 8-10 days: the worker prunes
        odd = {"sent/NOAT.json": b'{"to":"1@s.whatsapp.net"}'}  # no `at`: kept, as the worker keeps it (mtime now)
        await a.write_kv("t", {"creds.json": b'{"me":1}', **fresh, **old, **odd}, epoch)
        store, auth = StateStore(a), tmp_path / "t" / "auth"
        await store.before_spawn("t", auth)
        assert kv(pg_dsn, "t") == {"creds.json": b'{"me":1}', **fresh, **odd}  # deleted at our epoch, fenced
        assert sorted(p.name for p in (auth / "sent").iterdir()) == sorted(k[5:] for k in {**fresh, **odd})
        for k, v in fresh.items():
            p = auth / k
            assert p.read_bytes() == v and p.stat().st_mtime == json.loads(v)["at"] / 1000  # the worker's clock
        assert store.stats["materialized"] == 1 and store.stats["imported"] == 0


async def test_a_store_with_only_expired_rows_is_still_not_an_import(cluster_settings, pg_dsn, tmp_path):
    """The prune must not make a store with rows look empty: that path imports the local dir over the store."""
    async with sole_owner(cluster_settings) as (a, epoch):
        await a.write_kv("t", {"sent/OLD.json": sent(time.time() * 1000 - 9 * DAY_MS)}, epoch)
        auth = tmp_path / "t" / "auth"
        auth.mkdir(parents=True)
        (auth / "creds.json").write_bytes(b'{"me":"local"}')
        store = StateStore(a)
        await store.before_spawn("t", auth)
        assert kv(pg_dsn, "t") == {}  # pruned; the local creds.json not imported
        assert store.stats["imported"] == 0
        assert not (auth / "creds.json").exists()  # the store is the truth: moved aside, as before
