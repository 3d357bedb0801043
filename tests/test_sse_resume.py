"""Resuming an event stream with another run's or node's id (supervisor/eventbus.py, docs/events.md "Resuming"):
the id is recognised as foreign and answered with a `reset` and then a `snapshot` (the current status), never with a
replay of this run's unrelated events. Real EventBus, the real API on loopback, a real aiohttp client."""

from __future__ import annotations

import time

import pytest
from aiohttp import ClientSession

from supervisor.api import make_app, start_api
from supervisor.eventbus import EventBus
from test_ops_sse import read_events

SECRET = "sse-resume-secret"
H = {"X-Internal-Secret": SECRET}


class Statuses:
    """The two calls the SSE handler makes for its snapshot."""

    def status(self, tenant: str) -> dict:
        return {"tenant": tenant, "state": "connected", "owner": "b"}

    def statuses(self) -> list[dict]:
        return [self.status("t")]


def two_runs() -> tuple[EventBus, EventBus]:
    """Node a's bus, and node b's started later (a restart, or another node), which has sent more events."""
    a = EventBus()
    time.sleep(0.002)  # another millisecond: another run
    b = EventBus()
    for n in range(5):
        a.publish("t", "state", {"n": n})
    for n in range(50):
        b.publish("t" if n % 2 else "u", "state", {"n": n})
    return a, b


def test_an_id_of_another_run_is_recognised_not_replayed():
    a, b = two_runs()
    foreign = a.buffer[1].id  # what a client of node a saw last
    sub = b.subscribe("t", foreign)
    ev = sub.queue.get_nowait()
    assert sub.reset and ev.type == "reset" and ev.data["reason"] == "unknown_id", ev
    assert sub.queue.empty()  # none of b's own events: they are not "the ones after" a's id
    older = b.subscribe("t", foreign - 10**9)  # a run long before: still foreign, not a buffer overflow
    assert older.queue.get_nowait().data["reason"] == "unknown_id"
    ids = [e.id for e in b.buffer]
    assert len(str(ids[-1])) == 16 and ids[-1] < 2**53  # exact as a JavaScript number
    mine = b.subscribe("t", ids[10])
    assert not mine.reset and [e.id for e in list(mine.queue._queue)] == [e.id for e in b.buffer
                                                                         if e.id > ids[10] and e.tenant == "t"]
    whole = b.subscribe("u", 0)  # 0: from this run's start
    assert [e.data["n"] for e in list(whole.queue._queue)] == list(range(0, 50, 2))


def test_a_tenant_gained_since_the_id_is_a_reset_moved():
    bus = EventBus()
    bus.publish("t", "state", {"n": 0})
    before = bus.last_id
    bus.gained("t")  # the tenant went away and came back (or came here for the first time)
    seen = bus.publish("t", "state", {"n": 1}).id  # on this node since the gain
    bus.publish("t", "state", {"n": 2})
    ev = bus.subscribe("t", before).queue.get_nowait()
    assert ev.type == "reset" and ev.data["reason"] == "moved"
    assert bus.subscribe(None, before).queue.get_nowait().data["reason"] == "moved"  # /events too
    after = bus.subscribe("t", seen)
    assert not after.reset and [e.data["n"] for e in list(after.queue._queue)] == [2]
    other = bus.subscribe("u", before)  # another tenant's resume is exact
    assert not other.reset


@pytest.mark.parametrize("path", ["/whatsapp/t/events", "/events"])
async def test_the_stream_sends_the_reset_then_the_snapshot(path):
    a, b = two_runs()
    runner, port = await start_api(make_app(Statuses(), _api(), events=b, sse_heartbeat=0.2), "127.0.0.1", 0)
    try:
        async with ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}{path}", headers={**H, "Last-Event-ID": str(a.last_id)}) as r:
                assert r.status == 200
                evs = [e for e in await read_events(r, 3, comments_count=False) if "event" in e]
    finally:
        b.close()
        await runner.cleanup()
    assert [e["event"] for e in evs[:2]] == ["reset", "snapshot"], evs
    assert evs[0]["data"]["reason"] == "unknown_id" and evs[1]["data"]["lastEventId"] == b.last_id
    status = evs[1]["data"].get("status") or evs[1]["data"]["tenants"][0]
    assert status["owner"] == "b"


def _api():
    from supervisor.settings import ApiSettings

    return ApiSettings(secret=SECRET, port=0)
