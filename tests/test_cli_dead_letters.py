"""CLI `webhook dead-letters|retry` (supervisor/cli_webhook.py) against the real API with a real forwarder, a real
SQLite spool and a real webhook target (the fixtures of test_webhook.py), configured like the other CLI commands
(a config file with the API's port and secret, or --url with INTERNAL_SECRET)."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
import structlog
import yaml

from support import wait_until
from supervisor.api import make_app, start_api
from supervisor.cli import main
from supervisor.events import configure_logging
from supervisor.settings import ApiSettings
from test_webhook import Recorder, make, msg, target  # noqa: F401 - fixtures

SECRET = "api-s3cret"
PHONE = "15550001111"  # a made-up number in a payload: the CLI must never print it


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.delenv("INTERNAL_SECRET", raising=False)
    configure_logging("json", "info", io.StringIO())  # the served API logs in this process: keep stdout for the CLI
    yield
    structlog.reset_defaults()


@pytest.fixture
async def daemon(make, target, tmp_path):  # noqa: F811
    """(forwarder, recorder, config of the API with the webhook on, config of one with it off)."""
    rec = Recorder()
    fw = await make(rec)
    runners, cfgs = [], []
    for name, webhook in (("on", fw), ("off", None)):
        runner, port = await start_api(make_app(object(), ApiSettings(secret=SECRET, port=0), webhook=webhook),
                                       "127.0.0.1", 0)
        runners.append(runner)
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({"api": {"port": port, "secret": SECRET}, "storage": {"root": "s"}}))
        cfgs.append(str(cfg))
    yield fw, rec, *cfgs
    for r in runners:
        await r.cleanup()


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))  # synchronous urllib: off the loop that serves the API


async def dead(fw, rec, target, tenants=("1", "1", "2")):  # noqa: F811
    for n, t in enumerate(tenants):
        target.default[t] = 422  # refused for good: each item becomes a dead letter
        await fw.submit(t, {**msg(n), "from": PHONE})
    await wait_until(lambda: rec.results.count("dead_letter") == len(tenants))


async def test_list_table_json_filter_and_paging(daemon, target, capsys):  # noqa: F811
    fw, rec, cfg, _ = daemon
    await dead(fw, rec, target)
    assert await cli("webhook", "dead-letters", "--config", cfg) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TENANT", "STATUS", "ATTEMPTS", "DEAD", "AT", "EVENT"]
    assert [ln.split()[1:4] for ln in lines[1:]] == [["1", "422", "1"], ["1", "422", "1"], ["2", "422", "1"]]
    assert PHONE not in out + err and err == ""

    assert await cli("webhook", "dead-letters", "--config", cfg, "--json", "--tenant", "2") == 0
    body = json.loads(capsys.readouterr().out)
    assert [d["tenant"] for d in body["deadLetters"]] == ["2"] and body["next"] is None
    assert "payload" not in body["deadLetters"][0]

    assert await cli("webhook", "dead-letters", "--config", cfg, "--limit", "2") == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3 and "--after" in err
    after = err.split("--after")[1].split()[0]
    assert await cli("webhook", "dead-letters", "--config", cfg, "--limit", "2", "--after", after, "--json") == 0
    assert [d["tenant"] for d in json.loads(capsys.readouterr().out)["deadLetters"]] == ["2"]


async def test_retry_requeues_then_not_found_once_delivered(daemon, target, capsys, monkeypatch):  # noqa: F811
    fw, rec, cfg, _ = daemon
    await dead(fw, rec, target, ("1",))
    assert await cli("webhook", "dead-letters", "--config", cfg, "--json") == 0
    [d] = json.loads(capsys.readouterr().out)["deadLetters"]
    target.default["1"] = 200  # the operator fixed the target
    monkeypatch.setenv("INTERNAL_SECRET", SECRET)  # --url + the env secret, as for the other commands
    url = "http://127.0.0.1:" + str(yaml.safe_load(open(cfg))["api"]["port"])
    assert await cli("webhook", "retry", d["id"], "--url", url, "--config", "/dev/null") == 0
    out = capsys.readouterr().out
    assert d["id"] in out and "back in tenant 1's webhook queue" in out
    await wait_until(lambda: len(target.received) == 1)
    assert target.requests[-1]["key"] == d["idempotencyKey"]
    await wait_until(lambda: fw.depth == 0)
    assert await cli("webhook", "retry", d["id"], "--config", cfg, "--json") == 1  # delivered: gone
    out, err = capsys.readouterr()
    assert json.loads(out)["error"] == "dead_letter_not_found" and json.loads(out)["status"] == 404
    assert "dead_letter_not_found" in err


async def test_errors_exit_like_the_other_commands(daemon, capsys, tmp_path):  # noqa: F811
    _, _, cfg, off = daemon
    assert await cli("webhook", "dead-letters", "--config", off) == 1
    assert "webhook_disabled" in capsys.readouterr().err
    assert await cli("webhook", "dead-letters", "--config", cfg, "--limit", "0") == 1
    assert "bad_request" in capsys.readouterr().err
    assert await cli("webhook", "retry", "no such id", "--config", cfg) == 1  # sent encoded, refused by the daemon
    assert "bad_request" in capsys.readouterr().err
    nosecret = tmp_path / "nosecret.yaml"
    nosecret.write_text(yaml.safe_dump({"api": {"port": yaml.safe_load(open(cfg))["api"]["port"]},
                                        "storage": {"root": "s"}}))
    assert await cli("webhook", "dead-letters", "--config", str(nosecret)) == 1
    assert "hint: the daemon wants its API secret" in capsys.readouterr().err
    assert await cli("webhook", "retry", "x", "--url", "http://127.0.0.1:9", "--config", "/dev/null") == 3
    assert "unreachable" in capsys.readouterr().err
    assert await cli("webhook") == 2  # no action: usage
    assert await cli("webhook", "dead-letters", "--limit", "many") == 2
