"""The PostgreSQL outbox (supervisor/cluster/outbox.py) on a real server: the SQLite outbox's unit tests
(tests/test_outbox.py) run against it unchanged, and its own promises: a write after an epoch bump commits nothing
(Fenced), submit works from any node, the webhook items go to the tenant's owner and only those it read are
deleted, a fenced dispatcher hands nothing to the worker."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from supervisor.cluster import schema
from supervisor.cluster.outbox import PgOutbox
from supervisor.cluster.store import Fenced
from supervisor.outbox import derive_ids
from supervisor.outbox_dispatch import OutboxDispatcher
from supervisor.settings import OutboxSettings
from tests import test_outbox as T
from supervisor.states import TenantState
from tests.test_outbox import JID, fake_sup, until

NODE = "n1"
TENANTS = ("t", "u", "a", "b")


def setup_db(dsn: str, owned: dict[str, str | None]) -> None:
    """Schema, nodes n1 and n2, and the owner rows (tenant -> node or None) at epoch 1."""
    with psycopg.connect(dsn, autocommit=True) as c:
        schema.upgrade_sync(c)
        for n in ("n1", "n2"):
            c.execute("INSERT INTO cluster_node (node_id, max_tenants) VALUES (%s, 10) ON CONFLICT DO NOTHING", (n,))
        for t, n in owned.items():
            c.execute("INSERT INTO tenant_owner (tenant_id, owner, epoch) VALUES (%s, %s, 1)", (t, n))


def bump(dsn: str, tenant: str, to: str = "n2") -> None:
    """Another node takes the tenant over (what a claim does to the row)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE tenant_owner SET owner = %s, epoch = epoch + 1 WHERE tenant_id = %s", (to, tenant))


def make_box(cluster_settings, node: str = NODE, hooks: bool = False) -> tuple[PgOutbox, dict[str, int]]:
    """A box whose node owns at epoch 1 whatever `epochs` says (the test edits it like PgOwnership.owned)."""
    epochs = {t: 1 for t in TENANTS}
    box = PgOutbox(cluster_settings(node), hooks=hooks, epoch_of=epochs.get)
    box.open()
    return box, epochs


@pytest.fixture
def pgbox(cluster_settings, pg_dsn):
    setup_db(pg_dsn, {t: NODE for t in TENANTS})
    box, _ = make_box(cluster_settings)
    yield box
    box.close()


# -- the SQLite outbox's store tests, run on PostgreSQL ----------------------------------------------------------
@pytest.mark.parametrize("case", [T.test_submit_is_idempotent_and_a_changed_body_conflicts,
                                  T.test_fifo_per_tenant_written_rows_wait_for_their_ack_and_reopen_resends,
                                  T.test_reply_failed_and_give_up], ids=lambda f: f.__name__[5:])
def test_store_semantics_as_sqlite(pgbox, case):
    case(pgbox)


@pytest.fixture
async def make_dispatcher(cluster_settings, pg_dsn):
    """tests/test_outbox.py's dispatcher factory, on a PgOutbox."""
    setup_db(pg_dsn, {t: NODE for t in TENANTS})
    made: list[OutboxDispatcher] = []

    async def factory(sup, **settings: Any):
        events: list = []
        box = PgOutbox(cluster_settings(NODE), epoch_of={t: 1 for t in TENANTS}.get)
        d = OutboxDispatcher(OutboxSettings(**{"rate": 1000.0, "burst": 1000, **settings}), None, sup,
                             on_status=lambda t, s: events.append((t, s["status"])), box=box)
        await d.start()
        made.append(d)
        return d, events

    yield factory
    for d in made:
        await d.aclose()


@pytest.mark.parametrize("case", [T.test_order_one_in_flight_and_tenants_independent,
                                  T.test_offline_tenant_waits_and_worker_loss_resends_with_the_same_id,
                                  T.test_worker_errors_retry_then_fail, T.test_rate_limit_spaces_sends],
                         ids=lambda f: f.__name__[5:])
async def test_dispatcher_as_sqlite(make_dispatcher, monkeypatch, case):
    if "monkeypatch" in case.__code__.co_varnames[:case.__code__.co_argcount]:
        await case(make_dispatcher, monkeypatch)
    else:
        await case(make_dispatcher)


# -- fencing -----------------------------------------------------------------------------------------------------
def snapshot(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT message_id, status, written, attempts, updated_at, epoch FROM outbox_msg "
                         "ORDER BY seq").fetchall()


