"""The HTTP API with the real Supervisor and the fake worker (real processes, real loopback sockets), and the
`run` command as a real subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest
from aiohttp import ClientSession

from supervisor.api import make_app, start_api
from supervisor.config import settings_from_dict
from supervisor.daemon import Supervisor
from support import CLI, WAIT, DaemonProcess, fake_config, free_port, http_json, wait_for, wait_until
from test_api import raw_request

SECRET = "integration-secret"
H = {"X-Internal-Secret": SECRET}


def config_dict(tmp_path: Path, marker: str, **kw) -> dict:
    """support.fake_config with this file's secret and JSON logs; the fake workers log to tmp_path/fake-state."""
    state = tmp_path / "fake-state"
    state.mkdir(exist_ok=True)
    return fake_config(tmp_path / "storage", state, marker, secret=SECRET, logging={"format": "json"}, **kw)


def spawns(tmp_path: Path) -> list[dict]:
    f = tmp_path / "fake-state" / "spawns.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
async def live(tmp_path, marker):
    """(supervisor, base_url, http session) for a real Supervisor behind the real API."""
    settings = settings_from_dict(config_dict(tmp_path, marker), tmp_path / "c.yaml")
    sup = Supervisor(settings)
    runner, port = await start_api(make_app(sup, sup.settings.api), "127.0.0.1", 0)
    try:
        async with ClientSession() as http:
            yield sup, f"http://127.0.0.1:{port}", http
    finally:
        await runner.cleanup()
        await sup.shutdown()


async def test_rejected_requests_create_no_files(live, tmp_path):
    sup, url, http = live
    root = sup.settings.storage.root
    bad_paths = ["/whatsapp/../start", "/whatsapp/a%2Fb/start", "/whatsapp/" + "x" * 65 + "/start",
                 "/whatsapp//start", "/whatsapp/%2E%2E/start", "/whatsapp/..%2Fetc/start"]
    for path in bad_paths:
        status, body = await raw_request(url, "POST", path, H)
        assert status in (400, 404), (path, status)
        assert json.loads(body)["error"] in ("invalid_tenant", "not_found")
    async with http.post(f"{url}/whatsapp/t1/pairing-code", headers=H, data=b"{nope") as r:
        # pairing-code on a never-started tenant: bad JSON is found before anything else
        assert r.status == 400 and (await r.json())["error"] == "bad_request"
    async with http.post(f"{url}/whatsapp/t1/start", headers=H, data=b"x" * (1 << 20)) as r:
        assert r.status == 413 and (await r.json())["error"] == "body_too_large"
    for headers in ({}, {"X-Internal-Secret": "wrong"}, {"Authorization": "Bearer wrong"}):
        async with http.post(f"{url}/whatsapp/t1/start", headers=headers) as r:
            assert r.status == 401 and (await r.json())["error"] == "unauthorized"
    for path in ("/whatsapp/t1/status", "/whatsapp/t1/stop", "/whatsapp/t1/logout"):
        method = http.get if path.endswith("status") else http.post
        async with method(f"{url}{path}", headers=H) as r:
            assert r.status == 404 and (await r.json())["error"] == "unknown_tenant"
    assert files_under(root) == []
    assert spawns(tmp_path) == []


async def test_concurrent_start_over_http_is_one_worker_same_answer(live, tmp_path):
    sup, url, http = live

    async def start() -> tuple[int, dict]:
        async with http.post(f"{url}/whatsapp/shop1/start", headers=H) as r:
            return r.status, await r.json()

    answers = await asyncio.gather(*(start() for _ in range(30)))
    assert {s for s, _ in answers} == {200}
    assert len({(b["state"], b["pid"]) for _, b in answers}) == 1, answers[:3]
    assert all(b["ok"] is True and b["tenant"] == "shop1" for _, b in answers)
    # a later start is idempotent too: same worker
    pid = answers[0][1]["pid"]
    _, again = await start()
    assert again["pid"] == pid
    await wait_until(lambda: sup.status("shop1")["state"] == "qr")  # the worker ran (and logged its spawn)
    assert [s["tenant"] for s in spawns(tmp_path)] == ["shop1"]
    assert {p.split("/")[0] for p in files_under(sup.settings.storage.root / "whatsapp")} == {"shop1"}


