"""lifecycle.py in the supervisord style: set a Life, feed an event or a worker's end, assert the new Life and the
actions. No processes, no asyncio (the same rows run with real fake workers in test_tenant.py / test_standby.py)."""

from __future__ import annotations

import dataclasses

import pytest

from supervisor.backoff import Action, Ending, Streak
from supervisor.lifecycle import (ArchiveAuth, Close, Closed, Creds, DismissStandby, Enter, Forward, Hello, Life,
                                  MessageStatus,
                                  Opened, PairingCode, Prewarm, ProtocolMismatch, ReapStandby, Restarting, Rss,
                                  ShowQR, StopWorker, WorkerError, after_backoff, ending, on_event, on_exit,
                                  spawning, started)
from supervisor.protocol import PROTOCOL_VERSION, Event
from supervisor.settings import RestartSettings
from supervisor.states import RESTING_STATES, TRANSITIONS, TenantState as S

T0 = 1_000.0
SETTINGS = RestartSettings(initial_delay=1.0, jitter=0.0)


def ev(type_: str, **fields) -> Event:
    return Event(type_, fields)


def feed(state: S, event: Event, life: Life | None = None, **kw):
    return on_event(dataclasses.replace(life or Life(), state=state), event, now=T0, **kw)


def end(life: Life, ending: Ending = Ending.CLOSE, **kw):
    return on_exit(life, ending, kw.pop("settings", SETTINGS), now=T0, draw=0.5, **kw)


HELLO = ev("hello", protocol=PROTOCOL_VERSION, worker="w/1")


# -- worker events ------------------------------------------------------------------------------------------------
def test_hello_does_not_prewarm_only_a_qr_does():
    # a worker that says hello and then cannot connect (offline: connecting, close 408, backoff) shows no QR, so it
    # must not get an idle standby per cycle; the QR that proves a scan can come prewarms (test below)
    assert feed(S.STARTING, HELLO) == (Life(S.STARTING), (Hello(HELLO.fields),))
    life, seen = Life(S.STARTING), []
    for event in (HELLO, ev("connecting"), ev("close", code=408, reason="timedOut")):
        life, actions = on_event(life, event, now=T0)
        seen += actions
    life, decision, actions = end(life)
    assert decision.action is Action.BACKOFF and life.state is S.BACKOFF
    assert Prewarm() not in seen + list(actions)


def test_hello_of_another_protocol_stops_the_worker_and_the_tenant_rests_failed():
    bad = ev("hello", protocol=PROTOCOL_VERSION + 1)
    life, actions = feed(S.STARTING, bad)
    assert life.fatal == "protocol_mismatch"
    assert actions == (Hello(bad.fields), ProtocolMismatch(PROTOCOL_VERSION + 1), StopWorker())
    life, decision, actions = end(life, Ending.CRASH)
    assert (decision.action, life.state, decision.reason) == (Action.REST, S.FAILED, "protocol_mismatch")
    assert actions == (ReapStandby(), Enter(S.FAILED, "protocol_mismatch"))


def test_a_worker_that_restarts_in_process_gets_no_standby_until_the_next_spawn():
    hello = ev("hello", protocol=PROTOCOL_VERSION, restartInProcess=True)
    life, actions = feed(S.STARTING, hello)
    assert life == Life(S.STARTING, restart_in_process=True) and actions == (Hello(hello.fields),)
    life, actions = on_event(life, ev("qr", qr="2@x"), now=T0)
    assert actions == (Enter(S.QR, "waiting_for_scan"), ShowQR("2@x"))  # no Prewarm
    # the next worker (spawned, or a standby promoted, whose hello the tenant never sees) is asked again
    assert spawning(life).restart_in_process is False
    assert Prewarm() in on_event(spawning(life), ev("qr", qr="2@y"), now=T0)[1]
    for said in (False, "yes", None):  # only a literal true counts
        assert feed(S.STARTING, ev("hello", protocol=PROTOCOL_VERSION, restartInProcess=said))[0].restart_in_process \
            is False


@pytest.mark.parametrize("state", list(S))
def test_connecting_moves_only_a_live_worker_state(state):
    life, actions = feed(state, ev("connecting"))
    if state in (S.STARTING, S.QR, S.CONNECTED):
        assert (life.state, actions) == (S.CONNECTING, (Enter(S.CONNECTING),))
    else:  # a late line from a worker being stopped or already replaced changes nothing
        assert (life.state, actions) == (state, ())


