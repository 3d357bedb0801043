"""GET /webhook/dead-letters and POST /webhook/dead-letters/{id}/retry through the real API, a real forwarder, a
real SQLite spool and a real webhook target (the Target/make fixtures of test_webhook.py)."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession
from structlog.testing import capture_logs

from support import wait_until
from supervisor.api import make_app, start_api
from supervisor.settings import ApiSettings
from test_webhook import Recorder, make, msg, target  # noqa: F401 - fixtures

AUTH = {"X-Internal-Secret": "api-s3cret"}


@pytest.fixture
async def api(make):  # noqa: F811
    rec = Recorder()
    fw = await make(rec)
    runners = []

    async def serve(webhook):
        runner, port = await start_api(make_app(object(), ApiSettings(secret="api-s3cret", port=0), webhook=webhook),
                                       "127.0.0.1", 0)
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    async with ClientSession() as http:
        yield http, await serve(fw), await serve(None), fw, rec
    for r in runners:
        await r.cleanup()


async def test_list_then_retry_delivers_under_the_same_key(api, target):  # noqa: F811
    http, url, _, fw, rec = api
    target.plan["1"] = [422]  # refused once for good; after the operator's fix the target accepts it
    with capture_logs() as logs:
        await fw.submit("1", msg(0), event_id="ev-0")
        await fw.submit("1", msg(1))
        await wait_until(lambda: rec.results == ["dead_letter", "delivered"])
        async with http.get(f"{url}/webhook/dead-letters") as r:
            assert r.status == 401
        async with http.get(f"{url}/webhook/dead-letters", headers=AUTH) as r:
            assert r.status == 200
            page = await r.json()
        [d] = page["deadLetters"]
        assert page["next"] is None and "payload" not in d  # contents only on request
        assert (d["tenant"], d["eventId"], d["idempotencyKey"], d["status"], d["attempts"]) == (
            "1", "ev-0", "ev-0", 422, 1)
        assert d["createdAt"].endswith("Z") and d["deadAt"].endswith("Z") and d["size"] > 0
        async with http.get(f"{url}/webhook/dead-letters?payload=true&tenant=1", headers=AUTH) as r:
            assert (await r.json())["deadLetters"][0]["payload"] == msg(0)
        async with http.post(f"{url}/webhook/dead-letters/{d['id']}/retry", headers=AUTH) as r:
            assert r.status == 200
            body = await r.json()
        assert body["ok"] and body["requeued"] and body["tenant"] == "1"
        await wait_until(lambda: len(target.received) == 2)
    assert [q["key"] for q in target.requests] == ["ev-0", target.requests[1]["key"], "ev-0"]
    assert [q["payload"] for q in target.received] == [msg(1), msg(0)]  # at the tail, behind what waited
    async with http.get(f"{url}/webhook/dead-letters", headers=AUTH) as r:
        assert (await r.json())["deadLetters"] == []
    async with http.post(f"{url}/webhook/dead-letters/{d['id']}/retry", headers=AUTH) as r:
        assert r.status == 404 and (await r.json())["error"] == "dead_letter_not_found"  # delivered: gone
    [ev] = [e for e in logs if e["event"] == "webhook.requeued"]
    assert ev["tenant"] == "1" and "payload" not in ev and "body" not in ev


async def test_paging_and_bad_input_are_clear_4xx(api, target):  # noqa: F811
    http, url, off, fw, rec = api
    target.default["2"] = 422
    for n in range(3):
        await fw.submit("2", msg(n))
    await wait_until(lambda: rec.results.count("dead_letter") == 3)
    async with http.get(f"{url}/webhook/dead-letters?limit=2", headers=AUTH) as r:
        first = await r.json()
    async with http.get(f"{url}/webhook/dead-letters?limit=2&after={first['next']}", headers=AUTH) as r:
        second = await r.json()
    assert len(first["deadLetters"]) == 2 and second["next"] is None
    assert [d["seq"] for d in first["deadLetters"] + second["deadLetters"]] == sorted(
        d["seq"] for d in first["deadLetters"] + second["deadLetters"]) and len(second["deadLetters"]) == 1
    for query in ("limit=0", "limit=1001", "limit=x", "after=-1", "payload=yes", "tenant=bad%20id"):
        async with http.get(f"{url}/webhook/dead-letters?{query}", headers=AUTH) as r:
            assert r.status == 400, query
            assert (await r.json())["error"] in ("bad_request", "invalid_tenant")
    async with http.post(f"{url}/webhook/dead-letters/no%20such/retry", headers=AUTH) as r:
        assert r.status == 400
    async with http.post(f"{url}/webhook/dead-letters/unknown-id/retry", headers=AUTH) as r:
        assert r.status == 404 and (await r.json())["error"] == "dead_letter_not_found"
    for method, path in (("GET", "/webhook/dead-letters"), ("POST", "/webhook/dead-letters/x/retry")):
        async with http.request(method, off + path, headers=AUTH) as r:  # webhook.url unset
            assert r.status == 404 and (await r.json())["error"] == "webhook_disabled"