async def test_qr_status_pairing_and_stop_through_the_api(live):
    sup, url, http = live
    async with http.get(f"{url}/whatsapp/q1/qr", headers=H) as r:  # before any start: still 200 JSON
        assert r.status == 200
        assert (await r.json())["dataUrl"] is None
    async with http.post(f"{url}/whatsapp/q1/start", headers=H) as r:
        assert r.status == 200
    await wait_until(lambda: sup.status("q1")["hasQR"])
    async with http.get(f"{url}/whatsapp/q1/qr", headers=H) as r:
        assert r.status == 200
        body = await r.json()
    assert body["qr"] == "fake-qr-1" and body["state"] == "qr" and body["connected"] is False
    assert base64.b64decode(body["dataUrl"].split(",", 1)[1]).startswith(b"\x89PNG")
    async with http.get(f"{url}/whatsapp/q1/qr?format=svg", headers=H) as r:
        assert r.status == 200 and "<svg" in await r.text()
    async with http.get(f"{url}/whatsapp/q1/status", headers=H) as r:
        st = await r.json()
    assert st["hasQR"] is True and st["state"] == "qr" and psutil.pid_exists(st["pid"])
    async with http.post(f"{url}/whatsapp/q1/pairing-code", headers=H, json={"phone": "+1 555 000 1234"}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["code"]
    async with http.get(f"{url}/whatsapp", headers=H) as r:
        assert [t["tenant"] for t in (await r.json())["tenants"]] == ["q1"]
    async with http.post(f"{url}/whatsapp/q1/stop", headers=H) as r:
        stopped = await r.json()
    assert r.status == 200 and stopped["state"] == "stopped"
    assert not psutil.pid_exists(st["pid"]) or psutil.Process(st["pid"]).status() == psutil.STATUS_ZOMBIE
    async with http.get(f"{url}/whatsapp/q1/qr?format=png", headers=H) as r:
        assert r.status == 404 and (await r.json())["error"] == "no_qr"
    async with http.post(f"{url}/whatsapp/q1/pairing-code", headers=H, json={"phone": "15550001234"}) as r:
        assert r.status == 409 and (await r.json())["error"] == "not_running"


async def test_start_and_restart_during_shutdown_are_503_and_spawn_nothing(live):
    sup, url, http = live
    async with http.post(f"{url}/whatsapp/r1/start", headers=H) as r:
        assert r.status == 200
    await sup.shutdown()  # what the daemon does while its API may still be answering a last request
    for action in ("restart", "start"):
        async with http.post(f"{url}/whatsapp/r1/{action}", headers=H) as r:
            body = await r.json()
        assert r.status == 503 and body["error"] == "shutting_down", (action, body)
    assert sup.status("r1")["pid"] is None and sup.tenants["r1"].running is False


@pytest.mark.parametrize("kind", ["file", "symlink_to_file", "dangling_symlink", "symlink_loop"])
async def test_an_auth_that_cannot_be_a_directory_is_507_and_spawns_nothing(live, tmp_path, kind):
    """It answered 200 and then retried `spawn_failed` forever (issue 12 item 11); now the documented 507, for start
    and restart, with no worker spawned and the path left as it was."""
    sup, url, http = live
    tdir = sup.settings.storage.root / "whatsapp" / "a1"
    tdir.mkdir(parents=True)
    auth = tdir / "auth"
    if kind == "file":
        auth.write_text("not a directory")
    elif kind == "symlink_to_file":
        (tmp_path / "elsewhere").write_text("x")
        auth.symlink_to(tmp_path / "elsewhere")
    elif kind == "dangling_symlink":
        auth.symlink_to(tmp_path / "missing")
    else:
        auth.symlink_to(auth)
    for action in ("start", "restart"):
        async with http.post(f"{url}/whatsapp/a1/{action}", headers=H) as r:
            body = await r.json()
        assert r.status == 507 and body["error"] == "storage_error" and body["errno"] == "ENOTDIR", (action, body)
        assert "not a directory" in body["message"]
    # refused before the tenant is taken: nothing spawned, and no tenant object (nor its place) for the id
    assert spawns(tmp_path) == [] and "a1" not in sup.tenants
    assert auth.is_symlink() == (kind != "file")


async def test_an_auth_symlink_to_a_directory_still_starts(live, tmp_path):
    sup, url, http = live
    (tmp_path / "auth-elsewhere").mkdir()
    tdir = sup.settings.storage.root / "whatsapp" / "a2"
    tdir.mkdir(parents=True)
    (tdir / "auth").symlink_to(tmp_path / "auth-elsewhere")
    async with http.post(f"{url}/whatsapp/a2/start", headers=H) as r:
        assert r.status == 200, await r.text()
    await wait_until(lambda: sup.status("a2")["state"] == "qr")
    assert [s["tenant"] for s in spawns(tmp_path)] == ["a2"]


async def test_without_a_secret_a_cross_site_page_cannot_log_out_or_read_a_qr(tmp_path, marker):
    """The attack of issue 12 item 1 against the real Supervisor: a web page's `text/plain` POST /logout (no CORS
    preflight) and a DNS-rebinding page's QR read are refused, and the tenant keeps its worker and its auth."""
    cfg = config_dict(tmp_path, marker)
    cfg["api"]["secret"] = None
    sup = Supervisor(settings_from_dict(cfg, tmp_path / "c.yaml"))
    runner, port = await start_api(make_app(sup, sup.settings.api), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession() as http:
            async with http.post(f"{url}/whatsapp/v1/start") as r:  # a local client (no Origin): served
                assert r.status == 200
            await wait_until(lambda: sup.status("v1")["state"] == "qr")
            pid = sup.status("v1")["pid"]
            for action in ("logout", "stop", "restart"):
                async with http.post(f"{url}/whatsapp/v1/{action}", data=b"x", headers={
                        "Origin": "http://evil.example", "Content-Type": "text/plain"}) as r:
                    assert r.status == 403 and (await r.json())["error"] == "forbidden_origin"
            async with http.get(f"{url}/whatsapp/v1/qr", headers={"Host": f"rebind.evil.example:{port}"}) as r:
                assert r.status == 403 and (await r.json())["error"] == "forbidden_host"
                assert "fake-qr" not in await r.text()
            st = sup.status("v1")
            assert st["state"] == "qr" and st["pid"] == pid and psutil.pid_exists(pid)
            assert (sup.settings.storage.root / "whatsapp" / "v1" / "auth").is_dir()
            assert [s["tenant"] for s in spawns(tmp_path)] == ["v1"]
    finally:
        await runner.cleanup()
        await sup.shutdown()


def test_cli_run_subprocess_serves_and_exits_0_on_sigterm(tmp_path, marker):
    daemon = DaemonProcess(tmp_path / "d", config_dict(tmp_path, marker, port=free_port(), boot=["b1"]))
    env = {k: v for k, v in os.environ.items() if k != "INTERNAL_SECRET"}
    cfg = daemon.config_path
    try:
        daemon.start()
        assert http_json("GET", daemon.url + "/healthz")[1]["ok"] is True

        def qr_state() -> dict | None:  # an operator command against it, through the config (URL + secret)
            out = subprocess.run([str(CLI), "status", "b1", "--config", str(cfg), "--json"], capture_output=True,
                                 text=True, env=env, timeout=WAIT)
            assert out.returncode == 0, out.stderr
            st = json.loads(out.stdout)
            return st if st["state"] == "qr" else None

        st = wait_for(qr_state, what="b1 in qr through the CLI")
        worker_pid = st["pid"]
        assert psutil.pid_exists(worker_pid)
        # a mutating request: logged as api.request at info (successful GETs like the status above are debug)
        out = subprocess.run([str(CLI), "start", "b1", "--config", str(cfg), "--json"], capture_output=True,
                             text=True, env=env, timeout=WAIT)
        assert out.returncode == 0, out.stderr
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill9()
    stdout = daemon.log_text()
    assert not psutil.pid_exists(worker_pid)
    events = daemon.log_events()
    reqs = [e for e in events if e["event"] == "api.request"]
    assert [(e["method"], e["route"], e["level"]) for e in reqs] == [("POST", "/whatsapp/{tenant}/start", "info")]
    assert all({"ts", "level", "pid"} <= e.keys() for e in events)
    assert SECRET not in stdout and "fake-qr-1" not in stdout


def test_cli_run_bad_config_exits_2_with_key_path(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("api:\n  port: 3300\n  prot: 1\n")
    out = subprocess.run([str(CLI), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 2
    assert f"{cfg}: api.prot: unknown key" in out.stderr
    assert "Traceback" not in out.stderr