def test_a_write_after_the_epoch_bump_commits_nothing(pgbox, pg_dsn):
    a = pgbox.submit("t", "a", "h", JID, "1", None, 1.0)[0]
    b = pgbox.submit("t", "b", "h", JID, "2", None, 1.0)[0]
    pgbox.mark_sending(a.message_id, 2.0)
    pgbox.mark_written(a.message_id, "sending", None, 3.0)
    assert snapshot(pg_dsn)[0][5] == 1  # the writer's epoch is recorded
    bump(pg_dsn, "t")
    before = snapshot(pg_dsn)
    for write in (lambda: pgbox.mark_sending(b.message_id, 4.0),
                  lambda: pgbox.mark_written(a.message_id, "sent", None, 4.0),
                  lambda: pgbox.requeue(a.message_id, 4.0),
                  lambda: pgbox.requeue(b.message_id, 4.0, fail="boom"),
                  lambda: pgbox.set_status("t", a.wa_id, "delivered", None, 4.0),
                  lambda: pgbox.reopen("t")):
        with pytest.raises(Fenced):
            write()
    assert snapshot(pg_dsn) == before  # nothing committed
    assert pgbox.get("t", a.message_id).status == "sending"
    # submit is not fenced: any node may queue; the owner sends it
    c, created = pgbox.submit("t", "c", "h", JID, "3", None, 5.0)
    assert created and c.status == "queued"
    pgbox.mark_sending(pgbox.submit("u", "x", "h", JID, "4", None, 5.0)[0].message_id, 6.0)  # other tenants go on


def test_a_lapsed_lease_or_an_unowned_tenant_is_fenced_without_the_server(cluster_settings, pg_dsn):
    setup_db(pg_dsn, {t: NODE for t in TENANTS})
    lease = {"ok": True}
    box = PgOutbox(cluster_settings(NODE), epoch_of={"t": 1}.get, valid=lambda: lease["ok"])
    box.open()
    try:
        row = box.submit("t", "k", "h", JID, "x", None, 1.0)[0]
        lease["ok"] = False
        with pytest.raises(Fenced):
            box.mark_sending(row.message_id, 2.0)
        lease["ok"] = True
        other = box.submit("u", "k", "h", JID, "x", None, 1.0)[0]  # not in epoch_of: not ours
        with pytest.raises(Fenced):
            box.mark_sending(other.message_id, 2.0)
        assert [r[3] for r in snapshot(pg_dsn)] == [0, 0]
    finally:
        box.close()


def test_two_nodes_share_one_outbox_and_the_new_owner_resends(cluster_settings, pg_dsn):
    setup_db(pg_dsn, {t: NODE for t in TENANTS})
    one, _ = make_box(cluster_settings, "n1")
    two, epochs2 = make_box(cluster_settings, "n2")
    try:
        a, created = one.submit("t", "k", "h", JID, "x", None, 1.0)
        again, created2 = two.submit("t", "k", "h", JID, "x", None, 2.0)  # a retry through the other node
        assert created and not created2 and again == a
        assert two.get("t", a.message_id) == a
        one.mark_sending(a.message_id, 2.0)
        one.mark_written(a.message_id, "sending", None, 3.0)  # handed over on n1, no ack yet
        with pytest.raises(Fenced):
            two.reopen("t")  # n2 does not own it yet
        bump(pg_dsn, "t", "n2")
        epochs2["t"] = 2
        assert two.reopen("t") == 1 and two.next_to_send("t").wa_id == a.wa_id  # same WhatsApp id
        with pytest.raises(Fenced):
            one.set_status("t", a.wa_id, "sent", None, 4.0)
        assert two.set_status("t", a.wa_id, "sent", None, 4.0).status == "sent"
    finally:
        one.close()
        two.close()


