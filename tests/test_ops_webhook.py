"""Webhook wiring end to end: a real daemon subprocess, a fake worker emitting `message` events, and a loopback
aiohttp target that checks the seed's contract (body, X-Internal-Secret, Idempotency-Key)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from aiohttp import web

from ops_helpers import SECRET, H, config, log_events, wait_log
from support import WAIT, DaemonProcess, free_port


def msg(i: int) -> dict:
    return {"emit": {"type": "message", "upsertType": "notify", "messages": [{"key": {"id": f"m{i}"}, "n": i}], "ref": f"r{i}"}}


@pytest.mark.timeout(180)
async def test_messages_reach_the_target_in_order_with_secret_and_key(tmp_path, marker):
    got: list[tuple[dict, dict]] = []
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.json()))
        if len(got) >= 6:
            arrived.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/webhook/whatsapp/incoming", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    target_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", target_port).start()
    port = free_port()
    script = [{"hello": {}}, *(msg(i) for i in range(3)), {"qr": "q"}, {"wait": True}]
    cfg = config(tmp_path, marker, port, boot=["w1", "w2"], script=script,
                 webhook={"url": f"http://127.0.0.1:{target_port}/webhook/whatsapp/incoming",
                          "initial_delay": 0.05, "max_delay": 0.2, "spool_path": "spool/hook.sqlite3"})
    d = DaemonProcess(tmp_path, cfg).start(wait=False)
    proc, log = d.proc, d.log_path
    try:
        await asyncio.wait_for(arrived.wait(), 60)
        for headers, body in got:
            assert headers["X-Internal-Secret"] == SECRET  # webhook.secret defaults to api.secret
            assert len(headers["Idempotency-Key"]) >= 32
            assert set(body) == {"tenantId", "payload"} and body["payload"]["type"] == "message"
        for tenant in ("w1", "w2"):
            seq = [b["payload"]["messages"][0]["n"] for _, b in got if b["tenantId"] == tenant]
            assert seq == [0, 1, 2], (tenant, seq)  # ordered per tenant
        assert len({h["Idempotency-Key"] for h, _ in got}) == 6
        assert (tmp_path / "storage" / "spool" / "hook.sqlite3").exists()  # spool_path is relative to storage
        import aiohttp

        text = ""
        async with aiohttp.ClientSession() as http:
            async def delivered() -> bool:  # the 6th is counted once its response was read, after our handler
                nonlocal text
                async with http.get(f"http://127.0.0.1:{port}/metrics", headers=H) as r:
                    text = await r.text()
                return 'webhook_deliveries_total{result="delivered"} 6.0' in text

            deadline = time.monotonic() + WAIT
            while not await delivered():
                assert time.monotonic() < deadline, text
                await asyncio.sleep(0.05)
        assert "webhook_queue_depth 0.0" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        await runner.cleanup()
    assert rc == 0
    names = [e["event"] for e in wait_log(log, "webhook.stopped")]
    assert names  # the forwarder was closed on the way out
    order = [e["event"] for e in log_events(log)]
    assert order.index("webhook.stopped") > max(i for i, e in enumerate(order) if e == "lock.released")
