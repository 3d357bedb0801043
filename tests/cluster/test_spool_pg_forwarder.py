"""The forwarder and the message sink on the PostgreSQL spool (real server, real aiohttp target): a fenced put is no
ack and no crash; only tenants this node owns are delivered; `pause` (on_lose) stops a tenant's delivery and `resume`
(on_gain) delivers its leftovers."""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest
from aiohttp import web

from supervisor.cluster.spool import PgSpool
from supervisor.settings import WebhookSettings
from supervisor.webhook import WebhookForwarder
from supervisor.webhook_sink import MessageSink
from tests.cluster.test_spool_pg import _setup_db
from tests.support import free_port


def msg(n: int) -> dict:
    return {"type": "message", "upsertType": "notify", "ref": f"r{n}",
            "messages": [{"key": {"remoteJid": "1555@s.whatsapp.net", "fromMe": False, "id": f"W{n}"}, "n": n}]}


@pytest.fixture
async def target():
    """A webhook receiver that answers 503 until `up` is set (then 200), recording the delivered bodies."""
    state = {"up": False, "got": [], "tries": 0}

    async def receive(request: web.Request) -> web.Response:
        state["tries"] += 1
        if not state["up"]:
            return web.Response(status=503)
        state["got"].append(json.loads(await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state["url"] = f"http://127.0.0.1:{port}/hook"
    yield state
    await runner.cleanup()


@pytest.fixture
async def node(pg_dsn, cluster_settings, target):
    """A forwarder + sink of node n1, which owns the tenants in `epochs` (at epoch 1, like the rows in the db)."""
    _setup_db(pg_dsn)
    epochs = {"t": 1, "u": 1, "v": 1}
    fw = WebhookForwarder(WebhookSettings(url=target["url"], initial_delay=0.02, max_delay=0.1, jitter=0.0),
                          spool=PgSpool(cluster_settings("n1"), epochs.get), owns=lambda t: t in epochs)
    await fw.start()
    commands: list[tuple] = []
    sink = MessageSink(fw, lambda tid, cmd, **kw: commands.append((tid, cmd, kw)) or True)
    yield fw, sink, epochs, commands, pg_dsn
    await sink.drain()
    await fw.aclose()


async def until(pred, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


def pending(dsn: str) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT tenant_id, (body::json->'messages'->0->>'n')::int FROM webhook_pending"
                         " ORDER BY seq").fetchall()


async def test_a_fenced_put_is_not_acked_and_does_not_crash(node):
    fw, sink, epochs, commands, dsn = node
    epochs.pop("u")  # lost locally: refused before the store
    with psycopg.connect(dsn, autocommit=True) as c:  # v taken over by n2: refused by the store's epoch check
        c.execute("UPDATE tenant_owner SET owner = 'n2', epoch = 2 WHERE tenant_id = 'v'")
    for tid, n in (("u", 1), ("v", 2), ("t", 3)):
        sink(tid, msg(n))
    await sink.drain()
    assert commands == [("t", "ack", {"refs": ["r3"]})]  # only the committed one is acknowledged
    assert pending(dsn) == [("t", 3)]
    sink("t", msg(4))  # the sink and the forwarder keep working
    await sink.drain()
    assert commands[-1] == ("t", "ack", {"refs": ["r4"]})


async def test_only_owned_tenants_are_delivered_and_pause_resume(node, target, cluster_settings):
    fw, sink, epochs, commands, dsn = node
    for n in range(3):
        sink("t", msg(n))
    await sink.drain()
    # another node's tenant with a row in the shared spool (a dead owner's leftover): not ours, not delivered
    other = PgSpool(cluster_settings("n2"), {"w": 5}.get)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO tenant_owner (tenant_id, owner, epoch) VALUES ('w', 'n2', 5)")
    other.open()
    other.put("w", json.dumps(msg(9)), 0.0, event_id="ew")
    other.close()
    fw.resume("w")
    await until(lambda: target["tries"] >= 2)  # t's first item is being retried (the target answers 503)
    await fw.pause("t")  # on_lose: t's task ends, nothing of t is delivered by us any more
    assert "t" not in fw._tasks and "w" not in fw._tasks
    target["up"] = True
    tries = target["tries"]
    epochs["w"] = 5  # on_gain of w: its leftover is delivered
    fw.resume("w")
    await until(lambda: len(target["got"]) == 1)
    assert target["got"][0]["tenantId"] == "w" and target["tries"] == tries + 1  # w only: t stays paused
    fw.resume("t")  # gained again: t's items, in order
    await until(lambda: len(target["got"]) == 4)
    assert [b["payload"]["messages"][0]["n"] for b in target["got"][1:]] == [0, 1, 2]
    assert pending(dsn) == []


async def test_a_fenced_node_stops_delivering_without_on_lose(node, target):
    """A lapsed lease forgets every tenant without on_lose: the delivery task notices before its next try."""
    fw, sink, epochs, commands, dsn = node
    sink("t", msg(0))
    await sink.drain()
    await until(lambda: target["tries"] >= 2)
    epochs.clear()  # what the fence does to `owned`
    await until(lambda: "t" not in fw._tasks)
    target["up"] = True
    assert target["got"] == [] and pending(dsn) == [("t", 0)]


async def test_a_held_tenant_is_released_when_another_node_makes_room(pg_dsn, cluster_settings, target):
    """The bound counts the whole cluster's rows; room made by another node's delivery releases a held tenant (the
    counters are re-read while it waits, not only on this node's own spool calls)."""
    _setup_db(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("INSERT INTO tenant_owner (tenant_id, owner, epoch) VALUES ('w', 'n2', 5)")
    other = PgSpool(cluster_settings("n2"), {"w": 5}.get)
    other.open()
    row = other.put("w", json.dumps(msg(9)), 0.0, event_id="ew")[0]
    fw = WebhookForwarder(WebhookSettings(url=target["url"], max_items=1),
                          spool=PgSpool(cluster_settings("n1"), {"t": 1}.get, max_items=1), owns=lambda t: t == "t")
    await fw.start()
    commands: list[tuple] = []
    sink = MessageSink(fw, lambda tid, cmd, **kw: commands.append((tid, cmd, kw)) or True)
    sink.ROOM_POLL = 0.05
    try:
        sink("t", msg(1))
        await until(lambda: "t" in sink.held)  # full: not acked, held
        assert commands == []
        other.delete(row.seq)  # n2 delivered its item
        await until(lambda: ("t", "replay", {}) in commands)
    finally:
        other.close()
        await sink.drain()
        await fw.aclose()
