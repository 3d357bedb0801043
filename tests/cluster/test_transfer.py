"""`db import` / `db export` (supervisor/cluster/transfer.py) against a real PostgreSQL: an auth directory written by
stock Baileys' own `useMultiFileAuthState` (a real node, escaped key file names included) goes into `tenant_kv` and
comes back byte-identical, and stock Baileys loads the exported copy to the same creds and keys. The import is
fenced: refused for a live owner, a bump for a dead one (its writes at the old epoch are rejected), no overwrite
without --force."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from supervisor.cluster import transfer
from supervisor.cluster.ownership import PgOwnership
from supervisor.cluster.store import Fenced, fenced_tx
from tests.cluster.test_ownership import wait_for

NODE_DIR = Path(__file__).resolve().parents[2] / "node_worker"

# Stock Baileys writes the dir ('make') or loads it and prints what it read ('load'). Key ids with ':' and '/' so the
# fixFileName escaping ('-' and '__') is on disk.
BAILEYS = """
import { useMultiFileAuthState, initAuthCreds, Curve, BufferJSON } from '@whiskeysockets/baileys';
const [mode, dir] = process.argv.slice(1);
const ids = {
  'pre-key': ['1', '2', '812'], 'session': ['4915112345678.0', '4915112345678.3'],
  'sender-key': ['120363012345678@g.us::4915112345678::0'], 'app-state-sync-key': ['AAAAAFx/Yw=='],
  'app-state-sync-version': ['critical_block'], 'lid-mapping': ['4915112345678', '123456789012345_reverse'],
};
const { state, saveCreds } = await useMultiFileAuthState(dir);
if (mode === 'make') {
  await saveCreds();
  const data = {};
  for (const [type, list] of Object.entries(ids)) {
    data[type] = {};
    for (const id of list) {
      data[type][id] = type === 'pre-key' ? Curve.generateKeyPair()
        : type === 'app-state-sync-key' ? { keyData: Buffer.from('k'.repeat(32)), timestamp: 1700000000 }
        : type === 'app-state-sync-version' ? { version: 7, hash: Buffer.alloc(128, 1), indexValueMap: {} }
        : type === 'lid-mapping' ? '123456789012345@lid' : { blob: Buffer.from(id) };
    }
  }
  await state.keys.set(data);
} else {
  const keys = {};
  for (const [type, list] of Object.entries(ids)) keys[type] = await state.keys.get(type, list);
  process.stdout.write(JSON.stringify({ creds: state.creds, keys }, BufferJSON.replacer));
}
"""


def baileys(mode: str, d: Path) -> str:
    r = subprocess.run(["node", "--input-type=module", "-e", BAILEYS, mode, str(d)], cwd=NODE_DIR,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture
def db(pg_dsn):
    from supervisor.cluster import schema

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        schema.upgrade_sync(conn)
        yield conn


def stock_dir(tmp_path: Path) -> Path:
    auth = tmp_path / "storage" / "whatsapp" / "t1" / "auth"
    auth.mkdir(parents=True)
    baileys("make", auth)
    # what our worker keeps beside the stock files: per host, not imported
    (auth / "journal").mkdir()
    (auth / "journal" / "0001.json").write_text("{}")
    (auth / ".pre-key-9.json.tmp-1-2").write_text("torn")
    (auth / "link.json").symlink_to(auth / "creds.json")
    return auth


def rows(conn, tid: str) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in conn.execute("SELECT k, v FROM tenant_kv WHERE tenant_id = %s", (tid,))}


def test_round_trip_is_byte_identical_and_stock_baileys_loads_it(tmp_path, db):
    auth = stock_dir(tmp_path)
    files = {p.name: p.read_bytes() for p in auth.iterdir() if p.is_file() and not p.is_symlink()
             and not p.name.startswith(".")}
    assert {"sender-key-120363012345678@g.us--4915112345678--0.json", "app-state-sync-key-AAAAAFx__Yw==.json",
            "creds.json", "pre-key-812.json"} <= set(files)  # the escaping happened on disk
    [rep] = transfer.import_many(db, tmp_path / "storage")
    assert rep["status"] == "imported" and rep["files"] == len(files) and rep["skippedFiles"] == 3, rep
    assert rows(db, "t1") == files  # keys are the file names, values the bytes

    out = tmp_path / "exported"
    exp = transfer.export_tenant(db, "t1", out)
    assert exp["files"] == len(files)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o600}
    assert json.loads(baileys("load", out)) == json.loads(baileys("load", auth))
    with pytest.raises(transfer.TransferError, match="not an empty directory"):
        transfer.export_tenant(db, "t1", out)  # never into a directory that holds something


def test_no_overwrite_without_force_and_bad_creds(tmp_path, db):
    root = tmp_path / "s"
    for t, creds in (("a", b'{"noiseKey": 1}'), ("bad", b"{not json"), ("nocreds", None)):
        (root / "whatsapp" / t / "auth").mkdir(parents=True)
        if creds is not None:
            (root / "whatsapp" / t / "auth" / "creds.json").write_bytes(creds)
        (root / "whatsapp" / t / "auth" / "pre-key-1.json").write_bytes(b'{"x":1}')
    reps = {r["tenant"]: r["status"] for r in transfer.import_many(db, root)}
    assert reps == {"a": "imported", "bad": "creds_corrupt", "nocreds": "no_creds"}
    assert rows(db, "bad") == {} and rows(db, "nocreds") == {}
    (root / "whatsapp" / "a" / "auth" / "pre-key-1.json").unlink()
    (root / "whatsapp" / "a" / "auth" / "creds.json").write_bytes(b'{"noiseKey": 2}')
    assert transfer.import_many(db, root, ["a"])[0]["status"] == "has_state"
    assert rows(db, "a")["creds.json"] == b'{"noiseKey": 1}'
    forced = transfer.import_many(db, root, ["a"], force=True)[0]
    assert forced["status"] == "imported" and forced["replaced"] == 2
    assert rows(db, "a") == {"creds.json": b'{"noiseKey": 2}'}  # the store is the directory: no stale key left


def test_a_tenant_locked_on_this_host_is_refused(tmp_path, db):
    """A single-host daemon (or its worker) holding the tenant's auth.lock may be writing the directory."""
    import fcntl

    auth = tmp_path / "s" / "whatsapp" / "t1" / "auth"
    auth.mkdir(parents=True)
    (auth / "creds.json").write_bytes(b"{}")
    fd = os.open(auth.parent / "auth.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        [rep] = transfer.import_many(db, tmp_path / "s")
        assert rep["status"] == "tenant_running" and rows(db, "t1") == {}, rep
    finally:
        os.close(fd)
    assert transfer.import_many(db, tmp_path / "s")[0]["status"] == "imported"  # lock free: imported


async def test_import_is_fenced(tmp_path, db, cluster_settings, pg_dsn):
    root = tmp_path / "s"
    (root / "whatsapp" / "t1" / "auth").mkdir(parents=True)
    (root / "whatsapp" / "t1" / "auth" / "creds.json").write_bytes(b"{}")
    node = PgOwnership(cluster_settings("a"))
    await node.start()
    try:
        await node.want("t1")
        assert await wait_for(lambda: _owns(node, "t1"), 20)
        epoch = node.owned["t1"]
        [rep] = transfer.import_many(db, root, force=True)
        assert rep["status"] == "owned_by_live_node" and "'a'" in rep["message"], rep
        assert rows(db, "t1") == {}
    finally:
        await node.close(drain=False)  # dies without releasing: its row still names it, its lock is freed
    # the server ends the closed session (and frees the node lock) a moment after the client is gone
    assert await wait_for(lambda: _no_node_lock(db), 20)
    [rep] = transfer.import_many(db, root)
    assert rep["status"] == "imported" and rep["epoch"] == epoch + 1 and rep["previousOwner"] == "a", rep
    assert db.execute("SELECT owner, epoch, wanted FROM tenant_owner").fetchone() == (None, epoch + 1, True)
    assert db.execute("SELECT owner, reason FROM tenant_epoch WHERE epoch = %s", (epoch + 1,)).fetchone() == \
        ("import", "import")
    # a zombie writer of the dead owner's epoch commits nothing after the import
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(Fenced):
            async with fenced_tx(conn, "t1", "a", epoch) as cur:
                await cur.execute("UPDATE tenant_kv SET v = 'x' WHERE tenant_id = 't1'")
    assert rows(db, "t1") == {"creds.json": b"{}"}


async def _owns(node, t):
    return t in node.owned


async def _no_node_lock(conn) -> bool:
    from supervisor.cluster.schema import LOCK_NS

    return not conn.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objsubid = 2 "
                            "AND granted", (LOCK_NS,)).fetchall()


