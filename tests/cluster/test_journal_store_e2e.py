"""Issue 13, the decrypt journal in the fenced store, end to end: two real daemons (separate storage roots) on one
real PostgreSQL, real node workers with real Baileys against the simulator, the webhook on (the shared spool). Node
a's worker journals a contact's message and sends its receipt but never tells its daemon (test hook
BSUP_TEST_HOLD_MESSAGES=1 in a's worker env only): the message exists only in a's journal and in the store, and
WhatsApp will never deliver it again. a is SIGKILLed; b takes the tenant over, materializes the journal rows, its
worker re-emits the entry and the webhook receiver gets the message exactly once; then the row is gone (acked).
Deterministic: the kill waits for the server's receipt count, not for a moment. Without the journal in the store
(the code before this change) b knows nothing of the message and it never arrives."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import live_workers
from tests.e2e.e2e_harness import WAIT, pair, wait_for
from tests.e2e.msg_support import Contacts

pytestmark = pytest.mark.e2e


def journal_rows(dsn: str, tid: str) -> list[str]:
    with psycopg.connect(dsn) as c:
        return [k for (k,) in c.execute("SELECT k FROM tenant_kv WHERE tenant_id = %s AND k LIKE 'journal/%%'",
                                        (tid,))]


@pytest.fixture
def nodes(cluster_nodes, sim, receiver):
    return lambda name, env=None: cluster_nodes(name, sim.ws_url, webhook_url=receiver.url, env=env)


def test_a_message_journaled_on_a_killed_node_is_delivered_once_by_the_next_owner(sim, receiver, nodes, pg_dsn,
                                                                                  marker):
    contacts = Contacts(sim)
    a = nodes("a", {"BSUP_TEST_HOLD_MESSAGES": "1"})
    jid = pair(a, sim, "t", "Dana")["scan"]["jid"]  # start -> QR -> scan -> connected, on its owner a
    b = nodes("b")  # its own empty storage root: all it can know of t is in the store

    bob = contacts.new("Bob")
    before = contacts.receipts(jid)
    contacts.send(bob, jid, "only in the journal")
    # the receipt reached the server: the message was journaled (and, in cluster mode, committed to the store) on a;
    # WhatsApp will not deliver it again
    wait_for(lambda: contacts.receipts(jid) >= before + 1, WAIT, "the message's receipt at the server")
    assert contacts.queued(jid) == 0
    assert receiver.messages("t") == []  # a's daemon never saw it

    a.kill9()
    st = b.wait_connected("t", 2 * WAIT)
    assert st["owner"] == "b"
    wait_for(lambda: receiver.texts("t"), 2 * WAIT, "the message at the webhook, from b")
    [msg] = receiver.messages("t")
    assert msg["text"] == "only in the journal" and msg["recovered"] is True
    wait_for(lambda: not journal_rows(pg_dsn, "t"), WAIT, "the journal row deleted after b's ack")
    assert [m["text"] for m in receiver.messages("t")] == ["only in the journal"]  # once
    assert not live_workers(f"{marker}-a")


def sent_rows(dsn: str, tid: str) -> list[str]:
    with psycopg.connect(dsn) as c:
        return [k for (k,) in c.execute("SELECT k FROM tenant_kv WHERE tenant_id = %s AND k LIKE 'sent/%%'", (tid,))]


def test_a_retry_receipt_reaching_the_next_owner_is_answered_from_the_sent_store(sim, nodes, pg_dsn):
    """Node a sends a message and is SIGKILLed; b owns the tenant. The contact asks for the message again (a retry
    receipt: it forgot the session): b answers it from the sent store's row (getMessage), the contact gets a second
    copy of the same id. Without the sent store in the store b has nothing to answer with."""
    from tests.e2e.test_messages_out import contact, post, wait_inbox, wait_message

    a = nodes("a")
    pair(a, sim, "t")
    b = nodes("b")
    c = contact(sim)
    code, ans, _ = post(a, "t", "retry-1", {"to": c["jid"], "text": "please retry"})
    assert code == 202, ans
    wa = ans["waMessageId"]
    wait_inbox(sim, c["phone"], lambda box: any(m["id"] == wa for m in box), "first copy", WAIT)
    wait_message(a, "t", ans["messageId"], "sent", WAIT)
    wait_for(lambda: f"sent/{wa}.json" in sent_rows(pg_dsn, "t"), WAIT, "the sent row in the store")

    a.kill9()
    assert b.wait_connected("t", 2 * WAIT)["owner"] == "b"
    assert sim.call("POST", "/contacts/receipt", {"contact": c["phone"], "id": wa, "type": "retry"})["ok"]
    box = wait_inbox(sim, c["phone"], lambda bx: sum(m["id"] == wa for m in bx) == 2, "the resend from b", WAIT)
    assert [(m["text"], m.get("error")) for m in box if m["id"] == wa] == [("please retry", None)] * 2
