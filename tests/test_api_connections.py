"""Connections against the real API server on loopback (issue 12 items 3 and 9; supervisor/api_server.py): idle and
half-sent connections are closed, slow bodies are 408, the connection cap keeps `/healthz` answering, aiohttp's own
400s are JSON, and running out of file descriptors is one log line, not a traceback per second."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from supervisor.api import make_app, start_api
from supervisor.eventbus import EventBus
from supervisor.events import configure_logging
from supervisor.settings import ApiSettings, Settings
from test_api import SECRET, StubSupervisor
from test_api_hostile import parse_response, raw_exchange

HDR = f"Host: 127.0.0.1\r\nX-Internal-Secret: {SECRET}\r\n"
BOUND = 30.0  # a safety bound for "closed soon", on a machine at load 10+


@pytest.fixture
async def server():
    """make(**ApiSettings fields) -> (runner, host, port); logs go to `server.log`."""
    runners = []
    log = io.StringIO()
    configure_logging("json", "info", stream=log)
    try:
        async def make(events: EventBus | None = None, **api):
            stub = StubSupervisor(replace(Settings(), api=ApiSettings(secret=SECRET, port=0, **api)))
            runner, port = await start_api(make_app(stub, stub.settings.api, events=events, sse_heartbeat=0.2),
                                           "127.0.0.1", 0)
            runners.append(runner)
            return runner, "127.0.0.1", port

        make.log = log  # type: ignore[attr-defined]
        yield make
        for r in runners:
            await r.cleanup()
    finally:
        structlog.reset_defaults()


def events(make) -> list[dict]:
    return [json.loads(line) for line in make.log.getvalue().splitlines() if line.startswith("{")]


async def closed_within(reader: asyncio.StreamReader, timeout: float = BOUND) -> bytes:
    """Everything the server sent until it closed the connection (TimeoutError if it did not)."""
    return await asyncio.wait_for(reader.read(), timeout)


async def test_idle_connections_are_closed_after_the_idle_timeout(server):
    _, host, port = await server(idle_timeout=0.5)
    conns = [await asyncio.open_connection(host, port) for _ in range(30)]
    # one more that made a keep-alive request first: idle from its response on
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /healthz HTTP/1.1\r\n{HDR}\r\n".encode())
    await writer.drain()
    conns.append((reader, writer))
    started = time.monotonic()
    answers = await asyncio.gather(*(closed_within(r) for r, _ in conns))
    assert all(a == b"" for a in answers[:-1])  # closed without a word
    assert parse_response(answers[-1])[0] == 200
    assert time.monotonic() - started >= 0.3  # by the timer, not at once
    for _, w in conns:
        w.close()


async def test_a_connection_sending_its_headers_slowly_is_closed(server):
    """Slowloris: a header line every 0.1 s never completes the request; aiohttp's keep-alive timer runs from the
    connection's start, and a request with incomplete headers is not in progress."""
    _, host, port = await server(idle_timeout=1.0)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    closed = asyncio.create_task(closed_within(reader))
    sent = 0
    try:
        while not closed.done() and sent < BOUND / 0.1:
            writer.write(b"X-Slow-%d: 1\r\n" % sent)
            sent += 1
            await asyncio.sleep(0.1)
        assert await closed == b""
    except (ConnectionResetError, BrokenPipeError):
        pass  # closed while we wrote: what we want
    finally:
        writer.close()
    assert 3 <= sent < BOUND / 0.1, sent  # it was still dribbling (not refused at once) and then it was cut


