"""The restart table wired through real fake workers (real subprocesses, real flocks): 515, the resting rows and one
backoff row per way a worker ends (the code-by-code table is tests/test_backoff.py), plus the watchdog, protocol
garbage, stop escalation, logout archiving and the crash-loop rate under a fake clock."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest
from structlog.testing import capture_logs

from conftest import FakeClock, live_workers, spawn_records, wait_until
from supervisor.daemon import Supervisor
from supervisor.errors import SupervisorError
from supervisor.settings import RestartSettings
from supervisor.states import TenantState
from supervisor.states import InvalidTransition

HELLO = {"hello": {}}
QR = [HELLO, {"emit": {"type": "connecting"}}, {"qr": "2@fake"}]
OPEN = [HELLO, {"emit": {"type": "connecting"}}, {"open": "1@s.whatsapp.net"}]
STAY = OPEN + [{"wait": True}]


def sup_for(settings, clock: FakeClock | None = None, **kw) -> Supervisor:
    clock = clock or FakeClock()
    return Supervisor(settings, clock=clock, sleep=clock.sleep, **kw)


async def settle(sup: Supervisor, tid: str, state: str, timeout: float = 10.0, restarts: int | None = None) -> dict:
    def ok() -> bool:
        st = sup.status(tid)
        return st["state"] == state and (restarts is None or st["restarts"] == restarts)

    await wait_until(ok, timeout=timeout)
    return sup.status(tid)


async def test_515_restarts_at_once_and_connects(make_settings, fake_state):
    clock = FakeClock()
    sup = sup_for(make_settings({"spawns": [QR + [{"close": 515, "reason": "restartRequired"}], STAY]}), clock)
    await sup.start_tenant("t")
    st = await settle(sup, "t", "connected", restarts=1)
    assert st["connected"] and st["me"] == {"id": "1@s.whatsapp.net"} and st["pushName"] == "Fake"
    assert st["restarts"] == 1 and st["lastDisconnect"]["code"] == 515
    assert clock.sleeps == []  # no backoff sleep at all
    assert [r["n"] for r in spawn_records(fake_state)] == [1, 2]
    await sup.shutdown()


@pytest.mark.parametrize("code,state,reason", [
    (440, "conflict", "connectionReplaced"),
    (403, "failed", "forbidden"),
    (411, "failed", "multideviceMismatch"),
])
async def test_resting_rows_do_not_restart(make_settings, fake_state, code, state, reason):
    sup = sup_for(make_settings(OPEN + [{"close": code}]))
    await sup.start_tenant("t")
    st = await settle(sup, "t", state)
    assert st["stateReason"] == reason and st["pid"] is None and st["lastDisconnect"]["code"] == code
    await asyncio.sleep(0.3)
    assert len(spawn_records(fake_state)) == 1
    assert not sup.tenants["t"].lock.held  # a resting tenant is not owned: nothing pins the auth dir
    # only an explicit start retries
    await sup.start_tenant("t")
    await wait_until(lambda: len(spawn_records(fake_state)) == 2)
    await sup.shutdown()


async def test_401_archives_auth_never_deletes(make_settings, storage):
    auth = storage / "whatsapp" / "t" / "auth"
    auth.mkdir(parents=True)
    # as Baileys saves a QR-linked device: `account` and `me`, and `registered` false (set by the code flow only)
    (auth / "creds.json").write_text(json.dumps({"registered": False, "me": {"id": "1:2@s.whatsapp.net"},
                                                 "account": {"details": "AA=="}}))
    sup = sup_for(make_settings(OPEN + [{"close": 401, "reason": "loggedOut"}]))
    assert sup.status("t")["auth"] == {"registered": True, "files": 1}  # known from disk before any start
    await sup.start_tenant("t")
    st = await settle(sup, "t", "logged_out")
    archives = list((storage / "whatsapp" / "t").glob("auth.logged-out-*"))
    assert len(archives) == 1 and (archives[0] / "creds.json").exists()
    assert st["auth"] == {"registered": False, "files": 0} and st["restarts"] == 0
    await sup.shutdown()


async def test_408_while_qr_is_qr_timeout(make_settings, fake_state):
    sup = sup_for(make_settings(QR + [{"close": 408, "message": "QR refs attempts ended"}]))
    await sup.start_tenant("t")
    st = await settle(sup, "t", "stopped")
    assert st["stateReason"] == "qr_timeout" and not st["hasQR"]
    await asyncio.sleep(0.3)
    assert len(spawn_records(fake_state)) == 1
    await sup.shutdown()


# One wired row per way a worker ends; the code-by-code table is tests/test_backoff.py (pure logic).
@pytest.mark.parametrize("first", [
    OPEN + [{"close": 428}], [HELLO, {"exit": 1}], [HELLO, {"exit": 0}], [{"exit": 3}],
], ids=["close", "crash", "exit-no-close", "crash-before-hello"])
async def test_backoff_rows(make_settings, fake_state, first):
    clock = FakeClock()
    sup = sup_for(make_settings({"spawns": [first, STAY]}, restart={"initial_delay": 1.0, "max_delay": 60.0}),
                  clock)
    with capture_logs() as logs:
        await sup.start_tenant("t")
        st = await settle(sup, "t", "connected", restarts=1)
    assert clock.sleeps == [1.0] and st["restarts"] == 1
    decision = next(e for e in logs if e["event"] == "tenant.decision")
    assert decision["action"] == "backoff" and decision["attempt"] == 1 and decision["delay"] == 1.0
    assert [e["to_state"] for e in logs if e["event"] == "tenant.state"].count("backoff") == 1
    await sup.shutdown()


def killed_after_hello(logs: list[dict]) -> dict | None:
    """The first restart decision about a worker that had said hello (the log is one tenant's, in order)."""
    said_hello = False
    for e in logs:
        if e["event"] == "worker.spawned":
            said_hello = False
        elif e["event"] == "worker.hello":
            said_hello = True
        elif e["event"] == "tenant.decision" and said_hello:
            return e
    return None


async def test_heartbeat_timeout_kills_and_backs_off(make_settings, fake_state):
    # Every worker says hello, then falls silent. heartbeat_timeout also bounds the first line, which a loaded
    # machine's Python start-up may miss (that worker is killed too, before its hello): so the test waits for the
    # kill of a worker that did say hello, however many slow starts came before, instead of timing any start.
    clock = FakeClock()
    settings = make_settings([HELLO, {"heartbeats": False}, {"wait": True}],
                             worker={"heartbeat_timeout": 1.0, "stop_grace": 0.5})
    sup = sup_for(settings, clock)
    with capture_logs() as logs:
        await sup.start_tenant("t")
        decision = await wait_until(lambda: killed_after_hello(logs), what="a watchdog kill after hello")
        spawns = sup.tenants["t"].spawns
        await wait_until(lambda: sup.tenants["t"].spawns > spawns, what="the respawn after the backoff")
    assert decision["ending"] == "heartbeat_timeout" and decision["action"] == "backoff"
    assert decision["delay"] in clock.sleeps
    i = logs.index(decision)  # the watchdog fired between that worker's hello and the decision
    hello = max(j for j, e in enumerate(logs[:i]) if e["event"] == "worker.hello")
    assert [e["event"] for e in logs[hello:i]].count("worker.heartbeat_timeout") == 1
    await sup.shutdown()


async def test_protocol_mismatch_fails(make_settings):
    sup = sup_for(make_settings([{"hello": {"protocol": 999}}, {"wait": True}]))
    await sup.start_tenant("t")
    st = await settle(sup, "t", "failed")
    assert st["stateReason"] == "protocol_mismatch"
    await sup.shutdown()


async def test_protocol_garbage_is_counted_not_fatal(make_settings):
    garbage = [{"raw": "not json"}, {"raw_b64": "//79"}, {"raw": '{"type":"qr"}'}, {"raw": "x", "repeat": 1 << 21},
               {"raw": '{"type":"evil"}'}]
    sup = sup_for(make_settings([HELLO] + garbage + [{"emit": {"type": "connecting"}}, {"open": "me"}, {"wait": 1}]))
    with capture_logs() as logs:
        await sup.start_tenant("t")
        await settle(sup, "t", "connected")
    errors = [e for e in logs if e["event"] == "worker.protocol_error"]
    assert [e["kind"] for e in errors] == ["bad_json", "bad_utf8", "missing_field", "too_long", "unknown_type"]
    assert sup.tenants["t"].worker.protocol_errors == 5
    await sup.shutdown()


async def test_stderr_pino_is_reemitted_without_extra_fields(make_settings):
    line = json.dumps({"level": 50, "msg": "boom", "creds": {"noiseKey": "SECRET"}})
    sup = sup_for(make_settings([HELLO, {"stderr": line}, {"stderr": "plain text"}, {"wait": True}]))
    with capture_logs() as logs:
        await sup.start_tenant("t")
        await wait_until(lambda: sum(e["event"] == "worker.log" for e in logs) >= 2)
    wl = [e for e in logs if e["event"] == "worker.log"]
    assert wl[0]["worker_level"] == "error" and wl[0]["msg"] == "boom" and "SECRET" not in repr(wl)
    assert wl[1]["msg"] == "plain text"
    await sup.shutdown()


async def test_stop_escalates_to_sigkill_of_the_group(make_settings, marker, fake_state):
    # The worker ignores SIGTERM, `stop` and stdin EOF, and has a SIGTERM-immune grandchild in its group: only a
    # SIGKILL of the whole group (after the grace) ends them both. Bounded, so a missing SIGKILL fails, not hangs.
    from conftest import signal_records  # here, not at the top: this file's imports belong to the tenant refactor
    from support import WAIT

    env = {"BSUP_FAKE_IGNORE_TERM": "1", "BSUP_FAKE_IGNORE_EOF": "1", "BSUP_FAKE_GRANDCHILD": "1"}
    sup = sup_for(make_settings(None, env=env, worker={"stop_grace": 0.4}))
    await sup.start_tenant("t")
    await settle(sup, "t", "qr")
    await wait_until(lambda: len(live_workers(marker)) == 2)  # the worker and its grandchild
    t0 = time.monotonic()
    st = await asyncio.wait_for(sup.stop_tenant("t"), WAIT)
    assert st["state"] == "stopped" and st["pid"] is None
    assert time.monotonic() - t0 >= 0.4  # TERM first, the grace waited out, only then KILL
    assert [r["signal"] for r in signal_records(fake_state)] == ["TERM"]
    await wait_until(lambda: live_workers(marker) == {})  # the grandchild too: the group was killed
    assert not (sup.tenants["t"].dir / "worker.pid").exists()
    await sup.shutdown()


async def test_logout_live_worker_and_when_stopped(make_settings, storage):
    sup = sup_for(make_settings(STAY))
    await sup.start_tenant("t")
    await settle(sup, "t", "connected")
    st = await sup.logout_tenant("t")
    assert st["state"] == "logged_out" and st["stateReason"] == "logout"
    tdir = storage / "whatsapp" / "t"
    assert len(list(tdir.glob("auth.logged-out-*"))) == 1 and not (tdir / "auth").exists()
    await sup.start_tenant("t")  # the next start is a fresh pairing
    await settle(sup, "t", "connected")
    await sup.stop_tenant("t")
    (tdir / "auth" / "creds.json").write_text("{}")
    st = await sup.logout_tenant("t")  # stopped tenant: archive without a worker
    assert st["state"] == "logged_out" and len(list(tdir.glob("auth.logged-out-*"))) == 2
    await sup.shutdown()


async def test_pairing_code_and_message_hook(make_settings):
    got = []
    sup = sup_for(make_settings(QR + [{"emit": {"type": "message", "upsertType": "notify",
                                                "messages": [{"key": {"id": "m1"}}], "ref": "r1"}}, {"wait": True}]),
                  on_message=lambda tid, payload: got.append((tid, payload["messages"][0]["key"]["id"])))
    await sup.start_tenant("t")
    await settle(sup, "t", "qr")
    assert await sup.pairing_code("t", "4915112345678") == "FAKE1234"
    await wait_until(lambda: got)
    assert got == [("t", "m1")] and sup.qr("t") == "2@fake"
    await sup.shutdown()


@pytest.mark.slow
async def test_crash_loop_rate_with_default_policy(make_settings):
    """A worker that crashes at once: growing intervals, never above max_delay (jitter is applied before the cap, so
    capped delays are in [48, 60] s): at most 6 + 537/48 ~ 18 spawns in 10 simulated minutes."""
    clock = FakeClock(limit=600.0)
    settings = make_settings([{"exit": 1}], restart={f: getattr(RestartSettings(), f) for f in
                                                     ("initial_delay", "max_delay", "jitter")})
    sup = sup_for(settings, clock, rand=random.Random(7).random)
    await sup.start_tenant("t")
    await asyncio.wait_for(clock.limit_reached.wait(), 60)
    spawns = sup.tenants["t"].spawns
    assert 10 <= spawns <= 18, spawns
    assert clock.sleeps[:6] == sorted(clock.sleeps[:6]) and clock.sleeps[0] < 1.5 and max(clock.sleeps) <= 60
    assert sup.status("t")["state"] == "backoff" and sup.status("t")["nextRetryAt"]
    await sup.stop_tenant("t")
    assert sup.status("t")["state"] == "stopped"


async def test_max_attempts_then_failed(make_settings, fake_state):
    sup = sup_for(make_settings([{"exit": 1}], restart={"max_attempts": 2}))
    await sup.start_tenant("t")
    st = await settle(sup, "t", "failed")
    assert st["stateReason"] == "max_attempts" and len(spawn_records(fake_state)) == 3
    await sup.shutdown()


def test_change_state_validates(make_settings):
    sup = Supervisor(make_settings())
    tenant = sup._tenant("t", create=True)
    with pytest.raises(InvalidTransition):
        tenant.change_state(TenantState.CONNECTED)
    with capture_logs() as logs:
        tenant.change_state(TenantState.STARTING, "start")
    assert logs == [{"event": "tenant.state", "log_level": "info", "tenant": "t", "from_state": "stopped",
                     "to_state": "starting", "reason": "start"}]


async def test_unexecutable_command_backs_off_not_crashes(make_settings):
    clock = FakeClock(limit=30.0)
    settings = make_settings(None, worker={"command": ("/nonexistent/worker",)}, env={"BAD": "a\x00b"})
    sup = sup_for(settings, clock)
    st = await sup.start_tenant("t")
    assert st["pid"] is None
    await asyncio.wait_for(clock.limit_reached.wait(), 10)
    st = sup.status("t")
    assert st["state"] == "backoff" and st["stateReason"] == "spawn_failed"
    await sup.stop_tenant("t")


@pytest.mark.parametrize(("worker_error", "error", "status"), [
    ("already_registered", "already_linked", 409), ("not_ready", "not_ready", 409),
    ("pairing_failed", "worker_error", 502),
])
async def test_pairing_code_refusals_map_to_what_the_caller_can_do(make_settings, worker_error, error, status):
    # A linked tenant or one without a QR yet is the caller's situation (409: logout first / retry), not a worker
    # fault (502); the worker's message stays in the error.
    sup = sup_for(make_settings(QR + [{"wait": True}], env={"BSUP_FAKE_PAIRING_ERROR": worker_error}))
    await sup.start_tenant("t")
    await settle(sup, "t", "qr")
    with pytest.raises(SupervisorError) as info:
        await sup.pairing_code("t", "15550001234")
    assert (info.value.code, info.value.status) == (error, status)
    assert sup.status("t")["state"] == "qr"  # a refused code changes nothing
    await sup.shutdown()


OFFLINE_THEN_OK = {"spawns": [[HELLO, {"close": 408, "message": "getaddrinfo ENOTFOUND web.whatsapp.com"}], STAY]}


async def test_start_during_backoff_retries_at_once(make_settings, fake_state):
    """`start` of a tenant in a 60 s backoff used to answer ok and leave it waiting for nextRetryAt."""
    sup = Supervisor(make_settings(OFFLINE_THEN_OK, restart={"initial_delay": 60.0, "max_delay": 60.0}))
    try:
        await sup.start_tenant("t")
        await settle(sup, "t", "backoff")
        sup.tenants["t"].backoff.floor = 0.0  # the floor has a test of its own
        st = await asyncio.wait_for(sup.start_tenant("t"), 20)
        assert st["pid"] and st["state"] != "backoff" and st["nextRetryAt"] is None
        st = await settle(sup, "t", "connected")
        assert st["restarts"] == 1  # a retry, not a fresh start: the count is kept
        assert [r["n"] for r in spawn_records(fake_state)] == [1, 2]
    finally:
        await sup.shutdown()


async def test_start_during_backoff_retries_no_sooner_than_the_floor(make_settings, fake_state):
    """A client polling `start` must not turn the backoff into a spawn loop: the retry comes `backoff.floor` after the
    previous attempt, and the answer says when."""
    sup = Supervisor(make_settings(OFFLINE_THEN_OK, restart={"initial_delay": 60.0, "max_delay": 60.0}))
    try:
        await sup.start_tenant("t")
        tenant = sup.tenants["t"]
        tenant.backoff.floor = 2.0
        await settle(sup, "t", "backoff")
        before = time.time()
        answers = [await asyncio.wait_for(sup.start_tenant("t"), 5) for _ in range(3)]
        assert all(a["state"] == "backoff" for a in answers)  # answered at once, not after the floor
        retry_at = tenant.next_retry_at
        assert retry_at is not None and retry_at <= before + 2.0 and retry_at < before + 30
        assert len(spawn_records(fake_state)) == 1
        await settle(sup, "t", "connected", timeout=20)
        spawns = spawn_records(fake_state)
        assert [r["n"] for r in spawns] == [1, 2]  # three starts, one retry
        assert spawns[1]["t"] - spawns[0]["t"] >= 1.9
    finally:
        await sup.shutdown()


async def test_an_offline_loop_is_logged_at_warning_with_the_cause(make_settings):
    """Five failed connects used to stay at info, the cause (getaddrinfo ENOTFOUND) only in the status."""
    clock = FakeClock(limit=3600.0)
    sup = sup_for(make_settings([HELLO, {"close": 408, "message": "getaddrinfo ENOTFOUND web.whatsapp.com"}]), clock)
    with capture_logs() as logs:
        await sup.start_tenant("t")
        await wait_until(lambda: sup.tenants["t"].spawns >= 11, timeout=60)
        await sup.stop_tenant("t")
    decisions = [e for e in logs if e["event"] == "tenant.decision"]
    assert len(decisions) >= 10
    warned = [e["attempt"] for e in decisions if e["log_level"] == "warning"]
    assert warned == [3, 10]
    assert all(e["message"] == "getaddrinfo ENOTFOUND web.whatsapp.com" for e in decisions)


async def test_clock_skew_is_taken_at_the_success_node_not_at_open(make_settings):
    """`open.successAt` (the worker's clock when it read the server's time) is the skew's base, so the login's work
    between the <success> node and `open` is not reported as skew; without it, the daemon's clock at `open`."""
    clock = FakeClock(start=1_700_000_100.0)  # the daemon's clock at `open`: 100 s after the server's time
    server = 1_700_000_000_000
    sup = sup_for(make_settings({"spawns": [[HELLO, {"emit": {"type": "open", "me": {"id": "1@s.whatsapp.net"},
                                                              "serverTime": server, "successAt": server + 250}},
                                             {"wait": True}]]}), clock)
    await sup.start_tenant("t")
    await settle(sup, "t", "connected")
    assert sup.clock_info("t") == {"serverTime": server, "receivedAt": server + 250, "skewMs": 250}
    await sup.shutdown()
    clock2 = FakeClock(start=1_700_000_100.0)
    sup = sup_for(make_settings({"spawns": [[HELLO, {"emit": {"type": "open", "me": {"id": "1@s.whatsapp.net"},
                                                              "serverTime": server}}, {"wait": True}]]}), clock2)
    await sup.start_tenant("t")
    await settle(sup, "t", "connected")
    assert sup.clock_info("t")["skewMs"] == 100_000  # an older worker: the daemon's clock at `open`
    await sup.shutdown()
