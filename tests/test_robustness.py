"""Regression tests for the daemon's cost and fault paths: junk-line logging is rate-limited but counted exactly,
the framing yields to the loop, idle workers cost no timer or thread each, QR renderings are cached, storage errors
are clear (507) and never leave temporaries, locks or unread workers behind."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from conftest import live_workers, wait_until
from supervisor import protocol, qr
from supervisor.childwatch import HeartbeatWatch, PidfdWatcher
from supervisor.daemon import Supervisor
from supervisor.errors import StorageError
from supervisor.locks import TenantLock, write_json_atomic

HELLO = {"hello": {}}
READY = [HELLO, {"qr": "q"}, {"wait": True}]


# -- item 1: junk floods ---------------------------------------------------------------------------------------

async def test_protocol_errors_are_counted_exactly_but_logged_rate_limited(make_settings):
    junk = 1000
    counted: list[int] = []
    sup = Supervisor(make_settings([HELLO, {"raw": "\n".join(["junk"] * junk)}, {"qr": "after"}, {"wait": True}]))
    with capture_logs() as logs:
        await sup.start_tenant("t")
        await wait_until(lambda: sup.status("t")["hasQR"])
        counted.append(sup.metrics.invalid_lines.labels(tenant="t")._value.get())
        await sup.shutdown()
    warned = [e for e in logs if e["event"] == "worker.protocol_error"]
    # The first 10, then the 16th, 32nd, ..., 512th: 16 lines for 1000 junk lines, and nothing is lost.
    assert [e["count"] for e in warned] == list(range(1, 11)) + [16, 32, 64, 128, 256, 512]
    assert sum(e["suppressed"] for e in warned) + len(warned) == 512
    exited = [e for e in logs if e["event"] == "worker.exited"]
    assert exited and exited[-1]["protocol_errors"] == junk
    assert counted == [junk]


async def test_read_lines_yields_to_the_loop_while_data_is_buffered():
    """A reader whose buffer always has data never suspends in read(): read_lines must yield by itself, or one
    flooding worker starves every other task of the daemon."""
    reader = asyncio.StreamReader(limit=1 << 16)
    reader.feed_data(b"junk\n" * 400_000)  # 2 MB already buffered, as a fast worker's pipe would have it
    reader.feed_eof()
    turns = 0

    async def neighbour() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(neighbour())
    await asyncio.sleep(0)
    n = 0
    async for _ in protocol.read_lines(reader):
        n += 1
    task.cancel()
    assert n == 400_000
    assert turns >= 2_000_000 // protocol.READ_CHUNK - 1, f"the neighbour ran {turns} times during the flood"


def test_line_splitter_matches_the_framing_rules():
    s = protocol.LineSplitter(limit=8)
    assert s.feed(b"ab\ncd") == [b"ab"]
    assert s.feed(b"ef\n123456789") == [b"cdef", protocol.TOO_LONG]
    assert s.feed(b"more\nok\n\n") == [b"ok", b""]  # the over-long line is dropped up to its newline, once
    assert s.feed(b"tail") == [] and s.close() == [b"tail"]


# -- item 6: idle cost -------------------------------------------------------------------------------------------

async def test_idle_workers_share_one_watchdog_timer_and_no_threads(make_settings, marker):
    n = 12
    threads_before = threading.active_count()
    sup = Supervisor(make_settings(READY, worker={"heartbeat_timeout": 30.0}))
    await asyncio.gather(*(sup.start_tenant(f"t{i}") for i in range(n)))
    await wait_until(lambda: all(sup.status(f"t{i}")["hasQR"] for i in range(n)))
    loop = asyncio.get_running_loop()
    try:
        assert len(live_workers(marker)) == n
        # One timer per worker before (a watchdog sleep each); now one HeartbeatWatch timer for all of them.
        long_timers = [h for h in loop._scheduled if not h.cancelled() and h.when() - loop.time() > 5]  # noqa: SLF001
        assert len(long_timers) <= 2, long_timers
        assert HeartbeatWatch.for_running_loop().armed and len(HeartbeatWatch.for_running_loop().members) == n
        # One waitpid thread per child before (ThreadedChildWatcher); pidfds in the loop now.
        assert isinstance(asyncio.get_child_watcher(), PidfdWatcher)
        assert threading.active_count() - threads_before <= 1, threading.enumerate()
    finally:
        await sup.shutdown()
    assert not HeartbeatWatch.for_running_loop().armed  # nothing left to watch: no timer either


# -- item 4: QR cache ---------------------------------------------------------------------------------------------

def test_qr_renderings_are_cached(monkeypatch):
    made: list[str] = []
    real = qr._make
    monkeypatch.setattr(qr, "_make", lambda s: made.append(s) or real(s))
    text = "2@cache-test-" + os.urandom(4).hex()
    a = qr.png_data_url(text)
    assert qr.png_data_url(text) is a and qr.png_bytes(text) == qr.png_bytes(text) and qr.svg(text) == qr.svg(text)
    assert made == [text, text, text]  # one rendering per format, not per request
    assert qr.png_data_url.cache_info().maxsize <= 64


# -- items 2 and 3: storage faults ---------------------------------------------------------------------------------

def test_write_json_atomic_removes_its_temporary_on_failure(tmp_path: Path, monkeypatch):
    target = tmp_path / "worker.pid"

    def enospc(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError):
        write_json_atomic(target, {"pid": 1})
    assert list(tmp_path.iterdir()) == []


def test_pidfile_write_and_clear_never_raise(tmp_path: Path, monkeypatch):
    lock = TenantLock("t", tmp_path)
    monkeypatch.setattr(os, "fsync", lambda _fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    assert lock.write_pidfile(os.getpid(), 0.0) is False
    assert list(tmp_path.iterdir()) == []
    lock.pid_path.mkdir()  # unlink() of a directory fails with an OSError other than FileNotFoundError
    (lock.pid_path / "x").touch()
    lock.clear_pidfile()


async def test_failed_owner_record_is_a_storage_error_and_leaves_the_tenant_unlocked(tmp_path: Path, monkeypatch):
    lock = TenantLock("t", tmp_path / "t")

    def eio(*_a):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", eio)
    with pytest.raises(StorageError) as info:
        await lock.acquire()
    assert info.value.code == "storage_error" and info.value.status == 507
    assert "Input/output error" in info.value.message and info.value.details["errno"] == "EIO"
    assert not lock.held
    monkeypatch.undo()
    other = TenantLock("t", tmp_path / "t")
    await other.acquire()  # the failed attempt's fd was closed: the flock is free
    other.release()


async def test_storage_error_while_running_backs_off_with_reason(make_settings, marker, monkeypatch):
    from supervisor.tenant import Tenant

    real = Tenant._run_once
    calls = 0

    async def flaky(self):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self)

    monkeypatch.setattr(Tenant, "_run_once", flaky)
    sup = Supervisor(make_settings(READY, restart={"initial_delay": 0.3, "max_delay": 0.3}))
    with capture_logs() as logs:
        st = await sup.start_tenant("t")  # answers at once with the backoff, not after it
        assert (st["state"], st["stateReason"], st["pid"]) == ("backoff", "storage_error", None), st
        await wait_until(lambda: sup.status("t")["hasQR"])
        await sup.shutdown()
    assert any(e["event"] == "tenant.storage_error" for e in logs)
    assert live_workers(marker) == {}


async def test_api_answers_storage_errors_with_507(make_settings, storage):
    from aiohttp import ClientSession

    from supervisor.api import make_app, start_api

    sup = Supervisor(make_settings(READY))
    (storage / "whatsapp").mkdir(parents=True)
    (storage / "whatsapp" / "t1").write_text("not a directory")  # mkdir of the tenant dir fails: EEXIST/ENOTDIR
    runner, port = await start_api(make_app(sup, sup.settings.api), "127.0.0.1", 0)
    try:
        async with ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/whatsapp/t1/start") as r:
                body = await r.json()
        assert r.status == 507 and body["error"] == "storage_error", body
        assert "cannot create the tenant directory" in body["message"] and str(storage) not in body["message"]
        assert json.dumps(body)  # JSON all the way
    finally:
        await runner.cleanup()
        await sup.shutdown()