@pytest.mark.parametrize("state", list(S))
def test_qr_shows_it_and_prewarms_the_worker_that_logs_in_after_the_scan(state):
    life, actions = feed(state, ev("qr", qr="2@x"))
    if state in (S.STARTING, S.CONNECTING, S.QR):
        assert life.state is S.QR
        assert actions == (Enter(S.QR, "waiting_for_scan"), ShowQR("2@x"), Prewarm())
    else:
        assert (life.state, actions) == (state, ())


@pytest.mark.parametrize("state", list(S))
def test_open_connects_starts_the_stable_clock_and_dismisses_the_standby(state):
    life, actions = feed(state, ev("open", me={"id": "1@s"}, pushName="P", serverTime=5),
                         Life(streak=Streak(failures=3, immediate=2)))
    if state in (S.STARTING, S.QR, S.CONNECTING):
        assert life == Life(S.CONNECTED, streak=Streak(failures=3, immediate=0, opened_at=T0))
        assert actions == (Opened({"id": "1@s"}, "P", 5), Enter(S.CONNECTED), DismissStandby())
    else:
        assert (life.state, actions) == (state, ())


def test_open_with_a_malformed_me_keeps_none():
    _, actions = feed(S.CONNECTING, ev("open", me="not an object"))
    assert actions[0] == Opened(None, None, None)


def test_close_records_the_state_it_came_in():
    life, actions = feed(S.QR, ev("close", code=408, reason="timedOut", message="QR refs attempts ended"))
    close = Close(408, S.QR, "timedOut", "QR refs attempts ended")
    assert (life.state, life.close, actions) == (S.QR, close, (Closed(close),))


RECONNECT = ev("close", code=515, reason="restartRequired", message="Stream Errored (restart required)",
               isNewLogin=True, reconnecting=True)


@pytest.mark.parametrize("state", list(S))
def test_the_scans_515_reconnected_in_process_is_a_transition_not_an_end(state):
    # The worker opens its next socket itself (docs/protocol.md): no restart, no backoff, the streak untouched, the
    # close reported but not kept as the worker's end, the standby not needed.
    life0 = Life(state, streak=Streak(failures=2, immediate=1))
    life, actions = feed(state, RECONNECT, life0)
    close = Close(515, state, "restartRequired", "Stream Errored (restart required)")
    if state in (S.STARTING, S.QR, S.CONNECTING, S.CONNECTED):
        assert life == dataclasses.replace(life0, state=S.CONNECTING)
        assert actions == (Closed(close), Enter(S.CONNECTING, "restartRequired"), DismissStandby())
        assert not any(isinstance(a, Restarting) for a in actions)
    else:  # a stop is in progress (or the worker is gone): only reported, the stop goes on
        assert (life, actions) == (life0, (Closed(close),))


def test_after_an_in_process_reconnect_the_workers_own_next_end_decides():
    # scan -> reconnect -> open: connected with the stable clock started, never a restart
    life = Life(S.QR)
    for event in (RECONNECT, ev("connecting"), ev("open", me={"id": "1@s"})):
        life, actions = on_event(life, event, now=T0)
    assert (life.state, life.close, life.streak) == (S.CONNECTED, None, Streak(opened_at=T0))
    # the reconnect failed and the worker fell back to the old path: its plain close 515, then its exit
    life, _ = feed(S.QR, RECONNECT)
    life, _ = on_event(life, ev("close", code=515, reason="restartRequired", message="in-process reconnect failed"),
                       now=T0)
    life, decision, actions = end(life)
    assert (decision.action, life.state) == (Action.RESTART, S.STARTING)
    assert actions == (Restarting("restartRequired"), Enter(S.STARTING, "restartRequired"))
    # the new socket's login died without a close: a crash, not the 515 (which was not this worker's end)
    life, _ = feed(S.QR, RECONNECT)
    life, decision, _ = end(life, ending(life, heartbeat_timeout=False, returncode=1))
    assert (decision.action, decision.reason) == (Action.BACKOFF, "crash")


@pytest.mark.parametrize("fields", [dict(code=515, reconnecting=False), dict(code=428, reconnecting=True),
                                    dict(code=515, reconnecting="yes")])
def test_only_a_515_flagged_reconnecting_is_a_transition(fields):
    life, actions = feed(S.QR, ev("close", **fields))
    assert life.state is S.QR and life.close is not None and actions == (Closed(life.close),)


@pytest.mark.parametrize("code,fatal", [("server_verification_failed", True), ("auth_corrupt", True),
                                        ("crash", False)])
