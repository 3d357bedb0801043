"""Capacity limits (limits.max_tenants / max_processes / max_standbys) and forgetting a never-linked tenant, with
the real Supervisor, real fake-worker processes, real locks and the real API over loopback."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from aiohttp import ClientSession

from conftest import live_workers, spawn_records, wait_until
from supervisor.api import make_app, start_api
from supervisor.daemon import Supervisor
from supervisor.errors import AtCapacity, TenantLinked, TooManyTenants, UnknownTenant
from supervisor.settings import LimitsSettings

SECRET = "limits-secret"
H = {"X-Internal-Secret": SECRET}
LINKED_CREDS = {"me": {"id": "12345678901:1@s.whatsapp.net"}, "account": {"details": "x"}}


def sup_with(make_settings, script=None, worker=None, **limits) -> Supervisor:
    settings = make_settings(script, api={"secret": SECRET}, worker=worker)
    return Supervisor(replace(settings, limits=replace(LimitsSettings(), **limits)))


def series_of(sup: Supervisor, tid: str) -> list[str]:
    body, _ = sup.metrics.render()
    return [line for line in body.decode().splitlines() if f'tenant="{tid}"' in line]


async def test_a_new_id_beyond_max_tenants_is_429_and_leaves_nothing(make_settings, storage):
    (storage / "whatsapp" / "ondisk" / "auth").mkdir(parents=True)  # known from disk: it counts
    sup = sup_with(make_settings, max_tenants=3)
    try:
        await sup.start_tenant("a")
        await sup.start_tenant("b")
        with pytest.raises(TooManyTenants) as exc:
            await sup.start_tenant("c")
        assert exc.value.status == 429 and exc.value.details["limit"] == 3
        with pytest.raises(TooManyTenants):
            await sup.restart_tenant("c")
        assert "c" not in sup.tenants and not (storage / "whatsapp" / "c").exists()
        assert series_of(sup, "c") == [] and "c" not in sup._op_locks
        assert sorted(sup.tenants) == ["a", "b", "ondisk"]
        # known tenants are not refused: a restart of one and a start of the one on disk go through
        assert (await sup.restart_tenant("a"))["pid"]
        assert (await sup.start_tenant("ondisk"))["pid"]
        # forgetting one makes room for the new id
        await sup.forget_tenant("b")
        assert (await sup.start_tenant("c"))["pid"]
    finally:
        await sup.shutdown()


async def test_a_start_beyond_max_processes_is_503_and_running_tenants_keep_their_place(make_settings, storage,
                                                                                          fake_state):
    # every worker crashes after hello: both tenants spend most of their time in backoff with no process alive
    sup = sup_with(make_settings, [{"hello": {}}, {"exit": 1}], max_processes=2)
    try:
        await sup.start_tenant("a")
        await sup.start_tenant("b")
        with pytest.raises(AtCapacity) as exc:
            await sup.start_tenant("c")
        assert exc.value.status == 503 and exc.value.details["limit"] == 2
        assert "c" not in sup.tenants and not (storage / "whatsapp" / "c").exists() and series_of(sup, "c") == []
        # the backing-off tenants keep restarting while the daemon is full
        await wait_until(lambda: sum(r["tenant"] == "a" for r in spawn_records(fake_state)) >= 3)
        with pytest.raises(AtCapacity):
            await sup.start_tenant("c")
        await sup.stop_tenant("a")  # its place is free once its restart loop has ended
        assert sup.budget.in_use == 1
        assert (await sup.start_tenant("c"))["state"] in ("starting", "backoff")
        assert sup.budget.in_use == 2
    finally:
        await sup.shutdown()
    assert sup.budget.in_use == 0


async def test_standbys_are_bounded_and_count_as_processes(make_settings, marker):
    sup = sup_with(make_settings, worker={"prewarm": True}, max_processes=4, max_standbys=1)
    try:
        for tid in ("a", "b", "c"):
            await sup.start_tenant(tid)
        await wait_until(lambda: all(sup.status(t)["state"] == "qr" for t in ("a", "b", "c")))
        await wait_until(lambda: sum(sup.status(t)["standbyPid"] is not None for t in ("a", "b", "c")) == 1)
        await asyncio.sleep(0.3)  # room for a (wrong) second standby
        assert sum(sup.status(t)["standbyPid"] is not None for t in ("a", "b", "c")) == 1
        assert len(live_workers(marker)) == 4  # 3 workers + 1 standby = max_processes
        assert (sup.budget.tenants, sup.budget.standbys) == (3, 1)
        with pytest.raises(AtCapacity):
            await sup.start_tenant("d")  # the standby holds the 4th place
        with_standby = next(t for t in ("a", "b", "c") if sup.status(t)["standbyPid"] is not None)
        await sup.stop_tenant(with_standby)  # worker and standby gone: two places free
        assert (sup.budget.tenants, sup.budget.standbys) == (2, 0)
        await sup.start_tenant("d")
        assert len(live_workers(marker)) <= 4
    finally:
        await sup.shutdown()
    assert sup.budget.in_use == 0 and live_workers(marker) == {}


async def test_forget_a_never_linked_tenant_removes_everything(make_settings, storage, marker):
    sup = sup_with(make_settings)
    try:
        st = await sup.start_tenant("t")
        (storage / "whatsapp" / "t" / "auth").mkdir(exist_ok=True)
        (storage / "whatsapp" / "t" / "auth" / "creds.json").write_text(json.dumps({"noiseKey": {}}))  # unlinked
        await wait_until(lambda: sup.status("t")["state"] == "qr")
        assert series_of(sup, "t")
        answer = await sup.forget_tenant("t")
        assert answer == {"ok": True, "tenant": "t", "forgotten": True, "kept": []}
        assert not (storage / "whatsapp" / "t").exists()
        assert "t" not in sup.tenants and "t" not in sup._op_locks and series_of(sup, "t") == []
        assert st["pid"] not in live_workers(marker) and sup.budget.in_use == 0
        with pytest.raises(UnknownTenant):
            sup.status("t")
        with pytest.raises(UnknownTenant):
            await sup.forget_tenant("t")
        assert (await sup.start_tenant("t"))["pid"]  # a fresh start works as for a new id
    finally:
        await sup.shutdown()


async def test_forget_refuses_a_linked_tenant_and_keeps_archives(make_settings, storage):
    sup = sup_with(make_settings)
    tdir = storage / "whatsapp" / "t"
    try:
        await sup.start_tenant("t")
        (tdir / "auth").mkdir(exist_ok=True)
        (tdir / "auth" / "creds.json").write_text(json.dumps(LINKED_CREDS))
        with pytest.raises(TenantLinked) as exc:
            await sup.forget_tenant("t")
        assert exc.value.status == 409 and exc.value.code == "linked"
        assert sup.status("t")["pid"] and (tdir / "auth" / "creds.json").exists()  # still running, nothing removed
        await sup.logout_tenant("t")  # archived, never deleted
        (archive,) = [p.name for p in tdir.iterdir() if p.name.startswith("auth.logged-out-")]
        answer = await sup.forget_tenant("t")
        assert answer["kept"] == [archive] and (tdir / archive / "creds.json").exists()
        assert sorted(p.name for p in tdir.iterdir()) == [archive] and "t" not in sup.tenants
    finally:
        await sup.shutdown()


async def test_limits_and_forget_through_the_real_api(make_settings, storage):
    sup = sup_with(make_settings, max_tenants=2, max_processes=1)
    runner, port = await start_api(make_app(sup, sup.settings.api, metrics=sup.metrics), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession(headers=H) as http:
            async with http.post(f"{base}/whatsapp/a/start") as r:
                assert r.status == 200
            async with http.post(f"{base}/whatsapp/b/start") as r:
                assert r.status == 503 and r.content_type == "application/json"
                body = await r.json()
                assert body["error"] == "capacity" and body["limit"] == 1 and "max_processes" in body["message"]
            (storage / "whatsapp" / "disk" / "auth").mkdir(parents=True)  # now 2 known tenants
            await sup.stop_tenant("a")
            async with http.post(f"{base}/whatsapp/b/start") as r:
                body = await r.json()
                assert r.status == 429 and body["error"] == "too_many_tenants" and body["limit"] == 2
            assert not (storage / "whatsapp" / "b").exists()
            async with http.delete(f"{base}/whatsapp/nobody") as r:
                assert r.status == 404 and (await r.json())["error"] == "unknown_tenant"
            async with http.delete(f"{base}/whatsapp/a%0A") as r:
                assert r.status == 400
            async with http.delete(f"{base}/whatsapp/a") as r:
                assert r.status == 200 and (await r.json())["forgotten"] is True
            async with http.post(f"{base}/whatsapp/b/start") as r:
                assert r.status == 200
            (storage / "whatsapp" / "b" / "auth").mkdir(exist_ok=True)
            (storage / "whatsapp" / "b" / "auth" / "creds.json").write_text(json.dumps(LINKED_CREDS))
            async with http.delete(f"{base}/whatsapp/b") as r:
                assert r.status == 409 and (await r.json())["error"] == "linked"
    finally:
        await runner.cleanup()
        await sup.shutdown()


async def test_a_lock_file_removed_between_open_and_lock_is_refused(storage, monkeypatch):
    """forget unlinks auth.lock: a daemon that opened the old file just before must not believe it owns the tenant
    (a third one could lock the new file). The race is forced by unlinking inside the lock call."""
    from supervisor import locks
    from supervisor.errors import TenantLocked

    real = locks.lock_descriptor
    tdir = storage / "whatsapp" / "t"

    def racing(fd, blocking=False):
        (tdir / "auth.lock").unlink()  # another daemon forgets the tenant right now
        return real(fd, blocking=blocking)

    monkeypatch.setattr(locks, "lock_descriptor", racing)
    lock = locks.TenantLock("t", tdir)
    with pytest.raises(TenantLocked):
        await lock.acquire()
    assert lock.fd is None
    monkeypatch.setattr(locks, "lock_descriptor", real)
    await lock.acquire()  # a fresh file: fine
    assert lock.held
    lock.release()


async def test_a_reload_applies_new_limits_at_once(make_settings, storage):
    from supervisor.reload import apply_reload

    sup = sup_with(make_settings, max_tenants=1)
    try:
        await sup.start_tenant("a")
        with pytest.raises(TooManyTenants):
            await sup.start_tenant("b")
        plan = await apply_reload(sup, replace(sup.settings, limits=LimitsSettings(max_tenants=2)))
        assert "limits" in plan.changed and not plan.restart and sup.status("a")["pid"]
        assert (await sup.start_tenant("b"))["pid"]
    finally:
        await sup.shutdown()


async def test_capacity_is_in_the_metrics(make_settings):
    from prometheus_client.parser import text_string_to_metric_families

    sup = sup_with(make_settings, worker={"prewarm": True}, max_tenants=5, max_processes=4, max_standbys=1)

    def kinds() -> dict[str, float]:
        fams = {f.name: f for f in text_string_to_metric_families(sup.metrics.render()[0].decode())}
        return {s.labels["kind"]: s.value for s in fams["baileys_supervisor_capacity"].samples}

    base = {"max_tenants": 5, "max_processes": 4, "max_standbys": 1}
    assert kinds() == {**base, "tenants": 0, "processes": 0, "standbys": 0}
    try:
        await sup.start_tenant("a")
        await sup.start_tenant("b")
        await wait_until(lambda: kinds()["standbys"] == 1)
        assert kinds() == {**base, "tenants": 2, "processes": 3, "standbys": 1}
    finally:
        await sup.shutdown()
    assert kinds() == {**base, "tenants": 2, "processes": 0, "standbys": 0}


async def test_a_linked_tenants_restart_goes_before_a_flood_of_new_starts(make_settings, storage, fake_state):
    """300 starts of new ids used to queue real tenants' restarts behind them (286 of 560 spawns waited > 30 s)."""
    import os
    import signal

    script = [{"sleep": 0.3}, {"hello": {}}, {"qr": "2@x"}, {"wait": True}]  # each spawn holds the slot ~0.3 s
    sup = Supervisor(make_settings(script, worker={"max_concurrent_spawns": 1}))
    (storage / "whatsapp" / "real" / "auth").mkdir(parents=True)
    (storage / "whatsapp" / "real" / "auth" / "creds.json").write_text(json.dumps(LINKED_CREDS))
    try:
        st = await sup.start_tenant("real")
        await wait_until(lambda: sup.status("real")["state"] == "qr")
        flood = [asyncio.create_task(sup.start_tenant(f"f{i}")) for i in range(8)]
        await wait_until(lambda: sup.spawn_slots.waiting >= 7)
        os.kill(st["pid"], signal.SIGKILL)  # the linked tenant's worker dies: it restarts after a 0.05 s backoff
        await wait_until(lambda: [r["tenant"] for r in spawn_records(fake_state)].count("real") == 2, timeout=30)
        order = [r["tenant"] for r in spawn_records(fake_state)]
        second = len(order) - 1 - order[::-1].index("real")
        assert second - 1 <= 2, order  # at most the flood spawns already in flight, not the whole queue (8)
        await asyncio.gather(*flood)
    finally:
        await sup.shutdown()


@pytest.mark.parametrize("files", [{"creds.json": "{not json"}, {"creds.json": "{}", "session-123.0.json": "{}"}],
                         ids=["corrupt-creds", "session-file"])
async def test_forget_refuses_when_it_cannot_tell_or_sees_a_linked_device(make_settings, storage, files):
    auth = storage / "whatsapp" / "t" / "auth"
    auth.mkdir(parents=True)
    for name, text in files.items():
        (auth / name).write_text(text)
    sup = sup_with(make_settings)
    with pytest.raises(TenantLinked):
        await sup.forget_tenant("t")
    assert sorted(p.name for p in auth.iterdir()) == sorted(files)
    (auth / "creds.json").write_text("{}")  # readable, unlinked
    for name in files:
        if name != "creds.json":
            (auth / name).unlink()
    assert (await sup.forget_tenant("t"))["forgotten"] and not auth.exists()
