"""The daemon's side of the webhook for incoming messages (supervisor/webhook_sink.py): the stable event id, the ack
after the spool commit, and the hold/replay when the spool is full. A real forwarder and spool (SQLite on disk) with
a target that is never reached (deliveries are not the point here); the worker is a recorder of commands."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from supervisor.settings import WebhookSettings
from supervisor.webhook import WebhookForwarder
from supervisor.webhook_sink import MessageSink, ack_commands, event_id


def msg(n: int, **extra):
    return {"type": "message", "upsertType": "notify", "ref": f"r{n}", "recovered": False,
            "messages": [{"key": {"remoteJid": "1555@s.whatsapp.net", "fromMe": False, "id": f"W{n}"}, **extra}]}


def test_event_id_is_stable_and_distinguishes_variants():
    a = event_id("t", msg(1))
    assert a == hashlib.sha256(b"t|1555@s.whatsapp.net|0|W1|content").hexdigest()
    assert event_id("t", {**msg(1), "ref": "other", "recovered": True}) == a  # re-emitted: the same id
    assert event_id("u", msg(1)) != a  # per tenant
    assert event_id("t", msg(1, messageStubType=2)) != a  # a stub, then the content, under one WhatsApp id
    up = {"type": "message_update", "key": {"remoteJid": "1555@s.whatsapp.net", "id": "W1"}, "update": {"status": 3}}
    assert event_id("t", up) != event_id("t", {**up, "update": {"status": 4}})
    assert event_id("t", up) == event_id("t", dict(up))


def test_ack_lines_stay_under_the_command_limit():
    refs = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1201)]
    chunks = ack_commands(refs)
    assert [len(c) for c in chunks] == [500, 500, 201] and sum(chunks, []) == refs


@pytest.fixture
async def forwarder(tmp_path):
    # The target is a closed port: rows stay pending, so the bound is reached deterministically.
    fw = WebhookForwarder(WebhookSettings(url="http://127.0.0.1:9/hook", max_items=3, initial_delay=5.0),
                          storage_root=tmp_path)
    await fw.start()
    yield fw
    await fw.aclose()


async def test_ack_after_commit_hold_when_full_and_replay_when_there_is_room(forwarder, monkeypatch):
    sent: list[tuple] = []
    sink = MessageSink(forwarder, lambda tid, cmd, **kw: sent.append((tid, cmd, kw)) or True)
    monkeypatch.setattr(MessageSink, "ROOM_POLL", 0.01)
    for n in range(5):
        sink("t", msg(n))
    await asyncio.gather(*list(sink.pending))
    assert [s for s in sent if s[1] == "ack"] == [("t", "ack", {"refs": [f"r{n}"]}) for n in range(3)]  # 3 fit
    assert "t" in sink.held and forwarder.depth == 3
    sink("t", msg(5))  # held: not spooled, not acked (its worker keeps it in the journal)
    assert not sink.pending
    # Room again (a delivery): the tenant is released and its worker told to replay.
    spool = forwarder._spool
    [first, *_] = await forwarder._db(spool.next_items, "t")
    await forwarder._db(spool.delete, first.seq)
    await asyncio.wait_for(asyncio.shield(sink.held["t"]), 5)
    assert sent[-1] == ("t", "replay", {})
    sink("t", msg(3))  # what the replay re-emits first: the refused r3
    await asyncio.gather(*list(sink.pending))
    assert sent[-1] == ("t", "ack", {"refs": ["r3"]})
    await sink.drain()