def test_only_incurable_fatal_errors_mark_the_tenant(code, fatal):
    error = ev("error", code=code, message="m", fatal=True)
    life, actions = feed(S.CONNECTING, error)
    assert life.fatal == (code if fatal else None) and actions == (WorkerError(error.fields),)
    assert feed(S.CONNECTING, ev("error", code=code, message="m"))[0].fatal is None  # not fatal: retry


def test_side_events_change_no_state():
    msg = ev("message", upsertType="notify", messages=[], ref="r")
    assert feed(S.CONNECTED, msg) == (Life(S.CONNECTED), (Forward({"type": "message", **msg.fields}),))
    upd = ev("message_update", key={"id": "x"}, update={"status": 4})
    assert feed(S.CONNECTED, upd) == (Life(S.CONNECTED), (Forward({"type": "message_update", **upd.fields}),))
    assert feed(S.CONNECTED, ev("creds", registered=1)) == (Life(S.CONNECTED), (Creds(True),))
    assert feed(S.CONNECTED, ev("heartbeat", rss=10)) == (Life(S.CONNECTED), (Rss(10),))
    assert feed(S.CONNECTED, ev("heartbeat")) == (Life(S.CONNECTED), ())
    assert feed(S.QR, ev("pairing_code", code="C")) == (Life(S.QR), (PairingCode(),))
    assert feed(S.QR, ev("pong", id="x")) == (Life(S.QR), ())


# -- a worker's end: the one place that decides what follows -------------------------------------------------------
def closed(state: S, code: int | None, **life) -> Life:
    return Life(state, close=Close(code, state, None, ""), **life)


@pytest.mark.parametrize("code,at,rest_in,reason", [
    (440, S.CONNECTED, S.CONFLICT, "connectionReplaced"),
    (403, S.CONNECTING, S.FAILED, "forbidden"),
    (411, S.CONNECTING, S.FAILED, "multideviceMismatch"),
    (408, S.QR, S.STOPPED, "qr_timeout"),
])
def test_resting_rows_reap_the_standby_then_rest(code, at, rest_in, reason):
    life, decision, actions = end(closed(at, code))
    assert (decision.action, life.state) == (Action.REST, rest_in)
    assert actions == (ReapStandby(), Enter(rest_in, reason))


def test_401_archives_the_auth_before_the_state_says_logged_out():
    life, _, actions = end(closed(S.CONNECTED, 401))
    assert life.state is S.LOGGED_OUT
    assert actions == (ReapStandby(), ArchiveAuth(), Enter(S.LOGGED_OUT, "loggedOut"))


def test_the_close_state_decides_not_the_state_at_exit():
    # 408 while showing a QR is a qr_timeout even though the tenant moved on before the process exited
    life = dataclasses.replace(closed(S.QR, 408), state=S.CONNECTING)
    assert end(life)[1].reason == "qr_timeout"
    assert end(closed(S.CONNECTING, 408))[1].action is Action.BACKOFF


def test_515_restarts_at_once():
    life, decision, actions = end(closed(S.CONNECTING, 515))
    assert (decision.action, decision.delay, life.state) == (Action.RESTART, 0.0, S.STARTING)
    assert actions == (Restarting("restartRequired"), Enter(S.STARTING, "restartRequired"))
    assert life.streak == Streak(failures=0, immediate=1)


@pytest.mark.parametrize("ending", [Ending.CRASH, Ending.EXIT, Ending.HEARTBEAT, Ending.SPAWN])
def test_process_endings_back_off_and_count_then_start_after_the_delay(ending):
    life, decision, actions = end(Life(S.CONNECTING), ending)
    assert (decision.action, decision.delay, life.state, life.streak.failures) == (Action.BACKOFF, 1.0, S.BACKOFF, 1)
    assert actions == (Restarting(ending.value), Enter(S.BACKOFF, ending.value))
    assert after_backoff(life, decision) == (dataclasses.replace(life, state=S.STARTING),
                                             (Enter(S.STARTING, ending.value),))


def test_logout_and_fatal_outrank_the_table():
    life, decision, actions = end(closed(S.CONNECTED, 515, logout_requested=True, fatal="auth_corrupt"))
    assert (life.state, decision.reason) == (S.LOGGED_OUT, "logout")
    assert actions == (ReapStandby(), ArchiveAuth(), Enter(S.LOGGED_OUT, "logout"))
    life, decision, _ = end(closed(S.CONNECTED, 515, fatal="auth_corrupt"))
    assert (life.state, decision.reason) == (S.FAILED, "auth_corrupt")


