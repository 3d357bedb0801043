"""CLI: exit codes, output, and the operator commands against a real HTTP API (stub supervisor behind it).
The `run` command as a real subprocess is in test_api_integration.py (it needs the real daemon)."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
import structlog
import yaml

from supervisor.api import make_app, start_api
from supervisor.cli import format_table, main
from supervisor.events import configure_logging
from support import free_port
from test_api import RAW_QR, SECRET, StubSupervisor, _settings


@pytest.fixture(autouse=True)
def no_env_secret(monkeypatch):
    monkeypatch.delenv("INTERNAL_SECRET", raising=False)


@pytest.fixture(autouse=True)
def quiet_api_log():
    # The served API logs to stdout in this same process; keep stdout for the CLI's own output.
    configure_logging("json", "info", io.StringIO())
    yield
    structlog.reset_defaults()


@pytest.fixture
async def daemon(tmp_path):
    """A stub supervisor behind the real API on a free port, plus a config file pointing at it."""
    stub = StubSupervisor(_settings(SECRET))
    runner, port = await start_api(make_app(stub, stub.settings.api), "127.0.0.1", 0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"api": {"port": port, "secret": SECRET}, "storage": {"root": "s"}}))
    yield stub, port, cfg
    await runner.cleanup()


async def cli(*argv: str) -> int:
    # The CLI is synchronous (urllib); run it off the loop that serves the API.
    return await asyncio.to_thread(main, list(argv))


async def test_status_all_table_via_config(daemon, capsys):
    _, _, cfg = daemon
    assert await cli("status", "--config", str(cfg)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["TENANT", "STATE", "CONNECTED"]
    assert out.splitlines()[1].split()[:2] == ["1", "qr"]


async def test_status_one_json_via_url_and_env_secret(daemon, capsys, monkeypatch):
    _, port, _ = daemon
    monkeypatch.setenv("INTERNAL_SECRET", SECRET)
    assert await cli("status", "1", "--url", f"http://127.0.0.1:{port}", "--json", "--config", "/dev/null") == 0
    assert json.loads(capsys.readouterr().out)["tenant"] == "1"


@pytest.mark.parametrize("action", ["start", "stop", "restart", "logout"])
async def test_actions(daemon, capsys, action):
    stub, _, cfg = daemon
    assert await cli(action, "1", "--config", str(cfg), "--json") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert stub.calls[-1] == (action, "1")


async def test_api_error_is_exit_1_with_message(daemon, capsys):
    _, _, cfg = daemon
    assert await cli("stop", "unknown", "--config", str(cfg)) == 1
    assert "unknown_tenant" in capsys.readouterr().err


async def test_invalid_tenant_is_sent_encoded_and_rejected(daemon, capsys):
    stub, _, cfg = daemon
    assert await cli("start", "a/b", "--config", str(cfg)) == 1
    assert "invalid_tenant" in capsys.readouterr().err
    assert stub.calls == []


async def test_wrong_secret_is_exit_1(daemon, tmp_path, capsys):
    _, port, _ = daemon
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"api": {"port": port, "secret": "nope"}}))
    assert await cli("status", "--config", str(cfg)) == 1
    assert "unauthorized" in capsys.readouterr().err


async def test_qr_draws_in_terminal(daemon, capsys):
    stub, _, cfg = daemon
    assert await cli("qr", "1", "--config", str(cfg), "--wait", "0") == 1  # no QR yet
    assert "no QR" in capsys.readouterr().err
    stub.qr_value = RAW_QR
    assert await cli("qr", "1", "--config", str(cfg)) == 0
    out = capsys.readouterr().out
    assert RAW_QR not in out and len(out.splitlines()) > 10 and "█" in out or "▀" in out


async def test_pairing_code_sends_the_phone_and_prints_the_code_as_whatsapp_shows_it(daemon, capsys):
    stub, _, cfg = daemon
    assert await cli("pairing-code", "1", "+972 50-123 4567", "--config", str(cfg)) == 0
    out = capsys.readouterr().out
    assert "enter ABCD-1234" in out and "Link with phone number" in out
    assert stub.calls[-1] == ("pairing_code", ("1", "972501234567"))  # the API normalised what the CLI sent
    assert await cli("pairing-code", "1", "972501234567", "--config", str(cfg), "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "tenant": "1", "code": "ABCD1234"}
    assert await cli("pairing-code", "1", "12ab", "--config", str(cfg)) == 1
    assert "bad_request" in capsys.readouterr().err


def test_unreachable_daemon_is_exit_3(capsys):
    assert main(["status", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2"]) == 3
    assert "cannot reach" in capsys.readouterr().err


def test_config_errors_are_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("worker:\n  stop_grace: abc\n")
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: worker.stop_grace: expected a number > 0, got 'abc'" in err
    assert main(["status", "--config", str(bad)]) == 2
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_usage_errors_are_exit_2():
    assert main([]) == 2
    assert main(["start"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


def with_status(stub, monkeypatch) -> dict:
    """Make the stub's status carry what the test puts in the returned dict (state, lastDisconnect, ...)."""
    extra: dict = {}
    base = stub._st
    monkeypatch.setattr(stub, "_st", lambda tid, state="qr": {**base(tid, state), **extra})
    return extra


