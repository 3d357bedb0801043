"""Fatal worker errors that no restart can cure rest the tenant in `failed` with the error code as the reason
(found end to end: a wrong-root server used to be retried forever with stateReason "400")."""

from __future__ import annotations

import pytest

from conftest import FakeClock, spawn_records, wait_until
from supervisor.daemon import Supervisor

HELLO = {"hello": {}}


async def _settle(sup: Supervisor, tid: str, state: str) -> dict:
    await wait_until(lambda: sup.status(tid)["state"] == state, timeout=10.0)
    return sup.status(tid)


@pytest.mark.parametrize("code,steps", [
    # the worker's order for a refused server: error, then close 400, then exit 1
    ("server_verification_failed", [{"close": 400, "message": "noise intermediate certificate signature invalid"}]),
    # corrupt creds.json: error right after hello, exit 1 without a close
    ("auth_corrupt", [{"exit": 1}]),
])
async def test_incurable_fatal_error_rests_in_failed(make_settings, fake_state, code, steps):
    script = [HELLO, {"emit": {"type": "error", "code": code, "message": "x", "fatal": True}}, *steps]
    clock = FakeClock()
    sup = Supervisor(make_settings(script), clock=clock, sleep=clock.sleep)
    await sup.start_tenant("t")
    st = await _settle(sup, "t", "failed")
    assert st["stateReason"] == code and st["restarts"] == 0
    assert len(spawn_records(fake_state)) == 1  # no second worker
    await sup.shutdown()


async def test_other_fatal_errors_still_back_off(make_settings, fake_state):
    script = {"spawns": [[HELLO, {"emit": {"type": "error", "code": "crash", "message": "x", "fatal": True}},
                          {"exit": 1}], [HELLO, {"open": "1@s.whatsapp.net"}, {"wait": True}]]}
    clock = FakeClock()
    sup = Supervisor(make_settings(script), clock=clock, sleep=clock.sleep)
    await sup.start_tenant("t")
    st = await _settle(sup, "t", "connected")
    assert st["restarts"] == 1
    await sup.shutdown()