def test_cli_import_export(tmp_path, db, pg_dsn):
    auth = tmp_path / "storage" / "whatsapp" / "t9" / "auth"
    auth.mkdir(parents=True)
    (auth / "creds.json").write_bytes(b'{"me": null}')
    (auth / "session-1.0.json").write_bytes(os.urandom(64).hex().encode())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"storage: {{root: '{tmp_path / 'storage'}'}}\n"
                   f"cluster: {{backend: postgres, dsn: '{pg_dsn}', node_id: n1}}\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "supervisor", "db", *a, "--config", str(cfg), "--json"],
                                    capture_output=True, text=True, timeout=60)
    imp = run("import")
    assert imp.returncode == 0, imp.stdout + imp.stderr
    assert json.loads(imp.stdout)["tenants"][0]["status"] == "imported"
    again = run("import", "--tenant", "t9")
    assert again.returncode == 1 and json.loads(again.stdout)["tenants"][0]["status"] == "has_state"
    exp = run("export", "--tenant", "t9", "--to", str(tmp_path / "out"))
    assert exp.returncode == 0, exp.stdout + exp.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == \
        {p.name: p.read_bytes() for p in auth.iterdir()}
    assert run("export", "--tenant", "t9", "--to", str(tmp_path / "out")).returncode == 1
    assert run("export", "--tenant", "nobody", "--to", str(tmp_path / "o2")).returncode == 1
    assert run("export", "--to", str(tmp_path / "o3")).returncode == 2  # neither --tenant nor --all
    assert run("export", "--all", "--tenant", "t9", "--to", str(tmp_path / "o3")).returncode == 2
    every = run("export", "--all", "--to", str(tmp_path / "root2"))  # back to the single-host layout
    assert every.returncode == 0 and [r["tenant"] for r in json.loads(every.stdout)["tenants"]] == ["t9"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "root2" / "whatsapp" / "t9" / "auth").iterdir()} == \
        {p.name: p.read_bytes() for p in auth.iterdir()}
