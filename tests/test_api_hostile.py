"""Hostile and careless clients against the real API on a loopback socket (issue 12, items 9 and 10): malformed
input is a JSON 4xx without a traceback in the log, and clients that go away are no errors. The supervisor is the
stub of test_api.py (these are the API's own answers)."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
import structlog
from aiohttp import ClientSession

from supervisor.api import make_app, start_api
from supervisor.eventbus import EventBus
from supervisor.events import configure_logging
from test_api import SECRET, H, StubSupervisor, _settings


@pytest.fixture
async def served():
    """make(secret=..., events=..., sse_heartbeat=...) -> (stub, base_url, session); logs go to `served.log`."""
    runners = []
    log = io.StringIO()
    configure_logging("json", "debug", stream=log)
    try:
        async with ClientSession() as http:

            async def make(secret: str | None = SECRET, events: EventBus | None = None, sse_heartbeat: float = 15.0):
                stub = StubSupervisor(_settings(secret))
                app = make_app(stub, stub.settings.api, events=events, sse_heartbeat=sse_heartbeat)
                runner, port = await start_api(app, "127.0.0.1", 0)
                runners.append(runner)
                return stub, f"http://127.0.0.1:{port}", http

            make.log = log  # type: ignore[attr-defined]
            yield make
        for r in runners:
            await r.cleanup()
    finally:
        structlog.reset_defaults()


def log_lines(make) -> list[dict]:
    return [json.loads(line) for line in make.log.getvalue().splitlines() if line.startswith("{")]


def assert_no_error_logged(make) -> None:
    lines = log_lines(make)
    bad = [e for e in lines if e["level"] in ("error", "critical") or "exception" in e or "Traceback" in str(e)]
    assert not bad, bad[:3]


async def raw_exchange(url: str, data: bytes, timeout: float = 30.0) -> bytes:
    """Send `data` byte for byte and read until the server closes (every request here says Connection: close)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


# -- item 9: 500s that were 400s ---------------------------------------------------------------------------------


async def test_a_non_utf8_secret_header_is_401_not_500(served):
    stub, url, _ = await served()
    raw = await raw_exchange(url, b"GET /whatsapp/1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                  b"X-Internal-Secret: \xff\xfe" + SECRET.encode() + b"\r\n\r\n")
    status, headers, body = parse_response(raw)
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    assert stub.calls == []
    assert_no_error_logged(served)


@pytest.mark.parametrize("body", [b"[" * 30000 + b"]" * 30000, b'{"phone": ' + b"[" * 60000])
async def test_json_nested_too_deep_is_400_not_500(served, body):
    stub, url, http = await served()
    async with http.post(f"{url}/whatsapp/1/pairing-code", headers=H, data=body) as r:
        assert r.status == 400, await r.text()
        assert (await r.json())["error"] == "bad_request"
    assert stub.calls == []
    assert_no_error_logged(served)


@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A3", "1%C2%B2", "-1", "+1", " 1", "1" * 19])
async def test_a_last_event_id_that_is_no_ascii_number_is_400(served, value):
    _, url, http = await served(events=EventBus())
    async with http.get(f"{url}/events?lastEventId={value}", headers=H) as r:
        assert r.status == 400, value
        assert (await r.json())["error"] == "bad_request"
    assert_no_error_logged(served)


# -- item 10: a closed SSE client is no error --------------------------------------------------------------------


async def test_closed_sse_clients_log_no_errors(served):
    bus = EventBus()
    _, url, _ = await served(events=bus, sse_heartbeat=0.05)  # the server notices a gone client at its next write
    n = 40

    async def one(i: int) -> None:
        path = "/events" if i % 2 else "/whatsapp/1/events"
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Internal-Secret: {SECRET}\r\n\r\n".encode())
        await reader.readuntil(b"event: snapshot")  # the stream is open
        writer.transport.abort()  # a closed browser tab (RST) ...
        if i % 3 == 0:
            writer.close()  # ... or an orderly FIN

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 60)
    for _ in range(600):  # every handler has ended (its subscription closed): bounded, 60 s on a loaded machine
        if bus.subscribers == 0:
            break
        await asyncio.sleep(0.1)
    assert bus.subscribers == 0
    await asyncio.sleep(0.1)  # stdlib records reach the log on the loop's next turn (events.StdlibBridge)
    assert_no_error_logged(served)
    closed = [e for e in log_lines(served) if e["event"] == "sse.client_closed"]
    assert len(closed) == n and all(e["level"] == "debug" for e in closed)
