"""A send's Signal session reaches the fenced store before its stanza leaves (issues 11/13, cluster mode;
node_worker/src/send-durable.mjs; the single-host twin: tests/e2e/test_send_session_durable.py).

Two real daemons on one real PostgreSQL, real workers with real Baileys against the simulator. Node a's worker holds
Baileys' commit of the send's keys forever (test hook BSUP_TEST_HOLD_SESSION_COMMITS, a's worker env only); the
contact decrypts the tenant's first message (a pkmsg: a new session) and node a is SIGKILLed, worker first. b takes
the tenant over and materializes its auth from the store. The contact's reply is a `msg` on the session that pkmsg
started: b decrypts it only if that session was committed to the store before the stanza left. Without the fix the
store never got it and the reply is lost (what tests/cluster/test_takeover_messages.py saw)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.e2e_harness import WAIT, pair, wait_for
from tests.e2e.msg_support import Contacts, wait_texts
from tests.e2e.test_messages_out import post, wait_inbox

pytestmark = pytest.mark.e2e


@pytest.fixture
def nodes(cluster_nodes, sim, receiver):
    return lambda name, env=None: cluster_nodes(name, sim.ws_url, webhook_url=receiver.url, env=env)


def test_the_next_owner_decrypts_the_reply_to_a_send_whose_commit_never_came(sim, receiver, nodes, tmp_path):
    held = tmp_path / "held"
    contacts = Contacts(sim)
    a = nodes("a", {"BSUP_TEST_HOLD_SESSION_COMMITS": str(held)})
    jid = pair(a, sim, "t", "Dana")["scan"]["jid"]  # start -> QR -> scan -> connected, on its owner a
    b = nodes("b")  # its own empty storage root: all it can know of t is in the store

    bob = contacts.new("Bob")
    code, ans, _ = post(a, "t", "first", {"to": bob, "text": "hello Bob"})
    assert code == 202, ans
    wa = ans["waMessageId"]
    box = wait_inbox(sim, bob, lambda bx: any(m["id"] == wa for m in bx), "bob decrypts the first message", WAIT)
    assert [(m["text"], m.get("error")) for m in box if m["id"] == wa] == [("hello Bob", None)]
    wait_for(held.exists, WAIT, "the relay's commit is held")  # the stanza is out, the commit is not
    pid = a.status("t")["pid"]
    assert pid
    os.kill(pid, signal.SIGKILL)
    a.kill9()

    reply = contacts.send(bob, jid, "hi, got it")  # queued at the server until b's worker logs in
    assert [dev["type"] for dev in reply["devices"]] == ["msg"], reply
    assert b.wait_connected("t", 2 * WAIT)["owner"] == "b"
    wait_texts(receiver, ["hi, got it"], 2 * WAIT)
    got = [m for m in receiver.messages("t") if m["id"] == reply["id"]]
    assert got and all(m["stub"] in (None, 0) for m in got), got
    assert contacts.error_acks(jid) == {} and sim.counters()["tenantRetryReceipts"] == 0

    code, ans2, _ = post(b, "t", "second", {"to": bob, "text": "glad to hear"})
    assert code == 202, ans2
    box = wait_inbox(sim, bob, lambda bx: any(m["id"] == ans2["waMessageId"] for m in bx), "bob decrypts b's", WAIT)
    assert [(m["text"], m.get("error")) for m in box if m["id"] == ans2["waMessageId"]] == [("glad to hear", None)]
    assert all(m.get("error") is None for m in box), box  # incl. the first one's resend by b