def test_a_storage_fault_backs_off_like_a_crash_but_says_so():
    life, decision, actions = end(Life(S.STARTING), Ending.SPAWN, storage_error=True)
    assert (decision.action, life.state, decision.reason) == (Action.BACKOFF, S.BACKOFF, "storage_error")
    assert actions == (Restarting("storage_error"), Enter(S.BACKOFF, "storage_error"))
    life, decision, _ = end(Life(S.STARTING), Ending.SPAWN, storage_error=True,
                            settings=RestartSettings(max_attempts=0))
    assert (life.state, decision.reason) == (S.FAILED, "storage_error")


def test_max_attempts_rests_failed():
    life = Life(S.CONNECTING, streak=Streak(failures=2))
    life, decision, _ = end(life, Ending.CRASH, settings=RestartSettings(max_attempts=2))
    assert (decision.action, life.state, decision.reason) == (Action.REST, S.FAILED, "max_attempts")


def test_every_state_an_end_leads_to_is_reachable_and_rests_where_only_a_start_leaves():
    for ending in Ending:
        for code in (None, 401, 403, 408, 411, 428, 440, 500, 503, 515, 499):
            for at in (S.STARTING, S.QR, S.CONNECTING, S.CONNECTED):
                life, decision, actions = end(closed(at, code), ending)
                assert life.state in TRANSITIONS[at]
                assert (decision.action is Action.REST) == (life.state in RESTING_STATES)
                assert [a for a in actions if isinstance(a, Enter)][-1].state is life.state


def test_start_forgets_history_and_a_spawn_forgets_the_last_close():
    life = closed(S.BACKOFF, 500, fatal="x", logout_requested=True, streak=Streak(4, 1, T0))
    assert started(life) == Life(S.BACKOFF)
    assert spawning(life) == dataclasses.replace(life, close=None)


def test_how_a_worker_ended():
    assert ending(Life(), heartbeat_timeout=True, returncode=0) is Ending.HEARTBEAT
    assert ending(closed(S.CONNECTED, 515), heartbeat_timeout=True, returncode=-9) is Ending.HEARTBEAT
    assert ending(closed(S.CONNECTED, 515), heartbeat_timeout=False, returncode=1) is Ending.CLOSE
    assert ending(Life(), heartbeat_timeout=False, returncode=0) is Ending.EXIT
    assert ending(Life(), heartbeat_timeout=False, returncode=-15) is Ending.CRASH


def test_tenant_has_an_executor_for_every_event_action(make_settings):
    # The executing side (no worker, no loop needed): a new action type without an executor would raise TypeError.
    from supervisor import lifecycle
    from supervisor.slots import SpawnSlots
    from supervisor.tenant import Tenant

    tenant = Tenant("t", make_settings(), spawn_slots=SpawnSlots(1))
    close = Close(515, S.CONNECTING, None, "m")
    samples = [Hello({}), ProtocolMismatch(2), StopWorker(), Prewarm(), DismissStandby(), ShowQR("2@x"),
               Opened(None, None, None), Closed(close), Creds(True), Forward({}), Rss(1), WorkerError({}),
               MessageStatus({}), PairingCode(), Restarting("crash"), Enter(S.STARTING, "start")]
    exit_only = {ReapStandby, ArchiveAuth}  # they await: executed by Tenant._apply_exit
    declared = {c for c in vars(lifecycle).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
                and c.__module__ == lifecycle.__name__} - {Life, Close}
    assert declared == {type(a) for a in samples} | exit_only
    for action in samples:
        tenant._do(action)
    assert (tenant.state, tenant.restarts, tenant.registered, tenant.last_disconnect["code"]) == (
        S.STARTING, 1, True, 515)


def test_decision_level_warns_when_a_streak_gets_long_then_every_10th():
    from supervisor.backoff import Decision
    from supervisor.lifecycle import decision_level

    def backoff(n: int) -> Decision:
        return Decision(Action.BACKOFF, 1.0, S.BACKOFF, "timedOut", n)

    levels = {n: decision_level(backoff(n)) for n in range(1, 41)}
    assert [n for n, lvl in levels.items() if lvl == "warning"] == [3, 10, 20, 30, 40]
    assert decision_level(Decision(Action.REST, 0.0, S.FAILED, "max_attempts", 5)) == "warning"
    assert decision_level(Decision(Action.REST, 0.0, S.CONFLICT, "connectionReplaced", 0)) == "info"
    assert decision_level(Decision(Action.RESTART, 0.0, S.STARTING, "restartRequired", 3)) == "info"
