"""Signed stream tokens (supervisor/stream_token.py) and the API around them: POST /whatsapp/{t}/events-token, then
GET /whatsapp/{t}/events?token=... without the secret, as a browser's EventSource does."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import stream_token
from test_ops_sse import SECRET, H, live, read_events  # noqa: F401 - `live` is a fixture

NOW = 1_800_000_000.0


def test_a_token_opens_its_tenant_until_it_expires_and_nothing_else():
    token, expires = stream_token.issue("s3", "t1", NOW)
    assert expires == NOW + stream_token.TTL
    assert stream_token.valid("s3", "t1", token, NOW) and stream_token.valid("s3", "t1", token, expires - 1)
    assert not stream_token.valid("s3", "t1", token, expires)  # expired
    assert not stream_token.valid("s3", "t2", token, NOW)  # another tenant
    assert not stream_token.valid("rotated", "t1", token, NOW)  # the secret changed: every token is revoked
    later = f"{expires + 10**6}.{token.split('.')[1]}"
    assert not stream_token.valid("s3", "t1", later, NOW)  # a longer life cannot be written in


@given(st.text(max_size=120))
def test_junk_is_refused_never_raises(junk):
    assert stream_token.valid("s3", "t1", junk, NOW) is False


@pytest.mark.parametrize("junk", ["", ".", "1.2", "²³.".ljust(67, "a"), f"{int(NOW) + 9}." + "é" * 64, "9" * 13 + "." + "a" * 64])
def test_odd_shapes_are_refused(junk):
    assert stream_token.valid("s3", "t1", junk, NOW) is False


async def test_eventsource_without_headers_opens_the_stream_with_a_token(live):
    sup, url, http = live
    async with http.post(f"{url}/whatsapp/s1/events-token") as r:
        assert r.status == 401  # minting needs the secret
    async with http.post(f"{url}/whatsapp/s1/events-token", headers=H) as r:
        assert r.status == 200
        body = await r.json()
    assert body["ok"] is True and body["tenant"] == "s1" and body["url"] == f"/whatsapp/s1/events?token={body['token']}"
    async with http.get(f"{url}{body['url']}") as r:  # no header at all
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        frames = await read_events(r, 2)
    assert frames[1]["event"] == "snapshot"
    token = body["token"]
    # only that tenant's stream: not another tenant's, not the all-tenants stream, not any other route
    for method, path in (("GET", "/whatsapp/s2/events"), ("GET", "/events"), ("GET", "/whatsapp/s1/status"),
                         ("GET", "/whatsapp/s1/qr"), ("POST", "/whatsapp/s1/start"), ("GET", "/metrics")):
        async with http.request(method, f"{url}{path}?token={token}") as r:
            assert r.status == 401, (method, path)
    expired, _ = stream_token.issue(SECRET, "s1", time.time() - stream_token.TTL - 1)
    async with http.get(f"{url}/whatsapp/s1/events?token={expired}") as r:
        assert r.status == 401 and (await r.json())["error"] == "unauthorized"
    async with http.post(f"{url}/whatsapp/bad%20id/events-token", headers=H) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_tenant"
    assert "s1" not in sup.tenants  # minting a token starts nothing