OFFLINE = {"state": "backoff", "connected": False, "restarts": 5, "stateReason": "close",
           "nextRetryAt": "2026-12-01T14:00:32Z", "lastDisconnect": {
               "code": 408, "reason": "timedOut", "message": "getaddrinfo ENOTFOUND web.whatsapp.com", "at": "x"}}


async def test_status_shows_the_real_cause_next_to_the_close_code(daemon, capsys, monkeypatch):
    stub, _, cfg = daemon
    with_status(stub, monkeypatch).update(OFFLINE)
    assert await cli("status", "--config", str(cfg)) == 0
    assert "408 timedOut: getaddrinfo ENOTFOUND web.whatsapp.com" in capsys.readouterr().out


async def test_qr_right_after_start_waits_for_the_qr(daemon, capsys, monkeypatch):
    stub, _, cfg = daemon
    extra = with_status(stub, monkeypatch)
    extra["state"] = "starting"

    async def qr_appears() -> None:
        await asyncio.sleep(1.0)
        extra["state"] = "qr"
        stub.qr_value = RAW_QR

    shown = asyncio.create_task(qr_appears())
    assert await cli("qr", "1", "--config", str(cfg), "--wait", "30") == 0
    await shown
    assert "scan with WhatsApp" in capsys.readouterr().out


async def test_qr_without_a_qr_coming_says_why_at_once_without_a_python_repr(daemon, capsys, monkeypatch):
    stub, _, cfg = daemon
    extra = with_status(stub, monkeypatch)
    extra.update(OFFLINE)
    t0 = asyncio.get_running_loop().time()
    assert await cli("qr", "1", "--config", str(cfg), "--wait", "30") == 1
    assert asyncio.get_running_loop().time() - t0 < 20  # backoff: no QR is coming, no point in waiting
    err = capsys.readouterr().err
    assert "reconnecting after a failure" in err and "getaddrinfo ENOTFOUND" in err and "2026-12-01T14:00:32Z" in err
    assert "False" not in err and "connected:" not in err
    assert await cli("qr", "never-started", "--config", str(cfg)) == 1
    assert "`start` it first" in capsys.readouterr().err


async def test_start_during_backoff_says_when_it_will_try(daemon, capsys, monkeypatch):
    stub, _, cfg = daemon
    with_status(stub, monkeypatch).update(OFFLINE)
    assert await cli("start", "1", "--config", str(cfg)) == 0
    assert "next attempt at 2026-12-01T14:00:32Z" in capsys.readouterr().err


async def test_pairing_code_errors_say_the_reason(daemon, capsys, monkeypatch):
    from supervisor.errors import NotRunning

    stub, _, cfg = daemon
    with_status(stub, monkeypatch).update(OFFLINE)

    async def not_running(tid: str, phone: str) -> str:
        raise NotRunning("tenant 1 has no live worker")

    monkeypatch.setattr(stub, "pairing_code", not_running)
    assert await cli("pairing-code", "1", "972501234567", "--config", str(cfg)) == 1
    err = capsys.readouterr().err
    assert "not_running" in err and "reconnecting after a failure" in err and "ENOTFOUND" in err


async def test_401_points_to_the_secret_and_json_errors_are_json(daemon, tmp_path, capsys):
    _, port, _ = daemon
    cfg = tmp_path / "nosecret.yaml"
    cfg.write_text(yaml.safe_dump({"api": {"port": port}}))
    assert await cli("status", "--config", str(cfg)) == 1
    err = capsys.readouterr().err
    assert "unauthorized" in err and "INTERNAL_SECRET" in err and "--config" in err
    assert await cli("status", "--config", str(cfg), "--json") == 1
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is False and body["error"] == "unauthorized" and body["status"] == 401 and body["exitCode"] == 1
    assert main(["status", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2", "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["error"] == "unreachable"


def test_format_table():
    text = format_table([{"tenant": "1", "state": "backoff", "connected": False, "hasQR": False, "pid": None,
                          "restarts": 3, "lastDisconnect": {"code": 428, "reason": "connectionClosed"},
                          "nextRetryAt": "2024-01-01T00:00:04Z", "stateReason": None}])
    row = text.splitlines()[1].split()
    assert row == ["1", "backoff", "no", "no", "-", "3", "428", "connectionClosed", "2024-01-01T00:00:04Z", "-"]
    assert format_table([]) == "no tenants"
