"""Sending, end to end (issue 11 item 3): a real daemon, its real worker with real Baileys, the simulator, whose
contacts decrypt what they get (their inbox is the proof: Baileys' sendMessage resolves even when nothing arrived)."""

from __future__ import annotations

import json
import os
import random
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .e2e_harness import Daemon, Simulator, pair, wait_for
from .msg_support import Receiver

pytestmark = pytest.mark.e2e


def post(d: Daemon, tid: str, key: str | None, body: Any) -> tuple[int, Any, dict[str, str]]:
    req = urllib.request.Request(f"{d.url}/whatsapp/{tid}/messages", method="POST", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json",
                                          **({"Idempotency-Key": key} if key is not None else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e), dict(e.headers)


def message(d: Daemon, tid: str, mid: str) -> dict[str, Any]:
    code, body = d.call("GET", f"/whatsapp/{tid}/messages/{mid}")
    assert code == 200, body
    return body


def wait_message(d: Daemon, tid: str, mid: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
    seen: list[Any] = []

    def check() -> dict[str, Any] | None:
        m = message(d, tid, mid)
        seen[:] = [m]
        return m if m["status"] == status else None

    try:
        return wait_for(check, timeout, f"{mid} {status}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last: {seen}") from None


def contact(sim: Simulator, **kw: Any) -> dict[str, Any]:
    c = sim.call("POST", "/contacts", kw)
    assert c["ok"], c
    return c


def inbox(sim: Simulator, phone: str) -> list[dict[str, Any]]:
    return sim.call("GET", f"/contacts/inbox?contact={phone}")["messages"]


def wait_inbox(sim: Simulator, phone: str, pred, what: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    return wait_for(lambda: (lambda box: box if pred(box) else None)(inbox(sim, phone)), timeout, what)


def stanzas(sim: Simulator, wa_id: str) -> list[dict[str, Any]]:
    """Every `<message>` the server got from a tenant under this id."""
    return [e for e in sim.events() if e.get("type") == "tenant_message" and e.get("id") == wa_id]


def sse_events(d: Daemon, tid: str, types: set[str], until, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The tenant's SSE stream replayed from the start of the buffer, read until `until(events)`."""
    req = urllib.request.Request(f"{d.url}/whatsapp/{tid}/events?lastEventId=0")
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(req, timeout=timeout) as r:
        etype = None
        while time.monotonic() < deadline:
            line = r.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                etype = line[7:]
            elif line.startswith("data: ") and etype in types:
                out.append(json.loads(line[6:]))
                if until(out):
                    return out
    raise AssertionError(f"SSE: not within {timeout}s: {out}")


def test_send_decrypted_by_the_contact_statuses_and_a_retried_post(sim, make_daemon):
    d = make_daemon(sim)
    pair(d, sim, "1")
    c = contact(sim, pushName="Carol")
    text = "hi Carol, ünïcode ✓ https://example.com"
    code, ans, _ = post(d, "1", "order-1", {"to": c["phone"], "text": text})
    assert code == 202 and ans["status"] == "queued", ans
    wa = ans["waMessageId"]
    box = wait_inbox(sim, c["phone"], lambda b: any(m["id"] == wa for m in b), "the contact decrypts")
    got = [m for m in box if m["id"] == wa]
    assert [(m["text"], m.get("error")) for m in got] == [(text, None)]
    st = wait_message(d, "1", ans["messageId"], "sent")  # the server's ack
    assert st["waMessageId"] == wa and st["to"] == c["jid"] and st["error"] is None

    # The same key and body: the same answer, and nothing sent again.
    code2, ans2, headers = post(d, "1", "order-1", {"to": c["phone"], "text": text})
    assert (code2, ans2) == (202, ans) and headers.get("Idempotent-Replayed") == "true"
    code3, conflict, _ = post(d, "1", "order-1", {"to": c["phone"], "text": "another text"})
    assert code3 == 409 and conflict["error"] == "idempotency_conflict"

    assert sim.call("POST", "/contacts/receipt", {"contact": c["phone"], "id": wa, "type": "delivery"})["ok"]
    wait_message(d, "1", ans["messageId"], "delivered")
    assert sim.call("POST", "/contacts/receipt", {"contact": c["phone"], "id": wa, "type": "read"})["ok"]
    wait_message(d, "1", ans["messageId"], "read")
    assert len(stanzas(sim, wa)) == 1  # the retried POST sent no second stanza
    assert [m["id"] for m in inbox(sim, c["phone"])].count(wa) == 1

    # A reply quoting that message: the contact sees the quote (stanza id and quoted text).
    code, reply, _ = post(d, "1", "order-1-reply", {"to": c["phone"], "text": "and a reply",
                                                    "replyTo": {"id": wa, "fromMe": True, "text": text}})
    assert code == 202, reply
    box = wait_inbox(sim, c["phone"], lambda b: any(m["id"] == reply["waMessageId"] for m in b), "the reply")
    quoted = next(m for m in box if m["id"] == reply["waMessageId"])
    ctx = quoted["message"]["extendedTextMessage"]["contextInfo"]
    assert quoted["text"] == "and a reply" and ctx["stanzaId"] == wa
    assert ctx["quotedMessage"] == {"conversation": text}

    seen = sse_events(d, "1", {"message_status"}, lambda evs: any(e["status"] == "read" for e in evs))
    assert [e["status"] for e in seen if e["messageId"] == ans["messageId"]] == \
        ["queued", "sending", "sent", "delivered", "read"]


def test_a_number_without_whatsapp_fails_and_nothing_is_sent(sim, make_daemon):
    d = make_daemon(sim)
    pair(d, sim, "1")
    before = sim.counters()["tenantMessages"]
    code, ans, _ = post(d, "1", "k-nobody", {"to": "19995550000", "text": "anyone?"})
    assert code == 202, ans
    st = wait_message(d, "1", ans["messageId"], "failed")
    assert st["error"] == "not_on_whatsapp"
    assert stanzas(sim, ans["waMessageId"]) == [] and sim.counters()["tenantMessages"] == before


def test_unknown_tenant_bad_input_and_unknown_message(sim, make_daemon):
    d = make_daemon(sim)
    assert post(d, "nobody", "k", {"to": "972501234567", "text": "x"})[0] == 404
    d.start_tenant("1")
    code, body, _ = post(d, "1", None, {"to": "972501234567", "text": "x"})
    assert code == 400 and "Idempotency-Key" in body["message"]
    code, body, _ = post(d, "1", "k", {"to": "0501234567", "text": "x"})
    assert code == 400 and "country code" in body["message"]
    assert d.call("GET", "/whatsapp/1/messages/msg_" + "0" * 24)[0] == 404


def test_queued_while_not_connected_then_sent_in_order(sim, make_daemon):
    d = make_daemon(sim, start=False)
    d.config["outbox"] = {"rate": 50.0, "burst": 50}
    d.config_path.write_text(json.dumps(d.config))
    d.start()
    pair(d, sim, "1")
    c = contact(sim)
    assert d.call("POST", "/whatsapp/1/stop")[0] == 200
    answers = [post(d, "1", f"q{i}", {"to": c["jid"], "text": f"queued {i}"})[1] for i in range(8)]
    time.sleep(0.5)  # a positive check follows: nothing may go while stopped
    assert {message(d, "1", a["messageId"])["status"] for a in answers} == {"queued"}
    d.start_tenant("1")
    box = wait_inbox(sim, c["phone"], lambda b: len(b) >= 8, "all 8 after the start")
    assert [m["text"] for m in box] == [f"queued {i}" for i in range(8)]
    assert [m["id"] for m in box] == [a["waMessageId"] for a in answers]


def test_sigkill_between_the_stanza_and_the_reply_resends_with_the_same_id(sim, make_daemon, tmp_path: Path):
    trigger = tmp_path / "kill-after-send"
    d = make_daemon(sim, worker={"env": {"BSUP_TEST_KILL_AFTER_SEND": str(trigger)}})
    pair(d, sim, "1")
    c = contact(sim)
    pid = d.status("1")["pid"]
    trigger.write_text("")
    code, ans, _ = post(d, "1", "crash-1", {"to": c["jid"], "text": "survives a crash"})
    assert code == 202
    wait_for(lambda: not trigger.exists(), 20, "the worker's send (and its SIGKILL)")
    st = wait_message(d, "1", ans["messageId"], "sent", timeout=30)
    assert d.status("1")["pid"] != pid and st["attempts"] == 2
    sent = stanzas(sim, ans["waMessageId"])
    assert len(sent) == 2, sent  # the first copy left before the kill, the resend used the same id
    box = inbox(sim, c["phone"])
    assert {m["id"] for m in box} == {ans["waMessageId"]}
    assert "survives a crash" in [m["text"] for m in box]


def test_a_retry_receipt_after_a_worker_restart_is_answered_from_the_sent_store(sim, make_daemon):
    d = make_daemon(sim)
    pair(d, sim, "1")
    c = contact(sim)
    code, ans, _ = post(d, "1", "retry-1", {"to": c["jid"], "text": "please retry"})
    wa = ans["waMessageId"]
    wait_inbox(sim, c["phone"], lambda b: any(m["id"] == wa for m in b), "first copy")
    wait_message(d, "1", ans["messageId"], "sent")
    pid = d.status("1")["pid"]
    assert d.call("POST", "/whatsapp/1/restart")[0] == 200
    d.wait_status("1", lambda s: s["connected"] and s["pid"] != pid, what="connected again")
    assert sim.call("POST", "/contacts/receipt", {"contact": c["phone"], "id": wa, "type": "retry"})["ok"]
    box = wait_inbox(sim, c["phone"], lambda b: sum(m["id"] == wa for m in b) == 2,
                     "the resend from getMessage")
    assert [(m["text"], m.get("error")) for m in box if m["id"] == wa] == [("please retry", None)] * 2


def test_a_slow_tenant_does_not_block_another(sim, make_daemon):
    d = make_daemon(sim, start=False)
    d.config["outbox"] = {"rate": 50.0, "burst": 50}
    d.config_path.write_text(json.dumps(d.config))
    d.start()
    pair(d, sim, "a")
    pair(d, sim, "b")
    ca, cb = contact(sim), contact(sim)
    pid_a = d.status("a")["pid"]
    os.kill(pid_a, signal.SIGSTOP)  # a's worker hangs (well within the 15 s heartbeat timeout)
    try:
        a = [post(d, "a", f"a{i}", {"to": ca["jid"], "text": f"a{i}"})[1] for i in range(3)]
        b = [post(d, "b", f"b{i}", {"to": cb["jid"], "text": f"b{i}"})[1] for i in range(5)]
        box = wait_inbox(sim, cb["phone"], lambda x: len(x) >= 5, "b's messages while a hangs", timeout=10)
        assert [m["text"] for m in box] == [f"b{i}" for i in range(5)]
        assert inbox(sim, ca["phone"]) == []
    finally:
        os.kill(pid_a, signal.SIGCONT)
    box = wait_inbox(sim, ca["phone"], lambda x: len(x) >= 3, "a's messages after it resumes")
    assert [m["id"] for m in box] == [x["waMessageId"] for x in a]
    assert {message(d, "b", x["messageId"])["status"] for x in b} <= {"sent", "delivered", "read"}


def test_statuses_reach_the_webhook_and_the_outbox_survives_a_daemon_sigkill(sim, make_daemon):
    receiver = Receiver()
    try:
        d = make_daemon(sim, start=False)
        d.config["webhook"] = {"url": receiver.url, "initial_delay": 0.1, "max_delay": 0.5}
        d.config_path.write_text(json.dumps(d.config))
        d.start()
        pair(d, sim, "1")
        c = contact(sim)
        assert d.call("POST", "/whatsapp/1/stop")[0] == 200
        answers = [post(d, "1", f"kill-{i}", {"to": c["jid"], "text": f"after a crash {i}"})[1] for i in range(3)]
        d.kill9()  # right after the 202s: only what the outbox file holds survives
        d.start()
        d.start_tenant("1")
        box = wait_inbox(sim, c["phone"], lambda b: len(b) >= 3, "the messages accepted before the SIGKILL")
        assert [m["id"] for m in box] == [a["waMessageId"] for a in answers]
        mid = answers[-1]["messageId"]
        wait_message(d, "1", mid, "sent")

        def items() -> list[dict[str, Any]]:
            return [r for r in list(receiver.requests) if r["body"]["payload"].get("type") == "message_status"
                    and r["body"]["payload"]["messageId"] == mid]

        wait_for(lambda: "sent" in [r["body"]["payload"]["status"] for r in items()], 20, "the webhook's sent item")
        # Every status, in order, the `queued` one too although the daemon died right after the 202s: the outbox
        # commits each status with its webhook item (docs/webhook.md). A copy sent twice carries the same key.
        firsts: dict[str, str] = {}
        for r in items():
            p = r["body"]["payload"]
            assert r["key"] == p["eventId"] and firsts.setdefault(p["status"], r["key"]) == r["key"], r
        assert list(firsts) == ["queued", "sending", "sent"]
        assert all(r["body"]["tenantId"] == "1" and r["key"] for r in receiver.requests)
    finally:
        receiver.stop()


def test_random_worker_sigkills_while_sending_lose_nothing(sim, make_daemon):
    """SIGKILL of the worker at random moments while a tenant works through its outbox (BSUP_SEND_KILLS, default
    10): every message is decrypted by the contact, under its one WhatsApp id, first copies in POST order."""
    kills_wanted = int(os.environ.get("BSUP_SEND_KILLS", "10"))
    seed = int(os.environ.get("BSUP_SEND_SEED", str(random.randrange(1 << 30))))
    print(f"seed {seed}")
    rng = random.Random(seed)
    d = make_daemon(sim, start=False)
    d.config["outbox"] = {"rate": 2.0, "burst": 1}  # ~15 s of sending for 30 messages: kills land mid-way
    d.config_path.write_text(json.dumps(d.config))
    d.start()
    pair(d, sim, "1")
    c = contact(sim)
    answers = [post(d, "1", f"k{i}", {"to": c["jid"], "text": f"message {i} ✓"})[1] for i in range(30)]

    def all_sent() -> bool:
        return all(message(d, "1", a["messageId"])["status"] == "sent" for a in answers)

    kills = 0
    while kills < kills_wanted and not all_sent():
        pid = d.wait_connected("1", timeout=60)["pid"]
        time.sleep(rng.uniform(0.05, 1.0))  # a random moment of this worker's sending
        try:
            os.kill(pid, signal.SIGKILL)
            kills += 1
        except ProcessLookupError:
            pass
    wait_for(all_sent, 120, "every message sent")
    print(f"{kills} kills")
    assert kills >= min(kills_wanted, 3), "the kills did not land while sending"
    ids = [a["waMessageId"] for a in answers]
    box = inbox(sim, c["phone"])
    assert {m["id"] for m in box} <= set(ids), "a copy under an id we never gave"
    decrypted = [m for m in box if m.get("error") is None]
    print(f"{len(box)} copies for {len(ids)} messages, {len(box) - len(decrypted)} not decryptable (repeats)")
    first: list[str] = []
    for m in decrypted:
        if m["id"] not in first:
            first.append(m["id"])
    assert first == ids, "a message lost, or its first copy out of order"
    texts = {a["waMessageId"]: f"message {i} ✓" for i, a in enumerate(answers)}
    assert all(m["text"] == texts[m["id"]] for m in decrypted)
