"""The webhook spool's two implementations against one contract: SQLite (supervisor/spool.py) and PostgreSQL
(supervisor/cluster/spool.py, a real server from tests/pg.py). Plus what only the PostgreSQL one has: puts commit only
at the writer's current epoch (a fenced put commits nothing), and the rows are shared by the nodes."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from supervisor.cluster import schema
from supervisor.cluster.spool import PgSpool, SpoolFenced
from supervisor.spool import Spool, SpoolFull

TENANTS = ("t", "u", "v")


def _setup_db(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        schema.upgrade_sync(c)
        c.execute("INSERT INTO cluster_node (node_id, max_tenants) VALUES ('n1', 10), ('n2', 10)")
        for t in TENANTS:
            c.execute("INSERT INTO tenant_owner (tenant_id, owner, epoch) VALUES (%s, 'n1', 1)", (t,))


@pytest.fixture(params=["sqlite", "postgres"])
def make(request, tmp_path):
    """make(max_items=..., max_bytes=...) -> an open spool; the postgres ones are node n1 owning TENANTS at epoch 1."""
    made: list = []
    dsn = None
    if request.param == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        _setup_db(dsn)
        cs_of = request.getfixturevalue("cluster_settings")

    def factory(**kw):
        if dsn is None:
            s = Spool(tmp_path / "spool.sqlite3", **kw)
        else:
            s = PgSpool(cs_of("n1"), {t: 1 for t in TENANTS}.get, **kw)
        s.open()
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def body(n: int) -> str:
    return json.dumps({"type": "message", "n": n})


def test_per_tenant_order_and_unique_keys(make):
    spool = make(max_items=1000)
    for n in range(10):
        spool.put("u" if n % 2 else "v", body(n), 0.0)
    a = spool.next_items("u")
    assert [json.loads(i.body)["n"] for i in a] == [1, 3, 5, 7, 9]
    assert [json.loads(i.body)["n"] for i in spool.next_items("v")] == [0, 2, 4, 6, 8]
    assert spool.tenants() == ["v", "u"]  # oldest pending first
    assert len({i.key for i in a}) == 5
    assert [i.seq for i in spool.next_items("u", after_seq=a[1].seq, limit=2)] == [a[2].seq, a[3].seq]


def test_rows_and_counters_survive_reopen(make):
    s = make()
    items = [s.put("t", body(n), 1.0)[0] for n in range(3)]
    s.delete(items[0].seq)
    s.close()
    s2 = make()
    assert (s2.depth, s2.bytes) == (2, sum(len(i.body) for i in items[1:]))
    assert [(i.seq, i.key) for i in s2.next_items("t")] == [(i.seq, i.key) for i in items[1:]]
    assert s2.put("t", body(9), 1.0)[0].seq > items[-1].seq  # a seq is never handed out again


def test_max_items_and_max_bytes_refuse_new(make):
    s = make(max_items=3)
    first = [s.put("t", body(n), 0.0)[0] for n in range(3)]
    with pytest.raises(SpoolFull) as ei:
        s.put("t", body(3), 0.0)
    assert ei.value.code == "spool_full" and ei.value.details["depth"] == 3
    assert [i.seq for i in s.next_items("t")] == [i.seq for i in first]  # old rows untouched
    s.delete(first[0].seq)
    s.put("t", body(4), 0.0)
    assert s.depth == 3
    for i in s.next_items("t"):
        s.delete(i.seq)
    s.close()
    b = make(max_items=100, max_bytes=40)
    b.put("t", "x" * 30, 0.0)
    with pytest.raises(SpoolFull):
        b.put("t", "y" * 11, 0.0)
    b.put("t", "z" * 10, 0.0)
    assert (b.depth, b.bytes) == (2, 40)


def test_dead_letter_moves_row(make):
    spool = make()
    item, _ = spool.put("t", body(1), 5.0)
    nxt, _ = spool.put("t", body(2), 5.0)
    assert spool.dead_letter(item, 422, 1, 6.0) == 1
    assert [i.seq for i in spool.next_items("t")] == [nxt.seq]
    [dl] = spool.dead_letters()
    assert (dl["seq"], dl["tenant"], dl["key"], dl["status"], dl["attempts"], json.loads(dl["body"])) == (
        item.seq, "t", item.key, 422, 1, {"type": "message", "n": 1})
    assert spool.dead_letter_count() == 1 and spool.dead_letters("other") == []


def test_dead_letter_of_a_row_already_gone_leaves_none(make):
    """Another node delivered (and deleted) it meanwhile: no dead letter for a delivered item."""
    spool = make()
    item, _ = spool.put("t", body(1), 5.0)
    spool.delete(item.seq)
    assert spool.dead_letter(item, 422, 1, 6.0) == 0
    assert spool.dead_letter_count() == 0 and spool.depth == 0


def test_one_pending_row_per_event_id(make):
    spool = make()
    a, _ = spool.put("t", body(1), 0.0, event_id="e1")
    again, depth = spool.put("t", body(1), 1.0, event_id="e1")  # the same message re-emitted: the same row
    assert (again.seq, again.key, depth) == (a.seq, a.key, 1)
    assert again.idempotency_key == "e1"
    other, _ = spool.put("u", body(1), 0.0, event_id="e1")  # another tenant's row is its own
    assert other.seq != a.seq
    plain, _ = spool.put("t", body(2), 0.0)
    assert plain.idempotency_key == plain.key
    spool.delete(a.seq)
    later, _ = spool.put("t", body(1), 2.0, event_id="e1")  # delivered already: a new row, the same key
    assert later.seq != a.seq and later.idempotency_key == "e1"


def test_a_refused_message_is_never_overtaken(make):
    s = make(max_items=2)
    first = s.put("t", body(0), 0.0, event_id="e0")[0]
    s.put("u", body(0), 0.0, event_id="u0")
    with pytest.raises(SpoolFull):
        s.put("t", body(1), 0.0, event_id="e1")
    s.delete(first.seq)  # room again, but e1 was refused: e2 must not get in ahead of it
    with pytest.raises(SpoolFull):
        s.put("t", body(2), 0.0, event_id="e2")
    s.put("v", body(0), 0.0, event_id="v0")  # other tenants are not held
    s.delete(s.next_items("v")[0].seq)
    s.unblock("t")
    assert s.put("t", body(1), 0.0, event_id="e1")[0].event_id == "e1"


# -- PostgreSQL only ------------------------------------------------------------------------------------------------
@pytest.fixture
def pg_spool(pg_dsn, cluster_settings):
    _setup_db(pg_dsn)
    epochs = {t: 1 for t in TENANTS}
    s = PgSpool(cluster_settings("n1"), epochs.get)
    s.open()
    yield s, epochs, pg_dsn
    s.close()


def _pending(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT tenant_id, event_id, epoch FROM webhook_pending ORDER BY seq").fetchall()


def test_a_fenced_put_commits_nothing(pg_spool):
    s, epochs, dsn = pg_spool
    s.put("t", body(0), 0.0, event_id="e0")
    with psycopg.connect(dsn, autocommit=True) as c:  # another node takes t over: the epoch moves on
        c.execute("UPDATE tenant_owner SET owner = 'n2', epoch = epoch + 1 WHERE tenant_id = 't'")
    with pytest.raises(SpoolFenced) as ei:
        s.put("t", body(1), 0.0, event_id="e1")  # we still believe we own it at epoch 1
    assert ei.value.code == "not_owner"
    epochs.pop("u")  # lost locally (or the lease lapsed): refused before any statement
    with pytest.raises(SpoolFenced):
        s.put("u", body(1), 0.0, event_id="u1")
    assert _pending(dsn) == [("t", "e0", 1)] and s.depth == 1
    s.put("v", body(2), 0.0)  # the connection is fine after a fenced put: other tenants are spooled
    assert [r[0] for r in _pending(dsn)] == ["t", "v"]


def test_a_put_in_flight_holds_off_the_bump(pg_spool):
    """The FOR SHARE row lock: a takeover's bump waits for a put that passed the epoch check, so that put commits
    inside its epoch, never after the bump. The put is held between its check and its INSERT by a table lock."""
    s, _, dsn = pg_spool
    put_pid = s.db.info.backend_pid
    results: dict[str, object] = {}

    def waiting(where: str, pid_or_query) -> bool:
        with psycopg.connect(dsn, autocommit=True) as q:
            sql = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                   + ("pid = %s" if where == "pid" else "query LIKE %s"))
            return q.execute(sql, (pid_or_query,)).fetchone()[0] > 0

    def bump():
        with psycopg.connect(dsn, autocommit=True) as b:
            b.execute("UPDATE tenant_owner SET owner = 'n2', epoch = epoch + 1 WHERE tenant_id = 't' /* bump */")
        results["bumped"] = True

    def put():
        try:
            results["put"] = s.put("t", body(0), 0.0, event_id="e0")[0].seq
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results["put"] = exc

    with psycopg.connect(dsn, autocommit=True) as hold:
        with hold.transaction():
            hold.execute("LOCK TABLE webhook_pending IN EXCLUSIVE MODE")  # the put's INSERT waits here
            tp = threading.Thread(target=put)
            tp.start()
            wait_until(lambda: waiting("pid", put_pid), "the put past its check, waiting to insert")
            tb = threading.Thread(target=bump)
            tb.start()
            wait_until(lambda: waiting("query", "%/* bump */%") or "bumped" in results, "the bump blocked or done")
            assert "bumped" not in results  # the owner row is held by the put in flight
        tp.join(30)
        tb.join(30)
    assert isinstance(results["put"], int) and results.get("bumped")
    assert _pending(dsn) == [("t", "e0", 1)]
    with psycopg.connect(dsn) as c:  # the put's commit precedes the bump's (track_commit_timestamp is on)
        put_at, bump_at = c.execute(
            "SELECT (SELECT pg_xact_commit_timestamp(xmin) FROM webhook_pending),"
            " (SELECT pg_xact_commit_timestamp(xmin) FROM tenant_owner WHERE tenant_id = 't')").fetchone()
    assert put_at < bump_at
    with pytest.raises(SpoolFenced):
        s.put("t", body(1), 0.0, event_id="e1")


def wait_until(pred, what: str, timeout: float = 30.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_rows_are_shared_and_depth_is_cluster_wide(pg_spool, cluster_settings):
    s, _, dsn = pg_spool
    item = s.put("t", body(0), 0.0, event_id="e0")[0]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE tenant_owner SET owner = 'n2', epoch = 2 WHERE tenant_id = 't'")
    b = PgSpool(cluster_settings("n2"), {"t": 2}.get)  # the new owner: sees the dead owner's row, the same key
    b.open()
    try:
        assert b.depth == 1 and b.tenants() == ["t"]
        [got] = b.next_items("t")
        assert (got.seq, got.key, got.idempotency_key) == (item.seq, item.key, "e0")
        assert b.put("t", body(0), 1.0, event_id="e0")[0].seq == item.seq  # a re-emit: still one row
        b.delete(got.seq)
    finally:
        b.close()
    assert _pending(dsn) == []


def test_server_errors_are_spool_errors_and_the_connection_comes_back(pg_spool):
    from supervisor.spool import SpoolError

    s, _, dsn = pg_spool
    pid = s.db.info.backend_pid
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(SpoolError):
        s.next_items("t")
    s.put("t", body(0), 0.0)  # reconnected
    assert s.db.info.backend_pid != pid and len(s.next_items("t")) == 1
