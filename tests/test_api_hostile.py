"""Hostile and careless clients against the real API on a loopback socket (issue 12, items 1, 9 and 10): without a
secret, web pages are kept out (supervisor/api_guard.py); malformed input is a JSON 4xx without a traceback in the
log; clients that go away are no errors. The supervisor is the
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


# -- item 1: without a secret, web pages are kept out ------------------------------------------------------------

EVIL = "http://evil.example"


async def test_a_cross_site_text_plain_post_is_refused_and_changes_nothing(served):
    stub, url, http = await served(secret=None)
    for action in ("logout", "start", "stop"):  # what the attack page did: log a tenant out, start another
        async with http.post(f"{url}/whatsapp/1/{action}", data=b"x", headers={
                "Origin": EVIL, "Content-Type": "text/plain"}) as r:
            assert r.status == 403, await r.text()
            assert (await r.json())["error"] == "forbidden_origin"
    # the same without a body (fetch(url, {method: "POST", mode: "no-cors"})): browsers send Origin on every POST
    async with http.post(f"{url}/whatsapp/1/logout", headers={"Origin": EVIL}) as r:
        assert r.status == 403
    async with http.post(f"{url}/whatsapp/1/logout", headers={"Origin": "null"}) as r:  # sandboxed iframe, file://
        assert r.status == 403
    # an old browser or a privacy extension that drops Origin: the text/plain body is still refused
    async with http.post(f"{url}/whatsapp/1/logout", data=b"x", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415 and (await r.json())["error"] == "unsupported_media_type"
    async with http.post(f"{url}/whatsapp/1/pairing-code", data=b'{"phone": "972501234567"}') as r:
        assert r.status == 415  # aiohttp sends application/octet-stream for bytes
    # reads by a cross-site page are refused as well (no CORS headers would let it read them anyway)
    async with http.get(f"{url}/whatsapp/1/qr", headers={"Origin": EVIL}) as r:
        assert r.status == 403
    assert stub.calls == []


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "localhost.evil.example", "[::2]:{port}", "0.0.0.0:{port}", ""])
async def test_a_foreign_host_header_is_refused(served, host):
    """DNS rebinding: the page's own name now resolves to 127.0.0.1, so it is same-origin to the browser, but the
    Host header still carries that name."""
    stub, url, http = await served(secret=None)
    port = url.rsplit(":", 1)[1]
    for method, path in (("GET", "/whatsapp/1/qr"), ("GET", "/whatsapp/1/status"), ("POST", "/whatsapp/1/logout")):
        async with http.request(method, f"{url}{path}", headers={"Host": host.format(port=port)}) as r:
            assert r.status == 403, (host, path)
            assert (await r.json())["error"] == "forbidden_host"
    assert stub.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}", "[::1]:{port}",
                                  "localhost:8022", "127.0.0.1"])
async def test_local_clients_and_same_origin_pages_are_served(served, host):
    """Any port: an ssh tunnel's local port (`ssh -L 8022:127.0.0.1:3300`) arrives with its own."""
    stub, url, http = await served(secret=None)
    host = host.format(port=url.rsplit(":", 1)[1])
    async with http.get(f"{url}/whatsapp/1/status", headers={"Host": host}) as r:
        assert r.status == 200
    async with http.post(f"{url}/whatsapp/1/start", headers={"Host": host, "Origin": f"http://{host}"}) as r:
        assert r.status == 200  # a same-origin page (its Origin is the Host it talks to)
    async with http.post(f"{url}/whatsapp/1/pairing-code", json={"phone": "972501234567"},
                         headers={"Host": host}) as r:
        assert r.status == 200  # application/json; charset=utf-8
    assert [c[0] for c in stub.calls] == ["status", "start", "pairing_code"]


async def test_with_a_secret_the_same_requests_behave_as_before(served):
    """With a secret the guard is off: the secret protects (a page cannot know it), and what worked keeps working."""
    stub, url, http = await served(secret=SECRET)
    async with http.post(f"{url}/whatsapp/1/start", data=b"x",
                         headers={"Origin": EVIL, "Content-Type": "text/plain"}) as r:
        assert r.status == 401  # no secret: refused by the secret, as before
    hdrs = {**H, "Origin": EVIL, "Content-Type": "text/plain", "Host": "evil.example"}
    async with http.post(f"{url}/whatsapp/1/start", data=b"x", headers=hdrs) as r:
        assert r.status == 200
    async with http.get(f"{url}/whatsapp/1/status", headers=hdrs) as r:
        assert r.status == 200
    assert stub.calls == [("start", "1"), ("status", "1")]


async def test_running_without_a_secret_is_a_warning_at_start(served):
    await served(secret=None)
    await served(secret=SECRET)
    warned = [e for e in log_lines(served) if e["event"] == "api.auth_disabled"]
    assert len(warned) == 1 and warned[0]["level"] == "warning" and warned[0]["port"] > 0


async def test_a_client_gone_mid_request_is_no_error(served):
    """A handler that finds its client gone (ConnectionResetError on a write) drops the connection quietly: no
    api.error, no 500 written into a closed socket."""
    stub, url, http = await served()
    stub.boom = ConnectionResetError("Cannot write to closing transport")
    raw = await raw_exchange(url, f"POST /whatsapp/1/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                                  f"X-Internal-Secret: {SECRET}\r\n\r\n".encode())
    assert raw == b""
    await asyncio.sleep(0.05)
    assert_no_error_logged(served)
