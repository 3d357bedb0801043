"""Structured events: JSON shape, level filtering, renderer choice and secret scrubbing."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import json
import os
import warnings
from datetime import datetime, timezone

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from supervisor.events import REDACTED, configure_logging, get_logger, is_sensitive, scrub


@pytest.fixture(autouse=True)
def reset_structlog():
    yield
    structlog.reset_defaults()


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_json_event_has_event_ts_level_pid_and_fields():
    buf = io.StringIO()
    configure_logging("json", "info", buf)
    get_logger(tenant="1").info("tenant.state", old="starting", new="qr")
    (e,) = lines(buf)
    assert e["event"] == "tenant.state" and e["level"] == "info" and e["pid"] == os.getpid()
    assert e["tenant"] == "1" and e["old"] == "starting" and e["new"] == "qr"
    ts = datetime.fromisoformat(e["ts"].replace("Z", "+00:00"))
    assert ts.tzinfo is not None and ts.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - ts).total_seconds()) < 60


def test_level_filtering():
    buf = io.StringIO()
    configure_logging("json", "warning", buf)
    log = get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [e["event"] for e in lines(buf)] == ["loud"]


def test_auto_is_json_when_not_a_tty_and_console_when_tty():
    buf = io.StringIO()
    configure_logging("auto", "info", buf)
    get_logger().info("x", a=1)
    assert json.loads(buf.getvalue())["event"] == "x"

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    configure_logging("auto", "info", tty)
    get_logger().info("hello.console", a=1)
    out = tty.getvalue()
    assert "hello.console" in out and not out.lstrip().startswith("{")


def test_bad_format_or_level_raise():
    with pytest.raises(ValueError):
        configure_logging("xml")
    with pytest.raises(ValueError):
        configure_logging("json", "chatty")


def test_secrets_are_scrubbed_at_any_depth():
    buf = io.StringIO()
    configure_logging("json", "debug", buf)
    get_logger().info(
        "worker.event",
        secret="S1", api_token="S2", qr="2@QRSTRING", creds={"noiseKey": "S3"}, password="S4",
        headers={"Authorization": "Bearer S5", "X-Internal-Secret": "S6", "Accept": "json"},
        messages=[{"text": "S7"}], body="S8", nested=[{"deeper": {"refresh_token": "S9"}}],
        code=515, reason="restartRequired", message="Stream Errored", hasQR=True,
    )
    raw = buf.getvalue()
    for s in ("S1", "S2", "QRSTRING", "S3", "S4", "S5", "S6", "S7", "S8", "S9"):
        assert s not in raw, s
    (e,) = lines(buf)
    assert e["secret"] == REDACTED and e["headers"]["Accept"] == "json"
    # operational fields stay readable: close code, reason and message, booleans
    assert (e["code"], e["reason"], e["message"], e["hasQR"]) == (515, "restartRequired", "Stream Errored", True)


def test_exception_info_is_rendered_but_still_scrubbed():
    buf = io.StringIO()
    configure_logging("json", "info", buf)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger().error("api.error", exc_info=True, token="T0P")
    (e,) = lines(buf)
    assert "RuntimeError: boom" in e["exception"] and e["token"] == REDACTED


@pytest.mark.parametrize("key", ["secret", "X-Internal-Secret", "Authorization", "access_token", "qr", "QR",
                                 "creds", "password", "messages", "body", "dataUrl", "pairing_code", "phone"])
def test_sensitive_keys(key):
    assert is_sensitive(key)


@pytest.mark.parametrize("key", ["code", "reason", "message", "tenant", "state", "hasQR", "pid", "event", "auth"])
def test_operational_keys_are_kept(key):
    assert not is_sensitive(key)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=20,
)


@given(json_values)
def test_scrub_never_leaks_a_value_under_a_sensitive_key(value):
    marker = "LEAK-MARKER"
    doc = {"wrap": value, "secret": marker, "deep": [{"token": marker}]}
    assert marker not in json.dumps(scrub(doc))
    # scrubbing is idempotent and keeps structure JSON-safe
    assert scrub(scrub(doc)) == scrub(doc)


def test_stdlib_records_become_python_log_events():
    # asyncio reports a task whose exception nobody retrieved through the logging module: it must reach the log
    # shipper as one JSON line with its traceback, not as lastResort's multi-line text on stderr.
    buf = io.StringIO()
    configure_logging("json", "info", buf)

    async def main() -> None:
        async def fail() -> None:
            raise ValueError("boom")

        task = asyncio.create_task(fail())
        await asyncio.sleep(0)
        assert task.done()
        del task
        gc.collect()  # the task's finaliser calls the loop's exception handler -> logging.getLogger("asyncio")

    asyncio.run(main())
    logging.getLogger("aiohttp.access").info("chatter")  # libraries' info is not shipped at level info
    logging.getLogger("aiohttp.server").warning("Error handling request from %s", "127.0.0.1")
    (task_ev, server_ev) = lines(buf)
    assert task_ev["event"] == "python.log" and task_ev["logger"] == "asyncio" and task_ev["level"] == "error"
    assert task_ev["msg"].startswith("Task exception was never retrieved") and task_ev["exception"].endswith(
        "ValueError: boom")
    assert server_ev["level"] == "warning" and server_ev["logger"] == "aiohttp.server" and "pid" in server_ev
    assert server_ev["msg"] == "Error handling request from 127.0.0.1"


def test_stdlib_bridge_follows_the_level_and_is_not_stacked_by_a_reload():
    buf = io.StringIO()
    configure_logging("json", "error", buf)
    configure_logging("json", "debug", buf)  # a reload: still one bridge, now at debug
    logging.getLogger("aiohttp.access").debug("detail %d", 1)
    assert [(e["event"], e["msg"]) for e in lines(buf)] == [("python.log", "detail 1")]
    configure_logging("json", "error", buf)
    logging.getLogger("asyncio").warning("below the daemon's level")
    warnings.warn("a library's deprecation", UserWarning)  # warnings go through logging too, at warning
    assert len(lines(buf)) == 1


@pytest.mark.timeout(10)
async def test_a_record_made_inside_one_of_our_writes_does_not_deadlock():
    # The garbage collector can run a finaliser (asyncio's never-retrieved exception) while our writer holds the
    # output's lock; the record it logs must not wait for that lock in the same thread.
    class Reentrant(io.StringIO):
        fired = False

        def write(self, s: str) -> int:
            if not self.fired:
                self.fired = True
                logging.getLogger("asyncio").error("made inside a write")
            return super().write(s)

    buf = Reentrant()
    configure_logging("json", "info", buf)
    get_logger().info("outer")
    await asyncio.sleep(0)  # the loop's next turn writes the record
    assert [(e["event"], e.get("msg")) for e in lines(buf)] == [("outer", None), ("python.log", "made inside a write")]


def test_urls_in_library_text_lose_userinfo_and_query():
    buf = io.StringIO()
    configure_logging("json", "info", buf)
    err = ConnectionError("POST https://bot:pw@hooks.example.com/in?token=s3cr3t failed")
    logging.getLogger("aiohttp.client").error("request to %s", "http://127.0.0.1:9/x?secret=abc&b=2",
                                              exc_info=(ConnectionError, err, None))
    (e,) = lines(buf)
    assert e["msg"] == "request to http://127.0.0.1:9/x?[redacted]"
    assert "https://[redacted]@hooks.example.com/in?[redacted] failed" in e["exception"]
    assert "s3cr3t" not in buf.getvalue() and "pw@" not in buf.getvalue() and "abc" not in buf.getvalue()


def test_library_levels_between_the_standard_ones_round_down():
    buf = io.StringIO()
    configure_logging("json", "info", buf)
    for n in (15, 35, 45, 55):
        logging.getLogger("lib").log(n, "at %d", n)
    assert [(e["msg"], e["level"]) for e in lines(buf)] == [("at 35", "warning"), ("at 45", "error"),
                                                             ("at 55", "critical")]


def test_phone_numbers_jids_and_key_material_are_scrubbed_by_value_under_any_key():
    buf = io.StringIO()
    configure_logging("json", "info", buf)
    log = get_logger(tenant="shop-1")
    log.info("tenant.open", me="972501234567:12@s.whatsapp.net")  # what tenant_events logs at open
    log.info("tenant.status", me={"id": "972501234567:12@s.whatsapp.net", "lid": "123456789012345:3@lid",
                                  "name": "Shop"})  # the whole `me` of a status
    log.warning("worker.error", code="message_too_large",
                message="message 3EB0C431C26A1916A6 from 972501234567@s.whatsapp.net is 70000 bytes encoded")
    log.info("x", lid="123456789012345:3@lid", spaced="call +972 50-123-4567", nested={"a": ["+14155550123"]},
             note="privKey: <Buffer 38 4a 5b 6c 7d 8e 9f a0 b1 c2 d3 e4 f5 06 17 28 39 4a 5b 6c>",
             hexkey="k=" + "0123456789abcdef" * 4, b64key="BUbQ3mT2w9r0Z1x8yV7uK6jH5gF4dS3aP2oI1uY0tR9e=")
    raw = buf.getvalue()
    for leak in ("972501234567", "123456789012345", "4155550123", "50-123-4567", "38 4a 5b", "0123456789abcdef",
                 "BUbQ3mT2"):
        assert leak not in raw, leak
    opened, status, error, x = lines(buf)
    assert opened["me"] == "[redacted]@s.whatsapp.net" and opened["tenant"] == "shop-1"
    assert status["me"] == {"id": "[redacted]@s.whatsapp.net", "lid": "[redacted]@lid", "name": "Shop"}
    # what an operator needs stays: the message id, the server part, the size
    assert error["message"] == "message 3EB0C431C26A1916A6 from [redacted]@s.whatsapp.net is 70000 bytes encoded"
    assert x["lid"] == "[redacted]@lid" and x["note"] == "privKey: <Buffer [redacted]>"


@pytest.mark.parametrize("text", [
    "2026-12-01T14:20:45.123456Z", "archive auth.logged-out-20261201T142045Z-2", "10.0.0.1:3300", "pid 4194304",
    "/srv/baileys-supervisor/node_worker/node_modules/libsignal/src/session_record.js:270",
    "getaddrinfo ENOTFOUND web.whatsapp.com", "408 timedOut: Connection Terminated",
])
def test_operational_text_survives_value_scrubbing(text):
    from supervisor.events import scrub_text

    assert scrub_text(text) == text


def test_value_scrubbing_is_linear_on_hostile_strings():
    import time

    from supervisor.events import scrub_text

    t0 = time.process_time()
    for s in ("a" * 65536, "x@" * 32768, "A1b/" * 16384, "[" + "1, " * 20000, "1a" * 32768):
        scrub_text(s)
    assert time.process_time() - t0 < 2.0  # quadratic backtracking would take minutes
