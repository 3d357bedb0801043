"""The outbox's logic without processes: the SQLite store (real file), the status rules, the token bucket, the request
checks, and the dispatcher against a fake worker (order, one in flight, waiting while offline, resends)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.api_messages import parse_send
from supervisor.errors import BadRequest, NotRunning, WorkerCommandFailed
from supervisor.outbox import IdempotencyConflict, Outbox, OutboxLocked, advances, derive_ids
from supervisor.outbox_dispatch import OutboxDispatcher, TokenBucket, body_hash
from supervisor.settings import OutboxSettings
from supervisor.states import TenantState

JID = "15551000001@s.whatsapp.net"


@pytest.fixture
def box(tmp_path: Path):
    b = Outbox(tmp_path / "outbox.sqlite3")
    b.open()
    yield b
    b.close()


def test_ids_are_derived_from_tenant_and_key():
    assert derive_ids("t1", "k") == derive_ids("t1", "k")
    assert derive_ids("t1", "k") != derive_ids("t2", "k") and derive_ids("t1", "k") != derive_ids("t1", "k2")
    mid, wa = derive_ids("t1", "k")
    assert mid.startswith("msg_") and len(mid) == 28
    assert wa.startswith("3EB0") and len(wa) == 22 and wa == wa.upper()


def test_status_only_moves_forward_and_failed_only_before_delivery():
    assert advances("queued", "sending") and advances("sending", "sent") and advances("sent", "read")
    assert advances("queued", "failed") and advances("sent", "failed")
    assert not advances("sent", "sending") and not advances("delivered", "sent")
    assert not advances("delivered", "failed") and not advances("read", "failed")
    assert not advances("failed", "sent") and not advances("sent", "bogus")


def test_submit_is_idempotent_and_a_changed_body_conflicts(box: Outbox):
    row, created = box.submit("t", "k1", "h1", JID, "hi", None, 1.0)
    assert created and row.status == "queued" and (row.message_id, row.wa_id) == derive_ids("t", "k1")
    again, created2 = box.submit("t", "k1", "h1", JID, "hi", None, 2.0)
    assert not created2 and again == row
    with pytest.raises(IdempotencyConflict):
        box.submit("t", "k1", "h2", JID, "other", None, 3.0)
    other, created3 = box.submit("u", "k1", "h2", JID, "other", None, 3.0)  # keys are per tenant
    assert created3 and other.message_id != row.message_id


def test_file_is_private_and_locked(box: Outbox, tmp_path: Path):
    assert stat.S_IMODE(os.stat(box.path).st_mode) == 0o600
    second = Outbox(box.path)
    with pytest.raises(OutboxLocked):
        second.open()


def test_fifo_per_tenant_written_rows_wait_for_their_ack_and_reopen_resends(box: Outbox):
    a = box.submit("t", "a", "h", JID, "1", None, 1.0)[0]
    b = box.submit("t", "b", "h", JID, "2", None, 1.0)[0]
    box.submit("u", "c", "h", JID, "3", None, 1.0)
    assert box.next_to_send("t").message_id == a.message_id
    assert box.mark_sending(a.message_id, 2.0).status == "sending"
    assert box.next_to_send("t").message_id == a.message_id  # handed over, no reply yet: still first
    row, moved = box.mark_written(a.message_id, "sending", None, 3.0)
    assert not moved and row.written == 1
    assert box.next_to_send("t").message_id == b.message_id  # a waits for its ack, b goes
    assert box.reopen("t") == 1  # a new connection: a goes again, first
    assert box.next_to_send("t").message_id == a.message_id
    assert box.set_status("t", a.wa_id, "sent", None, 4.0).status == "sent"
    assert box.set_status("t", a.wa_id, "sent", None, 5.0) is None  # no change, no event
    assert box.reopen("t") == 0 and box.next_to_send("t").message_id == b.message_id
    assert sorted(box.pending_tenants()) == ["t", "u"]


def test_reply_failed_and_give_up(box: Outbox):
    a = box.submit("t", "a", "h", JID, "1", None, 1.0)[0]
    box.mark_sending(a.message_id, 1.0)
    row, moved = box.mark_written(a.message_id, "failed", "not_on_whatsapp", 2.0)
    assert moved and row.status == "failed" and row.error == "not_on_whatsapp"
    assert box.next_to_send("t") is None
    b = box.submit("t", "b", "h", JID, "2", None, 1.0)[0]
    box.mark_sending(b.message_id, 1.0)
    assert box.requeue(b.message_id, 2.0, fail="send_failed: boom").status == "failed"
    assert box.prune(10.0) == 2 and box.get("t", a.message_id) is None


def test_token_bucket():
    b = TokenBucket(rate=2.0, burst=2, now=0.0)
    assert b.take(0.0) == 0 and b.take(0.0) == 0
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.5) == 0  # a token came back after 1/rate


def test_request_checks():
    assert parse_send({"to": "972501234567", "text": "hi"}) == {"to": "972501234567@s.whatsapp.net", "text": "hi"}
    assert parse_send({"to": "123@lid", "text": "x", "replyTo": {"id": "ABC", "fromMe": True}})["replyTo"] == \
        {"id": "ABC", "fromMe": True}
    for bad in ({"to": "0501234567", "text": "x"}, {"to": "1@g.us", "text": "x"}, {"to": JID, "text": " "},
                {"to": JID}, {"to": JID, "text": "x", "extra": 1}, {"to": JID, "text": "x", "replyTo": {"id": 5}},
                {"to": JID, "text": "x", "replyTo": {"id": "A", "fromMe": "yes"}},
                {"to": JID, "text": "\u0000" * 20_000}):
        with pytest.raises(BadRequest):
            parse_send(bad)
    assert body_hash({"a": 1, "b": 2}) == body_hash({"b": 2, "a": 1}) != body_hash({"a": 1, "b": 3})


# -- the dispatcher against a fake worker -----------------------------------------------------------------------
class FakeWorker:
    def __init__(self) -> None:
        self.alive = True
        self.sent: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None

    async def request(self, cmd: str, timeout: float, **fields: Any) -> dict[str, Any]:
        assert cmd == "send"
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                if isinstance(self.fail, NotRunning):
                    self.alive = False  # what NotRunning means: the process is gone
                raise self.fail
            self.sent.append(fields)
            return {"waMessageId": fields["waId"], "status": "sending"}
        finally:
            self.in_flight -= 1


def fake_sup(*tids: str) -> SimpleNamespace:
    return SimpleNamespace(tenants={t: SimpleNamespace(state=TenantState.CONNECTED, worker=FakeWorker())
                                    for t in tids})


async def until(pred, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


@pytest.fixture
async def make_dispatcher(tmp_path: Path):
    made: list[OutboxDispatcher] = []

    async def factory(sup, **settings: Any) -> tuple[OutboxDispatcher, list]:
        events: list = []
        d = OutboxDispatcher(OutboxSettings(**{"rate": 1000.0, "burst": 1000, **settings}),
                             tmp_path / "outbox.sqlite3", sup, on_status=lambda t, s: events.append((t, s["status"])))
        await d.start()
        made.append(d)
        return d, events

    yield factory
    for d in made:
        await d.aclose()


async def test_order_one_in_flight_and_tenants_independent(make_dispatcher):
    sup = fake_sup("a", "b")
    d, _ = await make_dispatcher(sup)
    sup.tenants["a"].worker.gate = asyncio.Event()  # tenant a's worker hangs
    for i in range(5):
        await d.submit("a", f"a{i}", {"to": JID, "text": f"a{i}"})
        await d.submit("b", f"b{i}", {"to": JID, "text": f"b{i}"})
    wb = sup.tenants["b"].worker
    await until(lambda: len(wb.sent) == 5, "b sends while a hangs")
    assert [f["text"] for f in wb.sent] == [f"b{i}" for i in range(5)]
    wa = sup.tenants["a"].worker
    assert wa.sent == [] and wa.in_flight == 1
    wa.gate.set()
    await until(lambda: len(wa.sent) == 5, "a resumes")
    assert [f["text"] for f in wa.sent] == [f"a{i}" for i in range(5)]
    assert wa.max_in_flight == 1 and wb.max_in_flight == 1


async def test_offline_tenant_waits_and_worker_loss_resends_with_the_same_id(make_dispatcher):
    sup = fake_sup("a")
    t = sup.tenants["a"]
    t.state = TenantState.QR  # known, not connected
    d, events = await make_dispatcher(sup)
    answer, created = await d.submit("a", "k", {"to": JID, "text": "hello"})
    assert created and answer["status"] == "queued"
    assert (await d.submit("a", "k", {"to": JID, "text": "hello"})) == (answer, False)
    with pytest.raises(IdempotencyConflict):
        await d.submit("a", "k", {"to": JID, "text": "changed"})
    await asyncio.sleep(0.1)
    assert t.worker.sent == []
    t.worker.fail = NotRunning("worker exited")  # dies after taking it: no reply
    t.state = TenantState.CONNECTED
    d.on_state("a", TenantState.CONNECTING, TenantState.CONNECTED, None)
    await until(lambda: ("a", "sending") in events, "sending")
    assert (await d.get("a", answer["messageId"]))["status"] == "sending"
    t.worker = FakeWorker()  # the next worker connects
    d.on_state("a", TenantState.CONNECTING, TenantState.CONNECTED, None)
    await until(lambda: t.worker.sent, "resent")
    assert t.worker.sent[0]["waId"] == answer["waMessageId"]
    d.on_message_status("a", {"waMessageId": answer["waMessageId"], "status": "sent"})
    d.on_message_status("a", {"waMessageId": answer["waMessageId"], "status": "read"})
    await until(lambda: ("a", "read") in events, "read")
    got = await d.get("a", answer["messageId"])
    assert got["status"] == "read" and got["attempts"] == 2
    assert [s for _t, s in events] == ["queued", "sending", "sent", "read"]


async def test_worker_errors_retry_then_fail(make_dispatcher, monkeypatch):
    monkeypatch.setattr("supervisor.outbox_dispatch.RETRY_DELAY", 0.01)
    sup = fake_sup("a")
    sup.tenants["a"].worker.fail = WorkerCommandFailed("boom", worker_error="send_failed")
    d, events = await make_dispatcher(sup, max_attempts=3)
    answer, _ = await d.submit("a", "k", {"to": JID, "text": "x"})
    await until(lambda: ("a", "failed") in events, "failed")
    got = await d.get("a", answer["messageId"])
    assert got["attempts"] == 3 and got["error"].startswith("send_failed")


async def test_rate_limit_spaces_sends(make_dispatcher):
    sup = fake_sup("a")
    d, _ = await make_dispatcher(sup, rate=20.0, burst=1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(5):
        await d.submit("a", f"k{i}", {"to": JID, "text": str(i)})
    await until(lambda: len(sup.tenants["a"].worker.sent) == 5, "all sent")
    assert loop.time() - t0 >= 4 / 20 * 0.9  # burst 1: four waits of 1/rate


async def test_a_second_daemon_on_the_same_storage_runs_without_an_outbox(make_settings):
    """Two senders would send twice: the first owns the file, the second serves its tenants with a 503 send API."""
    from supervisor.daemon import Supervisor
    from supervisor.runner import _start_outbox

    settings = make_settings()
    first = await _start_outbox(settings, Supervisor(settings), None)
    try:
        assert first is not None and (settings.storage.root / "outbox.sqlite3").exists()
        assert await _start_outbox(settings, Supervisor(settings), None) is None
    finally:
        await first.aclose()
    again = await _start_outbox(settings, Supervisor(settings), None)  # the lock went with the first one
    assert again is not None
    await again.aclose()


async def test_send_api_without_an_outbox_answers_503_json(make_settings):
    from aiohttp import ClientSession

    from supervisor.api import make_app, start_api
    from supervisor.daemon import Supervisor

    sup = Supervisor(make_settings())
    runner, port = await start_api(make_app(sup, sup.settings.api), "127.0.0.1", 0)
    try:
        async with ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/whatsapp/t1/messages", json={"to": JID, "text": "x"},
                                 headers={"Idempotency-Key": "k"}) as r:
                assert r.status == 503 and (await r.json())["error"] == "outbox_unavailable"
            async with http.post(f"http://127.0.0.1:{port}/whatsapp/t1/messages", json={"to": JID, "text": "x"}) as r:
                assert r.status == 400 and "Idempotency-Key" in (await r.json())["message"]
    finally:
        await runner.cleanup()
        await sup.shutdown()


def test_outbox_config_section(tmp_path: Path):
    from supervisor.config import settings_from_dict
    from supervisor.errors import ConfigError

    s = settings_from_dict({"storage": {"root": str(tmp_path)},
                            "outbox": {"rate": 0.5, "burst": 2, "max_attempts": 3, "path": "box.sqlite3"}})
    assert (s.outbox.rate, s.outbox.burst, s.outbox.max_attempts) == (0.5, 2, 3)
    assert s.outbox.path == tmp_path / "box.sqlite3" and settings_from_dict({}).outbox == OutboxSettings()
    for bad, where in (({"rate": 0}, "outbox.rate"), ({"burst": 0}, "outbox.burst"), ({"speed": 1}, "outbox.speed"),
                       ({"send_timeout": "5"}, "outbox.send_timeout"), ({"path": ""}, "outbox.path")):
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            settings_from_dict({"outbox": bad})
