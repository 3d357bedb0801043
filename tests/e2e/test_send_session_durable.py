"""A send's Signal session is durable before its stanza leaves (issues 11/13; node_worker/src/send-durable.mjs).

Baileys commits the keys of a send (here: the new session built from the contact's pre-key bundle) only after the
stanza went out. The worker's test hook BSUP_TEST_HOLD_SESSION_COMMITS holds that commit forever, so the worker is
SIGKILLed after the contact decrypted the message but before the commit, deterministically. The contact's reply is
then a `msg` on the session our pkmsg started: the restarted worker (same auth directory) can decrypt it only if the
session was written before the stanza left. Without the fix it becomes a stub ("No session record") and is lost."""

from __future__ import annotations

import os
import signal

import pytest

from .e2e_harness import pair, wait_for
from .msg_support import Contacts, make_daemon_with_webhook, wait_texts
from .test_messages_out import post, wait_inbox

pytestmark = [pytest.mark.e2e]


def test_sigkill_between_the_stanza_and_the_commit_keeps_the_session(sim, receiver, marker, tmp_path):
    held = tmp_path / "held"
    d = make_daemon_with_webhook(tmp_path, sim, receiver, marker,
                                 worker_env={"BSUP_TEST_HOLD_SESSION_COMMITS": str(held)})
    try:
        jid = pair(d, sim, "t")["scan"]["jid"]
        contacts = Contacts(sim)
        bob = contacts.new("Bob")
        code, ans, _ = post(d, "t", "first", {"to": bob, "text": "hello Bob"})
        assert code == 202, ans
        wa = ans["waMessageId"]
        box = wait_inbox(sim, bob, lambda b: any(m["id"] == wa for m in b), "bob decrypts the first message")
        assert [(m["text"], m.get("error")) for m in box if m["id"] == wa] == [("hello Bob", None)]
        wait_for(held.exists, 20, "the relay's commit is held")  # the stanza is out, the commit is not
        pid = d.status("t")["pid"]
        assert pid
        os.kill(pid, signal.SIGKILL)

        # bob answers on the session our pkmsg started (a `msg`: no pre-key), queued while the worker restarts
        reply = contacts.send(bob, jid, "hi, got it")
        assert [dev["type"] for dev in reply["devices"]] == ["msg"], reply
        wait_for(lambda: (lambda s: s["connected"] and s["pid"] not in (None, pid))(d.status("t")), 60,
                 "the restarted worker connects")
        wait_texts(receiver, ["hi, got it"], 30)
        got = [m for m in receiver.messages("t") if m["id"] == reply["id"]]
        assert got and all(m["stub"] in (None, 0) for m in got), got
        assert contacts.error_acks(jid) == {} and sim.counters()["tenantRetryReceipts"] == 0

        # and the tenant's next send on the same session decrypts at bob's
        code, ans2, _ = post(d, "t", "second", {"to": bob, "text": "glad to hear"})
        assert code == 202, ans2
        box = wait_inbox(sim, bob, lambda b: any(m["id"] == ans2["waMessageId"] for m in b), "bob decrypts the next")
        assert [(m["text"], m.get("error")) for m in box if m["id"] == ans2["waMessageId"]] == [("glad to hear", None)]
        assert all(m.get("error") is None for m in box), box  # incl. the first one's resend after the restart
    finally:
        d.stop()
