"""Dead letters listed and requeued, one contract for both spools: SQLite (supervisor/spool.py) and PostgreSQL
(supervisor/cluster/spool.py, a real server). The `make` fixture (both kinds) is test_spool_pg.py's."""

from __future__ import annotations

import json
import threading

import pytest

from supervisor.spool import AlreadyPending, DeadLetterNotFound, Spool, SpoolFull
from tests.cluster.test_spool_pg import TENANTS, body, make  # noqa: F401 - make is a fixture

__all__ = ["TENANTS"]


def dead(spool, tenant: str, n: int, event_id: str | None = None):
    item, _ = spool.put(tenant, body(n), 10.0 + n, event_id=event_id)
    spool.dead_letter(item, 422, 2, 20.0 + n)
    return item


def test_listing_pages_filters_and_says_what_an_operator_needs(make):
    spool = make()
    items = [dead(spool, "t" if n % 2 else "u", n, event_id=f"e{n}" if n else None) for n in range(5)]
    rows = spool.dead_letters()
    assert [r["seq"] for r in rows] == [i.seq for i in items]
    r = rows[1]
    assert (r["tenant"], r["key"], r["event_id"], r["status"], r["attempts"], r["created_at"], r["dead_at"],
            r["size"]) == ("t", items[1].key, "e1", 422, 2, 11.0, 21.0, len(body(1)))
    assert rows[0]["event_id"] is None
    page1 = spool.dead_letters(limit=2)
    page2 = spool.dead_letters(limit=2, after=page1[-1]["seq"])
    assert [r["seq"] for r in page1 + page2] == [i.seq for i in items[:4]]
    assert [r["seq"] for r in spool.dead_letters("t")] == [items[1].seq, items[3].seq]


def test_requeue_goes_to_the_tail_with_the_same_key_once(make):
    spool = make()
    first = dead(spool, "t", 1, event_id="e1")
    later, _ = spool.put("t", body(2), 30.0)
    out = spool.requeue(first.key)
    assert out["requeued"] is True and out["tenant"] == "t" and out["id"] == first.key
    assert out["seq"] > later.seq  # the tail of the tenant's queue, behind what waited
    pending = spool.next_items("t")
    assert [(i.seq, i.key, i.event_id, json.loads(i.body)) for i in pending] == [
        (later.seq, later.key, None, json.loads(body(2))), (out["seq"], first.key, "e1", json.loads(body(1)))]
    assert pending[1].idempotency_key == "e1" and pending[1].created_at == first.created_at
    assert spool.dead_letters() == [] and spool.dead_letter_count() == 0 and spool.depth == 2
    again = spool.requeue(first.key)  # idempotent: the same row, nothing moved
    assert again == {**out, "requeued": False} and spool.depth == 2 and len(spool.next_items("t")) == 2
    spool.delete(out["seq"])  # delivered: the id is gone for good
    with pytest.raises(DeadLetterNotFound) as exc:
        spool.requeue(first.key)
    assert exc.value.status == 404


def test_requeue_refuses_a_pending_event_and_a_full_spool_and_keeps_the_letter(make):
    spool = make(max_items=2)
    letter = dead(spool, "t", 1, event_id="e1")
    spool.put("t", body(1), 40.0, event_id="e1")  # the worker re-emitted the same message: it is pending again
    with pytest.raises(AlreadyPending) as exc:
        spool.requeue(letter.key)
    assert exc.value.status == 409
    other = dead(spool, "u", 2)
    spool.put("u", body(3), 41.0)  # 2 pending: the bound
    with pytest.raises(SpoolFull):
        spool.requeue(other.key)
    assert {r["key"] for r in spool.dead_letters()} == {letter.key, other.key} and spool.depth == 2


def test_concurrent_requeues_move_the_letter_once(make):
    """Two callers (two nodes on PostgreSQL, two threads' worth of calls on SQLite) retry one id: one row moves."""
    spool = make()
    letter = dead(spool, "t", 1)
    results: list[dict] = []
    if isinstance(spool, Spool):  # SQLite: one process owns the file, one thread its connection: calls are serial
        results = [spool.requeue(letter.key), spool.requeue(letter.key)]
    else:
        spool2, barrier = make(), threading.Barrier(2)

        def go(s):
            barrier.wait()
            results.append(s.requeue(letter.key))
        threads = [threading.Thread(target=go, args=(s,)) for s in (spool, spool2)]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
    assert sorted(r["requeued"] for r in results) == [False, True]
    assert len({r["seq"] for r in results}) == 1 and len(spool.next_items("t")) == 1