async def test_a_body_that_does_not_arrive_is_408(server):
    _, host, port = await server(body_timeout=0.5)
    url = f"http://{host}:{port}"
    for path, body in (("/whatsapp/1/pairing-code", b"Content-Length: 100\r\n\r\n{\"pho"),
                       ("/whatsapp/1/start", b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n")):
        raw = await raw_exchange(url, f"POST {path} HTTP/1.1\r\n{HDR}".encode() + body, timeout=BOUND)
        status, headers, payload = parse_response(raw)
        assert status == 408 and headers["content-type"].startswith("application/json"), (path, raw[:200])
        assert json.loads(payload)["error"] == "request_timeout"


async def test_at_the_cap_healthz_still_answers_by_closing_the_oldest_idle_connection(server):
    runner, host, port = await server(max_connections=5, idle_timeout=300)
    idle = [await asyncio.open_connection(host, port) for _ in range(5)]
    for _ in range(int(BOUND / 0.02)):  # until the server has accepted all five
        if len(runner.limits.open) == 5:
            break
        await asyncio.sleep(0.02)
    assert len(runner.limits.open) == 5
    kept = []
    for i in range(3):  # each stays open (keep-alive), so the cap stays reached for the next one
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /healthz HTTP/1.1\r\n{HDR}\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        assert head.startswith(b"HTTP/1.1 200"), (i, head)
        kept.append((reader, writer))
    # the three oldest idle connections made room, in order; the two newest are still open
    assert await asyncio.gather(*(closed_within(r) for r, _ in idle[:3])) == [b"", b"", b""]
    assert runner.limits.evicted == 3 and not any(r.at_eof() for r, _ in idle[3:])
    assert len(runner.limits.open) == 5
    for _, w in idle + kept:
        w.close()


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_503_json(server):
    runner, host, port = await server(events=EventBus(), max_connections=3)
    streams = []
    for _ in range(3):  # event streams: busy for as long as they are open
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /events HTTP/1.1\r\n{HDR}\r\n".encode())
        await asyncio.wait_for(reader.readuntil(b"event: snapshot"), BOUND)
        streams.append((reader, writer))
    url = f"http://{host}:{port}"
    raw = await raw_exchange(url, f"GET /healthz HTTP/1.1\r\n{HDR}\r\n".encode())
    status, headers, body = parse_response(raw)
    assert status == 503 and json.loads(body)["error"] == "too_many_connections" and headers["retry-after"] == "1"
    assert runner.limits.refused == 1 and all(not r.at_eof() for r, _ in streams)
    streams[0][1].transport.abort()  # one stream ends: room again
    for _ in range(int(BOUND / 0.05)):
        raw = await raw_exchange(url, f"GET /healthz HTTP/1.1\r\n{HDR}Connection: close\r\n\r\n".encode())
        if parse_response(raw)[0] == 200:
            break
        await asyncio.sleep(0.05)
    assert parse_response(raw)[0] == 200
    warned = [e for e in events(server) if e["event"] == "api.connections_full"]
    assert len(warned) == 1 and warned[0]["level"] == "warning"
    for _, w in streams:
        w.close()


@pytest.mark.parametrize("request_bytes", [
    b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # bad method
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",  # header over max_field_size
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # request line over max_line_size
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS to the HTTP port
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
])
async def test_aiohttp_s_own_400s_are_json_without_a_traceback(server, request_bytes):
    _, host, port = await server()
    raw = await raw_exchange(f"http://{host}:{port}", request_bytes)
    status, headers, body = parse_response(raw)
    assert 400 <= status < 500 and headers["content-type"].startswith("application/json"), raw[:300]
    assert json.loads(body)["error"] in ("bad_request", "headers_too_large")
    await asyncio.sleep(0.05)  # stdlib records are written on the loop's next turn
    logged = events(server)
    assert not [e for e in logged if e["level"] == "error" or "exception" in e], logged
    assert [e["status"] for e in logged if e["event"] == "api.bad_http"] == [status]


ACCEPT_SCRIPT = textwrap.dedent("""
    import asyncio, resource, sys
    from dataclasses import replace
    from supervisor.api import make_app, start_api
    from supervisor.events import configure_logging
    from supervisor.settings import ApiSettings, Settings
    sys.path.insert(0, sys.argv[1])
    from test_api import StubSupervisor

    async def main():
        configure_logging("json", "info")
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        stub = StubSupervisor(replace(Settings(), api=ApiSettings(secret=None, port=0, max_connections=1000,
                                                                  idle_timeout=300)))
        runner, port = await start_api(make_app(stub, stub.settings.api), "127.0.0.1", 0)
        print("PORT", port, flush=True)
        await asyncio.sleep(float(sys.argv[2]))
        await runner.cleanup()
        await asyncio.sleep(2.0)  # accept retries asyncio armed before the close fire now, on a closed listener

    asyncio.run(main())
""")


def test_running_out_of_file_descriptors_is_one_log_line_not_a_traceback_per_second(tmp_path: Path):
    """The daemon at its fd limit (here: 64, with max_connections above it): asyncio retries the accept every second
    and reported each failure with a traceback; now `api.accept_failed` at most once a minute, with a count."""
    import socket

    hold = 4.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent)] + sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", ACCEPT_SCRIPT, str(Path(__file__).parent), str(hold)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    socks = []
    try:
        head = b""
        while not head.endswith(b"\n") or b"PORT" not in head.splitlines()[-1]:
            line = proc.stdout.readline()
            assert line, head + proc.stdout.read()
            head += line
        port = int(head.splitlines()[-1].split()[1])
        for _ in range(100):  # more than the daemon has descriptors for
            s = socket.socket()
            s.setblocking(True)
            s.connect(("127.0.0.1", port))  # the kernel's backlog accepts; the daemon's accept() fails
            socks.append(s)
        out, _ = proc.communicate(timeout=hold + BOUND)
        out = head + out
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(x) for x in out.decode().splitlines() if x.startswith("{")]
    failed = [e for e in lines if e["event"] == "api.accept_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "error", out.decode()[-3000:]
    assert "Traceback" not in out.decode() and not [e for e in lines if e["event"] == "python.log"], out.decode()[-3000:]


def test_the_connection_settings_load_strictly_and_the_shipped_file_has_the_defaults():
    from supervisor.config import load_settings, settings_from_dict
    from supervisor.errors import ConfigError

    api = settings_from_dict({"api": {"idle_timeout": 2.5, "body_timeout": 1, "max_connections": 7}}).api
    assert (api.idle_timeout, api.body_timeout, api.max_connections) == (2.5, 1.0, 7)
    for key, bad in (("idle_timeout", 0), ("body_timeout", -1), ("max_connections", 0), ("max_connections", "x"),
                     ("idle_timeout", True)):
        with pytest.raises(ConfigError, match=f"api.{key}"):
            settings_from_dict({"api": {key: bad}})
    shipped = load_settings(Path(__file__).parent.parent / "config" / "baileys-supervisor.yaml").api
    assert (shipped.idle_timeout, shipped.body_timeout, shipped.max_connections) == \
        (ApiSettings.idle_timeout, ApiSettings.body_timeout, ApiSettings.max_connections)
