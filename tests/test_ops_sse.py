"""Live events over SSE with a real Supervisor, the real API on loopback, fake workers, and a real aiohttp client."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import ClientSession

from support import WAIT
from supervisor.api import make_app, start_api
from supervisor.daemon import Supervisor
from supervisor.eventbus import EventBus

SECRET = "sse-secret"
H = {"X-Internal-Secret": SECRET}


async def read_events(resp, n: int, timeout: float = WAIT, *, comments_count: bool = True) -> list[dict]:
    """Parse SSE frames until n of them (comments are collected as {"comment": ...}; with comments_count=False they
    do not count towards n: a keep-alive may come between any two events on a slow machine). `timeout` is a safety
    bound: the 10 s it used to be ran out at load 20-30 while a fake worker was still starting."""
    out: list[dict] = []
    cur: dict = {}

    def counted() -> int:
        return len(out) if comments_count else sum("comment" not in e for e in out)

    async def go() -> None:
        nonlocal cur
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line == "":
                if cur:
                    out.append(cur)
                    cur = {}
                if counted() >= n:
                    return
            elif line.startswith(":"):
                out.append({"comment": line[1:].strip()})
                if counted() >= n:
                    return
            else:
                k, _, v = line.partition(": ")
                cur[k] = json.loads(v) if k == "data" else v

    await asyncio.wait_for(go(), timeout)
    return out


@pytest.fixture
async def live(make_settings):
    sup = Supervisor(make_settings(api={"secret": SECRET}))
    app = make_app(sup, sup.settings.api, events=sup.events, sse_heartbeat=0.2)
    runner, port = await start_api(app, "127.0.0.1", 0)
    try:
        async with ClientSession() as http:
            yield sup, f"http://127.0.0.1:{port}", http
    finally:
        sup.events.close()
        await runner.cleanup()
        await sup.shutdown()


async def test_state_and_qr_events_resume_and_auth(live):
    sup, url, http = live
    async with http.get(f"{url}/events") as r:
        assert r.status == 401  # the stream carries QR strings: never without the secret
    async with http.get(f"{url}/events", headers=H) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        first = await read_events(r, 2)  # retry frame, snapshot
        assert first[1]["event"] == "snapshot" and first[1]["data"]["tenants"] == []
        await sup.start_tenant("s1")
        evs = [e for e in await read_events(r, 4, comments_count=False) if "event" in e]
    kinds = [(e["event"], e["data"].get("state")) for e in evs]
    assert kinds[:4] == [("state", "starting"), ("state", "connecting"), ("state", "qr"), ("qr", None)], kinds
    assert evs[1]["data"]["from"] == "starting"
    qr = evs[3]
    assert qr["data"]["qr"] == "fake-qr-1" and qr["data"]["tenant"] == "s1"
    # resume after the first state event: exactly the later ones, no snapshot
    async with http.get(f"{url}/whatsapp/s1/events", headers={**H, "Last-Event-ID": evs[0]["id"]}) as r:
        again = [e for e in await read_events(r, 4, comments_count=False) if "event" in e]
    assert [e["id"] for e in again] == [evs[1]["id"], evs[2]["id"], evs[3]["id"]]
    # heartbeats keep an idle stream alive
    async with http.get(f"{url}/whatsapp/s1/events?lastEventId={sup.events.last_id}", headers=H) as r:
        idle = await read_events(r, 2)
    assert {"comment": "keep-alive"} in idle
    # an id from before the buffer (or from another daemon run) -> reset
    async with http.get(f"{url}/events", headers={**H, "Last-Event-ID": "999999"}) as r:
        ev = [e for e in await read_events(r, 2, comments_count=False) if "event" in e][0]
    assert ev["event"] == "reset" and ev["data"]["reason"] == "unknown_id"
    async with http.get(f"{url}/events", headers={**H, "Last-Event-ID": "abc"}) as r:
        assert r.status == 400


async def test_streams_end_on_bus_close(live):
    sup, url, http = live
    async with http.get(f"{url}/events", headers=H) as r:
        await read_events(r, 2)
        sup.events.close()  # what run_daemon does first on shutdown
        rest = await asyncio.wait_for(r.content.read(), WAIT)  # EOF: the server ended the stream
    assert rest == b""


def test_bus_buffer_overflow_gives_reset_and_slow_subscriber_is_cut():
    bus = EventBus(buffer=3, queue_size=2, base=0)  # ids 1, 2, ...
    slow = bus.subscribe()
    for i in range(5):
        bus.publish("t", "state", {"n": i})
    assert slow.overflowed and bus.subscribers == 0
    sub = bus.subscribe(last_id=1)  # ids 3..5 are buffered: 2 is lost
    assert sub.queue.get_nowait().type == "reset"
    ok = bus.subscribe(last_id=2)
    assert [sub_ev.id for sub_ev in (ok.queue.get_nowait() for _ in range(3))] == [3, 4, 5]
