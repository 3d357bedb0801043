"""A status change and its webhook item are durable together: a daemon SIGKILLed after the outbox commit and before
the spool write still delivers that status, once, under one Idempotency-Key (docs/webhook.md "Statuses").

Real parts: a child process runs the real outbox dispatcher and webhook forwarder (real SQLite files, a real HTTP
receiver here) and is SIGKILLed by the forwarder's own `submit` at the moment it would write the spool."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_webhook import Target

from supervisor.outbox import Outbox, status_event_id
from supervisor.outbox_dispatch import OutboxDispatcher, make_outbox
from supervisor.settings import OutboxSettings, WebhookSettings
from supervisor.spool import Spool, SpoolFull
from supervisor.webhook import WebhookForwarder

TENANT = "acme"
JID = "15551000001@s.whatsapp.net"
CHILD_TIMEOUT = 60.0  # loose: a child does a few fsyncs and POSTs; a loaded 2-core machine


async def _child(phase: str, root: Path, url: str) -> None:
    # timeout: a POST the target answered but a loaded child read too late would be retried (at-least-once, same
    # key): a duplicate this test would blame on the copy it checks (seen at load ~30 with 5 s)
    fw = WebhookForwarder(WebhookSettings(url=url, timeout=CHILD_TIMEOUT / 2, initial_delay=0.05, max_delay=0.2),
                          storage_root=root)
    await fw.start(hold=True)  # the daemon's wiring (runner): no delivery before the outbox's first copy
    settings = SimpleNamespace(outbox=OutboxSettings(), storage=SimpleNamespace(root=root))
    sup = SimpleNamespace(tenants={}, events=SimpleNamespace(publish=lambda *_a: None))
    box = make_outbox(settings, sup, fw)
    if phase == "restart" and fw.depth:  # give a delivery that is not held the time to beat the copy (it did under
        for _ in range(100):             # load): delivered and deleted first, the copy would spool it again
            if not fw.depth:
                break
            await asyncio.sleep(0.02)
    await box.start()  # copies what a crash left between a status commit and its spool write, then releases

    async def copied() -> None:  # every status item copied into the spool: no task left
        while box._background or getattr(box, "_hooks", None) is not None:
            await asyncio.sleep(0.02)

    async def settled() -> None:  # ... and delivered
        await copied()
        while fw.depth:
            await asyncio.sleep(0.02)

    def die(*_a, **_kw):
        os.kill(os.getpid(), signal.SIGKILL)

    if phase.startswith("kill"):
        answer, _ = await box.submit(TENANT, "k1", {"to": JID, "text": "hi"})
        await (settled() if phase == "kill" else copied())  # `queued` goes the normal way
        if phase == "kill":
            async def die_at_submit(*_a, **_kw):  # the post-commit step: the outbox has `sent`, the spool not yet
                die()

            fw.submit = die_at_submit
        else:  # kill_after_spool: the spool has `sent` (pending: the target answers 503), the outbox still its copy
            box.box.hooks_done = die
        box.on_message_status(TENANT, {"waMessageId": answer["waMessageId"], "status": "sent"})
        await asyncio.sleep(CHILD_TIMEOUT)
        raise SystemExit("not killed")
    await settled()
    await box.aclose()
    await fw.aclose()


async def _run(phase: str, root: Path, url: str) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), str(Path(__file__).parent)])}
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, phase, str(root), url, env=env)
    return await asyncio.wait_for(proc.wait(), CHILD_TIMEOUT)


@pytest.mark.parametrize("phase", ["kill", "kill_after_spool"])
async def test_sigkill_between_status_commit_and_spool_write_loses_no_status_item(tmp_path: Path, phase: str) -> None:
    """kill: between the outbox commit and the spool write (lost the item before the `hook` table). kill_after_spool:
    between the spool write and the outbox's delete: the start copies it again, the spool keeps one row."""
    target = Target()
    await target.start()
    try:
        if phase == "kill_after_spool":
            target.default[TENANT] = 503  # nothing leaves the spool before the kill
        assert await _run(phase, tmp_path, target.url) == -signal.SIGKILL
        target.default.pop(TENANT, None)
        assert await _run("restart", tmp_path, target.url) == 0
        assert await _run("restart", tmp_path, target.url) == 0  # a second start copies nothing again
    finally:
        await target.stop()
    got = [(r["payload"]["status"], r["key"]) for r in target.received]
    assert sorted(s for s, _ in got) == ["queued", "sent"], got
    assert len({k for _, k in got}) == 2, got
    sent = next(r for r in target.received if r["payload"]["status"] == "sent")
    assert sent["payload"]["type"] == "message_status" and sent["payload"]["to"] == JID
    # the key is the stable one per (message, status), not a random uuid per spool row
    assert sent["key"] == sent["payload"]["eventId"] == status_event_id(TENANT, sent["payload"]["messageId"], "sent")


