"""The SQLite spool on real files: order, durability across reopen, bounds, dead letters, single owner."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from supervisor.spool import Spool, SpoolFull, SpoolLocked


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool.sqlite3", max_items=1000)
    s.open()
    yield s
    s.close()


def body(n: int) -> str:
    return json.dumps({"type": "message", "n": n})


def test_wal_and_full_sync(spool):
    assert spool.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert spool.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 = FULL


def test_per_tenant_order_and_unique_keys(spool):
    for n in range(10):
        spool.put("a" if n % 2 else "b", body(n), 0.0)
    a = spool.next_items("a")
    assert [json.loads(i.body)["n"] for i in a] == [1, 3, 5, 7, 9]
    assert [json.loads(i.body)["n"] for i in spool.next_items("b")] == [0, 2, 4, 6, 8]
    assert spool.tenants() == ["b", "a"]  # oldest pending first
    assert len({i.key for i in a}) == 5
    assert [i.seq for i in spool.next_items("a", after_seq=a[1].seq, limit=2)] == [a[2].seq, a[3].seq]


def test_rows_and_counters_survive_reopen(tmp_path):
    path = tmp_path / "s.sqlite3"
    s = Spool(path)
    s.open()
    items = [s.put("t", body(n), 1.0)[0] for n in range(3)]
    s.delete(items[0].seq)
    s.close()
    s2 = Spool(path)
    s2.open()
    try:
        assert s2.depth == 2
        assert s2.bytes == sum(len(i.body) for i in items[1:])
        again = s2.next_items("t")
        assert [(i.seq, i.key) for i in again] == [(i.seq, i.key) for i in items[1:]]  # same Idempotency-Key
        # AUTOINCREMENT: the deleted seq is never handed out again
        assert s2.put("t", body(9), 1.0)[0].seq > items[-1].seq
    finally:
        s2.close()


def test_put_is_durable_when_it_returns(tmp_path):
    """A put followed by SIGKILL of the writing process must still be there (WAL + synchronous)."""
    path = tmp_path / "k.sqlite3"
    code = (
        "import os, signal, sys; from supervisor.spool import Spool\n"
        f"s = Spool({str(path)!r}); s.open()\n"
        "for n in range(50): s.put('t', '{\"n\":%d}' % n, 0.0)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    s = Spool(path)
    s.open()  # the dead process's flock is gone with it
    try:
        assert [json.loads(i.body)["n"] for i in s.next_items("t")] == list(range(50))
    finally:
        s.close()


def test_max_items_refuses_new(tmp_path):
    s = Spool(tmp_path / "s.sqlite3", max_items=3)
    s.open()
    try:
        first = [s.put("t", body(n), 0.0)[0] for n in range(3)]
        with pytest.raises(SpoolFull) as ei:
            s.put("t", body(3), 0.0)
        assert ei.value.code == "spool_full" and ei.value.details["depth"] == 3
        assert [i.seq for i in s.next_items("t")] == [i.seq for i in first]  # old rows untouched
        s.delete(first[0].seq)
        s.put("t", body(4), 0.0)  # room again
        assert s.depth == 3
    finally:
        s.close()


def test_max_bytes(tmp_path):
    s = Spool(tmp_path / "s.sqlite3", max_items=100, max_bytes=40)
    s.open()
    try:
        s.put("t", "x" * 30, 0.0)
        with pytest.raises(SpoolFull):
            s.put("t", "y" * 11, 0.0)
        s.put("t", "z" * 10, 0.0)
        assert (s.depth, s.bytes) == (2, 40)
    finally:
        s.close()


def test_dead_letter_moves_row(spool):
    item, _ = spool.put("t", body(1), 5.0)
    nxt, _ = spool.put("t", body(2), 5.0)
    assert spool.dead_letter(item, 422, 1, 6.0) == 1
    assert [i.seq for i in spool.next_items("t")] == [nxt.seq]
    [dl] = spool.dead_letters()
    assert (dl["seq"], dl["key"], dl["status"], dl["attempts"], json.loads(dl["body"])) == (
        item.seq, item.key, 422, 1, {"type": "message", "n": 1})
    assert spool.dead_letter_count() == 1 and spool.dead_letters("other") == []


def test_second_owner_is_refused(spool, tmp_path):
    other = Spool(tmp_path / "spool.sqlite3")
    with pytest.raises(SpoolLocked):
        other.open()
    spool.close()
    other.open()  # released on close
    other.close()


def test_single_thread_is_enforced(spool):
    """The forwarder's one-thread rule is not just a convention: sqlite3 refuses a second thread."""
    import threading

    errors = []
    t = threading.Thread(target=lambda: _catch(errors, lambda: spool.put("t", "{}", 0.0)))
    t.start()
    t.join()
    assert errors and isinstance(errors[0], sqlite3.ProgrammingError)