def test_webhook_items_go_to_the_owner_and_only_those_read_are_deleted(cluster_settings, pg_dsn):
    setup_db(pg_dsn, {"t": "n1", "u": "n2", "a": None})
    one, _ = make_box(cluster_settings, "n1", hooks=True)
    two, _ = make_box(cluster_settings, "n2", hooks=True)
    try:
        row, _ = one.submit("t", "k", "h", JID, "x", None, 1.0)
        one.submit("t", "k", "h", JID, "x", None, 1.5)  # a retried POST: no new item
        two.submit("u", "k", "h", JID, "y", None, 1.0)
        one.submit("a", "k", "h", JID, "z", None, 1.0)  # nobody owns it yet: kept for its future owner
        one.mark_sending(row.message_id, 2.0)
        mine = one.hooks_pending()
        assert [(t, json.loads(b)["status"]) for _s, t, _e, b in mine] == [("t", "queued"), ("t", "sending")]
        assert [t for _s, t, _e, _b in two.hooks_pending()] == ["u"]
        one.set_status("t", row.wa_id, "sent", None, 3.0)  # committed after the read, with a higher seq
        assert one.hooks_done(2**62) == 2  # the two it read, not the one committed since
        assert [json.loads(b)["status"] for *_x, b in one.hooks_pending()] == ["sent"]
        assert [t for _s, t, _e, _b in two.hooks_pending()] == ["u"]  # n2's untouched
        bump(pg_dsn, "a", "n2")
        assert sorted(t for _s, t, _e, _b in two.hooks_pending()) == ["a", "u"]
    finally:
        one.close()
        two.close()


async def test_a_fenced_dispatcher_hands_nothing_to_the_worker(cluster_settings, pg_dsn):
    setup_db(pg_dsn, {t: NODE for t in TENANTS})
    sup = fake_sup("a")
    epochs = {"a": 1}
    box = PgOutbox(cluster_settings(NODE), epoch_of=epochs.get)
    d = OutboxDispatcher(OutboxSettings(rate=1000.0, burst=1000), None, sup, box=box)
    await d.start()
    try:
        sup.tenants["a"].state = TenantState.QR  # not connected: the messages wait
        answers = [(await d.submit("a", f"k{i}", {"to": JID, "text": str(i)}))[0] for i in range(3)]
        bump(pg_dsn, "a")  # taken over while they wait
        sup.tenants["a"].state = TenantState.CONNECTED
        d.on_state("a", TenantState.CONNECTING, TenantState.CONNECTED, None)
        await until(lambda: not d._background and not d._tasks, "the dispatch ended")
        d._kick("a")  # a POST or a gain would kick it again: still fenced
        await until(lambda: not d._tasks, "the dispatch ended again")
        assert sup.tenants["a"].worker.sent == []
        assert [(await d.get("a", x["messageId"]))["status"] for x in answers] == ["queued"] * 3
        epochs["a"] = 2  # this node owns it again (a re-claim): gained() resumes
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            c.execute("UPDATE tenant_owner SET owner = %s WHERE tenant_id = 'a'", (NODE,))
        d.gained("a")
        await until(lambda: len(sup.tenants["a"].worker.sent) == 3, "sent after the gain")
        assert [f["waId"] for f in sup.tenants["a"].worker.sent] == [derive_ids("a", f"k{i}")[1] for i in range(3)]
    finally:
        await d.aclose()



async def test_a_message_queued_through_another_node_reaches_the_owners_worker(cluster_settings, pg_dsn):
    """No POST and no reconnect on the owner: its dispatcher finds the row another node queued (poll_every)."""
    setup_db(pg_dsn, {"a": NODE})
    owner_sup, other_sup = fake_sup("a"), fake_sup()
    made = []
    for node, sup in ((NODE, owner_sup), ("n2", other_sup)):
        box = PgOutbox(cluster_settings(node), epoch_of=({"a": 1} if node == NODE else {}).get)
        box.poll_every = 0.2
        d = OutboxDispatcher(OutboxSettings(rate=1000.0, burst=1000), None, sup, box=box)
        await d.start()
        made.append(d)
    try:
        answer, created = await made[1].submit("a", "k", {"to": JID, "text": "via n2"})
        assert created
        worker = owner_sup.tenants["a"].worker
        await until(lambda: worker.sent, "sent by the owner", timeout=30)
        assert [f["waId"] for f in worker.sent] == [answer["waMessageId"]]
        await until(lambda: not made[0]._tasks, "the owner's dispatch idle")
        assert (await made[1].get("a", answer["messageId"]))["status"] == "sending"  # written, awaiting its ack
    finally:
        for d in made:
            await d.aclose()


def test_a_dropped_connection_is_replaced_at_the_next_call(pgbox, pg_dsn):
    """A server restart or a killed session fails the call in flight only; the next call reconnects."""
    row = pgbox.submit("t", "k", "h", JID, "x", None, 1.0)[0]
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        assert c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                         (f"bsup:{NODE}:outbox",)).fetchone()[0] == 1
    with pytest.raises(psycopg.OperationalError):
        pgbox.get("t", row.message_id)
    assert pgbox.get("t", row.message_id) == row
    assert pgbox.mark_sending(row.message_id, 2.0).status == "sending"
