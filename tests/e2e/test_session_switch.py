"""A contact's message on a session the tenant has just replaced spoils nothing (node_worker/src/signal-decrypt.mjs,
docs/protocol.md "Sessions"), end to end: the real daemon, its real worker with real Baileys, the simulator's contact.

Baileys replaces the session with a contact on the first send of every new worker process (getUSyncDevices
force-refreshes the sessions of "newly mapped" LIDs). A message the contact encrypted on the old session before it
saw the new one then reaches the tenant: libsignal tries it on the new session first, and its failed attempt used to
ratchet that session to garbage before the old session decrypted the message and the record was stored. The
tenant's next send was "Bad MAC" for the contact, and the contact's next message, on the new session, was "Bad MAC"
for the tenant: lost (a retry receipt answered by nobody). Seen in the takeover e2e (a new owner's worker is a new
process); here on one host, deterministic: the old-session message is held by the server until the tenant's new
session has reached the contact. Fails without the fix (the contact's Bad MAC on out-2, the tenant's on in-3)."""

from __future__ import annotations

import pytest

from .e2e_harness import WAIT, wait_for
from .msg_support import Contacts, make_daemon_with_webhook, wait_texts
from .test_messages_out import inbox, post

pytestmark = pytest.mark.e2e


def test_a_message_on_the_replaced_session_then_both_ways_still_decrypt(tmp_path, sim, receiver, marker):
    from .e2e_harness import pair

    d = make_daemon_with_webhook(tmp_path, sim, receiver, marker)
    try:
        jid = pair(d, sim, "t")["scan"]["jid"]
        contacts = Contacts(sim)
        bob = contacts.new("Bob")
        lid = sim.call("GET", "/contacts")["contacts"][0]["lid"]

        def send(text: str) -> str:
            code, ans, _ = post(d, "t", text, {"to": bob, "text": text})
            assert code == 202, ans
            return ans["waMessageId"]

        def decrypted_by_bob(wa_id: str) -> None:
            wait_for(lambda: any(m["id"] == wa_id for m in inbox(sim, bob)), WAIT, f"bob got {wa_id}")

        def new_sessions() -> int:  # bundles of bob's the tenant fetched: one per session it started with him
            return sum(1 for e in sim.events() if e.get("type") == "keys_fetched" and e.get("jid") == lid)

        contacts.send(bob, jid, "in-0")
        wait_texts(receiver, ["in-0"], WAIT)
        decrypted_by_bob(send("out-0"))  # this worker's first send: a session of the tenant's, bob answers on it
        contacts.send(bob, jid, "in-1")
        wait_texts(receiver, ["in-1"], WAIT)

        # a new worker process; the server keeps its connection inactive (offline marker held), so what bob sends
        # now waits at the server
        code, body = d.call("POST", "/whatsapp/t/stop")
        assert code == 200, body
        assert sim.call("POST", "/offline/hold")["ok"]
        d.start_tenant("t")
        d.wait_connected("t")
        contacts.send(bob, jid, "in-2")  # encrypted on the session bob has: the one out-0 started
        before = new_sessions()
        decrypted_by_bob(send("out-1"))  # the new worker's first send: a new session, bob switches to it
        assert new_sessions() == before + 1, "the new worker's first send did not start a new session"
        assert sim.call("POST", "/offline/release")["ok"]
        wait_texts(receiver, ["in-2"], WAIT)  # the old session's message, after the new session exists

        decrypted_by_bob(send("out-2"))  # on the new session
        contacts.send(bob, jid, "in-3")  # bob's answer on the new session
        wait_texts(receiver, ["in-0", "in-1", "in-2", "in-3"], WAIT)
        box = [(m.get("text"), m.get("type"), m.get("error")) for m in inbox(sim, bob)]
        assert [x for x in box if x[2]] == [], f"bob could not decrypt: {box}"
        assert [x[0] for x in box] == ["out-0", "out-1", "out-2"], box
        counters = sim.counters()
        assert counters["tenantRetryReceipts"] == 0, "the tenant could not decrypt a message of bob's"
        assert counters["contactRetryReceipts"] == 0
        assert contacts.error_acks(jid) == {}
    finally:
        d.stop()