def _catch(errors, fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        errors.append(exc)


def test_one_pending_row_per_event_id(spool):
    a, _ = spool.put("t", body(1), 0.0, event_id="e1")
    again, depth = spool.put("t", body(1), 1.0, event_id="e1")  # the same message re-emitted: the same row
    assert (again.seq, again.key, depth) == (a.seq, a.key, 1)
    assert again.idempotency_key == "e1" and a.idempotency_key == "e1"
    other, _ = spool.put("u", body(1), 0.0, event_id="e1")  # another tenant's row is its own
    assert other.seq != a.seq
    plain, _ = spool.put("t", body(2), 0.0)
    assert plain.idempotency_key == plain.key  # no event id: the row uuid, as before
    [first, *_] = spool.next_items("t")
    assert first.event_id == "e1"
    spool.delete(a.seq)
    later, _ = spool.put("t", body(1), 2.0, event_id="e1")  # delivered already: a new row, the same key
    assert later.seq != a.seq and later.idempotency_key == "e1"


def test_a_refused_message_is_never_overtaken(tmp_path):
    s = Spool(tmp_path / "s.sqlite3", max_items=2)
    s.open()
    try:
        first = s.put("t", body(0), 0.0, event_id="e0")[0]
        s.put("u", body(0), 0.0, event_id="u0")
        with pytest.raises(SpoolFull):
            s.put("t", body(1), 0.0, event_id="e1")
        s.delete(first.seq)  # room again, but e1 was refused: e2 must not get in ahead of it
        with pytest.raises(SpoolFull):
            s.put("t", body(2), 0.0, event_id="e2")
        s.put("v", body(0), 0.0, event_id="v0")  # other tenants are not held
        s.delete(s.next_items("v")[0].seq)
        s.unblock("t")  # the daemon replays: e1 then e2
        assert [s.put("t", body(n), 0.0, event_id=f"e{n}")[0].event_id for n in (1,)] == ["e1"]
    finally:
        s.close()


def test_an_older_spool_gets_the_event_id_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, key TEXT NOT NULL UNIQUE,
                              body TEXT NOT NULL, size INTEGER NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE dead_letter (seq INTEGER PRIMARY KEY, tenant TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,
                                  size INTEGER NOT NULL, created_at REAL NOT NULL, status INTEGER,
                                  attempts INTEGER NOT NULL, dead_at REAL NOT NULL);
        INSERT INTO pending (tenant, key, body, size, created_at) VALUES ('t', 'k-old', '{}', 2, 0);
    """)
    db.commit()
    db.close()
    s = Spool(path)
    s.open()
    try:
        [old] = s.next_items("t")
        assert old.key == "k-old" and old.event_id is None and old.idempotency_key == "k-old"
        s.put("t", body(1), 0.0, event_id="e1")
        s.dead_letter(old, 422, 1, 0.0)
        assert [d["key"] for d in s.dead_letters()] == ["k-old"]
    finally:
        s.close()
