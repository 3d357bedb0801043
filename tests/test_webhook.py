"""The durable webhook against a real aiohttp server on loopback, with real SQLite spool files.

Backoff sleeps are shortened through the injectable `sleep` (the requested delays are recorded and asserted), so
"down for a while" costs milliseconds, not minutes. The SIGKILL test runs the forwarder in a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
import uuid

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from support import wait_until
from supervisor.spool import Spool
from supervisor.settings import WebhookSettings
from supervisor.webhook import SpoolFull, WebhookClosed, WebhookForwarder, backoff_delay

PATH = "/webhook/whatsapp/incoming"


class Target:
    """The web app's webhook route. `plan[tenant]` is a list of statuses to answer next; then `default[tenant]`."""

    def __init__(self) -> None:
        self.requests: list[dict] = []  # every request that reached the handler
        self.received: list[dict] = []  # the ones answered 2xx
        self.plan: dict[str, list[int]] = {}
        self.default: dict[str, int] = {}
        self.delay = 0.0
        self.flaky = 0.0  # probability of a random 503
        self.headers: dict[str, str] = {}
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        tenant = data["tenantId"]
        req = {"tenant": tenant, "payload": data["payload"], "key": request.headers.get("Idempotency-Key"),
               "headers": dict(request.headers), "keys": sorted(data)}
        self.requests.append(req)
        if self.delay:
            await asyncio.sleep(self.delay)
        plan = self.plan.get(tenant)
        status = plan.pop(0) if plan else self.default.get(tenant, 200)
        if random.random() < self.flaky:
            status = 503
        if 200 <= status < 300:
            self.received.append(req)
        return web.Response(status=status, text="echo " + json.dumps(data), headers=self.headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(PATH, self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)  # same port again after stop(): "back up"
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def ns(self, tenant: str) -> list[int]:
        return [r["payload"]["n"] for r in self.received if r["tenant"] == tenant]


@pytest.fixture
async def target():
    t = Target()
    await t.start()
    yield t
    await t.stop()


class Recorder:
    def __init__(self) -> None:
        self.delays: list[float] = []
        self.results: list[str] = []
        self.depths: list[int] = []

    async def sleep(self, d: float) -> None:
        self.delays.append(d)
        await asyncio.sleep(0.005)


@pytest.fixture
async def make(tmp_path, target):
    made: list[WebhookForwarder] = []

    async def _make(rec: Recorder | None = None, **kw) -> WebhookForwarder:
        rec = rec or Recorder()
        settings = WebhookSettings(**{"url": target.url, "secret": "s3cret-Zq9", "timeout": 2.0, "jitter": 0.0,
                                      **kw})
        fw = WebhookForwarder(settings, storage_root=tmp_path, sleep=rec.sleep,
                              on_depth=rec.depths.append, on_result=rec.results.append)
        await fw.start()
        made.append(fw)
        return fw

    yield _make
    for fw in made:
        await fw.aclose()


def msg(n: int, marker: str = "") -> dict:
    return {"type": "message", "upsertType": "notify", "n": n, "messages": [{"text": marker or f"m{n}"}]}


async def test_delivers_body_and_headers(make, target, tmp_path):
    rec = Recorder()
    fw = await make(rec)
    for n in range(3):
        assert await fw.submit("1", msg(n)) is True
    await wait_until(lambda: len(target.received) == 3)
    await wait_until(lambda: fw.depth == 0)
    assert target.ns("1") == [0, 1, 2]
    first = target.received[0]
    assert first["keys"] == ["payload", "tenantId"] and first["payload"] == msg(0)
    h = first["headers"]
    assert h["X-Internal-Secret"] == "s3cret-Zq9" and h["Content-Type"] == "application/json"
    keys = [r["key"] for r in target.received]
    assert len(set(keys)) == 3 and all(uuid.UUID(k) for k in keys)
    assert rec.results == ["delivered"] * 3 and rec.depths[-1] == 0
    assert (tmp_path / "webhook-spool.sqlite3").exists()


async def test_no_secret_no_header(make, target):
    fw = await make(secret=None)
    await fw.submit("1", msg(0))
    await wait_until(lambda: target.received)
    assert "X-Internal-Secret" not in target.received[0]["headers"]


async def test_disabled_without_url(tmp_path):
    fw = WebhookForwarder(WebhookSettings(url=None), storage_root=tmp_path)
    await fw.start()
    assert await fw.submit("1", msg(0)) is False
    await fw.aclose()
    assert list(tmp_path.iterdir()) == []


async def test_submit_after_close_is_loud(make):
    fw = await make()
    await fw.aclose()
    with pytest.raises(WebhookClosed):
        await fw.submit("1", msg(0))


async def test_stuck_tenant_does_not_block_others_and_order_holds(make, target):
    """Tenant 'slow' gets 503 for a while; 'fast' is delivered meanwhile; then 'slow' recovers, in order."""
    rec = Recorder()
    target.default["slow"] = 503
    fw = await make(rec)
    for n in range(10):
        await fw.submit("slow", msg(n))
        await fw.submit("fast", msg(n))
    await wait_until(lambda: len(target.ns("fast")) == 10)
    await wait_until(lambda: fw.depth == 10)  # fast's last delete may still be on its way to the spool
    assert target.ns("slow") == []
    await wait_until(lambda: rec.results.count("retry") >= 3)
    slow_reqs = [r for r in target.requests if r["tenant"] == "slow"]
    assert {r["payload"]["n"] for r in slow_reqs} == {0}  # item 1 never tried before item 0 succeeded
    assert len({r["key"] for r in slow_reqs}) == 1  # retries carry the same Idempotency-Key
    target.default["slow"] = 200
    await wait_until(lambda: len(target.ns("slow")) == 10)
    assert target.ns("slow") == list(range(10)) and target.ns("fast") == list(range(10))
    await wait_until(lambda: fw.depth == 0)
    assert target.received[[r["tenant"] for r in target.received].index("slow")]["key"] == slow_reqs[0]["key"]


async def test_connection_refused_then_back(make, target):
    rec = Recorder()
    await target.stop()  # the port now refuses connections
    fw = await make(rec)
    for n in range(5):
        await fw.submit("a", msg(n))
        await fw.submit("b", msg(n))
    await wait_until(lambda: rec.results.count("retry") >= 6)
    assert fw.depth == 10
    await target.start()
    await wait_until(lambda: len(target.received) == 10)
    assert target.ns("a") == list(range(5)) and target.ns("b") == list(range(5))
    assert len({r["key"] for r in target.received}) == 10


async def test_timeout_is_retried_with_same_key(make, target):
    target.delay = 0.6
    fw = await make(timeout=0.2)
    await fw.submit("1", msg(0))
    await wait_until(lambda: len(target.requests) >= 2)
    target.delay = 0.0
    await wait_until(lambda: target.received)
    assert len({r["key"] for r in target.requests}) == 1


async def test_4xx_dead_letters_and_queue_moves_on(make, target):
    rec = Recorder()
    target.plan["1"] = [422]
    fw = await make(rec)
    with capture_logs() as logs:
        for n in range(3):
            await fw.submit("1", msg(n))
        await wait_until(lambda: len(target.received) == 2)
        await wait_until(lambda: fw.depth == 0)
    assert target.ns("1") == [1, 2]
    [dl] = await fw.dead_letters()
    assert dl["status"] == 422 and json.loads(dl["body"]) == msg(0) and dl["key"] == target.requests[0]["key"]
    assert rec.results == ["dead_letter", "delivered", "delivered"]
    [ev] = [e for e in logs if e["event"] == "webhook.dead_letter"]
    assert ev["tenant"] == "1" and ev["status"] == 422 and ev["log_level"] == "error"


async def test_get_webhook_shows_queue_and_dead_letters_to_operators(make, target):
    """GET /webhook through the real API and a real forwarder: the dead letters an operator has to look at."""
    from aiohttp import ClientSession

    from supervisor.api import make_app, start_api
    from supervisor.settings import ApiSettings

    api = ApiSettings(secret="api-s3cret", port=0)
    rec = Recorder()
    target.default["1"] = 422  # the target refuses tenant 1 for good; tenant 2 is delivered
    fw = await make(rec)
    on, on_port = await start_api(make_app(object(), api, webhook=fw), "127.0.0.1", 0)
    off, off_port = await start_api(make_app(object(), api), "127.0.0.1", 0)
    try:
        for n in range(2):
            await fw.submit("1", msg(n))
        await fw.submit("2", msg(0))
        await wait_until(lambda: sorted(rec.results) == ["dead_letter", "dead_letter", "delivered"])
        auth = {"X-Internal-Secret": "api-s3cret"}
        async with ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{on_port}/webhook") as r:
                assert r.status == 401  # operators' data: the secret is required
            async with http.get(f"http://127.0.0.1:{on_port}/webhook", headers=auth) as r:
                assert r.status == 200
                assert await r.json() == {"enabled": True, "queued": 0, "deadLetters": 2, "refused": 0}
            async with http.get(f"http://127.0.0.1:{off_port}/webhook", headers=auth) as r:  # webhook.url unset
                assert r.status == 200
                assert await r.json() == {"enabled": False, "queued": 0, "deadLetters": None, "refused": 0}
    finally:
        await on.cleanup()
        await off.cleanup()


@pytest.mark.parametrize("status", [408, 429, 500, 503, 302])
async def test_retryable_statuses(make, target, status):
    rec = Recorder()
    target.plan["1"] = [status, status]
    fw = await make(rec)
    await fw.submit("1", msg(0))
    await wait_until(lambda: "delivered" in rec.results)  # recorded after the spool delete, so after the POST
    assert rec.results == ["retry", "retry", "delivered"] and len(target.requests) == 3


async def test_backoff_schedule_and_retry_after(make, target):
    rec = Recorder()
    target.plan["1"] = [503] * 6
    fw = await make(rec, initial_delay=1.0, multiplier=2.0, max_delay=5.0)
    await fw.submit("1", msg(0))
    await wait_until(lambda: target.received)
    assert rec.delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    target.plan["1"] = [429]
    target.headers = {"Retry-After": "3"}
    await fw.submit("1", msg(1))
    await wait_until(lambda: len(target.received) == 2)
    assert rec.delays[-1] == 3.0  # the target's pause beats our 1 s first delay


def test_backoff_jitter_bounds():
    s = WebhookSettings(initial_delay=1.0, multiplier=2.0, max_delay=60.0, jitter=0.2)
    assert backoff_delay(3, s, lambda: 0.0) == pytest.approx(3.2)
    assert backoff_delay(3, s, lambda: 1.0) == pytest.approx(4.8)
    assert backoff_delay(10_000, s, lambda: 0.5) == 60.0  # capped, no OverflowError


async def test_spool_full_refuses_new_and_is_loud(make, target):
    rec = Recorder()
    target.default["1"] = 503
    fw = await make(rec, max_items=3)
    with capture_logs() as logs:
        for n in range(3):
            await fw.submit("1", msg(n))
        with pytest.raises(SpoolFull):
            await fw.submit("1", msg(3))
    assert "spool_full" in rec.results and fw.refused == 1
    [ev] = [e for e in logs if e["event"] == "webhook.spool_full"]
    assert ev["max_items"] == 3 and ev["depth"] == 3 and ev["log_level"] == "error"
    target.default["1"] = 200
    await wait_until(lambda: fw.depth == 0)
    assert await fw.submit("1", msg(4))
    await wait_until(lambda: target.ns("1") == [0, 1, 2, 4])


async def test_restart_resumes_pending_in_order(make, target, tmp_path):
    target.default.update(a=503, b=503)
    fw = await make()
    for n in range(5):
        await fw.submit("a", msg(n))
        await fw.submit("b", msg(n))
    await fw.aclose()
    keys_before = {r["key"] for r in target.requests}
    target.default.clear()
    target.plan["a"] = [503, 503]  # the resumed queue starts blocked: nothing after item 0 may be tried
    n_before = len(target.requests)
    rec = Recorder()
    fw2 = await make(rec)
    assert rec.depths[0] == 10  # reported at start, before any delivery
    await wait_until(lambda: len(target.received) == 10)
    assert target.ns("a") == list(range(5)) and target.ns("b") == list(range(5))
    assert keys_before <= {r["key"] for r in target.received}  # same Idempotency-Keys after the restart
    assert [r["payload"]["n"] for r in target.requests[n_before:] if r["tenant"] == "a"] == [0, 0, 0, 1, 2, 3, 4]
    await wait_until(lambda: fw2.depth == 0)


async def test_aclose_interrupts_inflight_and_keeps_row(make, target, tmp_path):
    target.delay = 10.0
    fw = await make()
    await fw.submit("1", msg(0))
    await wait_until(lambda: target.requests)
    t0 = time.monotonic()
    await fw.aclose()
    assert time.monotonic() - t0 < target.delay / 2  # interrupted (a safety bound: ~ms idle, seconds at load 30)
    s = Spool(tmp_path / "webhook-spool.sqlite3")
    s.open()  # the lock was released by aclose
    try:
        [item] = s.next_items("1")
        assert item.key == target.requests[0]["key"]
    finally:
        s.close()


async def test_cancelled_submit_is_still_delivered(make, target):
    """A put that commits after its caller was cancelled must not be stranded in the spool."""
    fw = await make()
    task = asyncio.create_task(fw.submit("1", msg(0)))
    await asyncio.sleep(0)  # the put is queued on the spool thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: target.ns("1") == [0])


async def test_broken_metrics_hook_does_not_stop_delivery(tmp_path, target):
    def boom(_):
        raise RuntimeError("metrics bug")

    fw = WebhookForwarder(WebhookSettings(url=target.url), storage_root=tmp_path, on_depth=boom, on_result=boom)
    await fw.start()
    try:
        await fw.submit("1", msg(0))
        await wait_until(lambda: target.received)
    finally:
        await fw.aclose()


async def test_payload_and_secret_never_logged(make, target):
    marker, secret = "PAYLOAD-7f3a9", "SECRET-c41d"
    target.default["1"] = 503
    rec = Recorder()
    with capture_logs() as logs:
        fw = await make(rec, secret=secret, max_items=2)
        await fw.submit("1", msg(0, marker))
        await fw.submit("1", msg(1, marker))
        with pytest.raises(SpoolFull):
            await fw.submit("1", msg(2, marker))
        await wait_until(lambda: "retry" in rec.results)
        target.plan["1"], target.default["1"] = [400], 200  # item 0 dead-lettered, item 1 delivered
        await wait_until(lambda: fw.depth == 0)
        await target.stop()
        await fw.submit("1", msg(3, marker))
        await wait_until(lambda: rec.results.count("retry") >= 2)
        await fw.aclose()
    events = {e["event"] for e in logs}
    assert {"webhook.retry", "webhook.dead_letter", "webhook.delivered", "webhook.spool_full"} <= events
    text = repr(logs)
    assert marker not in text and secret not in text and "echo" not in text


# The child: a forwarder in its own process, submitting in order and printing an ACK after each submit returned.
CHILD = r"""
import asyncio, os, sys, structlog
# stdout carries only ACK lines: the pipe moves to a private fd and fd 1 becomes stderr, so nothing else the child
# (or a library in it) prints can land between them; each ACK is one write(2) below PIPE_BUF, so never torn.
ACK_FD = os.dup(1)
os.dup2(2, 1)
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from supervisor.settings import WebhookSettings
from supervisor.webhook import WebhookForwarder

async def main(url, root, tenants, count):
    s = WebhookSettings(url=url, initial_delay=0.02, max_delay=0.1, timeout=2.0)
    fw = WebhookForwarder(s, storage_root=root)
    await fw.start()
    for n in range(count):
        for t in tenants:
            await fw.submit(t, {"type": "message", "upsertType": "notify", "n": n, "messages": []})
            os.write(ACK_FD, f"ACK {t} {n}\n".encode())
        await asyncio.sleep(0.003)
    await asyncio.sleep(60)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])))
"""


@pytest.mark.slow
async def test_sigkill_mid_queue_then_restart(target, tmp_path):
    tenants, count = ["t1", "t2", "t3"], 80
    target.delay, target.flaky = 0.01, 0.25
    acked: dict[str, list[int]] = {t: [] for t in tenants}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, target.url, str(tmp_path), ",".join(tenants), str(count),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)

    async def read_acks() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            fields = line.decode().split()
            assert len(fields) == 3 and fields[0] == "ACK", f"not an ACK line from the child: {line!r}"
            _, t, n = fields
            acked[t].append(int(n))

    reader = asyncio.create_task(read_acks())
    try:
        await wait_until(lambda: len(target.received) >= 30)
        # While the child lives it owns the spool: a second deliverer would break ordering.
        with pytest.raises(Exception, match="in use by another process"):
            await WebhookForwarder(WebhookSettings(url=target.url), storage_root=tmp_path).start()
    finally:
        proc.kill()  # SIGKILL: no cleanup, the in-flight POST is cut off
        await proc.wait()
        await reader
    assert proc.returncode == -signal.SIGKILL
    n_acked = sum(map(len, acked.values()))
    assert n_acked > len({r["key"] for r in target.received}), "nothing was pending at the kill"

    fw = WebhookForwarder(WebhookSettings(url=target.url, initial_delay=0.02, max_delay=0.1, jitter=0.0),
                          storage_root=tmp_path)
    await fw.start()
    try:
        await wait_until(lambda: fw.depth == 0, timeout=20)
    finally:
        await fw.aclose()

    for t in tenants:
        firsts: list[int] = []
        key_of: dict[int, str] = {}
        for r in (r for r in target.received if r["tenant"] == t):
            n = r["payload"]["n"]
            assert key_of.setdefault(n, r["key"]) == r["key"], "a duplicate came with a different key"
            if n not in firsts:
                firsts.append(n)
        # in order, nothing skipped: item n+1 never reached the target before item n
        assert firsts == list(range(len(firsts))), (t, firsts)
        assert set(acked[t]) <= set(firsts), (t, sorted(set(acked[t]) - set(firsts)))
        assert acked[t] == list(range(len(acked[t])))


async def test_sqlite_work_stays_off_the_event_loop(make, target, monkeypatch):
    import threading

    from supervisor import spool as spool_mod

    threads: set[str] = set()
    for name in ("put", "next_items", "delete"):
        orig = getattr(spool_mod.Spool, name)

        def wrapped(self, *a, _orig=orig, **kw):
            threads.add(threading.current_thread().name)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(spool_mod.Spool, name, wrapped)
    fw = await make()
    await fw.submit("1", msg(0))
    await wait_until(lambda: fw.depth == 0)
    assert len(threads) == 1 and threads.pop().startswith("webhook-spool")


async def test_unicode_and_lone_surrogates_survive(make, target):
    fw = await make()
    payload = {"type": "message", "n": 0, "messages": [{"text": "שלום 👋 \ud83d cut"}]}
    await fw.submit("1", payload)
    await wait_until(lambda: target.received)
    assert target.received[0]["payload"] == payload
