"""The decrypt journal and the sent store in the fenced store (supervisor/cluster_journal.py, cluster_state.py), on a
real PostgreSQL with a real ownership node: the worker's `journal/` and `sent/` keys commit through the state queue
(anything else under a sub-directory is refused); materialize writes the store's rows into `<auth>/journal` (the
legacy per-file layout the worker migrates) and `<auth>/sent` (mtime = the entry's `at`), moves a local journal that
holds entries the store does not have aside (never deleted) and keeps one that agrees with the store; an empty store
imports a single-host dir's unacked entries; `db import`/`db export` carry them and the sent store. Segment logs are
made by the worker's own encoder (journal-log.mjs)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
from pathlib import Path

from supervisor.cluster.ownership import PgOwnership
from supervisor.cluster_journal import decode_segment, local_journal
from supervisor.cluster_state import StateStore
from supervisor.protocol import Event
from tests.cluster.test_state_store import SleepWorker, b64, kv, owned, sole_owner

ROOT = Path(__file__).resolve().parents[2]


def segment(records: list[dict]) -> bytes:
    """The bytes of a journal segment as the worker writes it (its own encodeRecord)."""
    code = ("import { encodeRecord } from './node_worker/src/journal-log.mjs';"
            "const recs = JSON.parse(process.argv[1]);"
            "process.stdout.write(Buffer.concat(recs.map(encodeRecord)).toString('base64'));")
    out = subprocess.run(["node", "--input-type=module", "-e", code, json.dumps(records)], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return base64.b64decode(out)


def entry(h: str, wa_id: str) -> dict:
    return {"hash": h, "ref": h, "msgKey": f"x|{wa_id}", "seq": 1, "at": 1, "pt": "AQ==",
            "envelope": {"attrs": {"id": wa_id, "from": "1@s.whatsapp.net"}, "enc": {"type": "msg"}}}


def tomb(h: str) -> dict:
    return {"hash": h, "ref": h, "msgKey": "x", "at": 1, "acked": 2}


def test_decode_segment_stops_at_a_torn_tail():
    data = segment([entry("a" * 64, "A"), tomb("b" * 64)])
    assert [r["hash"][0] for r in decode_segment(data)] == ["a", "b"]
    assert [r["hash"][0] for r in decode_segment(data[:-3])] == ["a"]  # the last record torn
    bad = bytearray(data)
    bad[data.index(b'"A"') + 1] = ord("B")  # a flipped byte in the first record: nothing after it is trusted
    assert decode_segment(bytes(bad)) == []


async def test_journal_and_sent_rows_commit_materialize_and_move_a_stale_journal_aside(cluster_settings, pg_dsn,
                                                                                       tmp_path):
    a = PgOwnership(cluster_settings("a"))
    await a.start()
    worker = SleepWorker()
    try:
        await a.want("t")
        await owned(a, "t")
        auth = tmp_path / "t" / "auth"
        auth.mkdir(parents=True)
        (auth / "creds.json").write_bytes(b'{"me":1}')
        store = StateStore(a)
        await store.before_spawn("t", auth)  # imported (no journal)
        h1, h2 = "1" * 64, "2" * 64
        e1 = json.dumps(entry(h1, "W1")).encode()
        at = int(time.time()) * 1000 - 3600_000  # an hour ago: within KEEP_MS (older rows are pruned, not written)
        sent = json.dumps({"to": "1@s.whatsapp.net", "at": at, "message": None}).encode()
        store.on_event("t", worker, Event("state", {"ref": "s1", "items": {f"journal/{h1}.json": b64(e1),
                                                                           "sent/ABC1.json": b64(sent)}}))
        store.on_event("t", worker, Event("state", {"ref": "s2", "items": {"other/x.json": b64(b"{}")}}))
        store.on_event("t", worker, Event("state", {"ref": "s3", "items": {"journal/../creds.json": b64(b"{}")}}))
        await store.close()
        assert [(x["ref"], x["ok"]) for x in worker.acks] == [("s1", True), ("s2", False), ("s3", False)]
        assert kv(pg_dsn, "t") == {"creds.json": b'{"me":1}', f"journal/{h1}.json": e1, "sent/ABC1.json": sent}

        # a returning node's local journal: an entry the store does not have (delivered by another node) -> aside
        jdir = auth / "journal"
        jdir.mkdir()
        (jdir / "seg-000000000001.log").write_bytes(segment([entry(h2, "W2"), tomb("3" * 64)]))
        await store.before_spawn("t", auth)
        aside = [p for p in auth.parent.iterdir() if p.name.startswith("auth.aside-")]
        assert len(aside) == 1 and sorted(p.name for p in (aside[0] / "journal").iterdir()) == ["seg-000000000001.log"]
        assert sorted(p.name for p in jdir.iterdir()) == [f"{h1}.json"]
        assert (jdir / f"{h1}.json").read_bytes() == e1  # the legacy per-file layout the worker migrates
        assert stat.S_IMODE((jdir / f"{h1}.json").stat().st_mode) == 0o600
        assert (auth / "sent" / "ABC1.json").read_bytes() == sent
        assert (auth / "sent" / "ABC1.json").stat().st_mtime == at / 1000  # the worker prunes by mtime

        # the worker migrated h1 into its log (and acked an older one): that agrees with the store -> kept as it is
        os.unlink(jdir / f"{h1}.json")
        (jdir / "seg-000000000002.log").write_bytes(segment([entry(h1, "W1"), tomb("4" * 64)]))
        await store.before_spawn("t", auth)
        assert len([p for p in auth.parent.iterdir() if p.name.startswith("auth.aside-")]) == 1
        assert sorted(p.name for p in jdir.iterdir()) == ["seg-000000000002.log"]
        # the ack's delete was lost: the row is written again as a file; the worker's log says acked and deletes it
        (jdir / "seg-000000000002.log").write_bytes(segment([entry(h1, "W1"), tomb(h1)]))
        await store.before_spawn("t", auth)
        assert sorted(p.name for p in jdir.iterdir()) == [f"{h1}.json", "seg-000000000002.log"]
        assert local_journal(jdir)[h1]["acked"]  # an ack is final, whichever file has the entry
    finally:
        worker.close()
        await a.close(drain=False)


async def test_first_claim_imports_the_single_host_journal(cluster_settings, pg_dsn, tmp_path):
    async with sole_owner(cluster_settings) as (a, epoch):
        auth = tmp_path / "t" / "auth"
        (auth / "journal").mkdir(parents=True)
        (auth / "creds.json").write_bytes(b'{"me":1}')
        h5, h6 = "5" * 64, "6" * 64
        (auth / "journal" / "seg-000000000001.log").write_bytes(segment([entry(h5, "W5"), entry(h6, "W6"),
                                                                          tomb(h6)]))
        await StateStore(a).before_spawn("t", auth)
        rows = kv(pg_dsn, "t")
        assert sorted(rows) == ["creds.json", f"journal/{h5}.json"]  # the unacked one only
        assert json.loads(rows[f"journal/{h5}.json"]) == entry(h5, "W5")
        assert sorted(p.name for p in (auth / "journal").iterdir()) == ["seg-000000000001.log"]  # left as it was


def test_db_import_and_export_carry_the_journal_and_the_sent_store(tmp_path, pg_dsn):
    """`db import` takes the unacked entries and sent files; `db export` writes them back (journal/ in the legacy
    layout the worker migrates): without this, an export of a tenant with a sent row failed (`bad_key`)."""
    import psycopg

    from supervisor.cluster import schema, transfer

    auth = tmp_path / "storage" / "whatsapp" / "t1" / "auth"
    (auth / "journal").mkdir(parents=True)
    (auth / "sent").mkdir()
    (auth / "creds.json").write_bytes(b'{"noiseKey": 1}')
    h7, h8 = "7" * 64, "8" * 64
    (auth / "journal" / "seg-000000000001.log").write_bytes(segment([entry(h7, "W7"), entry(h8, "W8"), tomb(h8)]))
    (auth / "sent" / "S1.json").write_bytes(b'{"to":"x","at":1}')
    with psycopg.connect(pg_dsn, autocommit=True) as db:
        schema.upgrade_sync(db)
        [rep] = transfer.import_many(db, tmp_path / "storage")
        assert rep["status"] == "imported", rep
        keys = {k for (k,) in db.execute("SELECT k FROM tenant_kv WHERE tenant_id = 't1'")}
        assert keys == {"creds.json", f"journal/{h7}.json", "sent/S1.json"}
        out = tmp_path / "exported"
        exp = transfer.export_tenant(db, "t1", out)
    assert exp["files"] == 3
    assert json.loads((out / "journal" / f"{h7}.json").read_bytes()) == entry(h7, "W7")
    assert (out / "sent" / "S1.json").read_bytes() == b'{"to":"x","at":1}'
    assert stat.S_IMODE((out / "journal").stat().st_mode) == 0o700
    assert local_journal(out / "journal")[h7]["envelope"]["attrs"]["id"] == "W7"