def test_each_status_change_writes_its_item_in_the_same_transaction(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite3", hooks=True)
    box.open()
    try:
        row, _ = box.submit(TENANT, "k", "h", JID, "hi", None, 1.0)
        box.submit(TENANT, "k", "h", JID, "hi", None, 1.5)  # a retried POST: no new status, no new item
        box.mark_sending(row.message_id, 2.0)
        box.mark_sending(row.message_id, 2.5)  # a resend: still `sending`
        box.mark_written(row.message_id, "sending", None, 3.0)
        box.set_status(TENANT, row.wa_id, "sent", None, 4.0)
        box.set_status(TENANT, row.wa_id, "queued", None, 5.0)  # backwards: refused, no item
        items = [json.loads(body) for _seq, _t, _eid, body in box.hooks_pending()]
        assert [i["status"] for i in items] == ["queued", "sending", "sent"]
        assert [i["attempts"] for i in items] == [0, 1, 2]
        assert box.hooks_done(box.hooks_pending()[1][0]) == 2
        assert [json.loads(b)["status"] for *_x, b in box.hooks_pending()] == ["sent"]
    finally:
        box.close()
    off = Outbox(tmp_path / "off.sqlite3")  # the webhook off: nothing recorded
    off.open()
    try:
        row, _ = off.submit(TENANT, "k", "h", JID, "hi", None, 1.0)
        off.requeue(off.mark_sending(row.message_id, 2.0).message_id, 3.0, fail="boom")
        assert off.get(TENANT, row.message_id).status == "failed" and off.hooks_pending() == []
    finally:
        off.close()


def test_an_ungated_put_does_not_hold_back_the_tenants_messages(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3", max_items=1)
    spool.open()
    try:
        spool.put(TENANT, "{}", 1.0)
        with pytest.raises(SpoolFull):
            spool.put(TENANT, "{}", 2.0, event_id="status-1", gated=False)
        assert TENANT not in spool.refused_tenants
        with pytest.raises(SpoolFull):
            spool.put(TENANT, "{}", 2.0, event_id="message-1")
        assert TENANT in spool.refused_tenants
    finally:
        spool.close()


async def test_a_status_item_the_full_spool_refused_is_retried_until_there_is_room(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("supervisor.outbox_dispatch.HOOK_RETRY", 0.05)
    target = Target()
    target.default[TENANT] = 503  # the web app is down: the spool fills (bound: 1 item)
    await target.start()
    fw = WebhookForwarder(WebhookSettings(url=target.url, timeout=5.0, initial_delay=0.05, max_delay=0.1,
                                          max_items=1), storage_root=tmp_path)
    await fw.start()
    naps: list[float] = []

    async def nap(delay: float) -> None:  # the dispatcher's sleeps, counted
        naps.append(delay)
        await asyncio.sleep(delay)

    box = OutboxDispatcher(OutboxSettings(), tmp_path / "outbox.sqlite3", SimpleNamespace(tenants={}), forwarder=fw,
                           sleep=nap)
    await box.start()
    try:
        answer, _ = await box.submit(TENANT, "k1", {"to": JID, "text": "hi"})
        box.on_message_status(TENANT, {"waMessageId": answer["waMessageId"], "status": "sent"})
        await until(lambda: fw.refused == 1, "the `sent` item refused")
        assert [json.loads(b)["status"] for *_x, b in await box._db(box.box.hooks_pending)] == ["sent"]
        await until(lambda: len(naps) >= 5, "retry periods")
        assert fw.refused == 1  # no new try (and no new spool_full error) while the spool is still full
        target.default[TENANT] = 200  # back: the spool drains, the outbox's retry gets room
        await until(lambda: [r["payload"]["status"] for r in target.received] == ["queued", "sent"], "both items")
        await until(lambda: box._hooks is None, "the copier done")
        assert await box._db(box.box.hooks_pending) == []
    finally:
        await box.aclose()
        await fw.aclose()
        await target.stop()


async def until(pred, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


if __name__ == "__main__":
    asyncio.run(_child(sys.argv[1], Path(sys.argv[2]), sys.argv[3]))
