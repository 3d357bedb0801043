"""A contact message the tenant cannot decrypt, resent after the tenant's retry receipt, reaches the webhook (issues
11/13; docs/protocol.md "Incoming": a message the tenant cannot decrypt). Real daemon, real worker, real Baileys, the
simulator: its contact sends one copy with a corrupted MAC (`/contacts/send corrupt`), so the tenant's libsignal
fails it for sure (Bad MAC); Baileys upserts a CIPHERTEXT stub and sends a retry receipt; the contact
(`contactResends`) resends the same id on a fresh session; Baileys decrypts it through the journal and upserts it.

The webhook must get the text once per Idempotency-Key (the content event id), the stub as its own event
(docs/webhook.md "Stubs": forwarded as they are, event id variant `stub:2`), and the messages after it in order."""

from __future__ import annotations

from .e2e_harness import wait_for
from .msg_support import wait_texts
from .test_messages_in import contacts, event_id, linked, make_msg_daemon  # noqa: F401 - fixtures
from .test_messages_out import post, wait_inbox

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CIPHERTEXT = 2  # WebMessageInfo.StubType.CIPHERTEXT


def _with_msg_session(d, sim, receiver, contacts, jid: str) -> str:
    """Bob writes (pkmsg), the tenant answers: Bob's next messages are plain `msg` on that session, whose MAC is the
    last bytes of the ciphertext (what `corrupt` flips)."""
    bob = contacts.new("Bob")
    contacts.send(bob, jid, "hello")
    wait_texts(receiver, ["hello"], 30)
    code, ans, _ = post(d, "t", "reply-1", {"to": bob, "text": "hi bob"})
    assert code in (200, 201, 202), ans
    wait_inbox(sim, bob, lambda box: any(m.get("text") == "hi bob" for m in box), "the tenant's reply at Bob")
    return bob


def test_a_message_the_tenant_could_not_decrypt_arrives_after_its_resend(sim, receiver, contacts, make_msg_daemon):
    assert sim.call("POST", "/config", {"contactResends": 1})["ok"]
    d, jid = linked(make_msg_daemon, sim)
    bob = _with_msg_session(d, sim, receiver, contacts, jid)
    since = sim.state()["lastEventSeq"]

    bad = sim.call("POST", "/contacts/send", {"from": bob, "to": jid, "text": "garbled the first time", "corrupt": True})
    assert bad["ok"] and [dev["type"] for dev in bad["devices"]] == ["msg"], bad
    after = [contacts.send(bob, jid, f"after {i}")["id"] for i in range(3)]
    wait_texts(receiver, ["garbled the first time", "after 0", "after 1", "after 2"], 60)

    # The path really was taken: the tenant asked once, the contact resent once (a pkmsg on a fresh session).
    evs = [e for e in sim.events(since) if e["type"] in ("tenant_retry_receipt", "contact_resent")]
    assert [(e["type"], e["id"]) for e in evs] == [("tenant_retry_receipt", bad["id"]), ("contact_resent", bad["id"])]
    assert sim.counters()["tenantRetryReceipts"] == 1

    bob_jid = f"{bob}@s.whatsapp.net"
    msgs = receiver.messages("t")
    texts = [m for m in msgs if m["stub"] in (None, 0)]
    resent = [m for m in texts if m["id"] == bad["id"]]
    assert resent and {m["key"] for m in resent} == {event_id("t", bob_jid, bad["id"])}  # one Idempotency-Key
    assert {m["text"] for m in resent} == {"garbled the first time"}
    stubs = [m for m in msgs if m["stub"] not in (None, 0)]
    # The failed copy's CIPHERTEXT stub (Baileys upserts it after the retry receipt) is its own event, own key.
    assert stubs and all(m["id"] == bad["id"] and m["stub"] == CIPHERTEXT
               and m["key"] == event_id("t", bob_jid, bad["id"], f"stub:{CIPHERTEXT}") for m in stubs), stubs
    # Each message once per key, the later ones in order, none lost.
    ids = {}
    for m in texts:
        ids.setdefault(m["id"], set()).add(m["key"])
    assert all(len(keys) == 1 for keys in ids.values()), ids
    assert list(dict.fromkeys(m["id"] for m in texts if m["id"] in after)) == after
    wait_for(lambda: contacts.queued(jid) == 0, 20, "every stanza acknowledged to the server")
    # Baileys answers the failed copy with its retry receipt, then an error ack (500, as WhatsApp Web does): the
    # server drops that copy; nothing else was refused.
    assert contacts.error_acks(jid) == {"500": 1}


def test_many_undecryptable_messages_in_an_offline_batch_all_arrive(sim, receiver, contacts, make_msg_daemon):
    """Like a new owner after a takeover (docs/cluster.md): a batch where every other message fails to decrypt, all
    delivered at one login. Each failed copy gets its retry receipt and its resend; every text reaches the webhook."""
    assert sim.call("POST", "/config", {"contactResends": 1})["ok"]
    d, jid = linked(make_msg_daemon, sim)
    bob = _with_msg_session(d, sim, receiver, contacts, jid)
    code, body = d.call("POST", "/whatsapp/t/stop")
    assert code == 200, body
    since = sim.state()["lastEventSeq"]
    texts, bad = [], []
    for i in range(12):  # the worker is down: no retry receipt can come back, so every copy is a msg on one session
        text = f"batch {i:02d}"
        res = sim.call("POST", "/contacts/send", {"from": bob, "to": jid, "text": text, "corrupt": i % 2 == 0})
        assert res["ok"] and [dev["type"] for dev in res["devices"]] == ["msg"], res
        texts.append(text)
        if i % 2 == 0:
            bad.append(res["id"])
    d.start_tenant("t")
    # Before the fix 6 of 12 never arrived: the stubs, upserted after their resends were journaled, took the
    # resends' journal refs, and the resends' own upserts were dropped as already emitted.
    wait_texts(receiver, texts, 90)
    evs = [e for e in sim.events(since) if e["type"] in ("tenant_retry_receipt", "contact_resent")]
    assert sorted(e["id"] for e in evs if e["type"] == "contact_resent") == sorted(bad)
    assert sorted(e["id"] for e in evs if e["type"] == "tenant_retry_receipt") == sorted(bad)
    bob_jid = f"{bob}@s.whatsapp.net"
    content = [m for m in receiver.messages("t") if m["stub"] in (None, 0) and m["text"] in texts]
    keys: dict[str, set[str]] = {}
    for m in content:
        keys.setdefault(m["id"], set()).add(m["key"])
    assert keys == {i: {event_id("t", bob_jid, i)} for i in keys}  # one Idempotency-Key per text
    assert len(keys) == len(texts)
    stubs = [m for m in receiver.messages("t") if m["stub"] not in (None, 0)]
    assert sorted({m["id"] for m in stubs}) == sorted(bad)  # a stub per failed copy, under its own key
    assert all(m["key"] == event_id("t", bob_jid, m["id"], f"stub:{CIPHERTEXT}") for m in stubs), stubs
    wait_for(lambda: contacts.queued(jid) == 0, 20, "every stanza acknowledged to the server")
    assert contacts.error_acks(jid) == {"500": len(bad)}
