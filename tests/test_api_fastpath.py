"""The polled routes' fast path (docs/benchmarks.md, "API under load"): answers byte for byte what plain
`json.dumps` gave before (headers too), the cached /qr body follows every change of what it shows, and a GET's
dropped debug event is not even handed to the logger."""

from __future__ import annotations

import json
from typing import Any

import structlog

from supervisor import api_middleware as api_module
from supervisor import qr as qrimg
from supervisor.events import configure_logging
import test_api
from test_api import RAW_QR, H

served = test_api.served  # the fixture: a stub supervisor behind the real app on a loopback port

JSON_TYPE = "application/json; charset=utf-8"


async def _get(http, url: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, headers=H) as r:
        return r.status, dict(r.headers), await r.read()


async def test_status_healthz_and_errors_are_plain_json_bytes(served):
    stub, url, http = await served()
    status, headers, body = await _get(http, f"{url}/whatsapp/1/status")
    assert status == 200 and headers["Content-Type"] == JSON_TYPE
    assert body == json.dumps(stub._st("1")).encode()
    status, headers, body = await _get(http, f"{url}/healthz")
    assert (status, headers["Content-Type"], body) == (200, JSON_TYPE, json.dumps(stub.health()).encode())
    status, headers, body = await _get(http, f"{url}/whatsapp/nobody/status")
    assert status == 404 and headers["Content-Type"] == JSON_TYPE and json.loads(body)["error"] == "unknown_tenant"


async def test_qr_body_follows_qr_state_and_connected(served):
    stub, url, http = await served()
    state = {"state": "qr"}

    def status(tid: str) -> dict:
        stub._check(tid)
        return stub._st(tid, state["state"])

    stub.status = status  # type: ignore[method-assign]

    def expected(raw: str | None, st: str) -> bytes:
        return json.dumps({"tenant": "1", "dataUrl": qrimg.png_data_url(raw) if raw else None, "qr": raw,
                           "state": st, "connected": st == "connected"}).encode()

    other_qr = RAW_QR.replace("abc", "xyz")
    steps: list[tuple[str | None, str]] = [(RAW_QR, "qr"), (RAW_QR, "qr"), (other_qr, "qr"), (None, "connecting"),
                                           (None, "connected"), (None, "stopped"), (RAW_QR, "qr")]
    for raw, st in steps:
        stub.qr_value, state["state"] = raw, st
        status, headers, body = await _get(http, f"{url}/whatsapp/1/qr")
        assert status == 200 and body == expected(raw, st), (raw, st)
        assert headers["Content-Type"] == JSON_TYPE and headers["Cache-Control"] == "no-store"
    # a tenant never seen: "stopped", no QR, also as JSON
    status, _, body = await _get(http, f"{url}/whatsapp/2/qr")
    assert status == 200 and json.loads(body) == {"tenant": "2", "dataUrl": None, "qr": None, "state": "stopped",
                                                  "connected": False}


class _CountingLog:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.calls.append((level, event, fields))


async def test_dropped_debug_request_event_is_not_built(served, monkeypatch, capsys):
    counting = _CountingLog()
    monkeypatch.setattr(api_module, "log", counting)
    configure_logging("json", "info")
    try:
        _stub, url, http = await served()
        for _ in range(3):
            assert (await _get(http, f"{url}/whatsapp/1/status"))[0] == 200
        assert counting.calls == []  # at info, a successful GET costs the logger nothing
        async with http.post(f"{url}/whatsapp/1/start", headers=H) as r:
            assert r.status == 200
        assert [(lvl, ev) for lvl, ev, _ in counting.calls] == [("info", "api.request")]
        configure_logging("json", "debug")  # e.g. a reload: applies to the next request
        assert (await _get(http, f"{url}/whatsapp/1/status"))[0] == 200
        assert [(lvl, ev) for lvl, ev, _ in counting.calls][-1] == ("debug", "api.request")
    finally:
        structlog.reset_defaults()


async def test_health_counts_states_in_order_of_first_occurrence(make_settings):
    import dataclasses

    from supervisor.daemon import Supervisor
    from supervisor.states import TenantState as S

    sup = Supervisor(make_settings())
    for tid, state in [("a", S.QR), ("b", S.STOPPED), ("c", S.QR), ("d", S.CONNECTED), ("e", S.STOPPED)]:
        tenant = sup._tenant(tid, create=True)
        tenant.life = dataclasses.replace(tenant.life, state=state)
    states = sup.health()["states"]
    assert list(states.items()) == [("qr", 2), ("stopped", 2), ("connected", 1)]
    assert all(type(k) is str for k in states)  # the values, not the members: plain JSON keys
    assert sup.health()["tenants"] == 5


def test_enabled_for_follows_the_live_configuration():
    import logging

    from supervisor.events import enabled_for

    try:
        configure_logging("json", "info")
        assert not enabled_for(logging.DEBUG) and enabled_for(logging.INFO)
        configure_logging("json", "debug")
        assert enabled_for(logging.DEBUG)
        structlog.configure(wrapper_class=structlog.stdlib.BoundLogger)  # needs a logger to answer: never a 500
        assert enabled_for(logging.DEBUG)
    finally:
        structlog.reset_defaults()
    assert enabled_for(logging.DEBUG)  # structlog's default logs everything
